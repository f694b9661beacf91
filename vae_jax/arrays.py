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
evaluation and the estimator take data in this form. Each rule about user arrays is written
here once (the block below); `check_split` applies them to a data set where it enters,
`check_inputs` to a model's batch (the objectives, the importance-sampled bounds), and the
estimator applies `check_values` after scikit-learn's own checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

# One home per rule (everything else that needs a rule calls it):
#   scale   uint8 levels -> [0, 1]: UINT8_SCALE, `to_float` in jit, `to_float_np` on the
#           host, the same bits; `binarize_once` divides by UINT8_MAX instead (its bits
#           predate the scale)
#   dtype   "uint8 stays uint8, any other real dtype is float32": `storage_dtype`,
#           `as_stored`; what is real: `is_real_dtype`
#   values  finite as float32, in [0, 1] when asked (round-off clipped): `check_values`
#   shape   [N >= 1, *event_shape]: `check_shape`
#   labels  integer [N], in 0..num_classes - 1 for a conditional model: `check_labels`;
#           under jit, where values are abstract, a label out of range makes the model's
#           one-hot NaN: `vae_jax.models._one_hot`
# Boundaries: `check_split` (the `Trainer`, so `fit`, for every split, a `Split` built by
# hand included; the data sources; MNIST), `check_inputs` (the objectives' `check_batch`,
# the importance-sampled bounds; values only where concrete), `VAEEstimator._validate`
# (scikit-learn's validate_data, then `check_values`).

UINT8_MAX = 255
UINT8_SCALE = 1.0 / UINT8_MAX
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


# ----------------------------------------------------------------------------- dtype and scale


def storage_dtype(dtype: Any) -> np.dtype:
    """The dtype data of `dtype` are kept in (host and device): uint8 stays uint8 (a quarter
    of the memory, scaled in use), any other real dtype becomes float32 (used as given)."""
    return np.dtype(np.uint8) if np.dtype(dtype) == np.uint8 else np.dtype(np.float32)


def as_stored(x: np.ndarray) -> np.ndarray:
    """`x` in its `storage_dtype`: returned as is when it already is (a memory-mapped uint8 or
    float32 array is not copied), else converted (values beyond float32 become inf)."""
    dtype = storage_dtype(x.dtype)
    if x.dtype == dtype:
        return x
    with np.errstate(over="ignore"):  # beyond float32: inf, refused by check_values
        return x.astype(dtype)


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


# ----------------------------------------------------------------------------- the rules


def is_real_dtype(dtype: Any) -> bool:
    """Whether values of `dtype` can be modelled: bool, integer or floating point (bfloat16
    included); not complex, object or strings."""
    return any(jnp.issubdtype(dtype, kind) for kind in (jnp.bool_, jnp.integer, jnp.floating))


def check_dtype(dtype: Any, *, name: str) -> None:
    """Raise ValueError unless `dtype` is real (bool, integer, floating point): `name` is the
    array's name in the message ("training data: x")."""
    if not is_real_dtype(dtype):
        complex_ = np.dtype(dtype).kind == "c"
        raise ValueError(
            f"{name} must be numeric (uint8, or values as given), got dtype {dtype}"
            + ("; complex values have no likelihood here" if complex_ else "")
        )


def check_shape(
    shape: tuple[int, ...], *, name: str, event_shape: Sequence[int] | None = None
) -> None:
    """Raise ValueError unless `shape` is ``[N >= 1, *event_shape]`` (non-empty examples).

    `name` says where ("training data"); messages read "{name}: x must be ..." and
    "{name}: examples are (...), expected (...)".
    """
    shape = tuple(shape)
    event = None if event_shape is None else tuple(event_shape)
    if shape == event or len(shape) < 2 or shape[0] < 1 or min(shape[1:]) < 1:
        hint = " (one example without its batch axis?)" if shape == event else ""
        raise ValueError(
            f"{name}: x must be [N >= 1, *event_shape] (a batch axis first, then one "
            f"example's shape), got shape {shape}{hint}"
        )
    if event is not None and shape[1:] != event:
        raise ValueError(f"{name}: examples are {shape[1:]}, expected {event}")


def check_values(
    x: np.ndarray,
    *,
    name: str,
    unit_interval: bool = False,
    needs: str = "a Bernoulli likelihood needs",
    advice: str = "rescale, or use a Gaussian likelihood",
) -> np.ndarray:
    """The one finite / [0, 1] rule: raise ValueError unless `x`'s values are usable.

    Values must be finite as float32 (the library computes in float32: a float64 1e300 is
    refused as "beyond float32"), and in [0, 1] when `unit_interval` (a Bernoulli likelihood,
    binarization): float round-off up to `UNIT_INTERVAL_TOLERANCE` outside is clipped, more
    is refused. uint8 is always in range (levels, scaled by 1/255). Large arrays are read in
    blocks of rows (a memory-mapped array is not copied unless it is clipped).

    Args:
      x: a numpy array of a real dtype (`check_dtype`).
      name: the array's name in messages ("training data: x", "X").
      unit_interval: whether values must lie in [0, 1].
      needs, advice: the message's "... needs values in [0, 1] (advice)".

    Returns:
      `x`, clipped to [0, 1] where round-off overshot it (same dtype).
    """
    if x.dtype == np.uint8 or x.size == 0:
        return x
    nonfinite, low, high = _scan(x)
    if nonfinite:
        what = "NaN" if _any_nan(x) else "infinite values (or beyond float32)"
        raise ValueError(f"{name} contains {what} ({nonfinite} of {x.size} values)")
    if unit_interval:
        tol = UNIT_INTERVAL_TOLERANCE
        if low < -tol or high > 1.0 + tol:
            raise ValueError(
                f"{name} has values in [{low:g}, {high:g}]; {needs} values in [0, 1] ({advice})"
            )
        if low < 0.0 or high > 1.0:  # round-off only
            x = np.clip(x, 0.0, 1.0)
    return x


def check_labels(label: Any, n: int, *, name: str, num_classes: int | None = None) -> np.ndarray:
    """The label rule: `label` an integer array ``[n]``, in ``0..num_classes - 1`` when
    `num_classes` is given (a conditional model, which also needs them).

    Args:
      label: a numpy (or concrete jax) integer array, or None (zeros).
      n: the number of examples.
      name: where, for messages ("training data").

    Returns:
      int32 ``[n]`` labels (zeros for None).
    """
    if label is None:
        if num_classes is not None:
            raise ValueError(f"{name}: this model is conditional: it needs labels")
        return np.zeros(n, np.int32)
    if isinstance(label, jax.Array) and not isinstance(label, jax.core.Tracer):
        label = np.asarray(label)
    if not isinstance(label, np.ndarray) or label.dtype.kind not in "iu":
        dtype = getattr(label, "dtype", type(label).__name__)
        raise ValueError(f"{name}: labels must be an integer numpy array, got {dtype}")
    if label.shape != (n,):
        raise ValueError(f"{name}: {label.shape} labels for {n} examples (expected shape ({n},))")
    if num_classes is not None and n and (label.min() < 0 or label.max() >= num_classes):
        raise ValueError(
            f"{name}: labels span {label.min()}..{label.max()}, outside 0..{num_classes - 1}"
        )
    return label.astype(np.int32)


# ----------------------------------------------------------------------------- the boundaries


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
    check_shape(image.shape, name=name, event_shape=event_shape)
    check_dtype(image.dtype, name=f"{name}: x")
    image = check_values(
        as_stored(image),
        name=f"{name}: x",
        unit_interval=unit_interval,
        needs="a Bernoulli likelihood and binarization need",
    )
    label = check_labels(label, image.shape[0], name=name, num_classes=num_classes)
    return Split(image, label)


def check_inputs(model: Any, x: Any, label: Any = None, *, name: str = "the batch") -> None:
    """Raise ValueError (one line) unless `x` (and `label`) fit `model`: the objectives' and
    the importance-sampled bounds' check, the same rules as `check_split`.

    By shape and dtype, always (also under `jit`, when tracing): ``[N >= 1, *event_shape]``
    with the model's event shape (``model.image_shape``, when the module has one), real
    values, and for a conditional model (``model.num_classes > 0``) integer labels ``[N]``.
    By value, when the values are concrete (outside `jit`): finite, in [0, 1] for a
    Bernoulli likelihood (`check_values`), labels in ``0..num_classes - 1``. Under `jit` a
    label outside that range makes the model's output NaN (`vae_jax.models`).

    Args:
      model: a `VAE`, or any module with a `likelihood` (and optionally `image_shape`,
        `num_classes`) attribute.
      x: ``[N, *event_shape]`` examples: a numpy or jax array (or a tracer).
      label: ``[N]`` int labels, or None.
      name: where, for messages.
    """
    event = tuple(getattr(model, "image_shape", ()) or ()) or None
    num_classes = getattr(model, "num_classes", 0) or None
    shape = tuple(np.shape(x)) if not isinstance(x, jax.Array) else tuple(x.shape)
    check_shape(shape, name=name, event_shape=event)
    traced = isinstance(x, jax.core.Tracer)
    values = x if traced else np.asarray(x)
    check_dtype(values.dtype, name=f"{name}: x")
    if not traced:
        check_values(
            values,
            name=f"{name}: x",
            unit_interval=getattr(model, "likelihood", None) == "bernoulli",
            advice="uint8 levels 0..255 are scaled by 1/255; floats are used as given",
        )
    check_input_labels(label, shape[0], name=name, num_classes=num_classes)


def check_key(key: Any, *, name: str = "key") -> None:
    """Raise TypeError (one line) unless `key` is one `jax.random` key: a typed key of shape
    () (``jax.random.key(seed)``) or a legacy uint32 [2] (``jax.random.PRNGKey(seed)``).
    By dtype and shape, so also under `jit` (before: JAX's "invalid PRNG key data" deep
    inside the first sampling call, for an int seed passed where a key belongs)."""
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape == ():
            return
    elif dtype == np.uint32 and shape == (2,):
        return
    got = (
        type(key).__name__ if dtype is None else f"{type(key).__name__} {dtype}{list(shape or ())}"
    )
    raise TypeError(f"{name} must be one jax.random key (jax.random.key(seed)), got {got}")


def check_input_labels(label: Any, n: int, *, name: str, num_classes: int | None) -> None:
    """`check_labels` of a model's input labels, also under `jit`: a tracer by shape and
    dtype only (its values are abstract); None is refused only for a conditional model."""
    if isinstance(label, jax.core.Tracer):
        if not jnp.issubdtype(label.dtype, jnp.integer):
            raise ValueError(f"{name}: labels must be an integer array, got {label.dtype}")
        if tuple(label.shape) != (n,):
            raise ValueError(
                f"{name}: {tuple(label.shape)} labels for {n} examples (expected shape ({n},))"
            )
        return
    check_labels(label, n, name=name, num_classes=num_classes)


_SCAN_ROWS = 1 << 16  # rows per block: checks of large (memory-mapped) arrays stay small


def _scan(x: np.ndarray) -> tuple[int, float, float]:
    """(count of values not finite as float32, min, max of the others) of `x`, read in blocks
    of rows so that a memory-mapped array is never copied whole. min and max are taken in
    `x`'s own dtype (float64 round-off is judged, and clipped, as given)."""
    nonfinite, low, high = 0, np.inf, -np.inf
    for start in range(0, x.shape[0], _SCAN_ROWS):
        block = np.asarray(x[start : start + _SCAN_ROWS])
        as32 = as_stored(block) if block.dtype != np.float32 else block
        finite = np.isfinite(as32)
        bad = int(block.size - np.count_nonzero(finite))
        nonfinite += bad
        if bad < block.size:
            source = block if block.dtype.kind in "biuf" else as32
            values = source[finite] if bad else source
            low, high = min(low, float(values.min())), max(high, float(values.max()))
    return nonfinite, low, high


def _any_nan(x: np.ndarray) -> bool:
    return any(
        np.isnan(as_stored(np.asarray(x[i : i + _SCAN_ROWS]))).any()
        for i in range(0, x.shape[0], _SCAN_ROWS)
    )


def binarize_once(x: np.ndarray, seed: int) -> np.ndarray:
    """Binarize once: value ~ Bernoulli(p) with p = x/255 (uint8) or x (floats in [0, 1]).

    Returns the same dtype: uint8 0/255, or float32 0/1. The uniform draws come from
    ``np.random.default_rng(seed)``, so uint8 grey levels give the same bits as always.
    """
    u = np.random.default_rng(seed).random(x.shape, dtype=np.float32)
    if x.dtype == np.uint8:
        # (division, not `to_float_np`'s product with 1/255: the binarized bits stay as always)
        p = x.astype(np.float32) / UINT8_MAX
        return np.where(u < p, UINT8_MAX, 0).astype(np.uint8)
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
