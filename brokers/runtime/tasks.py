"""Background work with one failure policy: periodic tasks, back-off, clean cancellation.

Why one helper: DP2's loops (releasing scheduled letters, dispatching notifications,
pushing receipts, handing letters to print, forwarding mail, watching folders) must
all fail the same way, or one of them ends silently the first time a store is busy.
The policy, for every :class:`PeriodicTask`:

* an exception from a step is logged with the error (``periodic_task_failed``),
  counted (``dp2_periodic_failures_total{task}`` in the service's registry), and
  the task backs off (capped exponential, :class:`Backoff`) and keeps going;
* while its last step failed, ``health()`` says ``degraded`` (so /healthz and
  ``dp2 status`` show it) and names the error; one good step clears it;
* ``stop()`` cancels and waits, and is harmless twice; ``async with`` works.

:class:`AsyncResource` gives every start/stop class ``async with``;
:func:`cancel_and_wait` is the one teardown of a task.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import structlog

if TYPE_CHECKING:  # the SDK uses this module and must not load prometheus_client
    from brokers.runtime.metrics import ServiceMetrics

log = structlog.get_logger("dp2.tasks")


class AsyncResource(abc.ABC):
    """``async with resource:`` for any class with ``start()`` and ``stop()``."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished; safe on a done task."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class Backoff:
    """Capped exponential back-off: ``first``, then doubling up to ``cap`` seconds."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self._first = first
        self._cap = cap
        self._next = first

    def next(self) -> float:
        """The wait before the next attempt (and doubles the one after)."""
        wait = self._next
        self._next = min(self._next * 2, self._cap)
        return wait

    def reset(self) -> None:
        self._next = self._first


class PeriodicTask(AsyncResource):
    """Runs ``step`` every ``interval_s`` seconds, under the module's failure policy.

    A step that returns ``True`` has more work waiting and runs again at once (a
    queue drained in batches); :meth:`wake` cuts the current wait short (new work
    arrived).
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[Any]],
        interval_s: float,
        *,
        metrics: ServiceMetrics | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self._step = step
        self._interval_s = interval_s
        self._backoff = backoff or Backoff(first=max(interval_s, 0.1))
        self._failures = metrics.periodic_failures if metrics is not None else None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.failures = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self.last_success: float | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"periodic:{self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def wake(self) -> None:
        """Run the next step now instead of at the end of the interval."""
        self._wake.set()

    def health(self) -> dict[str, Any]:
        """``ok``, or ``degraded`` with the error while the last step failed."""
        report: dict[str, Any] = {"task": self.name, "failures": self.failures}
        if self._task is not None and self._task.done():
            report.update(status="failing", last_error="the task ended")
        elif self.consecutive_failures:
            report.update(status="degraded", last_error=self.last_error)
        else:
            report["status"] = "ok"
        return report

    async def run_once(self) -> bool | None:
        """One step under the failure policy: False if it failed, else what it returned."""
        try:
            more = await self._step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the policy: log, count, back off, keep going
            self.failures += 1
            self.consecutive_failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self._failures is not None:
                self._failures.labels(self.name).inc()
            log.warning(
                "periodic_task_failed",
                task=self.name,
                error=self.last_error,
                consecutive=self.consecutive_failures,
            )
            return False
        self.consecutive_failures = 0
        self.last_error = None
        self.last_success = time.time()
        self._backoff.reset()
        return more is True or None

    async def _run(self) -> None:
        while True:
            outcome = await self.run_once()
            if outcome is True:
                await asyncio.sleep(0)  # more work waits: go on, but let others run
                continue
            wait = self._backoff.next() if outcome is False else self._interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()
