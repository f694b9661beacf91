"""SHA-256 digests of the files of a directory, written at save time and checked at load.

Used by `VAEEstimator.save` / `load`: a flipped byte, a truncated file, a missing or an
added file is found before anything is read, and named in a one-line `DigestError`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20  # bytes read at a time


class DigestError(ValueError):
    """A file of a saved directory is missing, added, or differs from its digest."""


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            sha.update(block)
    return sha.hexdigest()


def tree_digests(root: str | os.PathLike) -> dict[str, str]:
    """{relative POSIX path: SHA-256} of every regular file under `root`, sorted by path."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): file_digest(p) for p in files}


def check_tree(root: str | os.PathLike, expected: dict[str, str]) -> None:
    """Raise `DigestError` naming the first file of `root` that is missing, unexpected or
    whose bytes differ from `expected` ({relative path: SHA-256}, as from `tree_digests`)."""
    root = Path(root)
    if not root.is_dir():
        raise DigestError(f"{root} is missing (or not a directory)")
    present = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    for name in sorted(expected):
        path = root / name
        if not path.is_file():
            raise DigestError(f"{path} is missing")
        if file_digest(path) != expected[name]:
            size = path.stat().st_size
            raise DigestError(
                f"{path} is damaged: its SHA-256 differs from the one recorded at save time "
                f"({size} bytes now)"
            )
    extra = [name for name in present if name not in expected]
    if extra:
        raise DigestError(f"{root / extra[0]} was not written by save (an unexpected file)")
