"""``dp2``: the one command line for operators, vendors and developers.

Why one entry point: a new user should need two commands (``make run``,
``make test``) and then discover everything else with ``dp2 --help``. Each
sub-command is a thin layer over a module that tests drive directly; this file
only parses arguments, prints, and turns :class:`Dp2Error` into a two-line
message and exit code 2 instead of a stack trace.

Exit codes: 0 ok, 1 something is not running/healthy (status), 2 an error the
message explains.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import mimetypes
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from brokers import demo, stack
from brokers.bench import add_bench_command
from brokers.contacts import (
    ContactRegister,
    pseudonym_key,
    publish_contacts,
    read_contact_file,
)
from brokers.crypto import Pseudonymizer
from brokers.kafka_runner import (
    ClusterSpec,
    LocalKafka,
    ensure_jars,
    port_is_listening,
    recorded_base_port,
)
from brokers.logs import configure_logging
from brokers.pki import add_pki_commands
from brokers.router import PRINT_PROVIDER
from brokers.settings import Settings
from brokers.topics import TOPICS, ensure_topics
from connectors.base import config_path, configured, discover, read_config
from connectors.citizens import add_token_commands
from connectors.esdh import memo
from connectors.sdk import Document, Dp2Client
from schemas.errors import Dp2Error
from tracing.access import add_dashboard_commands
from tracing.client import add_trace_command


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _cluster(settings: Settings, nodes: int, port: int | None = None) -> LocalKafka:
    """The local cluster of this size; its port: --port, else as last started, else settings."""
    root = settings.home / "kafka" / f"{nodes}-node"
    spec = ClusterSpec(
        root=root,
        nodes=nodes,
        base_port=port or recorded_base_port(root) or settings.kafka_port,
        heap_mb=settings.kafka_heap_mb,
        libs=settings.kafka_libs,
        deploy_dir=settings.kafka_deploy_dir,
    )
    return LocalKafka(spec, progress=_say)


def _known_clusters(settings: Settings, port: int | None = None) -> list[LocalKafka]:
    """Every local cluster that has been started under DP2_HOME (1- and 3-node)."""
    clusters = [_cluster(settings, n, port) for n in (1, 3)]
    return [c for c in clusters if c.spec.root.exists()]


# --- dp2 kafka ------------------------------------------------------------------
def cmd_kafka_start(settings: Settings, args: argparse.Namespace) -> int:
    kafka = _cluster(settings, args.nodes, args.port)
    kafka.start(timeout=args.timeout)
    print(kafka.bootstrap)
    return 0


def cmd_kafka_fetch(settings: Settings, args: argparse.Namespace) -> int:
    libs = ensure_jars(_cluster(settings, 1).spec, progress=_say)
    print(libs)
    return 0


def cmd_kafka_stop(settings: Settings, args: argparse.Namespace) -> int:
    clusters = (
        [_cluster(settings, args.nodes, args.port)]
        if args.nodes
        else _known_clusters(settings, args.port)
    )
    if not any(s.running for c in clusters for s in c.status()):
        _say("no local Kafka is running")
    for kafka in clusters:
        kafka.stop(timeout=args.timeout)
    return 0


def _kafka_report(settings: Settings, port: int | None = None) -> list[dict[str, Any]]:
    report = []
    for kafka in _known_clusters(settings, port):
        nodes = kafka.status()
        if not any(n.running for n in nodes):
            continue
        healthy = all(n.running and n.listening for n in nodes)
        report.append(
            {
                "name": "kafka" if kafka.spec.nodes == 1 else f"kafka-{kafka.spec.nodes}-node",
                "url": f"kafka://{kafka.bootstrap}",
                "health": "up" if healthy else "degraded",
                "version": kafka.spec.kafka_version,
                "nodes": [dataclasses.asdict(n) for n in nodes],
            }
        )
    if settings.kafka_is_external:
        first = settings.kafka_bootstrap.split(",")[0]
        host, _, port_text = first.rpartition(":")
        up = port_is_listening(int(port_text), host)
        report.append(
            {
                "name": "kafka (external)",
                "url": f"kafka://{settings.kafka_bootstrap}",
                "health": "up" if up else "down",
            }
        )
    return report


def cmd_kafka_status(settings: Settings, args: argparse.Namespace) -> int:
    report = _kafka_report(settings, args.port)
    if args.json:
        print(json.dumps(report, indent=2))
    elif not report:
        print("Kafka: not running (start it with: dp2 kafka start)")
    for entry in [] if args.json else report:
        print(f"{entry['name']}: {entry['health']} at {entry['url']}")
        for node in entry.get("nodes", []):
            state = "running" if node["running"] else "stopped"
            print(f"  node {node['node_id']}: {state}, pid {node['pid']}, {node['data_dir']}")
    return 0 if report and all(e["health"] == "up" for e in report) else 1


# --- dp2 up / down / status / run -----------------------------------------------------
def _services_report(settings: Settings) -> list[dict[str, Any]]:
    services = _kafka_report(settings)
    if not services:
        services.append(
            {"name": "kafka", "url": f"kafka://{settings.kafka_bootstrap}", "health": "down"}
        )
    services += [
        {"name": s["name"], "url": s["url"], "health": s["health"], "pid": s["pid"]}
        for s in stack.running_services(settings)
    ]
    return services


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    services = _services_report(settings)
    if args.json:
        print(json.dumps({"services": services}, indent=2))
    else:
        width = max(len(s["name"]) for s in services)
        for s in services:
            print(f"{s['name']:<{width}}  {s['health']:<8}  {s['url']}")
    return 0 if all(s["health"] == "up" for s in services) else 1


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.kafka_is_external:
        _cluster(settings, 1).start()
    demo.ensure_development_pki(settings, _say)
    demo.ensure_default_connectors(settings, _say)
    connector_config = read_config(settings)
    # A receiving connector (an authority's ESDH, say) is its provider's mailbox.
    served = {str(table["provider"]) for table in connector_config.values() if "provider" in table}
    providers = [
        p for p in stack.providers_in_pki(settings) if p != PRINT_PROVIDER and p not in served
    ]
    created = asyncio.run(stack.prepare_topics(settings, providers))
    if created:
        _say(f"created topics: {', '.join(created)}")
    stack.start_processes(
        settings,
        stack.stack_services(
            providers,
            settings.port_base,
            notifier=bool(settings.smtp_host or settings.sms_providers),
            connectors=[
                (name, connector_config[name].get("port")) for name in configured(settings)
            ],
        ),
        _say,
    )
    if args.demo:
        asyncio.run(demo.run_demo(settings, _say))
    cmd_status(settings, argparse.Namespace(json=False))
    if args.detach:
        _say("running in the background; stop everything with: dp2 down")
        return 0
    _say("running; press Ctrl-C to stop everything")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    return cmd_down(settings, args)


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    stack.stop_processes(settings, _say)
    for kafka in _known_clusters(settings):
        kafka.stop()
    return 0


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(stack.run_service(args.service, settings, args.port, args.provider, args.name))
    return 0


def cmd_connectors_list(settings: Settings, args: argparse.Namespace) -> int:
    installed = discover()
    config = read_config(settings)
    rows = [
        {
            "name": name,
            "installed": name in installed,
            "entry_point": installed[name].value if name in installed else None,
            "configured": name in config,
            "runs_with_dp2_up": name in installed
            and name in config
            and bool(config[name].get("enabled", True)),
        }
        for name in sorted({*installed, *config})
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"connectors (configuration: {config_path(settings)})")
    for row in rows:
        state = (
            "runs with dp2 up"
            if row["runs_with_dp2_up"]
            else ("installed, not configured" if row["installed"] else "configured, NOT installed")
        )
        print(f"  {row['name']:<16} {state:<28} {row['entry_point'] or ''}")
    return 0


# --- dp2 contacts / send ------------------------------------------------------------
def cmd_contacts_load(settings: Settings, args: argparse.Namespace) -> int:
    pseudonyms = Pseudonymizer(pseudonym_key(settings.home))
    records = read_contact_file(Path(args.file), pseudonyms)
    asyncio.run(ensure_topics(settings.kafka_bootstrap, TOPICS))
    count = asyncio.run(publish_contacts(settings.kafka_bootstrap, records))
    print(f"loaded {count} contact records into dp2.contacts")
    return 0


async def _show_contact(settings: Settings, ref: str) -> dict[str, Any] | None:
    register = ContactRegister(settings.kafka_bootstrap)
    await register.start()
    try:
        record = register.get(ref)
    finally:
        await register.stop()
    return None if record is None else dataclasses.asdict(record)


def cmd_contacts_show(settings: Settings, args: argparse.Namespace) -> int:
    ref = Pseudonymizer(pseudonym_key(settings.home)).ref(args.type, args.id)
    record = asyncio.run(_show_contact(settings, ref))
    if record is None:
        print(f"no contact record for that {args.type} number (pseudonym {ref})")
        return 1
    print(json.dumps(record, indent=2, default=str))
    return 0


def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    if args.memo:
        return _send_memo(settings, args)
    if not args.to or not args.label:
        raise Dp2Error(
            "dp2 send needs --to and --label, or --memo FILE",
            reason_code="USAGE",
            hint="Give the recipient and title as flags, or a MeMo XML file with --memo.",
        )
    documents = [
        Document(
            Path(path).name,
            mimetypes.guess_type(path)[0] or "application/octet-stream",
            Path(path).read_bytes(),
        )
        for path in args.file
    ]
    receipt = asyncio.run(demo.send_one(settings, args, documents))
    print(receipt.message_uuid)
    return 0


def _send_memo(settings: Settings, args: argparse.Namespace) -> int:
    """``dp2 send --memo FILE``: a MeMo 1.1/1.2 message as an ESDH would post it."""
    try:
        message = memo.parse_and_validate(Path(args.memo).read_bytes(), now=datetime.now(UTC))
    except memo.MemoError as exc:
        _say(f"dp2: error: {args.memo} is not valid MeMo ({len(exc.violations)} problems):")
        for violation in exc.violations:
            _say(f"  {violation.code} at {violation.path}: {violation.message}")
            _say(f"    how to fix: {violation.hint}")
        return 2

    async def send() -> str:
        async with Dp2Client.from_settings(settings, args.identity) as client:
            return (await client.send(message)).message_uuid

    print(asyncio.run(send()))
    return 0


# --- parser -------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dp2",
        description="DP2: open message-broker infrastructure for secure digital post.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    kafka = sub.add_parser("kafka", help="local Kafka broker(s) from the Maven jars")
    ksub = kafka.add_subparsers(dest="kafka_command", required=True, metavar="ACTION")
    fetch = ksub.add_parser("fetch", help="copy the Kafka jars from Maven Central (once)")
    fetch.set_defaults(func=cmd_kafka_fetch)
    start = ksub.add_parser("start", help="fetch (once), format (once) and start Kafka")
    start.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    start.add_argument("--port", type=int, help="first client port (default DP2_KAFKA_PORT)")
    start.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for ready")
    start.set_defaults(func=cmd_kafka_start)
    stop = ksub.add_parser("stop", help="stop local Kafka cleanly (SIGKILL after --timeout)")
    stop.add_argument("--nodes", type=int, choices=(1, 3), help="only this cluster size")
    stop.add_argument("--port", type=int)
    stop.add_argument("--timeout", type=float, default=60.0)
    stop.set_defaults(func=cmd_kafka_stop)
    status = ksub.add_parser("status", help="is local Kafka running, where, with what data")
    status.add_argument("--port", type=int)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_kafka_status)

    up = sub.add_parser("up", help="run the whole stack on the embedded default")
    up.add_argument("--detach", action="store_true", help="return once everything is up")
    up.add_argument("--demo", action="store_true", help="send sample post once it is up")
    up.set_defaults(func=cmd_up)
    run = sub.add_parser("run", help="run one service in the foreground (dp2 up uses this)")
    run.add_argument(
        "service", choices=("tracing", "validator", "router", "mailbox", "notifier", "connector")
    )
    run.add_argument("--port", type=int, default=0, help="HTTP port for /healthz and /metrics")
    run.add_argument("--provider", help="mailbox provider id (for mailbox)")
    run.add_argument("--name", help="connector name (for connector; see dp2 connectors list)")
    run.set_defaults(func=cmd_run)

    conn = sub.add_parser("connectors", help="installed and configured connectors")
    connsub = conn.add_subparsers(dest="connectors_command", required=True, metavar="ACTION")
    clist = connsub.add_parser("list", help="connectors found through the dp2.connectors group")
    clist.add_argument("--json", action="store_true")
    clist.set_defaults(func=cmd_connectors_list)

    contacts = sub.add_parser("contacts", help="the contact register (dp2.contacts)")
    csub = contacts.add_subparsers(dest="contacts_command", required=True, metavar="ACTION")
    load = csub.add_parser("load", help="load a CSV or JSON contact file (ids pseudonymised)")
    load.add_argument("file")
    load.set_defaults(func=cmd_contacts_load)
    show = csub.add_parser("show", help="show the record of a CPR or CVR number")
    show.add_argument("id")
    show.add_argument("--type", choices=("CPR", "CVR"), default="CPR")
    show.set_defaults(func=cmd_contacts_show)

    send = sub.add_parser("send", help="sign, encrypt and submit a message; prints its UUID")
    send.add_argument("--as", dest="identity", required=True, help="PKI identity to sign with")
    send.add_argument("--sender-cvr", help="CVR to send as (default: the identity's own)")
    send.add_argument("--memo", metavar="FILE", help="a MeMo 1.1/1.2 XML file (instead of flags)")
    send.add_argument("--to", help="recipient CPR (10 digits) or CVR (8)")
    send.add_argument("--to-type", choices=("CPR", "CVR"), default="CPR")
    send.add_argument("--label", help="the letter's title")
    send.add_argument("--file", action="append", default=[], help="a document (repeatable)")
    send.add_argument("--notification", help="notification text (160 characters at most)")
    send.add_argument("--not-before", type=date.fromisoformat, help="doNotDeliverUntilDate")
    send.add_argument("--nemsms", action="store_true", help="a NemSMS: --notification only")
    send.set_defaults(func=cmd_send)
    down = sub.add_parser("down", help="stop everything that dp2 up started")
    down.set_defaults(func=cmd_down)
    add_pki_commands(sub)
    add_token_commands(sub)
    add_bench_command(sub)
    add_dashboard_commands(sub)
    add_trace_command(sub)
    st = sub.add_parser("status", help="every service with its URL and health")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_format)
        code: int = args.func(settings, args)
    except Dp2Error as exc:
        _say(f"dp2: error: {exc.reason_code}: {exc.message}")
        if exc.hint:
            _say(f"  how to fix: {exc.hint}")
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
