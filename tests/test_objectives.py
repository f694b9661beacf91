"""Objectives against independent references: numpy, Monte Carlo, closed-form log p(x)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.linear_gaussian import LinearGaussianVAE, exact_log_px, exact_posterior_params
from vae_jax import (
    VAE,
    bernoulli_log_likelihood,
    gaussian_kl,
    gaussian_log_likelihood,
    init_params,
    make_elbo,
    make_iwae,
)
from vae_jax.config import ModelConfig
from vae_jax.objectives import Objective

X_DIM, Z_DIM, OBS_LOGVAR = 6, 3, float(np.log(0.3))


@pytest.fixture(scope="module")
def linear():
    model = LinearGaussianVAE(X_DIM, Z_DIM, OBS_LOGVAR)
    params = model.init(jax.random.key(1), jnp.zeros((1, X_DIM)))["params"]
    x = jax.random.normal(jax.random.key(2), (16, X_DIM)) + params["dec_b"][None]
    return model, params, x


def test_gaussian_kl_matches_monte_carlo(key):
    mean = jnp.array([[0.5, -1.0, 2.0], [0.0, 0.3, -0.7]])
    logvar = jnp.array([[0.2, -1.5, 0.7], [-0.3, 1.0, 0.0]])
    mean, logvar = mean[None], logvar[None]
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, (400_000, 2, 3))
    log_q = jnp.sum(-0.5 * (jnp.log(2 * jnp.pi) + logvar + (z - mean) ** 2 / jnp.exp(logvar)), -1)
    log_p = jnp.sum(-0.5 * (jnp.log(2 * jnp.pi) + z**2), -1)
    mc = jnp.mean(log_q - log_p, axis=0)
    closed = jax.jit(gaussian_kl)(mean[0], logvar[0])
    assert closed.shape == (2,)
    np.testing.assert_allclose(closed, mc, atol=0.02)
    np.testing.assert_allclose(gaussian_kl(jnp.zeros(4), jnp.zeros(4)), 0.0, atol=1e-7)


def test_bernoulli_log_likelihood_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.random((5, 4, 4, 1)).astype(np.float32)
    logits = rng.normal(0, 3, (5, 4, 4, 1)).astype(np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    expected = np.sum(x * np.log(p) + (1 - x) * np.log1p(-p), axis=(1, 2, 3))
    got = jax.jit(lambda x, lg: bernoulli_log_likelihood(x, lg, event_ndims=3))(x, logits)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("logit", [1e3, -1e3, 80.0, -80.0, 150.0])
def test_bernoulli_log_likelihood_extreme_logits_are_finite_and_exact(logit):
    x = jnp.array([[0.0, 1.0, 0.3]])
    logits = jnp.full((1, 3), logit)
    got = jax.jit(lambda x, lg: bernoulli_log_likelihood(x, lg, event_ndims=1))(x, logits)
    # log sigmoid(l) = -softplus(-l), log(1 - sigmoid(l)) = -softplus(l), exact in float64.
    softplus = lambda v: np.logaddexp(0.0, v)  # noqa: E731
    xs = np.array([0.0, 1.0, 0.3])
    expected = np.sum(-xs * softplus(-logit) - (1 - xs) * softplus(logit))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[0], expected, rtol=1e-6)
    grad = jax.grad(lambda lg: bernoulli_log_likelihood(x, lg, event_ndims=1).sum())(logits)
    assert np.isfinite(grad).all()


def test_gaussian_log_likelihood_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.random((3, 5)).astype(np.float32)
    mean = rng.random((3, 5)).astype(np.float32)
    for logvar in (np.float32(-1.2), rng.normal(size=(5,)).astype(np.float32)):
        var = np.exp(logvar.astype(np.float64))
        expected = np.sum(-0.5 * np.log(2 * np.pi * var) - (x - mean) ** 2 / (2 * var), axis=-1)
        got = gaussian_log_likelihood(x, mean, logvar, event_ndims=1)
        np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_likelihoods_over_image_events_broadcast_like_numpy():
    """Image-shaped events with every broadcast the likelihoods accept: a scalar, a
    per-pixel and a per-row log-variance, and samples [L, batch] against data [batch]."""
    rng = np.random.default_rng(2)
    x = rng.random((3, 4, 5, 2)).astype(np.float32)  # [batch, H, W, C]
    mean = rng.random((2, 3, 4, 5, 2)).astype(np.float32)  # [L, batch, H, W, C]
    for logvar in (
        np.float32(0.3),
        rng.normal(size=(4, 5, 2)).astype(np.float32),
        rng.normal(size=(4, 1, 1)).astype(np.float32),
    ):
        var = np.exp(logvar.astype(np.float64))
        dens = -0.5 * np.log(2 * np.pi * var) - (x[None] - mean) ** 2 / (2 * var)
        got = jax.jit(lambda x, m, v: gaussian_log_likelihood(x, m, v, event_ndims=3))(
            x, mean, logvar
        )
        np.testing.assert_allclose(got, dens.sum(axis=(-3, -2, -1)), rtol=1e-5)
    logits = rng.normal(size=(2, 3, 4, 5, 2)).astype(np.float32)
    expected = np.sum(x[None] * logits - np.logaddexp(0.0, logits), axis=(-3, -2, -1))
    got = jax.jit(lambda x, lg: bernoulli_log_likelihood(x, lg, event_ndims=3))(x, logits)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_elbo_is_a_lower_bound_and_iwae_tightens_it(linear):
    model, params, x = linear
    log_px = exact_log_px(params, np.asarray(x), OBS_LOGVAR).mean()
    keys = jax.random.split(jax.random.key(3), 400)
    over_keys = lambda f: jax.jit(jax.vmap(f, in_axes=(None, None, 0)))(params, x, keys)  # noqa: E731
    elbo = over_keys(make_elbo(model))
    bounds = {k: over_keys(make_iwae(model, num_samples=k)).mean() for k in (1, 5, 50)}
    assert elbo.mean() < log_px - 0.1  # an imperfect encoder leaves a gap
    # IWAE(k=1) is the ELBO with a sampled instead of a closed-form KL: equal in expectation.
    diff = over_keys(make_iwae(model, num_samples=1)) - elbo
    assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(diff.size)
    assert bounds[1] < bounds[5] < bounds[50] <= log_px


def test_elbo_is_exact_with_the_exact_posterior(linear):
    model, params, x = linear
    w = np.linalg.qr(np.random.default_rng(4).normal(size=(X_DIM, Z_DIM)))[0].T * [
        [2.0],
        [1.0],
        [0.5],
    ]
    exact = exact_posterior_params(params, OBS_LOGVAR, orthogonal_w=w)
    log_px = exact_log_px(exact, np.asarray(x), OBS_LOGVAR).mean()
    # log p(x, z) - log q(z|x) = log p(x) for every z when q is the exact posterior, so
    # every IWAE estimate is exact, and the ELBO (closed-form KL) is exact in expectation.
    keys = jax.random.split(jax.random.key(5), 400)
    for k in (1, 7):
        iwae = jax.vmap(make_iwae(model, num_samples=k), in_axes=(None, None, 0))(exact, x, keys)
        np.testing.assert_allclose(iwae, np.full(400, log_px), rtol=1e-4)
    elbo = jax.vmap(make_elbo(model), in_axes=(None, None, 0))(exact, x, keys)
    assert abs(elbo.mean() - log_px) < 4 * elbo.std() / np.sqrt(elbo.size)


def test_elbo_under_jit_grad_vmap_and_deterministic_per_key(key):
    model = VAE(hidden=(32,), z_dim=4)
    params = init_params(model, key)
    batch = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1))
    elbo = make_elbo(model)
    k1, k2 = jax.random.key(10), jax.random.key(11)
    value = jax.jit(elbo)(params, batch, k1)
    assert value.shape == () and value.dtype == jnp.float32
    np.testing.assert_allclose(elbo(params, batch, k1), value, rtol=1e-6)
    assert jax.jit(elbo)(params, batch, k1) == value  # same key, same value
    assert jax.jit(elbo)(params, batch, k2) != value  # the key is the only randomness
    grads = jax.jit(jax.grad(elbo))(params, batch, k1)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    # vmap over keys and over a leading axis of batches
    per_key = jax.vmap(elbo, in_axes=(None, None, 0))(params, batch, jnp.stack([k1, k2]))
    np.testing.assert_allclose(per_key[0], value, rtol=1e-5)
    per_batch = jax.vmap(elbo, in_axes=(None, 0, None))(params, batch.reshape(2, 4, 28, 28, 1), k1)
    assert per_batch.shape == (2,)


def test_elbo_terms_decompose_and_beta(key):
    model = VAE(hidden=(32,), z_dim=4)
    params = init_params(model, key)
    batch = {"image": jax.random.randint(key, (8, 28, 28, 1), 0, 256).astype(jnp.uint8)}
    terms = make_elbo(model).terms(params, batch, key)
    np.testing.assert_allclose(terms.elbo, terms.log_likelihood - terms.kl, rtol=1e-6)
    beta4 = make_elbo(model, beta=4.0).terms(params, batch, key)
    np.testing.assert_allclose(beta4.elbo, terms.log_likelihood - 4.0 * terms.kl, rtol=1e-6)
    np.testing.assert_allclose(make_elbo(model, beta=1.0)(params, batch, key), terms.elbo)
    # L samples: the mean of L single-sample log-likelihoods, same closed-form KL.
    multi = make_elbo(model, num_samples=5).terms(params, batch, key)
    np.testing.assert_allclose(multi.kl, terms.kl, rtol=1e-6)
    assert multi.elbo != terms.elbo


def test_free_bits_only_raises_small_kl_terms(key):
    model = VAE(hidden=(32,), z_dim=4)
    params = init_params(model, key)
    batch = jax.random.uniform(key, (8, 28, 28, 1))
    plain = make_elbo(model).terms(params, batch, key)
    huge = make_elbo(model, free_bits=100.0).terms(params, batch, key)
    np.testing.assert_allclose(huge.elbo, plain.log_likelihood - 4 * 100.0, rtol=1e-6)
    tiny = make_elbo(model, free_bits=1e-9).terms(params, batch, key)
    np.testing.assert_allclose(tiny.elbo, plain.elbo, rtol=1e-5)


def test_objective_rejects_bad_options():
    model = VAE()
    with pytest.raises(ValueError, match="num_samples"):
        make_iwae(model, num_samples=0)
    with pytest.raises(ValueError, match="beta"):
        make_elbo(model, beta=-1.0)
    with pytest.raises(ValueError, match="kind"):
        Objective(model, "nope")
    # (before: 2.5 samples and a NaN beta were accepted, a string a bare TypeError)
    with pytest.raises(ValueError, match="num_samples must be an integer, got 2.5"):
        make_elbo(model, num_samples=2.5)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0, got nan"):
        make_elbo(model, beta=float("nan"))
    with pytest.raises(ValueError, match="beta must be a finite number >= 0, got '1'"):
        make_elbo(model, beta="1")
    with pytest.raises(ValueError, match="free_bits must be a finite number >= 0, got inf"):
        make_elbo(model, free_bits=float("inf"))
    with pytest.raises(ValueError, match="num_samples must be an integer, got '5'"):
        make_iwae(model, num_samples="5")
    assert make_elbo(model, beta=np.float32(0.5), num_samples=np.int64(2)).num_samples == 2
    assert make_iwae(model, num_samples=50).name == "IWAE (k=50)"
    assert make_elbo(model, beta=4.0).name == "beta-ELBO (beta=4)"


# ----------------------------------------------------------------------------- bad batches


def test_objectives_check_the_batch_at_the_boundary():
    """One clear line instead of a confident wrong number or a deep traceback; by shape
    always, by value only where the values are concrete (outside jit). The messages are
    `vae_jax.arrays`' rules, the same as `fit`'s."""
    model = ModelConfig(hidden=(8,), z_dim=2).build((28, 28, 1))
    params = init_params(model, jax.random.key(0))
    elbo, key = make_elbo(model), jax.random.key(1)
    images = np.full((4, 28, 28, 1), 0.5, np.float32)
    with_nan = np.where(np.arange(images.size).reshape(images.shape) == 7, np.nan, images)
    cases = {
        "the batch: x must be [N >= 1, *event_shape] (a batch axis first, then one example's "
        "shape), got shape (28, 28, 1) (one example without its batch axis?)": images[0],
        "got shape (0, 28, 28, 1)": images[:0],
        "the batch: examples are (784,), expected (28, 28, 1)": images.reshape(4, 784),
        "the batch: examples are (28, 28), expected (28, 28, 1)": images[..., 0],
        "the batch: x has values in [255, 255]; a Bernoulli likelihood needs values in [0, 1]": (
            images * 510
        ),
        "the batch: x has values in [0, 255]; a Bernoulli": jnp.asarray(images * 510).at[0].set(0),
        "the batch: x contains NaN (1 of 3136 values)": with_nan,
        "the batch: x contains infinite values (or beyond float32)": images.astype(float) * 1e300,
        "the batch: x must be numeric (uint8, or values as given), got dtype complex64": (
            images.astype(np.complex64)
        ),
    }
    for message, batch in cases.items():
        for call in (elbo, elbo.terms, elbo.per_example, make_iwae(model, num_samples=2)):
            with pytest.raises(ValueError, match=re.escape(message)):
                call(params, batch, key)
    with pytest.raises(ValueError, match=re.escape("got shape (28, 28, 1)")):
        jax.jit(elbo)(params, images[0], key)  # shapes: also when tracing
    assert np.isfinite(jax.jit(elbo)(params, images * 510, key))  # values: not under jit
    np.testing.assert_allclose(  # round-off at the edge of [0, 1] is accepted
        elbo(params, np.float64(1.0000000000000002) * np.ones_like(images), key),
        elbo(params, np.ones_like(images), key),
    )
    conditional = ModelConfig(hidden=(8,), z_dim=2, conditional=True).build((28, 28, 1))
    cparams = init_params(conditional, jax.random.key(0))
    with pytest.raises(ValueError, match="this model is conditional: pass"):
        make_elbo(conditional)(cparams, images, key)
    labels = {
        "the batch: (3,) labels for 4 examples (expected shape (4,))": np.zeros(3, np.int32),
        "the batch: labels must be an integer numpy array, got float64": np.zeros(4),
    }
    for message, label in labels.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            make_elbo(conditional)(cparams, {"image": images, "label": label}, key)
        with pytest.raises(ValueError, match="labels"):  # shape and dtype: also under jit
            jax.jit(make_elbo(conditional))(cparams, {"image": images, "label": label}, key)


def test_out_of_range_labels_are_refused_eagerly_and_nan_under_jit():
    """A conditional model's label outside 0..num_classes - 1 (12, -1): one line outside jit,
    NaN under jit (jax.nn.one_hot alone makes such a label all zeros: a plausible input and
    a plausible wrong ELBO, -563.41 against -567.94 on 5204291). Other examples and valid
    labels are untouched."""
    images = np.random.default_rng(0).random((4, 8, 8, 1)).astype(np.float32)
    key = jax.random.key(1)
    for architecture, kinds in (("mlp", (make_elbo, make_iwae)), ("conv", (make_elbo,))):
        config = ModelConfig(
            architecture=architecture, hidden=(8,), conv_channels=(4, 8), z_dim=2, conditional=True
        )
        model = config.build((8, 8, 1))
        params = init_params(model, jax.random.key(0))
        for make in kinds:
            objective = make(model, num_samples=3)
            per_example = jax.jit(objective.per_example)
            grad = jax.jit(jax.grad(objective))
            good = per_example(params, {"image": images, "label": np.array([0, 3, 9, 1])}, key)
            assert np.all(np.isfinite(good.elbo))
            for bad_label in (12, -1):
                bad = {"image": images, "label": np.array([0, bad_label, 9, 1])}
                for call in (objective, objective.terms, objective.per_example):
                    with pytest.raises(ValueError, match=f"labels span {min(bad_label, 0)}.."):
                        call(params, bad, key)
                per = per_example(params, bad, key)
                for value in per:  # the bound and its terms: NaN for example 1 only
                    assert np.isnan(value[1]) and np.all(np.isfinite(np.delete(value, 1)))
                # (the conv's gradient: the same one-hot, and the test's slowest compile)
                if architecture == "mlp":
                    assert any(np.isnan(g).any() for g in jax.tree.leaves(grad(params, bad, key)))
            if architecture == "mlp":
                assert np.isnan(jax.jit(objective)(params, bad, key))


class _SampledLatent(LinearGaussianVAE):
    """The linear-Gaussian VAE through the `sample_latent` hook, with no closed-form KL: the
    objectives must then use the Monte Carlo KL, mean_L (log q - log p)."""

    def sample_latent(self, x, label, key, num_samples):
        from vae_jax.objectives import (
            LatentSample,
            diag_gaussian_log_prob,
            reparameterize,
            standard_normal_log_prob,
        )

        mean, logvar = self.encode(x, label)
        z = reparameterize(key, mean, logvar, num_samples)
        return LatentSample(
            z, diag_gaussian_log_prob(z, mean, logvar), standard_normal_log_prob(z), None
        )


def test_sample_latent_hook_gives_the_same_bounds_with_a_monte_carlo_kl():
    plain = LinearGaussianVAE(X_DIM, Z_DIM, OBS_LOGVAR)
    hooked = _SampledLatent(X_DIM, Z_DIM, OBS_LOGVAR)
    params = init_params(plain, jax.random.key(0), jnp.zeros((1, X_DIM)))
    x = jax.random.normal(jax.random.key(1), (16, X_DIM))
    key = jax.random.key(2)
    for make in (make_iwae, make_elbo):
        kwargs = {"num_samples": 7}
        a = jax.jit(make(plain, **kwargs).terms)(params, x, key)
        b = jax.jit(make(hooked, **kwargs).terms)(params, x, key)
        np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=1e-6)
        if make is make_iwae:  # the same samples and weights: the same bound
            np.testing.assert_allclose(a.elbo, b.elbo, rtol=1e-6)
    # The Monte Carlo KL (2000 samples) estimates the closed form: within 3% (largest seen: 1%).
    mc = make_elbo(hooked, num_samples=2000).per_example(params, x, key).kl
    exact = make_elbo(plain).per_example(params, x, key).kl
    np.testing.assert_allclose(mc, exact, rtol=0.03, atol=0.1)
    with pytest.raises(ValueError, match="free_bits needs the per-latent KL"):
        make_elbo(hooked, free_bits=0.5)


def test_per_call_weights_and_beta_are_checked():
    """(Before: one weight broadcast, so terms returned the batch's sum, not its mean; zero
    weights gave NaN; a per-call beta of -5 gave an ELBO above E[log p(x|z)]; beta=1e39,
    infinite in float32, an ELBO of -inf.)"""
    model = VAE(image_shape=(4,), z_dim=2, hidden=(8,))
    params = init_params(model, jax.random.key(0))
    x, key = np.full((4, 4), 0.5, np.float32), jax.random.key(1)
    objective = make_elbo(model)
    for kwargs, message in [
        (
            {"weights": np.ones(1)},
            r"weights must have shape \(4,\) \(one per example\), got \(1,\)",
        ),
        ({"weights": np.zeros(4)}, "weights must be finite and >= 0, and not all 0"),
        ({"weights": -np.ones(4)}, "weights must be finite and >= 0, and not all 0"),
        ({"beta": -5.0}, "beta must be a finite number >= 0, got -5.0$"),
        ({"beta": float("nan")}, "beta must be a finite number >= 0, got nan"),
    ]:
        with pytest.raises(ValueError, match=message):
            objective.terms(params, x, key, **kwargs)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0, got 1e.39, beyond"):
        make_elbo(model, beta=1e39)
    assert objective.terms(params, x, key, weights=np.ones(4)).elbo == objective(params, x, key)
    traced = jax.jit(lambda w, b: objective.terms(params, x, key, weights=w, beta=b).elbo)
    assert np.isfinite(traced(np.ones(4), np.float32(0.5)))  # (tracers: by shape only)
