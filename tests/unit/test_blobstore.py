"""Blob stores: one contract for every implementation, plus the file store's own promises."""

import hashlib
from pathlib import Path

import pytest

from brokers.runtime.blobstore import BlobMissingError, BlobStore, FileBlobStore, MemoryBlobStore


class BlobStoreContract:
    """What brokers.security relies on; subclasses provide the `store` fixture."""

    def test_put_then_get_returns_the_bytes(self, store: BlobStore) -> None:
        """A blob reads back exactly as it was stored."""
        data = b"ciphertext \x00\xff" * 100
        assert store.get(store.put(data)) == data

    def test_ref_is_the_sha256_content_address(self, store: BlobStore) -> None:
        """The reference is sha256:<hex> of the stored bytes."""
        data = b"some bytes"
        assert store.put(data) == "sha256:" + hashlib.sha256(data).hexdigest()

    def test_put_is_idempotent(self, store: BlobStore) -> None:
        """Storing the same bytes twice gives the same reference and the same bytes."""
        first, second = store.put(b"twice"), store.put(b"twice")
        assert first == second
        assert store.get(first) == b"twice"

    def test_empty_blob_round_trips(self, store: BlobStore) -> None:
        """Zero bytes are a valid blob."""
        assert store.get(store.put(b"")) == b""

    def test_unknown_ref_is_blob_missing(self, store: BlobStore) -> None:
        """A well-formed reference that was never stored raises BLOB_MISSING."""
        with pytest.raises(BlobMissingError) as caught:
            store.get("sha256:" + "0" * 64)
        assert caught.value.reason_code == "BLOB_MISSING"

    @pytest.mark.parametrize(
        "ref", ["", "sha256:", "sha256:../../etc/passwd", "md5:" + "0" * 32, "SHA256:" + "a" * 64]
    )
    def test_malformed_ref_is_blob_missing(self, store: BlobStore, ref: str) -> None:
        """Anything but sha256:<64 lowercase hex> raises BLOB_MISSING, never touches a path."""
        with pytest.raises(BlobMissingError):
            store.get(ref)


class TestMemoryBlobStore(BlobStoreContract):
    """The in-memory store keeps the contract."""

    @pytest.fixture
    def store(self) -> BlobStore:
        """A fresh in-memory store."""
        return MemoryBlobStore()


class TestFileBlobStore(BlobStoreContract):
    """The filesystem store keeps the contract and its layout promises."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> FileBlobStore:
        """A file store in a fresh folder."""
        return FileBlobStore(tmp_path / "blobs")

    def test_blobs_fan_out_by_first_two_hex_digits(self, store: FileBlobStore) -> None:
        """sha256:abcd... lives in root/ab/abcd..."""
        ref = store.put(b"fan out")
        digest = ref.removeprefix("sha256:")
        assert (store.root / digest[:2] / digest).read_bytes() == b"fan out"

    def test_no_temporary_files_are_left(self, store: FileBlobStore) -> None:
        """After put, the folder holds only the blob itself."""
        ref = store.put(b"atomic")
        assert [p.name for p in store.path_of(ref).parent.iterdir()] == [
            ref.removeprefix("sha256:")
        ]

    def test_put_repairs_a_truncated_blob(self, store: FileBlobStore) -> None:
        """A blob damaged on disk to another size is rewritten by the next put."""
        ref = store.put(b"complete blob")
        store.path_of(ref).write_bytes(b"compl")
        store.put(b"complete blob")
        assert store.get(ref) == b"complete blob"

    def test_a_second_store_on_the_same_root_sees_the_blob(
        self, store: FileBlobStore, tmp_path: Path
    ) -> None:
        """Services sharing DP2_HOME/blobs read each other's blobs."""
        ref = store.put(b"shared")
        assert FileBlobStore(store.root).get(ref) == b"shared"
