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
