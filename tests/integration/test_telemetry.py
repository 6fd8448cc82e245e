"""OpenTelemetry across the hops (issue 17): one trace per letter, exported over OTLP/HTTP.

A real OTLP/HTTP receiver on 127.0.0.1 (aiohttp, decoding the protobuf requests the
exporter sends) stands in for a collector. With the exporter configured the way
``dp2 run`` does it (``OTEL_EXPORTER_OTLP_ENDPOINT``), a letter sent through the SDK
gives a CONSUMER span per hop — validator, router, mailbox — in the trace the
SDK's traceparent started, each the child of the hop before, with the messaging
attributes and no personal data.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from brokers.runtime import telemetry
from connectors.sdk import Document, build_message
from tests.integration.conftest import PROVIDER, REGISTERED_CPR, SENDER_CVR, Stack

pytestmark = pytest.mark.kafka


@pytest.fixture
async def collector() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    spans: list[dict[str, Any]] = []

    async def export(request: web.Request) -> web.Response:
        body = ExportTraceServiceRequest.FromString(await request.read())
        for resource in body.resource_spans:
            service = next(
                a.value.string_value
                for a in resource.resource.attributes
                if a.key == "service.name"
            )
            for scope in resource.scope_spans:
                for span in scope.spans:
                    spans.append(
                        {
                            "service": service,
                            "name": span.name,
                            "kind": span.kind,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                            "attributes": {
                                a.key: a.value.string_value or a.value.int_value
                                for a in span.attributes
                            },
                        }
                    )
        return web.Response(status=200, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", export)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", spans
    finally:
        await runner.cleanup()


async def test_a_letter_is_one_trace_of_linked_spans_over_otlp(
    stack: Stack, collector: tuple[str, list[dict[str, Any]]]
) -> None:
    endpoint, spans = collector
    assert telemetry.configure("test-stack", {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    provider: Any = trace.get_tracer_provider()
    try:
        async with stack.client() as client:
            receipt = await client.send(
                build_message(
                    sender_cvr=SENDER_CVR,
                    sender_label="Aarhus Kommune",
                    recipient_id=REGISTERED_CPR,
                    label="Sporet brev",
                    documents=[Document("brev.txt", "text/plain", b"Hej")],
                )
            )
            await client.wait_for(receipt.message_uuid, {"DELIVERED"})
        trace_id, sdk_span = receipt.traceparent.split("-")[1:3]
        wanted = ["dp2.submitted", "dp2.accepted", f"dp2.deliver.{PROVIDER}"]

        def hops() -> dict[str, dict[str, Any]]:
            return {
                s["attributes"]["messaging.destination.name"]: s
                for s in spans
                if s["trace_id"] == trace_id
            }

        async with asyncio.timeout(30):
            while not set(wanted) <= set(hops()):
                await asyncio.to_thread(provider.force_flush)
                await asyncio.sleep(0.2)
    finally:
        await asyncio.to_thread(provider.shutdown)
    found = hops()
    validator, router, mailbox = (found[topic] for topic in wanted)
    assert validator["parent"] == sdk_span, "the validator's span is the SDK send's child"
    assert router["parent"] == validator["span_id"]
    assert mailbox["parent"] == router["span_id"]
    for span in (validator, router, mailbox):
        assert span["kind"] == 5  # SPAN_KIND_CONSUMER
        assert span["name"] == f"process {span['attributes']['messaging.destination.name']}"
        assert span["attributes"]["messaging.system"] == "kafka"
        assert span["attributes"]["dp2.message_uuid"] == receipt.message_uuid
        assert REGISTERED_CPR not in str(span), "no CPR number in a span"
