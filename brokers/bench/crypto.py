"""Micro-benchmark of the per-message cryptography: ``python -m brokers.bench.crypto``.

Why it exists: DESIGN.md lets verification cost decide the default signature
algorithm, and the later batch-signing and cached-key-agreement work needs a
baseline. It times, on one core with ``time.perf_counter`` and the best of
several rounds (the least disturbed run): sign and verify of a realistic signing
input per algorithm, sealing and opening an envelope with a 1 KB document, and
unwrapping its content key (ECDH + HKDF + AES key unwrap, the public-key part of
opening), and a lifecycle event's signature and its check as DP2's services make
them (ECDSA P-256): alone, and as one of a batch of 64 signed under one hash tree
(signing.sign_events; the reader keeps the roots it checked). Figures are
microseconds per operation (per event for the batch figures).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import x25519

from brokers.runtime.blobstore import MemoryBlobStore
from brokers.security import sealing, signing
from brokers.security.pki import Pki
from brokers.security.pseudonyms import Pseudonymizer
from schemas.models import (
    ContentData,
    CPRdata,
    Envelope,
    File,
    IdType,
    InlineContent,
    LifecycleEvent,
    LifecycleState,
    MainDocument,
    MessageBody,
    MessageHeader,
    MessageType,
    Recipient,
    Sender,
)

ROUNDS = 5


def sample_envelope(document_size: int = 1024) -> Envelope:
    """A typical authority-to-citizen letter with one document of `document_size` bytes."""
    now = datetime(2025, 1, 1, tzinfo=UTC)
    header = MessageHeader(
        messageType=MessageType.DIGITALPOST,
        messageUUID="5a0c6d1e-8f2b-4b7e-9a1c-3d2e1f0a9b8c",
        messageID="ESDH-2025-000123",
        label="Afgørelse om boligstøtte",
        notification="Du har fået post fra Aarhus Kommune",
        sender=Sender(senderID="55133018", idType=IdType.CVR, label="Aarhus Kommune"),
        recipient=Recipient(recipientID="0101701234", idType=IdType.CPR, label="Jens Hansen"),
        contentData=ContentData(cprData=CPRdata(cprNumber="0101701234", name="Jens Hansen")),
    )
    document = File(
        encodingFormat="application/pdf",
        filename="afgoerelse.pdf",
        language="da",
        content=InlineContent(
            data=(bytes(range(256)) * (document_size // 256 + 1))[:document_size]
        ),
    )
    body = MessageBody(createdDateTime=now, mainDocument=MainDocument(file=[document]))
    return Envelope(memoVersion="1.2", header=header, body=body)


def best_of(operation: Callable[[], object], iterations: int, rounds: int = ROUNDS) -> float:
    """Microseconds per call of `operation`: the fastest of `rounds` runs of `iterations`."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(iterations):
            operation()
        best = min(best, time.perf_counter() - start)
    return best / iterations * 1e6


def measure(iterations: int = 300) -> dict[str, dict[str, float]]:
    """{"sign"|"verify": {algorithm: us}, "envelope": {step: us}} over a sample envelope."""
    plain = sample_envelope()
    provider = x25519.X25519PrivateKey.generate()
    pseudonyms = Pseudonymizer(b"bench-pseudonym-key-32-bytes-000")
    blobs = MemoryBlobStore()
    sealed = sealing.seal_envelope(plain, provider.public_key(), "bench", pseudonyms, blobs)
    data = signing.signing_input(sealed)
    results: dict[str, dict[str, float]] = {"sign": {}, "verify": {}, "envelope": {}}
    for algorithm in signing.SIGNATURE_ALGORITHMS:
        sign, verify = _signature_steps(signing.generate_signing_key(algorithm), data)
        results["sign"][algorithm] = best_of(sign, iterations)
        results["verify"][algorithm] = best_of(verify, iterations)
    encryption = sealed.encryption
    assert encryption is not None  # noqa: S101 - seal_envelope always sets it
    uuid = sealed.header.messageUUID
    results["envelope"] = {
        "signing input (Avro encode)": best_of(lambda: signing.signing_input(sealed), iterations),
        "seal 1 KB": best_of(
            lambda: sealing.seal_envelope(plain, provider.public_key(), "bench", pseudonyms, blobs),
            iterations,
        ),
        "open 1 KB": best_of(lambda: sealing.open_envelope(sealed, provider, blobs), iterations),
        "X25519 unwrap": best_of(
            lambda: sealing.unwrap_content_key(encryption, provider, uuid), iterations
        ),
        "pseudonym": best_of(lambda: pseudonyms.ref("CPR", "0101701234"), iterations),
    }
    results["envelope"]["signed input bytes"] = float(len(data))
    results["events"] = _event_figures(max(1, iterations // EVENT_BATCH))
    return results


EVENT_BATCH = 64


def _event_figures(batches: int) -> dict[str, float]:
    """Per event: sign and verify alone, and within a batch of EVENT_BATCH."""
    with tempfile.TemporaryDirectory(prefix="dp2-bench-crypto-") as root:
        pki = Pki(Path(root))
        pki.init(signing.ECDSA_P256_SHA256)
        service = pki.issue_service("dp2-validator")  # services sign with ECDSA P-256
    key, cert, fingerprint = service.private_key, service.certificate, service.fingerprint
    events = [
        LifecycleEvent(
            eventId=f"00000000-0000-4000-8000-{i:012d}",
            messageUUID=f"5a0c6d1e-8f2b-4b7e-9a1c-{i:012d}",
            state=LifecycleState.ACCEPTED,
            actor="validator",
            occurredAt=datetime(2025, 1, 1, tzinfo=UTC),
            sequence=i,
            senderID="55133018",
        )
        for i in range(EVENT_BATCH)
    ]
    alone = [signing.sign_event(e, key, fingerprint) for e in events]
    together = signing.sign_events(events, key, fingerprint)

    def verify_all(signed: list[LifecycleEvent], roots: signing.VerifiedRoots | None) -> None:
        for event in signed:
            signing.verify_event(event, cert, fingerprint=fingerprint, roots=roots)

    per_event = 1 / EVENT_BATCH
    return {
        "event sign, alone": per_event
        * best_of(lambda: [signing.sign_event(e, key, fingerprint) for e in events], batches),
        "event sign, batch of 64": per_event
        * best_of(lambda: signing.sign_events(events, key, fingerprint), batches),
        "event verify, alone": per_event * best_of(lambda: verify_all(alone, None), batches),
        "event verify, batch of 64": per_event
        * best_of(lambda: verify_all(together, signing.VerifiedRoots()), batches),
    }


def _signature_steps(
    key: signing.SigningKey, data: bytes
) -> tuple[Callable[[], object], Callable[[], object]]:
    """(sign, verify) of `data` with `key`, as zero-argument calls to time."""
    signature = signing.sign_bytes(key, data)
    public = key.public_key()

    def sign() -> bytes:
        return signing.sign_bytes(key, data)

    def verify() -> None:
        signing.verify_bytes(public, signature, data)

    return sign, verify


def render(results: dict[str, dict[str, float]]) -> str:
    """The results as a plain-text table."""
    lines = [f"{'algorithm':<20}{'sign us':>10}{'verify us':>12}"]
    for algorithm in results["sign"]:
        sign, verify = results["sign"][algorithm], results["verify"][algorithm]
        lines.append(f"{algorithm:<20}{sign:>10.1f}{verify:>12.1f}")
    lines.append("")
    for step, value in [*results["envelope"].items(), *results.get("events", {}).items()]:
        unit = "bytes" if step.endswith("bytes") else "us"
        lines.append(f"{step:<30}{value:>10.1f} {unit}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()
    print(render(measure(args.iterations)))


if __name__ == "__main__":
    main()
