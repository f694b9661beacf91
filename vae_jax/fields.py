"""Declared fields: each configuration field's type, help text and bounds in one line.

`option(default, help, low=..., high=..., choices=...)` declares a dataclass field;
`check_fields(instance)` checks every field of a frozen dataclass against its declaration
(its ``__post_init__`` calls it), and `vae_jax.cli` derives each field's flag, help and
parser from the same declaration. Used by `vae_jax.config` (the experiment's sections) and
`vae_jax.options.FitOptions` (`fit`'s options).

Numeric bounds are what the machine can hold: integers fit the int32 arithmetic of step
counters and shapes (`INT32_MAX`; seeds are 32 bits, `MAX_SEED`), floats are finite
float32 numbers (`FLOAT32_MAX`), and lists (layer widths) have at most `MAX_LAYERS` entries.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

MAX_SEED = 2**32 - 1  # jax.random.key keeps 32 bits: seeds 0 and 2**32 would collide
FLOAT32_MAX = float(np.finfo(np.float32).max)  # larger values overflow to inf in training
INT32_MAX = 2**31 - 1  # step counters, shapes and sizes are int32 on the device
MAX_LAYERS = 1024  # a depth beyond any VAE's; each layer is traced in Python


def option(
    default: Any,
    help: str,  # noqa: A002  (the word argparse uses)
    *,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    choices: tuple[Any, ...] | None = None,
    flag: bool = True,
    kind: type | None = None,
) -> Any:
    """A configuration field: its default (which gives its type), its help text and bounds.

    Args:
      default: the value, and its type: bool, int, float, str or tuple of ints.
      help: one sentence for ``--help`` (the CLI adds the default and the choices).
      low, high: inclusive bounds (of each element, for a tuple); ints are at most
        `INT32_MAX` and floats finite float32 numbers whatever `high` says.
      above: an exclusive lower bound (``above=0``: "> 0").
      choices: the allowed values.
      flag: whether the CLI offers it as ``--name`` (a few fields are only read from a
        recorded configuration).
      kind: the type of a field whose default is None (int or str; None = not given).
    """
    metadata = {"help": help, "low": low, "high": high, "above": above, "choices": choices}
    kind = kind or type(default)
    return dataclasses.field(default=default, metadata={**metadata, "flag": flag, "kind": kind})


PLAIN_FIELD = {"help": "", "low": None, "high": None, "above": None, "choices": None, "flag": True,
          "kind": None}  # fmt: skip


class FieldError(ValueError):
    """A field's value is outside its declaration: ``"{name} must be {rule}, got {value!r}"``.

    The CLI words it as the flag that gave it: ``"argument --{name}: must be {rule}, got
    '{text}'"`` (`vae_jax.cli`); `choices` is set when the value is not one of them.
    """

    def __init__(self, name: str, rule: str, value: Any, choices: tuple[Any, ...] | None = None):
        super().__init__(f"{name} must be {rule}, got {value!r}")
        self.name, self.rule, self.value, self.choices = name, rule, value, choices


def _int_rule(low: float | None, high: float | None = None) -> str:
    if high is not None and low is not None:
        return f"an integer in {low}..{high}"
    if low == 1:
        return "a positive integer"
    return "an integer" if low is None else f"an integer >= {low}"


def _check_int(name: str, value: Any, meta: Any) -> int:
    low, high = meta["low"], meta["high"]
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise FieldError(name, "an integer", value)
    value = int(value)
    if low is not None and value < low:
        raise FieldError(name, _int_rule(low), value)
    if high is not None and value > high:
        raise FieldError(name, _int_rule(low, high), value)
    if high is None and value > INT32_MAX:  # (a declared `high`, the seeds', is the bound)
        rule = f"{_int_rule(low)} <= " if low in (None, 1) else f"an integer in {low}.."
        raise FieldError(name, f"{rule}{INT32_MAX} (int32)", value)
    return value


def _check_float(name: str, value: Any, meta: Any) -> float:
    low, high, above = meta["low"], meta["high"], meta["above"]
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise FieldError(name, "a number", value)
    value = float(value)
    if not abs(value) <= FLOAT32_MAX:  # (nan, inf and beyond float32)
        raise FieldError(name, f"a finite float32 number (at most {FLOAT32_MAX:.4g})", value)
    if above is not None and high is not None and not above < value <= high:
        raise FieldError(name, f"in ({above}, {high}]", value)
    if low is not None and high is not None and not low <= value <= high:
        raise FieldError(name, f"in [{low}, {high}]", value)
    if above is not None and not value > above:
        raise FieldError(name, f"> {above}", value)
    if low is not None and not value >= low:
        raise FieldError(name, f">= {low}", value)
    return value


def check_fields(section: Any) -> None:
    """Check (and normalise: lists to tuples, ints to floats) every field of a frozen
    configuration dataclass against its `option` declaration; `FieldError` (one line)."""
    for field in dataclasses.fields(section):
        name, value, default = field.name, getattr(section, field.name), field.default
        meta = {**PLAIN_FIELD, **field.metadata}  # (a field declared without `option`: no bounds)
        if value is None and default is None:
            continue
        if default is None:
            default = (meta["kind"] or str)()  # (int or str: only its type counts)
        if isinstance(default, bool):
            if not isinstance(value, bool | np.bool_):
                raise FieldError(name, "True or False", value)
            value = bool(value)
        elif isinstance(default, int):
            value = _check_int(name, value, meta)
        elif isinstance(default, float):
            value = _check_float(name, value, meta)
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise FieldError(name, "a string", value)
        elif isinstance(default, tuple):
            rule = "a list of positive integers" if meta["low"] == 1 else "a list of integers"
            if not isinstance(value, list | tuple) or len(value) > MAX_LAYERS:
                raise FieldError(name, f"{rule} (at most {MAX_LAYERS})", value)
            try:
                value = tuple(_check_int(name, v, meta) for v in value)
            except FieldError as error:
                bound = error.rule.partition(" <= ")[2]  # (the int32 bound, if that failed)
                raise FieldError(name, f"{rule} <= {bound}" if bound else rule, value) from None
        choices = meta["choices"]
        if choices is not None and value not in choices:
            raise FieldError(name, f"one of {choices!r}", value, choices)
        object.__setattr__(section, name, value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def require_int(name: str, value: Any, *, low: int | None = None) -> int:
    """`value` as a Python int; ValueError (one line) unless it is an integer (a NumPy one
    too; no bool), and at least `low` when given ("{name} must be >= {low}, got ...")."""
    if not _is_int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def require_ints(name: str, value: Any) -> None:
    """Raise ValueError (one line) unless `value` is a tuple (or list) of integers."""
    if not isinstance(value, tuple | list) or not all(_is_int(v) for v in value):
        raise ValueError(f"{name} must be a tuple of integers, got {value!r}")


def is_number(value: Any) -> bool:
    """Whether `value` is a real number (NumPy's too; no bool; NaN and infinities are)."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def require_number(name: str, value: Any) -> float:
    """`value` as a float; ValueError (one line) unless `is_number`."""
    if not is_number(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def require_bool(name: str, value: Any) -> None:
    """Raise ValueError (one line) unless `value` is True or False (a NumPy bool too): a
    truthy string such as "no" must not mean yes where it decides what is deleted."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def require_path(name: str, value: Any) -> Path:
    """`value` as a `Path`; TypeError (one line) unless it is a str or an `os.PathLike`,
    ValueError when it is the empty string (which would mean the current directory)."""
    if not isinstance(value, str | os.PathLike):
        kind = type(value).__name__
        raise TypeError(f"{name} must be a path (a str or a pathlib.Path), got {kind}")
    if value == "":
        raise ValueError(f"{name} is empty: give a path")
    return Path(value)


def require_optimizer(name: str, value: Any) -> None:
    """Raise TypeError (one line) unless `value` looks like an `optax.GradientTransformation`
    (callable ``init`` and ``update``)."""
    if not all(callable(getattr(value, f, None)) for f in ("init", "update")):
        kind = type(value).__name__
        raise TypeError(f"{name} must be an optax.GradientTransformation, got {kind}")


def require_callable(name: str, value: Any) -> None:
    """Raise TypeError (one line) unless `value` can be called (a hook, a `log` like print)."""
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")
