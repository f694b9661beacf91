"""vae_jax.arrays: the one home of the dtype, scale, finite/[0, 1], shape and label rules."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vae_jax.arrays as arrays
from vae_jax.arrays import (
    UINT8_SCALE,
    as_stored,
    binarize_once,
    check_inputs,
    check_labels,
    check_split,
    check_values,
    storage_dtype,
    to_float,
    to_float_np,
)
from vae_jax.evaluate import importance_log_likelihood
from vae_jax.models import VAE, init_params


def test_the_dtype_rule_keeps_uint8_and_float32_and_makes_the_rest_float32(tmp_path):
    for dtype, stored in [
        (np.uint8, np.uint8),
        (np.float32, np.float32),
        (np.float64, np.float32),
        (np.float16, np.float32),
        (np.int64, np.float32),
        (np.bool_, np.float32),
    ]:
        assert storage_dtype(dtype) == stored
        assert as_stored(np.zeros((2, 3), dtype)).dtype == stored
    mapped = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.float32, (4, 3))
    assert as_stored(mapped) is mapped  # not copied
    assert check_values(mapped, name="x", unit_interval=True) is mapped
    assert np.isinf(as_stored(np.array([1e300]))).all()  # beyond float32: inf, refused below


def test_the_scale_rule_is_bitwise_the_same_on_the_host_and_in_jit():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    host = to_float_np(levels)
    np.testing.assert_array_equal(host, np.asarray(jax.jit(to_float)(levels)))
    np.testing.assert_array_equal(host, np.asarray(to_float(levels)))
    assert host.dtype == np.float32 and host[0, 0] == 0.0 and host[-1, -1] == 1.0
    np.testing.assert_array_equal(host, levels.astype(np.float32) * np.float32(UINT8_SCALE))
    floats = np.linspace(-3.0, 3.0, 7)
    np.testing.assert_array_equal(to_float_np(floats), floats.astype(np.float32))  # as given


def test_binarize_once_keeps_its_bits():
    """binarize_once divides by 255 (not to_float_np's product with 1/255): the test set's
    bits are what they always were."""
    x = np.random.default_rng(1).integers(0, 256, (50, 28, 28, 1)).astype(np.uint8)
    u = np.random.default_rng(7).random(x.shape, dtype=np.float32)
    expected = np.where(u < x.astype(np.float32) / 255.0, 255, 0).astype(np.uint8)
    np.testing.assert_array_equal(binarize_once(x, 7), expected)


def test_the_value_rule_refuses_non_finite_and_out_of_range_values_in_one_line(monkeypatch):
    monkeypatch.setattr(arrays, "_SCAN_ROWS", 3)  # blocks of 3 rows: the NaN is in a later one
    x = np.full((10, 4), 0.5, np.float32)
    x[8, 1] = np.nan
    with pytest.raises(ValueError, match=re.escape("x contains NaN (1 of 40 values)")):
        check_values(x, name="x")
    x[8, 1] = np.inf
    with pytest.raises(ValueError, match=re.escape("x contains infinite values (or beyond")):
        check_values(x, name="x")
    big = np.full((2, 2), 1e300)  # finite in float64, not in the float32 the library uses
    with pytest.raises(
        ValueError, match=re.escape("X contains infinite values (or beyond float32)")
    ):
        check_values(big, name="X")
    np.testing.assert_array_equal(check_values(big * 0.0 + 5.0, name="x"), np.full((2, 2), 5.0))
    with pytest.raises(ValueError, match=re.escape("x has values in [0, 255]; a Bernoulli")):
        check_values(np.arange(256.0).reshape(16, 16), name="x", unit_interval=True)
    with pytest.raises(ValueError, match=re.escape("x has values in [0, 2]")):
        check_values(np.array([[0, 2]]), name="x", unit_interval=True)  # integers too
    levels = np.full((2, 3), 255, np.uint8)
    assert check_values(levels, name="x", unit_interval=True) is levels  # levels: in range
    for dtype in (np.float32, np.float64):  # round-off is clipped in the input's dtype
        edge = np.array([[-1e-9, 0.5, 1 + 1e-9]], dtype)
        clipped = check_values(edge, name="x", unit_interval=True)
        assert clipped.dtype == dtype and clipped.min() == 0.0 and clipped.max() == 1.0


def test_the_label_rule():
    np.testing.assert_array_equal(check_labels(None, 3, name="d"), np.zeros(3, np.int32))
    assert check_labels(jnp.array([0, 2]), 2, name="d", num_classes=3).dtype == np.int32
    cases = {
        "d: this model is conditional: it needs labels": (None, 10),
        "d: labels must be an integer numpy array, got float64": (np.zeros(3), None),
        "d: labels must be an integer numpy array, got list": ([0, 1, 2], None),
        "d: (2,) labels for 3 examples (expected shape (3,))": (np.zeros(2, int), None),
        "d: labels span 0..12, outside 0..9": (np.array([0, 12, 3]), 10),
        "d: labels span -1..3, outside 0..9": (np.array([0, -1, 3]), 10),
    }
    for message, (label, num_classes) in cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            check_labels(label, 3, name="d", num_classes=num_classes)


def test_one_rule_and_one_message_at_every_boundary():
    """fit's check_split and the objectives' (and the IS bounds') check_inputs give the same
    finite / [0, 1] / shape / label answers, in the same words (the estimator's: in
    tests/test_estimator.py)."""
    model = VAE(image_shape=(2, 2, 1), z_dim=1, hidden=(2,), num_classes=10)
    x = np.full((3, 2, 2, 1), 0.5, np.float32)
    label = np.array([0, 12, 1])
    with_nan = x.copy()
    with_nan[1, 0, 0, 0] = np.nan
    for check in (
        lambda x, y: check_split(
            x, y, name="d", event_shape=(2, 2, 1), num_classes=10, unit_interval=True
        ),
        lambda x, y: check_inputs(model, x, y, name="d"),
        lambda x, y: check_inputs(model, jnp.asarray(x), jnp.asarray(y), name="d"),
    ):
        with pytest.raises(ValueError, match=re.escape("d: x contains NaN (1 of 12 values)")):
            check(with_nan, label)
        with pytest.raises(ValueError, match=re.escape("d: x has values in [0.5, 255]")):
            check(_with_255(x), label)
        with pytest.raises(ValueError, match=re.escape("d: labels span 0..12, outside 0..9")):
            check(x, label)
        with pytest.raises(ValueError, match=re.escape("d: examples are (4,), expected (2, 2, 1)")):
            check(x.reshape(3, 4), label)
        with pytest.raises(ValueError, match=re.escape("d: x must be [N >= 1, *event_shape]")):
            check(x[:0], label[:0])


def _with_255(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[0, 0, 0, 0] = 255.0
    return x


def test_under_jit_shapes_and_dtypes_are_checked_and_labels_out_of_range_give_nan():
    model = VAE(image_shape=(2, 2, 1), z_dim=1, hidden=(2,), num_classes=10)
    x = np.full((3, 2, 2, 1), 0.5, np.float32)

    @jax.jit
    def checked(x, label):
        check_inputs(model, x, label)
        return x

    checked(x * 255, np.array([0, 12, 1]))  # values are abstract under jit: not checked...
    with pytest.raises(ValueError, match=re.escape("the batch: labels must be an integer array")):
        checked(x, np.zeros(3))  # ...but dtypes and shapes are
    with pytest.raises(ValueError, match=re.escape("the batch: (2,) labels for 3 examples")):
        checked(x, np.zeros(2, np.int32))
    with pytest.raises(ValueError, match=re.escape("the batch: examples are (2, 2)")):
        checked(x[..., 0], np.zeros(3, np.int32))
    # ...and the model turns a label it has no class for into NaN, in every bound.
    params = init_params(model, jax.random.key(0))
    log_px = jax.jit(
        lambda p, x, label: importance_log_likelihood(
            model, p, x, label, jax.random.key(1), num_samples=4, sample_chunk=2
        )
    )(params, x, jnp.array([0, 12, -1]))
    assert np.isfinite(log_px[0]) and np.isnan(log_px[1:]).all()
