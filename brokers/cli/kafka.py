"""``dp2 kafka``: the local Kafka broker(s) from the Maven jars — fetch, start, stop, status —
and ``dp2 kafka acls``: the ACLs that follow from the deployment (brokers.stack.access).

Also the cluster helpers ``dp2 up``, ``dp2 down`` and ``dp2 status`` share.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from brokers.cli.output import say
from brokers.runtime.settings import Settings
from brokers.stack.kafka import (
    ClusterSpec,
    LocalKafka,
    ensure_jars,
    port_is_listening,
    recorded_base_port,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    ksub = parser.add_subparsers(dest="kafka_command", required=True, metavar="ACTION")
    fetch = ksub.add_parser("fetch", help="copy the Kafka jars from Maven Central (once)")
    fetch.set_defaults(func=cmd_kafka_fetch)
    start = ksub.add_parser("start", help="fetch (once), format (once) and start Kafka")
    start.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    start.add_argument("--port", type=int, help="first client port (default DP2_KAFKA_PORT)")
    start.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for ready")
    start.set_defaults(func=cmd_kafka_start)
    acls = ksub.add_parser(
        "acls", help="the ACLs that follow from the PKI and connectors.toml (--apply: set them)"
    )
    acls.add_argument("--apply", action="store_true", help="make the cluster's ACLs exactly these")
    acls.add_argument("--live", action="store_true", help="show what the cluster holds instead")
    acls.add_argument("--json", action="store_true")
    acls.set_defaults(func=cmd_kafka_acls)
    stop = ksub.add_parser("stop", help="stop local Kafka cleanly (SIGKILL after --timeout)")
    stop.add_argument("--nodes", type=int, choices=(1, 3), help="only this cluster size")
    stop.add_argument("--port", type=int)
    stop.add_argument("--timeout", type=float, default=60.0)
    stop.set_defaults(func=cmd_kafka_stop)
    status = ksub.add_parser("status", help="is local Kafka running, where, with what data")
    status.add_argument("--port", type=int)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_kafka_status)


def cluster(settings: Settings, nodes: int, port: int | None = None) -> LocalKafka:
    """The local cluster of this size; its port: --port, else as last started, else settings."""
    root = settings.home / "kafka" / f"{nodes}-node"
    spec = ClusterSpec(
        root=root,
        nodes=nodes,
        base_port=port or recorded_base_port(root) or settings.kafka_port,
        heap_mb=settings.kafka_heap_mb,
        libs=settings.kafka_libs,
        deploy_dir=settings.kafka_deploy_dir,
        pki_dir=settings.pki_dir,
    )
    return LocalKafka(spec, progress=say)


def known_clusters(settings: Settings, port: int | None = None) -> list[LocalKafka]:
    """Every local cluster that has been started under DP2_HOME (1- and 3-node)."""
    clusters = [cluster(settings, n, port) for n in (1, 3)]
    return [c for c in clusters if c.spec.root.exists()]


def cmd_kafka_start(settings: Settings, args: argparse.Namespace) -> int:
    kafka = cluster(settings, args.nodes, args.port)
    kafka.start(timeout=args.timeout)
    remember_size(settings, args.nodes)
    print(kafka.bootstrap)
    return 0


def remember_size(settings: Settings, nodes: int) -> None:
    """The size of the cluster last started here: what ``dp2 up`` starts next time."""
    path = settings.home / "kafka" / "nodes"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{nodes}\n")


def remembered_size(settings: Settings) -> int:
    path = settings.home / "kafka" / "nodes"
    recorded = path.read_text().strip() if path.exists() else ""
    return int(recorded) if recorded in {"1", "3"} else 1


def cmd_kafka_fetch(settings: Settings, args: argparse.Namespace) -> int:
    libs = ensure_jars(cluster(settings, 1).spec, progress=say)
    print(libs)
    return 0


def cmd_kafka_acls(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415 - only this command talks to Kafka's admin API

    from brokers.runtime.kafka import describe_acls  # noqa: PLC0415
    from brokers.security.pki import Pki  # noqa: PLC0415
    from brokers.stack.access import ADMIN_IDENTITY, acl_matrix, apply  # noqa: PLC0415
    from connectors.base import read_config  # noqa: PLC0415

    admin = settings.kafka_as(ADMIN_IDENTITY)
    if args.live:
        bindings = asyncio.run(describe_acls(admin))
    else:
        bindings = acl_matrix(Pki(settings.pki_dir), read_config(settings))
    if args.apply:
        added, removed = asyncio.run(apply(admin, bindings))
        say(f"applied {len(bindings)} ACLs: {added} added, {removed} removed")
    rows = [b.as_row() for b in bindings]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    by_principal: dict[str, list[str]] = {}
    for row in rows:
        star = "*" if row["pattern"] == "prefixed" else ""
        by_principal.setdefault(row["principal"], []).append(
            f"{row['operation']} {row['resource']} {row['name']}{star}"
        )
    for principal, rights in by_principal.items():
        print(principal)
        for right in rights:
            print(f"  {right}")
    return 0


def cmd_kafka_stop(settings: Settings, args: argparse.Namespace) -> int:
    clusters = (
        [cluster(settings, args.nodes, args.port)]
        if args.nodes
        else known_clusters(settings, args.port)
    )
    if not any(s.running for c in clusters for s in c.status()):
        say("no local Kafka is running")
    for kafka in clusters:
        kafka.stop(timeout=args.timeout)
    return 0


def kafka_report(settings: Settings, port: int | None = None) -> list[dict[str, Any]]:
    report = []
    for kafka in known_clusters(settings, port):
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
    report = kafka_report(settings, args.port)
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
