"""The sub-pixel transposed convolution is Flax's `nn.ConvTranspose`, computed differently."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae_jax.conv import (
    SUBPIXEL_MIN_FEATURES,
    ConvTranspose4x4,
    conv_transpose4x4,
    conv_transpose4x4_subpixel,
    depth_to_space,
)
from vae_jax.models import VAE, init_params
from vae_jax.objectives import make_elbo


def _reference(features: int) -> nn.ConvTranspose:
    return nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")


@pytest.mark.parametrize(
    ("height", "width", "channels", "features"),
    [(4, 4, 128, 64), (8, 8, 64, 32), (7, 7, 64, 32), (16, 16, 32, 1), (3, 5, 2, 8)],
)
def test_subpixel_equals_lax_conv_transpose(height, width, channels, features):
    rng = np.random.default_rng(height * 100 + features)
    x = jnp.asarray(rng.normal(size=(3, height, width, channels)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(4, 4, channels, features)), jnp.float32)
    probe = jnp.asarray(rng.normal(size=(3, 2 * height, 2 * width, features)), jnp.float32)

    def loss(f):
        return jax.jit(jax.value_and_grad(lambda x, k: jnp.sum(probe * f(x, k)), argnums=(0, 1)))

    expected = jax.jit(conv_transpose4x4)(x, kernel)
    got = jax.jit(conv_transpose4x4_subpixel)(x, kernel)
    assert got.shape == expected.shape == (3, 2 * height, 2 * width, features)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    (_, grads_expected), (_, grads_got) = (
        loss(conv_transpose4x4)(x, kernel),
        loss(conv_transpose4x4_subpixel)(x, kernel),
    )
    for a, b in zip(grads_got, grads_expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)


def test_depth_to_space_places_each_phase_on_its_pixel():
    x = jnp.arange(2 * 3 * 4 * 8, dtype=jnp.float32).reshape(2, 3, 4, 8)  # 4 phases x 2 ch
    y = depth_to_space(x)
    assert y.shape == (2, 6, 8, 2)
    for p in (0, 1):
        for q in (0, 1):
            phase = 2 * p + q
            np.testing.assert_array_equal(y[:, p::2, q::2, :], x[..., 2 * phase : 2 * phase + 2])


@pytest.mark.parametrize("features", [1, SUBPIXEL_MIN_FEATURES, 32])
def test_module_matches_flax_conv_transpose(features, key):
    x = jax.random.normal(key, (2, 5, 6, 16))
    ours, ref = ConvTranspose4x4(features), _reference(features)
    params = jax.jit(ours.init)(key, x)
    ref_params = jax.jit(ref.init)(key, x)
    # Same parameter names, shapes and initial values (same initialisers, same key).
    assert jax.tree.structure(params) == jax.tree.structure(ref_params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_array_equal(a, b)
    # Give the bias non-zero values, then compare outputs and parameter gradients.
    params = jax.tree.map(lambda p: p + 0.1, params)

    def loss(module):
        return jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(module.apply(p, x)))))

    np.testing.assert_allclose(
        jax.jit(ours.apply)(params, x), jax.jit(ref.apply)(params, x), rtol=1e-5, atol=1e-5
    )
    for a, b in zip(
        jax.tree.leaves(loss(ours)(params)), jax.tree.leaves(loss(ref)(params)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_module_keeps_leading_axes(key):
    x = jax.random.normal(key, (3, 2, 4, 4, 8))  # [samples, batch, H, W, C]
    layer = ConvTranspose4x4(16)
    params = jax.jit(layer.init)(key, x)  # eager, each conv op would compile on its own
    apply = jax.jit(layer.apply)
    y = apply(params, x)
    assert y.shape == (3, 2, 8, 8, 16)
    np.testing.assert_allclose(y[1], apply(params, x[1]), rtol=1e-6, atol=1e-6)


def test_conv_decoder_parameters_have_flax_names(key):
    """Checkpoints keep the layout they had with nn.ConvTranspose."""
    params = init_params(VAE(architecture="conv", conv_channels=(32, 64)), key)
    decoder = params["decoder"]
    assert {"ConvTranspose_0", "ConvTranspose_1"} <= set(decoder)
    assert decoder["ConvTranspose_0"]["kernel"].shape == (4, 4, 64, 32)
    assert decoder["ConvTranspose_1"]["kernel"].shape == (4, 4, 32, 1)


def test_conv_steps_run_as_a_host_loop_on_cpu_and_match_the_scan(key):
    """On CPU a conv VAE's train call and evaluation loop on the host (XLA:CPU convolutions
    are slow inside loops); the numbers are those of the `lax.scan` path, which every other
    model and backend uses."""
    import vae_jax.train as train

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, 40).astype(np.int32)
    model = VAE(image_shape=(8, 8, 1), architecture="conv", conv_channels=(4, 8), z_dim=3)
    mesh = train.make_mesh(1)
    assert train.step_loop_for(make_elbo(model), mesh, (8, 8, 1)) == "host"
    assert train.step_loop_for(make_elbo(VAE()), mesh, (28, 28, 1)) == "scan"
    # SGD, not Adam: Adam normalises each update, so a bias whose gradient is zero up to
    # rounding (conv biases before a GroupNorm of one channel per group) moves by +-lr either
    # way; SGD keeps rounding-level gradient differences rounding-level.
    tx = optax.sgd(0.05)
    keys = train.make_keys(0)
    data = train.to_device(images, labels, mesh)
    index, weight = train.epoch_order(40, 16, seed=0, epoch=0)  # 3 steps, the last padded
    elbo = make_elbo(model)

    def run(host: bool):
        loop = "host" if host else "scan"
        call = train.make_train_call(elbo, tx, mesh, event_shape=(8, 8, 1), step_loop=loop)
        evaluate = train.make_evaluate(elbo, mesh, batch_size=16, step_loop=loop)
        state = train.init_train_state(model, tx, keys.init, mesh)
        state, metrics = call(state, data, index, weight, keys.train)
        return state, jax.device_get(metrics), evaluate(state.params, data, keys.eval)

    host_state, host_metrics, host_eval = run(True)
    scan_state, scan_metrics, scan_eval = run(False)
    assert int(host_state.step) == int(scan_state.step) == 3
    assert host_metrics.keys() == scan_metrics.keys()
    for name in host_metrics:
        assert host_metrics[name].shape == scan_metrics[name].shape == (3,)
        np.testing.assert_allclose(host_metrics[name], scan_metrics[name], rtol=1e-5, atol=1e-4)
    for a, b in zip(
        jax.tree.leaves(host_state.params), jax.tree.leaves(scan_state.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for name in ("elbo", "log_likelihood", "kl"):
        np.testing.assert_allclose(host_eval[name], scan_eval[name], rtol=1e-5)
