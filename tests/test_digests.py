"""vae_jax.digests: every kind of change to a saved directory is found and named."""

from __future__ import annotations

import pytest

from vae_jax.digests import DigestError, check_tree, tree_digests


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "saved"
    (root / "d").mkdir(parents=True)
    (root / "a.bin").write_bytes(bytes(range(256)))
    (root / "d" / "b.json").write_text('{"x": 1}')
    return root, tree_digests(root)


def test_digests_of_an_intact_tree(tree):
    root, digests = tree
    assert sorted(digests) == ["a.bin", "d/b.json"]
    assert all(len(v) == 64 for v in digests.values())
    check_tree(root, digests)  # no error


def test_flipped_byte_truncation_missing_and_added_files_are_named(tree):
    root, digests = tree
    data = bytearray((root / "a.bin").read_bytes())
    data[100] ^= 1
    (root / "a.bin").write_bytes(bytes(data))
    with pytest.raises(DigestError, match=r"a\.bin is damaged"):
        check_tree(root, digests)
    (root / "a.bin").write_bytes(bytes(range(256))[:200])
    with pytest.raises(DigestError, match=r"a\.bin is damaged.*200 bytes"):
        check_tree(root, digests)
    (root / "a.bin").write_bytes(bytes(range(256)))
    (root / "d" / "b.json").unlink()
    with pytest.raises(DigestError, match=r"b\.json is missing"):
        check_tree(root, digests)
    (root / "d" / "b.json").write_text('{"x": 1}')
    (root / "extra").write_text("")
    with pytest.raises(DigestError, match="extra was not written by save"):
        check_tree(root, digests)
    with pytest.raises(DigestError, match="missing"):
        check_tree(root / "nope", digests)
