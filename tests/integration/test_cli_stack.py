"""`dp2 up --demo`, `status`, `send`, `trace` and `down` as real processes, as a user runs them."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from brokers.stack.kafka import free_base_port
from tests.integration.conftest import free_http_base, run_dp2

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_whole_stack_from_the_command_line(tmp_path: Path) -> None:
    """dp2 up --demo delivers sample post; dp2 send and dp2 trace work; dp2 down stops all."""
    env = {
        **os.environ,
        "DP2_HOME": str(tmp_path),
        "DP2_KAFKA_PORT": str(free_base_port()),
        "DP2_PORT_BASE": str(free_http_base(31000)),
        "DP2_LOG_FORMAT": "json",
    }
    env.pop("DP2_KAFKA_BOOTSTRAP", None)

    def dp2(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return run_dp2(env, *args, timeout=timeout)

    # The example connector (examples/folder-connector, installed by `make install`)
    # is configured, not coded in: dp2 up finds it through its entry point.
    outbox, inbox = tmp_path / "outbox", tmp_path / "inbox"
    assert dp2("pki", "init").returncode == 0
    assert dp2("pki", "issue", "provider", "--id", "foldercorp").returncode == 0
    (tmp_path / "connectors.toml").write_text(
        "[connectors.folder]\n"
        'identity = "demo-kommune"\nsender_cvr = "29189846"\nsender_label = "Demo Kommune"\n'
        f'outbox_dir = "{outbox}"\nprovider = "foldercorp"\ninbox_dir = "{inbox}"\n'
    )
    try:
        up = dp2("up", "--detach", "--demo")
        assert up.returncode == 0, up.stderr
        assert "is DELIVERED" in up.stderr and "is SCHEDULED" in up.stderr

        status = dp2("status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        services = {s["name"]: s for s in json.loads(status.stdout)["services"]}
        assert {"kafka", "tracing", "validator", "router", "mailbox-mitpost"} <= set(services)
        assert all(s["health"] == "up" for s in services.values())

        letter = tmp_path / "brev.txt"
        letter.write_text("Kære borger, dette er en prøve.")
        sent = dp2(
            "send",
            "--as",
            "demo-kommune",
            "--to",
            "0101901234",
            "--label",
            "Prøvebrev",
            "--file",
            str(letter),
        )
        assert sent.returncode == 0, sent.stderr
        message_uuid = sent.stdout.strip()

        deadline = time.monotonic() + 60
        while True:
            trace = dp2("trace", message_uuid, "--json")
            doc = json.loads(trace.stdout) if trace.returncode == 0 else {}
            states = [e["state"] for e in doc.get("timeline", [])]
            if "NOTIFIED" in states or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        # The notifier runs on the embedded default too, sending to the local capture.
        assert states[:4] == ["SUBMITTED", "ACCEPTED", "ROUTED", "DELIVERED"], trace.stderr
        assert "NOTIFIED" in states, states
        assert "0101901234" not in trace.stdout, "traces show pseudonyms, never the CPR"

        unknown = dp2("trace", "00000000-0000-4000-8000-000000000000")
        assert unknown.returncode == 1 and "UNKNOWN_MESSAGE" in unknown.stderr

        memo_file = Path(__file__).parent.parent / "data" / "memo" / "minimal.xml"
        from_memo = dp2("send", "--as", "demo-kommune", "--memo", str(memo_file))
        assert from_memo.returncode == 0, from_memo.stderr
        deadline = time.monotonic() + 30
        while dp2("trace", from_memo.stdout.strip()).returncode != 0:
            assert time.monotonic() < deadline, "the MeMo message never reached the trace"
            time.sleep(0.5)
        broken = tmp_path / "broken.xml"
        broken.write_text(memo_file.read_text().replace("<memo:idType>CVR<", "<memo:idType>X<"))
        refused = dp2("send", "--as", "demo-kommune", "--memo", str(broken))
        expected = "MEMO_INVALID_ID_TYPE at MessageHeader/Sender/idType"
        assert refused.returncode == 2 and expected in refused.stderr, refused.stderr

        # A folder of MeMo files: each sent, the invalid one reported, progress on stderr.
        folder = tmp_path / "memo-folder"
        folder.mkdir()
        for name in ("a.xml", "b.xml"):
            assert dp2("demo", "letter", "--out", str(folder / name)).returncode == 0
        (folder / "c.xml").write_text(broken.read_text())
        batch = dp2("send", "--as", "demo-kommune", "--memo", str(folder))
        assert batch.returncode == 2, batch.stderr
        assert len(batch.stdout.split()) == 2, batch.stdout
        assert "sent 2 of 3 files (1 invalid)" in batch.stderr, batch.stderr

        _folder_connector_moves_a_letter(dp2, tmp_path, outbox, inbox)
    finally:
        down = dp2("down")
    assert down.returncode == 0, down.stderr
    after = json.loads(dp2("status", "--json").stdout)["services"]
    assert [s["health"] for s in after] == ["down"], after


def _folder_connector_moves_a_letter(
    dp2: Callable[..., subprocess.CompletedProcess[str]], home: Path, outbox: Path, inbox: Path
) -> None:
    """A letter dropped in the example connector's outbox arrives in its inbox, via Kafka."""
    listed = {c["name"]: c for c in json.loads(dp2("connectors", "list", "--json").stdout)}
    assert listed["folder"]["entry_point"] == "dp2_folder_connector:create"
    assert listed["folder"]["runs_with_dp2_up"]
    services = {s["name"]: s for s in json.loads(dp2("status", "--json").stdout)["services"]}
    assert services["connector-folder"]["health"] == "up"
    assert "mailbox-foldercorp" not in services, "the connector is foldercorp's mailbox"

    register = home / "folder-contacts.json"
    register.write_text(
        json.dumps(
            [
                {
                    "id": "11223344",
                    "idType": "CVR",
                    "status": "REGISTERED",
                    "provider": "foldercorp",
                    "name": "Mappe ApS",
                }
            ]
        )
    )
    assert dp2("contacts", "load", str(register)).returncode == 0
    time.sleep(1)  # the connector's SDK client reads the register as it changes
    (outbox / ".letter.part").write_text(
        json.dumps({"to": "11223344", "toType": "CVR", "label": "Til mappen", "text": "Hej mappe"})
    )
    (outbox / ".letter.part").replace(outbox / "letter.json")

    receipts = outbox / "sent" / "letter.receipts.json"
    deadline = time.monotonic() + 60
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):  # not yet there, or being written
            doc = json.loads(receipts.read_text())
        if "DELIVERED" in [e["state"] for e in doc.get("events", [])]:
            break
        time.sleep(0.5)
    assert "DELIVERED" in [e["state"] for e in doc.get("events", [])], doc
    received = json.loads((inbox / f"{doc['messageUUID']}.json").read_text())
    assert received["label"] == "Til mappen"
    assert received["documents"][0]["text"] == "Hej mappe"
