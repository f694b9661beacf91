"""SHA-256 digests of the files of a directory, written at save time and checked at load.

Used by `VAEEstimator.save` / `load` (`vae_jax.estimator_files`) and by each checkpoint's
file list (`vae_jax.checkpoint`): a flipped byte, a truncated file, a missing or an added
file is found before anything is read, and named in a one-line `DigestError`.

What they protect against: accidental damage (a truncated copy, a full disk, bit rot, a file
edited or added by mistake). What they do not: someone who can write the directory can
rewrite a file and its digest together; the digests are no signature.

A file list names files inside its directory only: each name is a relative POSIX path of
plain components (no absolute path, no ``..``, ``.`` or empty component, no backslash), and
no file or directory on the way is a symbolic link; anything else is a `DigestError`
before any file is opened.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from vae_jax.fields import require_path

_CHUNK = 1 << 20  # bytes read at a time


class DigestError(ValueError):
    """A file of a saved directory is missing, added, or differs from its digest."""


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits. (`path` must be a path: an int
    would name an open file descriptor, hashed and closed.)"""
    path = require_path("path", path)
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            sha.update(block)
    return sha.hexdigest()


def check_name(root: str | os.PathLike, name: object) -> Path:
    """`root / name` for a file list's entry `name`, or a `DigestError` unless `name` is a
    relative POSIX path of plain components (nothing that could lead out of `root`)."""
    if not isinstance(name, str) or not name:
        raise DigestError(f"the file list of {root} has an entry {name!r} that is not a name")
    parts = name.split("/")
    if (
        name.startswith("/")
        or "\\" in name
        or "\0" in name
        or any(part in ("", ".", "..") for part in parts)
        or PurePosixPath(name).is_absolute()
    ):
        raise DigestError(
            f"the file list of {root} names {name!r}, which is not a plain name inside it"
        )
    return Path(root, *parts)


def list_files(root: str | os.PathLike, *, exclude: Iterable[str] = ()) -> list[str]:
    """The relative POSIX paths of the regular files under `root`, sorted (`exclude`: names
    left out). A symbolic link anywhere under `root`, `root` itself included, or a missing
    `root` is a `DigestError` (a link is never followed; before, a missing root listed no
    files and so had the digests of an empty directory)."""
    root = require_path("root", root)
    if isinstance(exclude, str):  # (before: a string excluded its characters)
        raise TypeError(f"exclude must be a collection of names, not the string {exclude!r}")
    skip = set(exclude)
    if root.is_symlink() or not root.is_dir():
        raise DigestError(f"{root} is missing (or not a directory)")
    names = []
    for directory, subdirs, files in os.walk(root, followlinks=False):
        for name in [*subdirs, *files]:
            path = Path(directory, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise DigestError(f"{path} is a symbolic link (a saved directory holds none)")
            if stat.S_ISREG(mode):
                relative = path.relative_to(root).as_posix()
                if relative not in skip:
                    names.append(relative)
    return sorted(names)


def tree_digests(root: str | os.PathLike, *, exclude: Iterable[str] = ()) -> dict[str, str]:
    """{relative POSIX path: SHA-256} of every regular file under `root`, sorted by path
    (`exclude`: names left out, e.g. the file list itself)."""
    return {name: file_digest(Path(root, name)) for name in list_files(root, exclude=exclude)}


def check_tree(
    root: str | os.PathLike,
    expected: Mapping[str, str],
    *,
    sizes: Mapping[str, int] | None = None,
    exclude: Iterable[str] = (),
    extra_ok: bool = False,
) -> None:
    """Raise `DigestError` naming the first file of `root` that is missing, unexpected or
    whose bytes differ from `expected` ({relative path: SHA-256}, as from `tree_digests`).

    Every name is checked first (`check_name`); `sizes` ({name: bytes}), when given, are
    compared before any digest is computed; files in `exclude` are not listed; with
    `extra_ok`, files not in `expected` are allowed.
    """
    root = require_path("root", root)
    paths = {name: check_name(root, name) for name in sorted(expected)}
    present = set(list_files(root, exclude=exclude))  # (also: no link anywhere under root)
    for name, path in paths.items():
        if name not in present:
            raise DigestError(f"{path} is missing")
        size = path.stat().st_size
        if sizes is not None and size != sizes.get(name):
            raise DigestError(f"{path} has {size} bytes, {sizes.get(name)} were written")
        if file_digest(path) != expected[name]:
            raise DigestError(
                f"{path} is damaged: its SHA-256 differs from the one recorded at save time "
                f"({size} bytes now)"
            )
    extra = sorted(name for name in present if name not in expected)
    if extra and not extra_ok:
        raise DigestError(f"{root / extra[0]} was not written by save (an unexpected file)")
