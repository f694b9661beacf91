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


@pytest.mark.parametrize(
    "name", ["../outside.txt", "/etc/hostname", "d/../../x", "./a.bin", "d//b"]
)
def test_a_file_list_naming_a_path_out_of_the_directory_is_refused_before_reading(
    tree, tmp_path, name
):
    """(Before: ``../..`` entries were read, and an outside file's size was printed.)"""
    root, digests = tree
    (tmp_path / "outside.txt").write_text("secret")
    with pytest.raises(DigestError, match="not a plain name inside it") as error:
        check_tree(root, {**digests, name: "0" * 64})
    assert "bytes" not in str(error.value)


def test_a_symbolic_link_in_a_saved_directory_is_refused(tree, tmp_path):
    root, digests = tree
    (tmp_path / "outside.txt").write_text("secret")
    (root / "a.bin").unlink()
    (root / "a.bin").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(DigestError, match="is a symbolic link"):
        check_tree(root, digests)


def test_sizes_are_compared_and_extra_files_may_be_allowed(tree):
    root, digests = tree
    sizes = {"a.bin": 256, "d/b.json": 8}
    check_tree(root, digests, sizes=sizes)
    with pytest.raises(DigestError, match=r"a\.bin has 256 bytes, 255 were written"):
        check_tree(root, digests, sizes={**sizes, "a.bin": 255})
    (root / "list.json").write_text("{}")
    check_tree(root, digests, exclude=["list.json"])
    check_tree(root, digests, extra_ok=True)


def test_a_missing_root_or_a_string_of_names_is_refused(tmp_path):
    # (before: a missing root had the digests of an empty directory, {}; exclude="a.bin"
    # excluded the names "a", ".", "b", "i", "n")
    with pytest.raises(DigestError, match=r"missing .or not a directory."):
        tree_digests(tmp_path / "nowhere")
    (tmp_path / "a.bin").write_bytes(b"x")
    with pytest.raises(TypeError, match="exclude must be a collection of names, not the string"):
        tree_digests(tmp_path, exclude="a.bin")
    assert tree_digests(tmp_path, exclude=["a.bin"]) == {}
