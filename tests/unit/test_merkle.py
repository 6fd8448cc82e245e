"""brokers.security.merkle: RFC 9162's tree hash, inclusion and consistency proofs."""

from __future__ import annotations

import hashlib

import pytest

from brokers.security import merkle


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(f"event {i}".encode()) for i in range(n)]


def test_the_tree_hash_follows_rfc_9162() -> None:
    """Empty, one leaf and three leaves hash as section 2.1.1 defines (0x00 leaf, 0x01 node)."""
    assert merkle.root([]) == hashlib.sha256(b"").digest()
    one = merkle.leaf_hash(b"a")
    assert one == hashlib.sha256(b"\x00a").digest()
    assert merkle.root([one]) == one
    a, b, c = (merkle.leaf_hash(x) for x in (b"a", b"b", b"c"))
    assert merkle.root([a, b, c]) == merkle.node_hash(merkle.node_hash(a, b), c)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 31, 32, 33])
def test_every_leaf_has_an_inclusion_proof_and_no_other_leaf_fits_it(size: int) -> None:
    """Each leaf's audit path leads to the root; a changed leaf or index does not."""
    leaves = _leaves(size)
    root = merkle.root(leaves)
    for index, leaf in enumerate(leaves):
        proof = merkle.inclusion_proof(index, leaves)
        assert merkle.verify_inclusion(leaf, index, size, proof, root)
        assert not merkle.verify_inclusion(merkle.leaf_hash(b"forged"), index, size, proof, root)
        if size > 1:
            assert not merkle.verify_inclusion(leaf, (index + 1) % size, size, proof, root)


def test_a_batch_gets_the_same_root_and_paths_as_the_tree_of_the_rfc() -> None:
    """audit_paths (bottom-up, what batch signing uses) builds the tree of section 2.1.1:
    its root and every path equal MTH and PATH for every size up to 70."""
    with pytest.raises(ValueError, match="at least one"):
        merkle.audit_paths([])
    for size in range(1, 71):
        leaves = _leaves(size)
        root, paths = merkle.audit_paths(leaves)
        assert root == merkle.root(leaves), size
        assert paths == [merkle.inclusion_proof(i, leaves) for i in range(size)], size
        assert merkle.root_from_inclusion(leaves[-1], size - 1, size, paths[-1]) == root
        # A path of the wrong length for the size leads nowhere.
        assert merkle.root_from_inclusion(leaves[0], 0, size, [*paths[0], root]) is None


@pytest.mark.parametrize("size", [2, 3, 7, 8, 9, 20])
def test_a_later_head_extends_every_earlier_one_and_a_rewrite_is_caught(size: int) -> None:
    """Consistency proofs hold from every earlier size; a rewritten first leaf breaks them."""
    leaves = _leaves(size)
    root = merkle.root(leaves)
    for old in range(1, size + 1):
        proof = merkle.consistency_proof(old, leaves)
        assert merkle.verify_consistency(old, size, merkle.root(leaves[:old]), root, proof)
        if old < size:
            rewritten = [merkle.leaf_hash(b"rewritten"), *leaves[1:old]]
            assert not merkle.verify_consistency(old, size, merkle.root(rewritten), root, proof)


def test_the_log_keeps_its_root_current_as_leaves_are_appended() -> None:
    """LeafLog (the tracing service's leaves): after every append its root is MTH over
    all leaves so far, a prefix is those leaves, and proofs over the packed leaves are
    the proofs over a plain list."""
    log = merkle.LeafLog()
    assert len(log) == 0 and log.root() == merkle.root([])
    leaves = _leaves(70)
    for n, leaf in enumerate(leaves, start=1):
        log.append(leaf)
        assert len(log) == n
        assert log.root() == merkle.root(leaves[:n]), n
    packed = log.prefix(33)
    assert list(packed) == leaves[:33] and packed[-1] == leaves[32]
    assert list(packed[5:9]) == leaves[5:9] and len(packed[40:]) == 0
    assert merkle.inclusion_proof(17, packed) == merkle.inclusion_proof(17, leaves[:33])
    assert merkle.consistency_proof(20, packed) == merkle.consistency_proof(20, leaves[:33])
    log.append(leaves[0])
    assert len(packed) == 33  # a prefix is what was there when it was taken
    with pytest.raises(ValueError, match="32 bytes"):
        log.append(b"short")
    with pytest.raises(IndexError):
        packed[33]
