"""The Merkle tree of Certificate Transparency (RFC 9162, section 2.1), pure functions.

Why it exists: the trace must be evidence that outlives DP2 — a municipality shows a
court that a letter was served, with a file anyone checks offline. Every verified
lifecycle event is a leaf of one append-only tree (tracing.evidence); a signed tree
head commits to all of them, an inclusion proof shows one event is in it, and a
consistency proof shows a later head extends an earlier one (so nothing was
rewritten or dropped in between). The same tree amortises signing: a service signs
the root over a batch of its lifecycle events once, and each event carries its
audit path (brokers.security.signing.sign_events).

Hashes (SHA-256): a leaf is ``H(0x00 || data)``, an inner node ``H(0x01 || left ||
right)``; the tree over n leaves splits at the largest power of two below n. The
algorithms follow RFC 9162 2.1.3 (inclusion) and 2.1.4 (consistency), written from
the RFC's description.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import overload

LeafHashes = Callable[[int, int], list[bytes]]  # (start, end) -> leaf hashes [start, end)


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf *hashes* (the hash of the empty tree for none)."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(root(leaves[:k]), root(leaves[k:]))


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]): the audit path of leaf ``index`` in the tree of ``leaves``."""
    n = len(leaves)
    if not 0 <= index < n:
        raise ValueError(f"leaf {index} is not in a tree of {n}")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*inclusion_proof(index, leaves[:k]), root(leaves[k:])]
    return [*inclusion_proof(index - k, leaves[k:]), root(leaves[:k])]


def audit_paths(leaves: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root over leaf hashes ``leaves`` and every leaf's audit path, in O(n log n).

    The same paths as :func:`inclusion_proof` (which recomputes subtrees, O(n) per
    leaf): built bottom-up, where a level's last node without a sibling moves up
    unchanged — that is the tree RFC 9162 splits at the largest power of two."""
    if not leaves:
        raise ValueError("a batch has at least one leaf")
    paths: list[list[bytes]] = [[] for _ in leaves]
    positions = list(range(len(leaves)))  # each leaf's node on the current level
    level = list(leaves)
    while len(level) > 1:
        for leaf, position in enumerate(positions):
            sibling = position ^ 1
            if sibling < len(level):
                paths[leaf].append(level[sibling])
        pairs = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            pairs.append(level[-1])
        level = pairs
        positions = [p >> 1 for p in positions]
    return level[0], paths


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes | None:
    """The root that ``proof`` leads to from leaf hash ``leaf`` at ``index`` of ``size``
    (RFC 9162 2.1.3.2), or None if the proof does not fit a tree of that size."""
    if not 0 <= index < size:
        return None
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn != 0 and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> bool:
    """RFC 9162 2.1.3.2: does ``proof`` put leaf hash ``leaf`` at ``index`` under ``root``?"""
    return root_from_inclusion(leaf, index, size, proof) == expected_root


HASH_SIZE = 32


class Packed(Sequence[bytes]):
    """Leaf hashes packed 32 bytes each in one immutable buffer; a slice shares it.

    What the proofs above take instead of a list of bytes objects: a log of millions
    of leaves costs 32 bytes each, not a Python object each, and the recursive
    proofs' slices cost nothing."""

    __slots__ = ("_buffer", "_length", "_start")

    def __init__(self, buffer: bytes, start: int = 0, length: int | None = None) -> None:
        self._buffer = buffer
        self._start = start
        self._length = len(buffer) // HASH_SIZE - start if length is None else length

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> Packed: ...
    def __getitem__(self, index: int | slice) -> bytes | Packed:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._length)
            if step != 1:
                raise ValueError("packed leaves slice with step 1 only")
            return Packed(self._buffer, self._start + start, max(0, stop - start))
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"leaf {index} is not in {self._length}")
        offset = (self._start + index) * HASH_SIZE
        return self._buffer[offset : offset + HASH_SIZE]


class LeafLog:
    """The leaves of an append-only log with its tree hash kept current.

    Why: the tracing service signs a head over every event it ever logged, every few
    seconds; hashing the whole tree for each head costs time that grows with the log.
    The roots of the perfect subtrees the leaves fill so far (at most log2 n: the
    compact range of RFC 9162) give the root in O(log n), and an append costs O(1)
    hashes amortised, like carrying in a binary counter. The leaves stay (packed) for
    the proofs that receipts and consistency checks need."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._frontier: list[tuple[int, bytes]] = []  # (size, root) of the full subtrees

    def __len__(self) -> int:
        return len(self._data) // HASH_SIZE

    def append(self, leaf: bytes) -> None:
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, not {len(leaf)}")
        self._data += leaf
        size, node = 1, bytes(leaf)
        while self._frontier and self._frontier[-1][0] == size:
            _, left = self._frontier.pop()
            size, node = size * 2, node_hash(left, node)
        self._frontier.append((size, node))

    def root(self) -> bytes:
        """MTH over every leaf: the subtree roots folded from the right."""
        if not self._frontier:
            return hashlib.sha256(b"").digest()
        node = self._frontier[-1][1]
        for _, left in reversed(self._frontier[:-1]):
            node = node_hash(left, node)
        return node

    def prefix(self, size: int) -> Packed:
        """The first ``size`` leaves, as they are now (a copy: later appends do not show)."""
        return Packed(bytes(self._data[: size * HASH_SIZE]))


def consistency_proof(old_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]): shows the tree of the first ``old_size`` leaves is a prefix."""
    n = len(leaves)
    if not 0 < old_size <= n:
        raise ValueError(f"no consistency proof from {old_size} to {n}")
    return _subproof(old_size, leaves, complete=True)


def _subproof(m: int, leaves: Sequence[bytes], *, complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [root(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete=complete), root(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], complete=False), root(leaves[:k])]


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 2.1.4.2: is the tree (new_size, new_root) an extension of (old_size, old_root)?"""
    if old_size == new_size:
        return old_root == new_root and not proof
    if not 0 < old_size < new_size or not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn != 0 and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0
