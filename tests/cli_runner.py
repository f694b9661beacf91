"""Test helper: run a command-line entry point in this process."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def run_cli(main: Callable[[list[str]], int], argv: Sequence[Any], capsys) -> tuple[Any, str]:
    """Call `main` with `argv` (as strings): (exit status, what it printed on stderr)."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exit_info:
        status = exit_info.code
    return status, capsys.readouterr().err
