"""Shapes, options and validation of the Flax modules."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import VAE, init_params, make_elbo
from vae_jax.config import ModelConfig
from vae_jax.models import LOGVAR_MAX, LOGVAR_MIN, check_model, decoder_mean


@pytest.mark.parametrize(
    "model",
    [
        VAE(),
        VAE(hidden=(500, 500), activation="softplus"),
        VAE(hidden=(200, 200), activation="tanh", z_dim=50),
        VAE(architecture="conv"),
        VAE(architecture="conv", image_shape=(32, 32, 1), conv_channels=(32, 64, 128)),
        VAE(num_classes=10),
        VAE(architecture="conv", num_classes=10, likelihood="gaussian_pixel"),
    ],
    ids=["mlp400", "softplus500", "iwae_tanh", "conv28", "conv32", "cvae", "conv_cvae_gauss"],
)
def test_encode_decode_shapes(model, key):
    params = init_params(model, key)
    x = jax.random.uniform(key, (5, *model.image_shape))
    label = jnp.arange(5) % 10 if model.num_classes else None
    apply = jax.jit(model.apply, static_argnames="method")  # eager conv ops compile one by one
    mean, logvar = apply({"params": params}, x, label, method="encode")
    assert mean.shape == logvar.shape == (5, model.z_dim)
    z = jax.random.normal(key, (3, 5, model.z_dim))  # [samples, batch, z]
    out = apply({"params": params}, z, label, method="decode")
    assert out.loc.shape == (3, 5, *model.image_shape)
    assert (out.logvar is None) == (model.likelihood == "bernoulli")


def test_mlp_matches_the_pytorch_recipe_parameter_count(key):
    params = init_params(VAE(), key)
    count = sum(p.size for p in jax.tree.leaves(params))
    # fc1 784x400+400, fc21/fc22 2x(400x20+20), fc3 20x400+400, fc4 400x784+784
    assert count == (784 * 400 + 400) + 2 * (400 * 20 + 20) + (20 * 400 + 400) + (400 * 784 + 784)


def test_logvar_is_clipped_so_exp_cannot_overflow(key):
    model = VAE(hidden=(8,), z_dim=2)
    params = init_params(model, key)
    params = jax.tree.map(lambda p: p * 1e4, params)  # absurd weights: huge pre-activations
    x = jnp.ones((2, 28, 28, 1))
    _, logvar = model.apply({"params": params}, x, method="encode")
    assert float(logvar.min()) >= LOGVAR_MIN and float(logvar.max()) <= LOGVAR_MAX
    assert np.isfinite(np.exp(np.asarray(logvar))).all()


def test_conditional_samples_change_with_the_label(key):
    model = VAE(hidden=(32,), z_dim=4, num_classes=10)
    params = init_params(model, key)
    z = jax.random.normal(key, (10, 4))
    same_z = jnp.broadcast_to(z[:1], (10, 4))
    images = decoder_mean(model, params, same_z, jnp.arange(10))
    # the same z decoded under ten labels gives ten different images
    diffs = jnp.abs(images[:, None] - images[None, :]).sum(axis=(2, 3, 4))
    assert float(diffs[~jnp.eye(10, dtype=bool)].min()) > 1e-3
    with pytest.raises(ValueError, match="labels"):
        model.apply({"params": params}, z, None, method="decode")


def test_gaussian_likelihoods_have_their_parameters(key):
    assert "obs_logvar" not in init_params(VAE(likelihood="gaussian"), key)
    assert init_params(VAE(likelihood="gaussian_global"), key)["obs_logvar"].shape == ()
    pixel = init_params(VAE(likelihood="gaussian_pixel"), key)["obs_logvar"]
    assert pixel.shape == (28, 28, 1)
    # fixed std: log p(x|z) uses log(obs_std^2)
    model = VAE(likelihood="gaussian", obs_std=0.5, hidden=(8,), z_dim=2)
    out = model.apply({"params": init_params(model, key)}, jnp.zeros((1, 2)), method="decode")
    np.testing.assert_allclose(out.logvar, np.log(0.25), rtol=1e-6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"z_dim": 0}, "z_dim"),
        ({"architecture": "rnn"}, "architecture"),
        ({"likelihood": "poisson"}, "likelihood"),
        ({"activation": "swish2"}, "activation"),
        ({"architecture": "conv", "conv_channels": (8, 8, 8)}, "divisible by 8"),
        ({"obs_std": 0.0}, "obs_std"),
        ({"obs_std": float("nan")}, "obs_std must be > 0"),
        # wrong types, as positional use with the fields in another order gives them
        # (before: a bare TypeError from a comparison, or at init)
        ({"z_dim": "conv"}, "z_dim must be an integer, got 'conv'"),
        ({"z_dim": 2.0}, "z_dim must be an integer, got 2.0"),
        ({"z_dim": True}, "z_dim must be an integer, got True"),
        ({"hidden": 400}, "hidden must be a tuple of integers, got 400"),
        ({"conv_channels": (8, "16")}, "conv_channels must be a tuple of integers"),
        ({"image_shape": (28, 28.0, 1)}, "image_shape must be a tuple of integers"),
        ({"num_classes": None}, "num_classes must be an integer, got None"),
        ({"obs_std": "1"}, "obs_std must be a number, got '1'"),
    ],
)
def test_bad_model_options_raise_one_line_errors(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_model(VAE(**options))


def test_numpy_numbers_are_model_options():
    check_model(VAE(z_dim=np.int64(2), hidden=(np.int32(8),), obs_std=np.float32(0.5)))


def test_bfloat16_compute_keeps_float32_params(key):
    model = ModelConfig(dtype="bfloat16", hidden=(32,), z_dim=4).build((28, 28, 1))
    params = init_params(model, key)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    value = make_elbo(model)(params, jax.random.uniform(key, (4, 28, 28, 1)), key)
    assert value.dtype == jnp.float32 and np.isfinite(value)


def test_the_model_functions_refuse_inputs_that_do_not_fit_in_one_line(key):
    """(Before: init_params made parameters for 5 inputs that no 4-value data fit, the
    sample counts 0 gave empty arrays, a [1]-shaped logvar broadcast silently, reconstruct
    took values far outside a Bernoulli model's [0, 1], gaussian_kl summed a [3, 1] mean
    over a [3, 5] logvar, event_ndims=-1 acted as 0, and decoder_mean gave NaN for label 7
    of 3 classes.)"""
    import vae_jax

    model = VAE(image_shape=(4,), z_dim=2, hidden=(8,), likelihood="bernoulli")
    params = init_params(model, key)
    x = np.full((3, 4), 0.5, np.float32)
    mean = jnp.zeros((3, 2))
    cases = [
        (
            lambda: init_params(model, key, np.zeros((1, 5))),
            r"init_params: examples are \(5,\), expected \(4,\)",
        ),
        (lambda: init_params(model, key, np.zeros((0, 4))), r"init_params: x must be \[N >= 1"),
        (lambda: vae_jax.reparameterize(key, mean, mean, 0), "num_samples must be >= 1, got 0"),
        (
            lambda: vae_jax.reparameterize(key, mean, mean, 2.0),
            "num_samples must be an integer, got 2.0",
        ),
        (
            lambda: vae_jax.reparameterize(key, mean, mean[:, :1], 1),
            r"mean and logvar must have the same shape, got \(3, 2\) and \(3, 1\)",
        ),
        (
            lambda: vae_jax.sample_latent(model, params, x, None, key, 0),
            "num_samples must be >= 1, got 0",
        ),
        (
            lambda: vae_jax.reconstruct(model, params, x[:, :3]),
            r"reconstruct: examples are \(3,\), expected \(4,\)",
        ),
        (
            lambda: vae_jax.reconstruct(model, params, 255 * x),
            r"reconstruct: x has values in \[127.5, 127.5\]",
        ),
    ]
    conditional = VAE(image_shape=(4,), z_dim=2, hidden=(8,), num_classes=3)
    c_params = init_params(conditional, key)
    z = jnp.zeros((3, 2))
    labels = np.array([0, 1, 7])
    cases += [
        (
            lambda: vae_jax.gaussian_kl(np.ones((3, 1)), np.zeros((3, 5))),
            r"mean and logvar must have the same shape, got \(3, 1\) and \(3, 5\)",
        ),
        (
            lambda: vae_jax.bernoulli_log_likelihood(x, x, event_ndims=-1),
            r"event_ndims must be in 0\.\.2 \(the arrays' rank\), got -1",
        ),
        (
            lambda: vae_jax.gaussian_log_likelihood(x, x, x, event_ndims=5),
            r"event_ndims must be in 0\.\.2",
        ),
        (
            lambda: vae_jax.bernoulli_log_likelihood(x, x, event_ndims=True),
            "event_ndims must be an integer, got True",
        ),
        (
            lambda: vae_jax.decoder_mean(conditional, c_params, z, labels),
            r"decoder_mean: labels span 0\.\.7, outside 0\.\.2",
        ),
        (
            lambda: vae_jax.decoder_mean(conditional, c_params, z),
            "decoder_mean: this model is conditional: it needs labels",
        ),
        (
            lambda: vae_jax.decoder_mean(conditional, c_params, z, labels[:1]),
            r"decoder_mean: \(1,\) labels for 3 examples",
        ),
        (
            lambda: vae_jax.decoder_mean(conditional, c_params, z, labels * 0.5),
            "decoder_mean: labels must be an integer numpy array, got float64",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as caught:
            call()
        assert "\n" not in str(caught.value)
    assert vae_jax.reconstruct(model, params, x).shape == (3, 4)
    assert vae_jax.decoder_mean(conditional, c_params, z, labels % 3).shape == (3, 4)
    assert vae_jax.reparameterize(key, mean, mean, 2).shape == (2, 3, 2)
    jitted = jax.jit(lambda m, lv: vae_jax.reparameterize(key, m, lv, 1))  # (at trace time)
    with pytest.raises(ValueError, match="mean and logvar must have the same shape"):
        jitted(mean, mean[:, :1])
