"""brokers.runtime.tasks: one failure policy for every background loop."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from brokers.runtime.metrics import ServiceMetrics
from brokers.runtime.tasks import Backoff, PeriodicTask


async def test_a_failing_step_is_logged_counted_degraded_and_the_loop_goes_on() -> None:
    """A step that raises is logged with its error, counted, shows 'degraded', and the
    next step still runs; one good step makes the task 'ok' again."""
    registry = CollectorRegistry()
    calls: list[int] = []
    recovered = asyncio.Event()

    async def step() -> None:
        calls.append(len(calls))
        if len(calls) <= 2:
            raise OSError("the store is busy")
        recovered.set()

    task = PeriodicTask(
        "release", step, 0.01, metrics=ServiceMetrics(registry), backoff=Backoff(0.01, 0.02)
    )
    with capture_logs() as logs:
        async with task:
            async with asyncio.timeout(5):
                while task.failures == 0:
                    await asyncio.sleep(0.001)
            assert task.health()["status"] == "degraded"
            assert "the store is busy" in task.health()["last_error"]
            async with asyncio.timeout(5):
                await recovered.wait()
            assert task.health() == {"task": "release", "failures": 2, "status": "ok"}
    failures = [e for e in logs if e["event"] == "periodic_task_failed"]
    assert [e["error"] for e in failures] == ["OSError: the store is busy"] * 2
    assert registry.get_sample_value("dp2_periodic_failures_total", {"task": "release"}) == 2


async def test_stop_twice_is_harmless_and_wake_runs_the_next_step_now() -> None:
    """wake() cuts an hour's wait short; stop() twice (and before start) does nothing."""
    ran = asyncio.Event()
    count = 0

    async def step() -> None:
        nonlocal count
        count += 1
        if count == 2:
            ran.set()

    task = PeriodicTask("wake", step, 3600.0)
    await task.stop()
    await task.start()
    await task.start()  # a second start does not start a second loop
    async with asyncio.timeout(5):
        while count < 1:
            await asyncio.sleep(0.001)
    task.wake()
    async with asyncio.timeout(5):
        await ran.wait()
    await task.stop()
    await task.stop()
    assert count == 2


async def test_a_step_with_more_work_runs_again_at_once() -> None:
    """A step returning True (a batch drained, more waiting) is repeated without waiting."""
    batches = [True, True, None]

    async def step() -> bool | None:
        return batches.pop(0) if batches else None

    async with PeriodicTask("drain", step, 3600.0):
        async with asyncio.timeout(5):
            while batches:
                await asyncio.sleep(0.001)


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    """0.5, 1, 2, ... capped; reset() starts again from the first wait."""
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5
