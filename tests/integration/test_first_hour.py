"""The first hour (issue 19): ``dp2 up --demo`` prints a "try it" list, and every step works.

A fresh DP2_HOME, real processes as ``make run`` starts them, and the list's commands
run exactly as printed — one bash session, in order — with each step's promised
outcome checked: DELIVERED over HTTP and over SF1601, the letter read through the
mailbox-app API, the reply and a form JOURNALED in the demo case system's folder,
the SMS at the local capture, the receipt verified offline, and the notification on
the dashboard's Notifications page in the real browser the dashboard tests use.
Then the commands' manners: ``| head`` and Ctrl-C end without a traceback.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from brokers.stack.kafka import free_base_port
from tests.integration.conftest import free_http_base, run_dp2
from tests.integration.test_dashboard import ARTIFACTS, CHROMIUM

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

MARK = "@@step"


def _steps(printed: str) -> list[tuple[str, list[str]]]:
    """(title, commands) of the printed list, in order."""
    steps: list[tuple[str, list[str]]] = []
    listing = printed.split("Try it", 1)[1]
    for line in listing.splitlines():
        title = re.match(r"\s*\d+\. (.*)", line)
        if title:
            steps.append((title.group(1), []))
        elif line.startswith("    $ "):
            steps[-1][1].append(line.removeprefix("    $ "))
    return steps


def test_the_printed_try_it_list_works_step_by_step(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DP2_HOME": str(tmp_path / "home"),
        "DP2_KAFKA_PORT": str(free_base_port()),
        "DP2_PORT_BASE": str(free_http_base(24000)),
    }
    for name in ("DP2_KAFKA_BOOTSTRAP", "DP2_SMTP_HOST", "DP2_SMS_PROVIDERS", "DP2_PKI"):
        env.pop(name, None)
    # The commands find dp2 through the PATH line the list prints, not through ours.
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"

    def dp2(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_dp2(env, *args, timeout=timeout)

    try:
        up = dp2("up", "--detach", "--demo")
        assert up.returncode == 0, up.stderr
        steps = _steps(up.stdout)
        assert len(steps) >= 9, up.stdout
        script = ["set -e"]
        for number, (_, commands) in enumerate(steps, start=1):
            script += [f"echo {MARK}{number}", *commands]
        run = subprocess.run(
            ["/bin/bash", "-c", "\n".join(script)],
            env=env,
            cwd=tmp_path,  # as printed: nothing depends on the checkout being the cwd
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        outputs = dict(
            zip(
                [title for title, _ in steps],
                run.stdout.split(f"{MARK}")[1:],
                strict=True,
            )
        )
        said = {title.split(" (")[0].split(";")[0]: text for title, text in outputs.items()}
        by_word = {
            word: next(text for title, text in said.items() if word in title)
            for word in ("MeMo letter", "delivered", "SF1601", "Read", "Reply", "form", "SMS")
        }
        assert '"status": "SUBMITTED"' in by_word["MeMo letter"]
        assert "DELIVERED" in by_word["delivered"]
        assert "<Result>true</Result>" in by_word["SF1601"] and "DELIVERED" in by_word["SF1601"]
        assert '"replyAllowed": true' in by_word["Read"]
        assert "JOURNALED" in by_word["Reply"] and "SAG-2026-0042" in by_word["Reply"]
        assert "JOURNALED" in by_word["form"]
        sms = by_word["SMS"]
        assert "SMS" in sms and "+4520000001" in sms and "Demo Kommune" in sms
        receipt = next(text for title, text in said.items() if "receipt" in title)
        assert "holds:" in receipt and "signed by provider:mitpost" in receipt

        # The last step: the dashboard, with the login the list printed.
        title = steps[-1][0]
        login = re.search(r"log in as (\S+) / (\S+)", title)
        assert login, title
        url = steps[-1][1][0].removeprefix("echo ")
        asyncio.run(_notifications_on_the_dashboard(url, login.group(1), login.group(2)))

        letter = re.search(r"dp2 trace ([0-9a-f-]{36})", up.stdout)
        waiting = re.search(r"demo: ([0-9a-f-]{36}) is SCHEDULED", up.stderr)
        assert letter and waiting, up.stdout + up.stderr
        _pipes_and_ctrl_c_end_quietly(env, letter.group(1), waiting.group(1))
    finally:
        down = dp2("down")
    assert down.returncode == 0, down.stderr


async def _notifications_on_the_dashboard(url: str, user: str, password: str) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            await page.goto(url)
            assert page.url.endswith("/dashboard/login"), "the dashboard asks for a login"
            await page.fill("input[name=user]", user)
            await page.fill("input[name=password]", password)
            await page.click("button[type=submit]")
            await page.wait_for_url("**/dashboard/")
            await page.goto(url)
            table = await page.inner_text("#notifications")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "first-hour-notifications.png"))
        finally:
            await browser.close()
    assert "SMS" in table and "EMAIL" in table
    assert "Demo Kommune" in table, "the text the citizen got"
    assert "psn-" in table, "the recipient as a pseudonym"
    assert "+4520000001" not in table and "karen.jensen" not in table, "never the address"


def _pipes_and_ctrl_c_end_quietly(env: dict[str, str], letter: str, waiting: str) -> None:
    """``| head`` closes the pipe early; Ctrl-C stops a follow of a letter that waits
    for its date (it would follow for 30 days): neither shows a traceback."""
    dp2 = [sys.executable, "-m", "brokers.cli"]
    piped = subprocess.run(
        ["/bin/bash", "-c", f"{' '.join(dp2)} trace {letter} --json | head -n 2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert piped.returncode == 0 and piped.stdout.count("\n") == 2, piped
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr, piped.stderr

    follower = subprocess.Popen(
        [*dp2, "trace", waiting, "--follow"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it, also when the suite itself was started in
        # the background: a shell's `&` ignores SIGINT for its children, and an
        # ignored SIGINT stays ignored across exec (the follow would never end).
        preexec_fn=_sigint_by_default,  # noqa: PLW1509 - before any thread of the child
    )
    try:
        time.sleep(3.0)  # it prints the timeline so far, then waits for more
        follower.send_signal(signal.SIGINT)
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:  # a failed test leaves no process or pipe behind
            follower.kill()
            follower.communicate()
    assert follower.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "SCHEDULED" in out


def _sigint_by_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
