"""The work directory: one owner for its configuration record, its lock and its claim.

A work directory holds:
  config.json                 the configuration that owns the directory
  .lock                       locked (flock) while a run uses the directory
  metrics.jsonl               one JSON record per epoch (rewritten atomically each epoch)
  checkpoints/<step>/         Orbax checkpoints (`vae_jax.checkpoint`)
  images/                     the experiment's pictures

`claim` decides whether a configuration may use a directory (resume, refuse, or with
``overwrite`` start afresh); `fit` calls it (and so `run_experiment`). Every file written here
is written atomically (`atomic_write_text`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vae_jax.config import ExperimentConfig, check_config

CONFIG_FILE = "config.json"
CHECKPOINT_SUBDIR = "checkpoints"
UNREADABLE_SUBDIR = ".unreadable"  # in CHECKPOINT_SUBDIR: unreadable checkpoints, kept


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically: a temporary file beside it, then a rename, so a
    reader (or a run killed meanwhile) sees the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """`atomic_write_text` of `value` as indented, key-sorted JSON."""
    return atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


class WorkdirError(ValueError):
    """The work directory cannot be used (unwritable, or owned by another configuration)."""


def claim(
    workdir: str | os.PathLike,
    config: ExperimentConfig | dict[str, Any],
    *,
    resume: bool = True,
    overwrite: bool = False,
) -> Path:
    """Create `workdir`, check it is writable and that it belongs to `config`; record it.

    `config` is an `ExperimentConfig`, or the JSON record of a run made from pieces
    (`vae_jax.loop.fit` without one: its "run" section may change between runs).

    Nothing is lost by mistake: a directory whose ``config.json`` holds a different
    configuration (other than the epoch budget and the checkpoint cadence), is unreadable,
    or is missing while checkpoints exist, is refused unless `overwrite`; so is a directory
    with checkpoints of this configuration when `resume` is False. With `overwrite`, those
    checkpoints, metrics and images are deleted and the run starts afresh; a directory of
    the same configuration is resumed (unless `resume` is False), `overwrite` or not.

    Raises:
      WorkdirError: the directory cannot be used; the message says how to proceed.
    """
    path = writable_dir(workdir)
    steps = _checkpoint_steps(path)
    try:
        existing = read_config(path) if isinstance(config, ExperimentConfig) else read_record(path)
    except WorkdirError as error:
        problem = str(error)
    else:
        set_aside = _checkpoint_steps(path / CHECKPOINT_SUBDIR, UNREADABLE_SUBDIR)
        if existing is None:
            problem = f"{path} has checkpoints but no {CONFIG_FILE}" if steps else ""
        elif set_aside and not steps:
            problem = (
                f"{path} holds no readable checkpoint (those of steps {set_aside} could not be "
                f"read and are kept in {path / CHECKPOINT_SUBDIR / UNREADABLE_SUBDIR}); starting "
                "afresh would replace its metrics and pictures"
            )
        elif _identity(existing) != _identity(config):
            diff = describe_difference(_identity(existing), _identity(config))
            problem = f"{path} holds a run of a different configuration ({diff})"
        elif steps and not resume:
            problem = (
                f"{path} holds checkpoints of this configuration (the newest at step "
                f"{steps[-1]}), which a fresh start (--no_resume, resume=False) would discard; "
                "resume instead"
            )
        else:
            problem = ""
    if problem and not overwrite:
        raise WorkdirError(
            f"{problem}; use another --workdir, or --overwrite to start afresh there"
        )
    if problem:
        _discard_outputs(path)
    if isinstance(config, ExperimentConfig):
        write_config(path, config)
    else:
        write_json(path / CONFIG_FILE, config)
    return path


def _identity(config: ExperimentConfig | dict[str, Any]) -> dict[str, Any]:
    if isinstance(config, ExperimentConfig):
        return config.identity()
    return {key: value for key, value in config.items() if key != "run"}


def read_record(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON object in ``workdir/config.json`` as it is, or None if there is none.

    Raises:
      WorkdirError: the file is not a JSON object.
    """
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as error:
        raise WorkdirError(f"{path} is not readable JSON: {one_line(error)[:300]}") from error
    if not isinstance(values, dict):
        raise WorkdirError(f"{path} is not a JSON object")
    return values


def writable_dir(workdir: str | os.PathLike) -> Path:
    if not os.fspath(workdir):
        raise WorkdirError("the work directory is an empty path")
    path = Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise WorkdirError(
            f"work directory {path} is not writable: {error.strerror or error}"
        ) from error
    return path


def _checkpoint_steps(path: Path, subdir: str = CHECKPOINT_SUBDIR) -> list[int]:
    """The complete checkpoints in `path/subdir`, by their directory names (nothing is
    opened)."""
    directory = path / subdir
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def _discard_outputs(path: Path) -> None:
    """Delete a previous run's outputs: moved aside first (atomic renames), then deleted,
    so a run killed meanwhile leaves either the old outputs or none, never half of them."""
    trash = path / ".discarded"
    shutil.rmtree(trash, ignore_errors=True)
    trash.mkdir()
    for name in (CHECKPOINT_SUBDIR, "metrics.jsonl", "images", "tensorboard", CONFIG_FILE):
        if (path / name).exists():
            (path / name).rename(trash / name)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def workdir_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path/.lock`` (released when the process dies, even by
    SIGKILL), so two runs never write the same work directory."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(path / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise WorkdirError(
                f"{path} is in use by another run (pid {holder}); wait for it to finish, "
                "or use another --workdir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_config(workdir: str | os.PathLike, config: ExperimentConfig) -> None:
    """Record the configuration that owns `workdir` (written atomically)."""
    write_json(Path(workdir) / CONFIG_FILE, config.to_dict())


def read_config(workdir: str | os.PathLike) -> ExperimentConfig | None:
    """The configuration recorded in `workdir`, or None if it has none.

    Every value is checked: its type (against the field's default), its range (through the
    configuration's own checks and by building the model and objective).

    Raises:
      WorkdirError: the file exists but is not a valid configuration.
    """
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        values = json.loads(path.read_text())
        check_config_types(values)
        config = ExperimentConfig.from_dict(values)
        check_config(config)
    except (OSError, ValueError, TypeError, AttributeError, RecursionError) as error:
        raise WorkdirError(
            f"{path} is not a valid vae_jax configuration: {one_line(error)[:300]}"
        ) from error
    return config


def check_config_types(values: Any) -> None:
    """Raise ValueError unless `values` (a `to_dict()` read back from JSON) has, in every
    field, a value of the type of the field's default (ints not bools, finite floats)."""
    defaults = ExperimentConfig().to_dict()
    if not isinstance(values, dict):
        raise ValueError(f"expected a JSON object, got {type(values).__name__}")
    for section, fields in values.items():
        if section not in defaults:
            raise ValueError(f"unknown section {section!r}")
        if not isinstance(fields, dict):
            raise ValueError(f"{section} must be a JSON object, got {type(fields).__name__}")
        for name, value in fields.items():
            if name in defaults[section] and not _same_kind(value, defaults[section][name]):
                kind = type(defaults[section][name]).__name__
                raise ValueError(f"{section}.{name} must be of type {kind}, got {value!r}")


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, int | float) and math.isfinite(value)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, tuple):
        return isinstance(value, list | tuple) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
    return False


def one_line(error: BaseException) -> str:
    """An error's message on one line (the CLI prints one line per failure)."""
    return " ".join(str(error).split())


def describe_difference(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str:
    """'section.field: A there, B here; ...' for the fields where two config dicts differ."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            inner = describe_difference(va, vb, f"{prefix}{key}.")
            if inner:
                out.append(inner)
        elif va != vb:
            out.append(f"{prefix}{key}: {va} there, {vb} here")
    return "; ".join(out)


def write_metrics(workdir: Path, records: list[dict[str, Any]]) -> Path:
    """Rewrite metrics.jsonl (one record per line) atomically."""
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    return atomic_write_text(workdir / "metrics.jsonl", lines)
