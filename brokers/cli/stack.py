"""``dp2 up``, ``dp2 down``, ``dp2 status``, ``dp2 run`` and ``dp2 connectors``: the stack.

``dp2 up`` starts Kafka (unless DP2_KAFKA_BOOTSTRAP names another), makes the
development PKI and the default connectors.toml once, creates the topics and runs
every service as its own process (brokers.stack.supervisor); ``dp2 run`` is what
each of those processes runs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import threading
from typing import Any

from brokers.cli.kafka import (
    cluster,
    kafka_report,
    known_clusters,
    remember_size,
    remembered_size,
)
from brokers.cli.output import say
from brokers.runtime.settings import Settings
from brokers.stack import demo, supervisor
from brokers.stack.registry import SERVICE_KINDS, run_service
from connectors.base import config_path, configured, discover, read_config
from schemas.vocabulary import PRINT_PROVIDER


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    if command == "up":
        parser.add_argument("--detach", action="store_true", help="return once everything is up")
        parser.add_argument("--demo", action="store_true", help="send sample post once it is up")
        parser.add_argument(
            "--nodes",
            type=int,
            choices=(1, 3),
            help="run the embedded Kafka as this many nodes (default: as last time, else 1)",
        )
        parser.add_argument(
            "--instances",
            type=int,
            choices=(1, 2, 3),
            default=1,
            help="processes of each scalable service (validator, router, mailboxes, notifier;"
            " tracing too with DP2_DATABASE_URL)",
        )
        parser.set_defaults(func=cmd_up)
    elif command == "down":
        parser.set_defaults(func=cmd_down)
    elif command == "status":
        parser.add_argument("--json", action="store_true")
        parser.set_defaults(func=cmd_status)
    elif command == "run":
        parser.add_argument("service", choices=SERVICE_KINDS)
        parser.add_argument("--port", type=int, default=0, help="HTTP port for /healthz, /metrics")
        parser.add_argument("--provider", help="mailbox provider id (for mailbox)")
        parser.add_argument(
            "--name", help="connector name (for connector; see dp2 connectors list)"
        )
        parser.set_defaults(func=cmd_run)
    elif command == "connectors":
        sub = parser.add_subparsers(dest="connectors_command", required=True, metavar="ACTION")
        clist = sub.add_parser("list", help="connectors found through the dp2.connectors group")
        clist.add_argument("--json", action="store_true")
        clist.set_defaults(func=cmd_connectors_list)


def _services_report(settings: Settings) -> list[dict[str, Any]]:
    services = kafka_report(settings)
    if not services:
        services.append(
            {"name": "kafka", "url": f"kafka://{settings.kafka_bootstrap}", "health": "down"}
        )
    services += [
        {"name": s["name"], "url": s["url"], "health": s["health"], "pid": s["pid"]}
        for s in supervisor.running_services(settings)
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


def _notifier_env() -> dict[str, str]:
    """Sending to the local capture, the demo's alert appears at once: no digest
    window, unless the user chose one."""
    return {} if "DP2_DIGEST_WINDOW_S" in os.environ else {"DP2_DIGEST_WINDOW_S": "0"}


def _embedded_kafka(settings: Settings, nodes: int | None) -> Settings:
    """Start the embedded cluster ``dp2 up`` runs on, and the settings that reach it.

    Its size is ``--nodes``, else the one last started under DP2_HOME (so ``dp2 up``
    after ``dp2 down`` brings back a 3-node cluster), else 1. A DP2_KAFKA_BOOTSTRAP
    that names exactly a local cluster's nodes is that cluster, not an external one.
    """
    if settings.kafka_is_external:
        named = set(settings.kafka_bootstrap.split(","))
        local = [c for c in known_clusters(settings) if set(c.bootstrap.split(",")) == named]
        if not local:
            return settings  # a cluster someone else runs
        nodes = nodes or local[0].spec.nodes
    nodes = nodes or remembered_size(settings)
    kafka = cluster(settings, nodes)
    kafka.start()
    remember_size(settings, nodes)
    # The services (child processes) reach every node, not only the first.
    os.environ["DP2_KAFKA_BOOTSTRAP"] = kafka.bootstrap
    return dataclasses.replace(settings, kafka_bootstrap=kafka.bootstrap)


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    settings = _embedded_kafka(settings, args.nodes)
    demo.ensure_development_pki(settings, say)
    demo.ensure_default_connectors(settings, say)
    connector_config = read_config(settings)
    # A receiving connector (an authority's ESDH, say) is its provider's mailbox.
    served = {str(table["provider"]) for table in connector_config.values() if "provider" in table}
    # A connector signing as a provider identity (forms, mail) is no mailbox of its own.
    served |= {
        str(table["identity"]).removeprefix("provider-")
        for table in connector_config.values()
        if str(table.get("identity", "")).startswith("provider-")
    }
    providers = [
        p for p in supervisor.providers_in_pki(settings) if p != PRINT_PROVIDER and p not in served
    ]
    created, added, removed = asyncio.run(supervisor.prepare_kafka(settings, providers, say))
    if created:
        say(f"created topics: {', '.join(created)}")
    if added or removed:
        say(f"Kafka ACLs from the deployment: {added} added, {removed} removed (dp2 kafka acls)")
    supervisor.start_processes(
        settings,
        supervisor.stack_services(
            providers,
            settings.port_base,
            # No relay and no SMS provider (the embedded default): capture them locally.
            capture=not (settings.smtp_host or settings.sms_providers),
            notifier_env=_notifier_env(),
            instances=args.instances,
            shared_stores=settings.database_url is not None,
            connectors=[
                (name, connector_config[name].get("port")) for name in configured(settings)
            ],
        ),
        say,
    )
    uuids = asyncio.run(demo.run_demo(settings, say)) if args.demo else []
    cmd_status(settings, argparse.Namespace(json=False))
    urls = {s["name"]: s["url"] for s in supervisor.running_services(settings)}
    if args.demo and {"connector-esdh", "connector-apps", "connector-forms"} <= set(urls):
        print(demo.try_it(settings, urls, uuids[0] if uuids else None), flush=True)
    if args.detach:
        say("running in the background; stop everything with: dp2 down")
        return 0
    say("running; press Ctrl-C to stop everything")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    return cmd_down(settings, args)


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    supervisor.stop_processes(settings, say)
    for kafka in known_clusters(settings):
        kafka.stop()
    return 0


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(run_service(args.service, settings, args.port, args.provider, args.name))
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
