"""Data as it enters the library: one in-memory form, checked once, scaled in one place.

A data set is a `Split` per split: ``x`` ``[N, *event_shape]`` and integer ``label`` ``[N]``.
``x`` is either

- ``uint8``: grey levels or colour channels 0..255, kept as uint8 (on the device too) and
  scaled by 1/255 inside the compiled step (`to_float`), or
- any other real dtype (float, int, bool): used exactly as given (stored and computed in
  float32; float64 input is rounded to float32, never quantized), any range, for a
  Gaussian likelihood; a Bernoulli likelihood and dynamic binarization need values in
  [0, 1].

The event shape is anything: vectors ``[D]``, grey or colour images ``[H, W, C]``. Labels
are optional (zeros when absent) unless the model is conditional. The train loop, the
evaluation and the estimator take data in this form; `check_split` is where it is checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

UINT8_SCALE = 1.0 / 255.0
# Float data for a Bernoulli likelihood may overshoot [0, 1] by round-off (MinMaxScaler gave
# 1.0000000000000002); within this tolerance values are clipped, beyond it they are refused.
UNIT_INTERVAL_TOLERANCE = 1e-6


class Split(NamedTuple):
    """One split held in memory.

    Attributes:
      image: ``[N, *event_shape]`` uint8 (0..255, scaled by 1/255 in use) or float32 (used
        as given). (The name is historical: any event shape is allowed.)
      label: int32 ``[N]`` (zeros when the data have no labels).
    """

    image: np.ndarray
    label: np.ndarray


def is_image_shape(shape: tuple[int, ...]) -> bool:
    """Whether examples of this shape can be drawn: (H, W) or (H, W, C) with C 1 or 3."""
    return len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3))


def to_float(x: ArrayLike) -> jax.Array:
    """uint8 -> float32 ``x * (1/255)`` in [0, 1]; any other dtype -> float32 as given."""
    x = jnp.asarray(x)
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) * UINT8_SCALE
    return x.astype(jnp.float32)


def to_float_np(x: np.ndarray) -> np.ndarray:
    """The host (numpy) twin of `to_float`, bitwise the same values."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) * np.float32(UINT8_SCALE)
    return x.astype(np.float32)


def check_split(
    image: Any,
    label: Any = None,
    *,
    name: str,
    event_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    unit_interval: bool = False,
) -> Split:
    """Check a split where it enters and return it in the library's form.

    Args:
      image: a numpy array ``[N >= 1, *event_shape]``: uint8 (levels 0..255, scaled by
        1/255 in use), or any other real dtype (bool, integer, floating point), whose values
        are used as given (finite; returned as float32).
      label: an integer array ``[N]``, or None (zeros; refused when `num_classes` is given).
      name: what the split is called in messages ("training data").
      event_shape: the shape one example must have, if known.
      num_classes: labels must be given and lie in ``0..num_classes - 1`` (conditional
        models).
      unit_interval: values must lie in [0, 1] (Bernoulli likelihood, binarization); float
        round-off within `UNIT_INTERVAL_TOLERANCE` is clipped.

    Returns:
      ``Split(image, label)``: image uint8 or float32, label int32.

    Raises:
      ValueError: one line naming `name` and what is wrong.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name}: x must be a numpy array, got {type(image).__name__}")
    if image.ndim < 2 or image.shape[0] < 1 or min(image.shape[1:]) < 1:
        raise ValueError(
            f"{name}: x must be [N >= 1, *event_shape] (a batch axis first, then one "
            f"example's shape), got shape {image.shape}"
        )
    if event_shape is not None and tuple(image.shape[1:]) != tuple(event_shape):
        raise ValueError(
            f"{name}: examples are {tuple(image.shape[1:])}, expected {tuple(event_shape)}"
        )
    kind = image.dtype.kind
    if kind not in "biuf":
        raise ValueError(
            f"{name}: x must be numeric (uint8, or values as given), got dtype {image.dtype}"
            + ("; complex values have no likelihood here" if kind == "c" else "")
        )
    if image.dtype != np.uint8:
        if image.dtype != np.float32:  # (float32, e.g. a memory-mapped .npy, is not copied)
            with np.errstate(over="ignore"):  # beyond float32: inf, refused below
                image = image.astype(np.float32)
        nonfinite, low, high = _scan(image)
        if nonfinite:
            what = "NaN" if _any_nan(image) else "infinite values (or beyond float32)"
            raise ValueError(f"{name}: x contains {what} ({nonfinite} values)")
        if unit_interval:
            tol = UNIT_INTERVAL_TOLERANCE
            if low < -tol or high > 1.0 + tol:
                raise ValueError(
                    f"{name}: x has values in [{low:g}, {high:g}]; a Bernoulli likelihood and "
                    "binarization need values in [0, 1] (rescale, or use a Gaussian likelihood)"
                )
            if low < 0.0 or high > 1.0:  # round-off only
                image = np.clip(image, 0.0, 1.0)
    n = image.shape[0]
    if label is None:
        if num_classes is not None:
            raise ValueError(f"{name}: this model is conditional: it needs labels")
        return Split(image, np.zeros(n, np.int32))
    if not isinstance(label, np.ndarray) or label.dtype.kind not in "iu":
        dtype = getattr(label, "dtype", type(label).__name__)
        raise ValueError(f"{name}: labels must be an integer numpy array, got {dtype}")
    if label.shape != (n,):
        raise ValueError(f"{name}: {label.shape} labels for {n} examples (expected shape ({n},))")
    if num_classes is not None and (label.min() < 0 or label.max() >= num_classes):
        raise ValueError(
            f"{name}: labels span {label.min()}..{label.max()}, outside 0..{num_classes - 1}"
        )
    return Split(image, label.astype(np.int32))


_SCAN_ROWS = 1 << 16  # rows per block: checks of large (memory-mapped) arrays stay small


def _scan(x: np.ndarray) -> tuple[int, float, float]:
    """(count of non-finite values, min, max of the finite ones) of float32 `x`, read in
    blocks of rows so that a memory-mapped array is never copied whole."""
    nonfinite, low, high = 0, np.inf, -np.inf
    for start in range(0, x.shape[0], _SCAN_ROWS):
        block = np.asarray(x[start : start + _SCAN_ROWS])
        finite = np.isfinite(block)
        nonfinite += int(block.size - np.count_nonzero(finite))
        if finite.any():
            values = block[finite] if nonfinite else block
            low, high = min(low, float(values.min())), max(high, float(values.max()))
    return nonfinite, low, high


def _any_nan(x: np.ndarray) -> bool:
    return any(np.isnan(x[i : i + _SCAN_ROWS]).any() for i in range(0, x.shape[0], _SCAN_ROWS))


def binarize_once(x: np.ndarray, seed: int) -> np.ndarray:
    """Binarize once: value ~ Bernoulli(p) with p = x/255 (uint8) or x (floats in [0, 1]).

    Returns the same dtype: uint8 0/255, or float32 0/1. The uniform draws come from
    ``np.random.default_rng(seed)``, so uint8 grey levels give the same bits as always.
    """
    u = np.random.default_rng(seed).random(x.shape, dtype=np.float32)
    if x.dtype == np.uint8:
        return np.where(u < x.astype(np.float32) / 255.0, 255, 0).astype(np.uint8)
    return (u < x).astype(np.float32)


def pad_images(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad [N, H, W, C] images symmetrically to [N, size, size, C]."""
    h, w = images.shape[1:3]
    if (h, w) == (size, size):
        return images
    if size < h or size < w or (size - h) % 2 or (size - w) % 2:
        raise ValueError(f"cannot pad {h}x{w} images symmetrically to {size}x{size}")
    ph, pw = (size - h) // 2, (size - w) // 2
    return np.pad(images, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
