"""Traceability: one ordered timeline per message, rebuilt from dp2.lifecycle.

Every service reports each step of a message's life (submitted, accepted, routed,
delivered, read, ...) as a LifecycleEvent on dp2.lifecycle, keyed by message UUID.
This package turns those events into what operators, senders and the ``dp2 trace``
command ask for: the message's timeline in order and its current state.

Kafka is the source of truth. Every store here is a projection: it keeps each event
once by eventId and derives everything else from the events by the rules in
`tracing.lifecycle`, never from arrival order. So a store can be deleted and rebuilt
by replaying dp2.lifecycle, and late, repeated or reordered events give the same
answer.

    lifecycle  the state machine shared by every service and the dashboard (pure)
    store      the TraceStore seam and its SQLite implementation
    store_postgres   the TraceStore in PostgreSQL (DP2_DATABASE_URL), for several instances
    api        TraceService (ingest, metrics, logs) and its HTTP API
    service    the tracing service: workers, API and dashboard in one process
    client     what ``dp2 trace UUID [--json] [--follow]`` calls (brokers.cli.trace)
    access, dashboard, deadletters, stats   the operators' dashboard

W3C trace context is carried by every service, so it lives in brokers.runtime.context.
"""
