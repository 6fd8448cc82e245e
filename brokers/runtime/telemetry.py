"""OpenTelemetry spans for each hop of a message, linked by the traceparent DP2 carries.

Why it exists: on a cluster a letter crosses several processes (SDK, validator,
router, a mailbox, the notifier), each possibly in several instances; an operator
following one slow letter needs the hops as one trace. DP2 already writes a W3C
``traceparent`` on every record (brokers.runtime.context); this module turns each
record a worker handles into a CONSUMER span named ``process <topic>`` whose parent
is that traceparent, with the messaging semantic conventions' attributes
(``messaging.system=kafka``, destination, partition, offset, consumer group,
``messaging.operation.type=process``) and DP2's message UUID. The worker then writes
the span's own context as the next hop's traceparent, so the next service's span is
its child.

Export is the standard OpenTelemetry switch: with ``OTEL_EXPORTER_OTLP_ENDPOINT``
(or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set, :func:`configure` installs a tracer
provider that batches spans to that OTLP/HTTP endpoint (``OTEL_SERVICE_NAME``
defaults to ``dp2-<service>``); without it nothing is installed and the API's no-op
tracer costs a few hundred nanoseconds per record. Spans carry no CPR number,
personal data or content: topic, partition, offset, group and the message UUID.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from aiokafka import ConsumerRecord
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from brokers.runtime import context

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACER = trace.get_tracer("dp2")  # a proxy: the real provider once configure() ran


def configure(service: str, env: Mapping[str, str] | None = None) -> bool:
    """Install the OTLP exporter for this process if the environment asks for one."""
    env = os.environ if env is None else env
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint:
        return False
    # Imported only when exporting: a process that does not pays nothing for them.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    traces_url = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
        endpoint.rstrip("/") + "/v1/traces"
    )
    name = env.get("OTEL_SERVICE_NAME") or f"dp2-{service}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url)))
    trace.set_tracer_provider(provider)
    return True


def process_span(
    record: ConsumerRecord[bytes, bytes], group: str, message_uuid: str | None
) -> Span:
    """A started CONSUMER span for handling ``record``; the caller ends it."""
    parent = context.from_headers(record.headers)
    carrier = {"traceparent": parent} if parent else {}
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
        "messaging.consumer.group.name": group,
    }
    if message_uuid:
        attributes["dp2.message_uuid"] = message_uuid
    return _TRACER.start_span(
        f"process {record.topic}",
        context=_PROPAGATOR.extract(carrier),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    )


def traceparent_of(span: Span) -> str | None:
    """The W3C traceparent naming ``span`` as the parent, if it is a real (recorded) one."""
    span_context = span.get_span_context()
    if not span.is_recording() or not span_context.is_valid:
        return None
    flags = int(span_context.trace_flags)
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{flags:02x}"
