"""The Kafka backbone of DP2, in rooms by responsibility.

    runtime/    settings, logging, trace context, Kafka clients, the worker loop, the
                service host (/healthz, /metrics), metrics, periodic tasks and
                back-off, the blob store, how stores open SQLite
    security/   signing, sealing, pseudonyms, signed-claims tokens, the development
                PKI (issue) and the trust store (check)
    contacts/   the contact register: records from a file (pure), the Kafka-backed
                register every service reads
    validator/  rules (pure: MeMo and Digital Post limits) + service (dp2.submitted)
    router/     rules (where a letter goes) + service (schedule, release, recall)
    stack/      the composition root: the service registry, the process supervisor,
                the local Kafka runner, the demo
    cli/        ``dp2``, one module per command group, loaded only when chosen
    bench/      the benchmark: never imported by the runtime; ``dp2 bench`` loads it

Imports run one way (tests/unit/test_architecture.py): schemas <- runtime, security
<- contacts, validator, router <- connectors, tracing <- stack, cli, bench.
"""
