"""Mixed precision: ``ModelConfig(dtype="bfloat16")`` against float32.

bf16 computes the layers in bfloat16 (8 significant bits, ~2-3 decimal digits), except the
decoder's output layer (float32, see the last test), while the parameters stay float32 and
the loss is computed in float32 (objectives.py casts the encoder and decoder outputs).
Tolerances, for the seed MLP at its initial parameters on a batch of 128 images, same key:
- the ELBO and E_q[log p(x|z)] agree to 1e-3 relative (measured ~1e-4: each logit is
  rounded to bf16, 2^-9 relative, but the errors average out over 784 pixels and the
  batch), the KL (about 1 nat at initialisation, from bf16 means and log-variances) to
  1e-2 relative (measured 3e-3);
- every gradient is finite and float32, and points the same way as the float32 gradient
  (cosine similarity >= 0.999 per parameter; measured >= 0.9999), with a norm within 2%.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax.config import ModelConfig
from vae_jax.models import init_params
from vae_jax.objectives import make_elbo
from vae_jax.train import (
    epoch_order,
    init_train_state,
    make_keys,
    make_mesh,
    make_train_call,
    to_device,
)


def _images(n: int, shape: tuple[int, ...] = (28, 28, 1)) -> np.ndarray:
    """Smooth blobs (not white noise), so the loss is dominated by structure, as on MNIST."""
    rng = np.random.default_rng(0)
    h, w = shape[:2]
    yy, xx = np.mgrid[:h, :w]
    centres = rng.uniform(0.3, 0.7, (n, 2)) * (h, w)
    radius = rng.uniform(3, 7, (n, 1, 1))
    d2 = (yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2
    return np.round(255 * np.exp(-d2 / (2 * radius**2)))[..., None].astype(np.uint8)


def _models(**kwargs):
    return (
        ModelConfig(**kwargs).build((28, 28, 1)),
        ModelConfig(dtype="bfloat16", **kwargs).build((28, 28, 1)),
    )


def _cosine(a: jax.Array, b: jax.Array) -> float:
    a, b = a.ravel(), b.ravel()
    return float(jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def test_bf16_elbo_and_gradients_match_float32():
    model32, model16 = _models()
    params = init_params(model32, jax.random.key(0))
    # The same parameter tree (float32) serves both: bf16 changes compute, not parameters.
    params16 = init_params(model16, jax.random.key(0))
    assert jax.tree.structure(params16) == jax.tree.structure(params)
    assert {x.dtype for x in jax.tree.leaves(params16)} == {jnp.dtype(jnp.float32)}
    images, key = _images(128), jax.random.key(1)

    def loss_and_grad(model):
        elbo = make_elbo(model)
        terms = jax.jit(lambda p: elbo.terms(p, images, key))(params)
        grads = jax.jit(jax.grad(lambda p: -elbo(p, images, key)))(params)
        return terms, grads

    terms32, grads32 = loss_and_grad(model32)
    terms16, grads16 = loss_and_grad(model16)
    for name, rtol in (("elbo", 1e-3), ("log_likelihood", 1e-3), ("kl", 1e-2)):
        t32, t16 = getattr(terms32, name), getattr(terms16, name)
        assert t16.dtype == jnp.float32
        np.testing.assert_allclose(float(t16), float(t32), rtol=rtol, err_msg=name)
    for (path, g32), g16 in zip(
        jax.tree_util.tree_leaves_with_path(grads32), jax.tree.leaves(grads16), strict=True
    ):
        name = jax.tree_util.keystr(path)
        assert g16.dtype == jnp.float32, name
        assert bool(jnp.all(jnp.isfinite(g16))), name
        assert _cosine(g16, g32) >= 0.999, name
        ratio = float(jnp.linalg.norm(g16) / jnp.linalg.norm(g32))
        assert abs(ratio - 1) <= 0.02, (name, ratio)


def test_bf16_training_keeps_float32_state():
    _, model16 = _models()
    mesh = make_mesh(1)
    tx = optax.adam(1e-3)
    keys = make_keys(0)
    state = init_train_state(model16, tx, keys.init, mesh)
    call = make_train_call(make_elbo(model16), tx, mesh)
    images = _images(64)
    data = to_device(images, np.zeros(64, np.int32), mesh)
    index, weight = epoch_order(64, 16, seed=0, epoch=0)
    state, metrics = call(state, data, index, weight, keys.train)
    assert bool(np.all(metrics["finite"]))
    assert metrics["loss"].dtype == jnp.float32
    floats = jax.tree.leaves((state.params, state.opt_state))
    assert {x.dtype for x in floats if jnp.issubdtype(x.dtype, jnp.floating)} == {
        jnp.dtype(jnp.float32)
    }
    assert float(metrics["loss"][-1]) < float(metrics["loss"][0])  # it learns


def test_bf16_conv_output_bias_gradient():
    """The output bias's gradient sums over batch x pixels (64 x 784 here): summed in bf16
    it saturates (8.0 instead of 236.6), so the decoder's output layer runs in float32."""
    model32, model16 = _models(architecture="conv", conv_channels=(8, 16))
    params = init_params(model32, jax.random.key(0))
    images, key = _images(64), jax.random.key(1)
    g32, g16 = (
        jax.jit(jax.grad(lambda p, m=m: -make_elbo(m)(p, images, key)))(params)
        for m in (model32, model16)
    )
    bias32 = g32["decoder"]["ConvTranspose_1"]["bias"]
    bias16 = g16["decoder"]["ConvTranspose_1"]["bias"]
    np.testing.assert_allclose(np.asarray(bias16), np.asarray(bias32), rtol=0.05)
