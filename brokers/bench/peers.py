"""The local SMTP server and HTTP SMS provider the notifier under test talks to.

Why it exists: the benchmark measures DP2, not a mail relay or an SMS gateway, so it
brings stand-ins that accept and count everything. They run in a child process of
their own so that their CPU shows as ``peers`` and is not charged to the services or
to the load generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
from multiprocessing.connection import Connection
from typing import Any

from brokers.bench.config import BenchError
from brokers.stack.kafka import port_is_free


# --- the SMTP server and SMS provider, in a child process ---------------------------------
class _CountingSmtp:
    """aiosmtpd handler that accepts and counts every message."""

    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 OK"


def _peers_main(conn: Connection, smtp_port: int) -> None:
    """Entry of the peers process: serve SMTP and SMS until told to stop."""
    asyncio.run(_serve_peers(conn, smtp_port))


async def _serve_peers(conn: Connection, smtp_port: int) -> None:
    from aiohttp import web  # noqa: PLC0415 - only the child needs the servers
    from aiosmtpd.controller import Controller  # noqa: PLC0415

    smtp = _CountingSmtp()
    controller = Controller(smtp, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    sms = [0]

    async def send_sms(request: web.Request) -> web.Response:
        await request.read()
        sms[0] += 1
        return web.json_response({"status": "queued"})

    app = web.Application()
    app.router.add_post("/sms", send_sms)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    conn.send({"sms_url": f"http://127.0.0.1:{runner.addresses[0][1]}/sms"})
    try:
        while await asyncio.to_thread(conn.recv) == "counts":
            conn.send({"emails": smtp.count, "sms": sms[0]})
    except EOFError:
        pass  # the bench went away
    finally:
        await runner.cleanup()
        controller.stop()


class Peers:
    """The notification peers' child process (so their CPU is not the services')."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.smtp_port = _free_port()
        self._conn, child = context.Pipe()
        self.process = context.Process(
            target=_peers_main, args=(child, self.smtp_port), name="dp2-bench-peers", daemon=True
        )
        self.process.start()
        child.close()
        if not self._conn.poll(60):
            self.stop()
            raise BenchError("the SMTP/SMS peers did not start within 60 s")
        self.sms_url: str = self._conn.recv()["sms_url"]

    @property
    def pid(self) -> int:
        assert self.process.pid is not None  # noqa: S101 - started in __init__
        return self.process.pid

    def counts(self) -> dict[str, int]:
        with contextlib.suppress(OSError, EOFError):
            self._conn.send("counts")
            if self._conn.poll(10):
                counts: dict[str, int] = self._conn.recv()
                return counts
        return {}

    def stop(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self._conn.send("stop")
        self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self._conn.close()


def _free_port() -> int:
    for _ in range(200):
        port = 20000 + int.from_bytes(os.urandom(2), "big") % 40000
        if port_is_free(port):
            return port
    raise BenchError("no free TCP port on 127.0.0.1")
