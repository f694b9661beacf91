"""The issue-15 latent models (vae_jax/latents.py): each log-density against an independent
computation (numpy MLPs and scipy densities, a brute-force Jacobian), the bounds' identities
and orderings, the importance-sampled evaluation, training with exact resume, bad options."""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special, stats

import vae_jax
from experiments import evaluate as evaluate_cli
from experiments import train as train_cli
from tests.cli_runner import run_cli
from vae_jax.config import ModelConfig
from vae_jax.evaluate import evaluate_dataset, format_report, importance_terms, make_report
from vae_jax.latents import check_latent_model, made_masks
from vae_jax.objectives import reparameterize
from vae_jax.recipes import RECIPES

SHAPE = (4, 4, 1)  # 16 binary pixels: tiny layers, few compiles
BASE = vae_jax.VAE(image_shape=SHAPE, hidden=(8,), z_dim=3, activation="tanh")
MODELS = {
    "hierarchical": vae_jax.HierarchicalVAE(
        image_shape=SHAPE, latent_dims=(4, 2), hidden=((8,), (6,))
    ),
    "vamp": vae_jax.VampPriorVAE(BASE, num_pseudo_inputs=5),
    "iaf": vae_jax.IAFVAE(BASE, flow_depth=2, flow_hidden=(8,)),
}

# A Gaussian likelihood (learned per-pixel variance), for the evaluation's other branch.
GAUSSIAN_IAF = vae_jax.IAFVAE(
    dataclasses.replace(BASE, likelihood="gaussian_pixel"), flow_depth=1, flow_hidden=(8,)
)
ALL_MODELS = {**MODELS, "iaf_gaussian": GAUSSIAN_IAF}


def _binary(seed: int, n: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, *SHAPE)) < 0.4).astype(np.float32)


@functools.cache
def _params(name: str):
    return vae_jax.init_params(ALL_MODELS[name], jax.random.key(1))


# ----------------------------------------------------------------------------- numpy references


def _np_mlp(params, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An `MLPEncoder` in float64 numpy: tanh Dense layers, then the (mean, logvar) head."""
    layers = sorted(params, key=lambda name: int(name.split("_")[1]))
    h = np.asarray(h, np.float64)
    for i, name in enumerate(layers):
        h = h @ np.asarray(params[name]["kernel"], np.float64) + np.asarray(params[name]["bias"])
        if i < len(layers) - 1:
            h = np.tanh(h)
    mean, logvar = np.split(h, 2, axis=-1)
    return mean, np.clip(logvar, -30.0, 30.0)


def _np_log_normal(z, mean, logvar) -> np.ndarray:
    return stats.norm.logpdf(z, mean, np.exp(0.5 * logvar)).sum(-1)


# ----------------------------------------------------------------------------- densities


def test_hierarchical_layer_densities_match_numpy():
    model, params = MODELS["hierarchical"], _params("hierarchical")
    x = _binary(0, 5)
    layers = jax.jit(
        lambda p, x, k: model.apply({"params": p}, x, None, k, 7, method="sample_layers")
    )(params, x, jax.random.key(3))
    z1, z2 = (np.asarray(z, np.float64) for z in layers.z)
    assert z1.shape == (7, 5, 4) and z2.shape == (7, 5, 2)
    mean1, logvar1 = _np_mlp(params["bottom"]["encoder"], x.reshape(5, -1))
    mean2, logvar2 = _np_mlp(params["up_0"], z1)  # q(z2 | z1)
    prior_mean1, prior_logvar1 = _np_mlp(params["down_0"], z2)  # p(z1 | z2)
    expected_q = np.stack([_np_log_normal(z1, mean1, logvar1), _np_log_normal(z2, mean2, logvar2)])
    expected_p = np.stack(
        [_np_log_normal(z1, prior_mean1, prior_logvar1), stats.norm.logpdf(z2).sum(-1)]
    )
    np.testing.assert_allclose(layers.log_q, expected_q, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(layers.log_p, expected_p, rtol=1e-5, atol=1e-4)
    # z2 is a draw from q(z2|z1): its standardized noise is N(0, 1)-sized, not a constant.
    eps = (z2 - mean2) / np.exp(0.5 * logvar2)
    assert 0.3 < eps.std() < 2.0
    # sample_latent is the same draw with the layers summed: the joint's prior part.
    latent = jax.jit(
        lambda p, x, k: model.apply({"params": p}, x, None, k, 7, method="sample_latent")
    )(params, x, jax.random.key(3))
    np.testing.assert_allclose(latent.log_q, expected_q.sum(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(latent.log_p, expected_p.sum(0), rtol=1e-5, atol=1e-4)
    assert latent.kl is None


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian_global"])
def test_vamp_prior_is_the_numpy_mixture_of_the_pseudo_input_posteriors(likelihood):
    if likelihood == "bernoulli":
        model, params = MODELS["vamp"], dict(_params("vamp"))
    else:
        base = dataclasses.replace(BASE, likelihood=likelihood)
        model = vae_jax.VampPriorVAE(base, num_pseudo_inputs=5)
        params = dict(vae_jax.init_params(model, jax.random.key(1)))
    assert params["pseudo_inputs"].shape == (5, *SHAPE)
    # Spread the pseudo-inputs (some beyond [0, 1]: clipped for a Bernoulli likelihood, used
    # as they are for a Gaussian one) so that the five components differ.
    raw = np.random.default_rng(1).uniform(-0.5, 1.5, (5, *SHAPE)).astype(np.float32)
    params["pseudo_inputs"] = jnp.asarray(raw)
    u = (np.clip(raw, 0.0, 1.0) if likelihood == "bernoulli" else raw).reshape(5, -1)
    mean, logvar = _np_mlp(params["base"]["encoder"], u)  # [K, z_dim]
    z = np.random.default_rng(2).normal(size=(3, 4, 3)) * 2.0
    z[0, 0] = 40.0  # far from every component: the logsumexp must stay finite
    log_k = stats.norm.logpdf(z[..., None, :], mean, np.exp(0.5 * logvar)).sum(-1)  # [3, 4, K]
    expected = special.logsumexp(log_k, axis=-1) - np.log(5)
    got = jax.jit(lambda p, z: model.apply({"params": p}, z, method="prior_log_prob"))(
        params, jnp.asarray(z, jnp.float32)
    )
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # sample_latent's log p is that prior at its samples, log q the encoder's Gaussian.
    x = _binary(1, 4)
    latent = model.apply({"params": params}, x, None, jax.random.key(4), 6, method="sample_latent")
    q_mean, q_logvar = _np_mlp(params["base"]["encoder"], x.reshape(4, -1))
    zs = np.asarray(latent.z, np.float64)
    log_k = stats.norm.logpdf(zs[..., None, :], mean, np.exp(0.5 * logvar)).sum(-1)
    np.testing.assert_allclose(
        latent.log_p, special.logsumexp(log_k, axis=-1) - np.log(5), rtol=1e-5
    )
    np.testing.assert_allclose(latent.log_q, _np_log_normal(zs, q_mean, q_logvar), rtol=1e-5)


def test_made_masks_are_autoregressive():
    masks = made_masks(5, (7, 6), 2)
    reach = masks[0]
    for mask in masks[1:]:
        reach = (reach @ mask > 0).astype(np.float32)  # [inputs, outputs]: any path
    for block in range(2):
        out = reach[:, block * 5 : (block + 1) * 5]
        # output i depends exactly on inputs j < i (with enough hidden units, all of them)
        np.testing.assert_array_equal(out, np.triu(np.ones((5, 5)), k=1))
    (only,) = made_masks(1, (), 2)[-1:]
    assert not only.any()  # one latent: the outputs see no input, only biases and context


def test_iaf_log_q_is_the_base_density_minus_the_brute_force_log_determinant():
    model, params = MODELS["iaf"], dict(_params("iaf"))
    # Larger, random flow weights than the initialisation, so the Jacobian is far from I.
    leaves, tree = jax.tree.flatten({k: v for k, v in params.items() if k.startswith("steps")})
    keys = jax.random.split(jax.random.key(5), len(leaves))
    leaves = [jax.random.normal(k, a.shape) for k, a in zip(keys, leaves, strict=True)]
    params.update(jax.tree.unflatten(tree, leaves))
    x, key = _binary(2, 3), jax.random.key(6)
    latent = model.apply({"params": params}, x, None, key, 4, method="sample_latent")
    mean, logvar = model.apply({"params": params}, x, method="encode")
    z0 = reparameterize(key, mean, logvar, 4)  # the base draw, as sample_latent makes it
    context = jnp.concatenate([mean, logvar], axis=-1)
    flow = lambda z, c: model.apply({"params": params}, z, c, method="flow")[0]  # noqa: E731
    for s in range(4):
        for b in range(3):
            jac = jax.jacfwd(flow)(z0[s, b], context[b])  # [z_dim, z_dim]
            sign, log_abs_det = np.linalg.slogdet(np.asarray(jac, np.float64))
            assert sign != 0
            expected = _np_log_normal(np.asarray(z0[s, b]), mean[b], logvar[b]) - log_abs_det
            np.testing.assert_allclose(latent.log_q[s, b], expected, rtol=1e-5, atol=1e-4)
    assert np.abs(np.asarray(latent.z) - np.asarray(z0)).max() > 0.1  # the flow moved z
    np.testing.assert_allclose(
        latent.log_p, stats.norm.logpdf(np.asarray(latent.z, np.float64)).sum(-1), rtol=1e-5
    )


# ----------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bounds_identities_and_determinism(name):
    model, params = MODELS[name], _params(name)
    x = _binary(3, 6)
    elbo, iwae1, iwae8 = (
        vae_jax.make_elbo(model),
        vae_jax.make_iwae(model, num_samples=1),
        vae_jax.make_iwae(model, num_samples=8),
    )
    keys = jax.random.split(jax.random.key(7), 64)
    over_keys = lambda f: jax.jit(jax.vmap(f, (None, None, 0)))(params, x, keys)  # noqa: E731
    elbos, iwae1s, iwae8s = over_keys(elbo), over_keys(iwae1), over_keys(iwae8)
    # With no closed-form KL, IWAE k=1 and the 1-sample ELBO are the same estimate.
    np.testing.assert_allclose(iwae1s, elbos, rtol=1e-5)
    assert iwae8s.mean() > elbos.mean()  # the tighter bound (over 64 keys)
    k1, k2 = jax.random.key(10), jax.random.key(11)
    value = jax.jit(elbo)(params, x, k1)
    assert value == jax.jit(elbo)(params, x, k1) and value != jax.jit(elbo)(params, x, k2)
    np.testing.assert_allclose(elbo(params, x, k1), value, rtol=1e-5)  # eager = jit
    grads = jax.jit(jax.grad(iwae8))(params, x, k1)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    assert any(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("name", sorted(ALL_MODELS))
def test_importance_sampled_evaluation(name):
    """The evaluation's IS_k is the IWAE_k bound's estimator (equal means over keys), at
    least the ELBO from the same samples, and each example's numbers depend only on its id."""
    model, params = ALL_MODELS[name], _params(name)
    x = _binary(4, 6)
    evaluate = jax.jit(functools.partial(importance_terms, model, num_samples=10, sample_chunk=4))
    terms = evaluate(params, x, None, jax.random.key(8))
    assert all(t.shape == (6,) for t in terms)
    assert np.all(terms.log_px >= terms.elbo)  # log-mean-exp >= mean, same samples
    np.testing.assert_allclose(terms.elbo, terms.log_px_z - terms.kl, rtol=1e-6)
    # Examples 2..4 alone, by their ids, one chunk of 10: the same numbers.
    alone = jax.jit(functools.partial(importance_terms, model, num_samples=10, sample_chunk=10))(
        params, x[2:5], None, jax.random.key(8), example_ids=jnp.arange(2, 5)
    )
    for a, b in zip(alone, terms, strict=True):
        np.testing.assert_allclose(a, b[2:5], rtol=1e-5, atol=1e-5)
    # Over 200 keys, IS_10 and make_iwae(k=10) estimate the same expectation.
    keys = jax.random.split(jax.random.key(9), 200)
    is_means = jax.vmap(lambda k: evaluate(params, x, None, k).log_px.mean())(keys)
    iwae = jax.jit(jax.vmap(vae_jax.make_iwae(model, num_samples=10), (None, None, 0)))
    diff = np.asarray(is_means) - np.asarray(iwae(params, x, keys))
    assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(diff.size)


def test_conditional_hierarchy_uses_labels_in_the_bounds_and_the_evaluation():
    model = vae_jax.HierarchicalVAE(
        image_shape=SHAPE, latent_dims=(3, 2), hidden=((8,), (4,)), num_classes=3
    )
    params = vae_jax.init_params(model, jax.random.key(0))
    x, key = _binary(5, 4), jax.random.key(1)
    labels = [np.array([0, 1, 2, 0]), np.array([2, 2, 1, 1])]
    values = [vae_jax.make_elbo(model)(params, {"image": x, "label": y}, key) for y in labels]
    assert values[0] != values[1]
    fn = functools.partial(importance_terms, model, num_samples=4, sample_chunk=4)
    per = [jax.jit(fn)(params, x, y, key).log_px for y in labels]
    assert np.all(np.isfinite(per[0])) and not np.allclose(per[0], per[1])
    # A label the model has no class for (3 of 3 classes): one line outside jit, NaN for that
    # example under jit (in the bounds and the evaluation), never a plausible number.
    bad = {"image": x, "label": np.array([0, 3, 2, 0])}
    with pytest.raises(ValueError, match="the batch: labels span 0..3, outside 0..2"):
        vae_jax.make_elbo(model)(params, bad, key)
    per_example = jax.jit(vae_jax.make_elbo(model).per_example)(params, bad, key).elbo
    log_px = jax.jit(fn)(params, x, bad["label"], key).log_px
    for value in (per_example, log_px):
        assert np.isnan(value[1]) and np.all(np.isfinite(np.delete(value, 1)))


def test_dataset_evaluation_reports_each_layer_of_the_hierarchy():
    model, params = MODELS["hierarchical"], _params("hierarchical")
    images = (_binary(7, 10) * 255).astype(np.uint8)
    run = functools.partial(
        evaluate_dataset, model, params, images, None, jax.random.key(2), progress=False
    )
    result = run(num_samples=200, sample_chunk=50, batch_size=4)
    terms, layers = result.terms, result.layers
    assert layers.kl.shape == (10, 2)
    assert [m.shape for m in layers.mean] == [(10, 4), (10, 2)]
    np.testing.assert_allclose(layers.kl.sum(-1), terms.kl, rtol=1e-5, atol=1e-5)
    # E_q[z_1] is q(z_1|x)'s own mean: the encoder's, whatever the number of samples.
    np.testing.assert_allclose(layers.mean[0], result.posterior_mean, rtol=1e-5, atol=1e-6)
    few = run(num_samples=2, sample_chunk=2, batch_size=10)
    np.testing.assert_allclose(few.layers.mean[0], result.posterior_mean, rtol=1e-5, atol=1e-6)
    # E_q[z_2] (q(z_2|z_1)'s mean averaged over 2,000 sampled z_1; sd of the estimate
    # <= 0.02 here) against the brute-force mean of 20,000 ancestral z_2 draws.
    x = images.astype(np.float32) / 255.0
    draws = model.apply(
        {"params": params}, x, None, jax.random.key(9), 20_000, method="sample_layers"
    )
    many = run(num_samples=2000, sample_chunk=200, batch_size=10)
    np.testing.assert_allclose(many.layers.mean[1], np.mean(draws.z[1], axis=0), atol=0.08)
    # batch size and chunking change nothing
    other = run(num_samples=200, sample_chunk=200, batch_size=10)
    for a, b in zip(
        jax.tree.leaves(other[:2] + other[-1:]),
        jax.tree.leaves(result[:2] + result[-1:]),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    report = make_report(
        result,
        config=vae_jax.ExperimentConfig(),
        model=model,
        params=params,
        num_samples=200,
        normalised=True,
    )
    np.testing.assert_allclose(sum(report["kl_per_layer"]), report["kl"], rtol=1e-6)
    assert report["latent_dims"] == [4, 2] and len(report["active_units_per_layer"]) == 2
    assert "Monte Carlo KL" in report["protocol"]
    assert "per layer (bottom first): KL" in format_report(report)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fit_trains_and_resumes_exactly(name, tmp_path):
    model = MODELS[name]
    x = _binary(6, 32)

    def run(workdir, epochs):
        return vae_jax.fit(
            vae_jax.make_iwae(model, num_samples=2),
            optax.adam(1e-2),
            x[:24],
            x_test=x[24:],
            options=vae_jax.FitOptions(epochs=epochs, batch_size=8, log=lambda _: None),
            workdir=workdir,
            progress=False,
        )

    straight = run(tmp_path / "straight", 2)
    run(tmp_path / "resumed", 1)
    resumed = run(tmp_path / "resumed", 2)
    assert [r["epoch"] for r in resumed.records] == [1, 2]
    assert resumed.records[1]["test_loss"] == straight.records[1]["test_loss"]
    assert straight.records[1]["test_loss"] < straight.records[0]["test_loss"]  # it learns
    for a, b in zip(
        jax.tree.leaves(resumed.state.params), jax.tree.leaves(straight.state.params), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    record = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert record["model"].startswith(type(model).__name__ + "(")
    loaded = vae_jax.load_checkpoint(tmp_path / "straight", model=model, tx=optax.adam(1e-2))
    for a, b in zip(
        jax.tree.leaves(loaded.params), jax.tree.leaves(straight.state.params), strict=True
    ):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- configuration, CLI

CLI_MODELS = {
    "hierarchical": ("--upper_latent_dims", "2", "--upper_hidden", "6"),
    "vamp": ("--prior", "vamp", "--num_pseudo_inputs", "5"),
    "iaf": ("--posterior", "iaf", "--flow_depth", "2", "--flow_hidden", "8"),
}


def test_model_config_builds_the_latent_models_and_the_2layer_recipes_are_burdas():
    build = lambda **kw: ModelConfig(hidden=(8,), z_dim=3, **kw).build(SHAPE)  # noqa: E731
    two = build(upper_latent_dims=(2, 2), upper_hidden=(6,))
    assert two == vae_jax.HierarchicalVAE(
        image_shape=SHAPE, latent_dims=(3, 2, 2), hidden=((8,), (6,), (6,)), activation="relu"
    )
    vamp = build(prior="vamp", num_pseudo_inputs=7)
    assert isinstance(vamp, vae_jax.VampPriorVAE) and vamp.num_pseudo_inputs == 7
    assert vamp.base == build()
    iaf = build(posterior="iaf", flow_depth=3, flow_hidden=(5,))
    assert isinstance(iaf, vae_jax.IAFVAE) and (iaf.flow_depth, iaf.flow_hidden) == (3, (5,))
    for name in ("iwae_paper_2layer_vae", "iwae_paper_2layer_iwae"):
        config = RECIPES[name]()
        assert config.model.build((28, 28, 1)) == vae_jax.HierarchicalVAE()  # 200-200 / 100-100
        assert config.train == RECIPES["iwae_paper_vae"]().train
    assert RECIPES["iwae_paper_2layer_iwae"]().objective.num_samples == 50


@pytest.mark.parametrize("name", sorted(CLI_MODELS))
def test_each_model_trains_from_the_cli_and_is_evaluated(name, tmp_path, capsys):
    images = (_binary(8, 48) * 255).astype(np.uint8)
    np.savez(tmp_path / "tiny.npz", x_train=images[:32], x_test=images[32:])
    workdir = tmp_path / "run"
    argv = ["--dataset", tmp_path / "tiny.npz", "--binarize", "dynamic", "--hidden", "8"]
    argv += ["--z_dim", "3", "--epochs", "1", "--batch_size", "16", "--no_progress"]
    status, err = run_cli(train_cli.main, [*argv, *CLI_MODELS[name], "--workdir", workdir], capsys)
    assert status == 0, err
    assert (workdir / "images" / "samples_epoch001.png").exists()
    loaded = vae_jax.load_checkpoint(workdir)
    assert type(loaded.model) is type(MODELS[name])
    argv = ["--workdir", workdir, "--num_samples", "8", "--no_progress"]
    status, err = run_cli(evaluate_cli.main, argv, capsys)
    assert status == 0, err
    report = json.loads((workdir / "evaluation_k8.json").read_text())
    assert np.isfinite(report["nll_is_k8"]) and report["nll_is_k8"] <= report["neg_elbo"]
    assert "Monte Carlo KL" in report["protocol"]
    if name == "hierarchical":
        assert len(report["kl_per_layer"]) == 2 and report["latent_dims"] == [3, 2]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--num_pseudo_inputs", "0"), "argument --num_pseudo_inputs: must be a positive"),
        (("--flow_depth", "0"), "argument --flow_depth: must be a positive integer, got '0'"),
        (("--prior", "vamp", "--conditional"), "the VampPrior is not supported on a conditional"),
        (("--upper_latent_dims", "50"), "several stochastic layers need both upper_latent_dims"),
        (
            ("--upper_latent_dims", "5", "--upper_hidden", "5", "--prior", "vamp"),
            "takes the standard prior and the gaussian posterior only",
        ),
        (("--prior", "vamp", "--posterior", "iaf"), "prior vamp and posterior iaf cannot be"),
        (("--prior", "mixture"), "argument --prior: invalid choice: 'mixture'"),
        (("--prior", "vamp", "--free_bits", "0.5"), "free_bits needs the per-latent KL"),
    ],
)
def test_bad_model_flags_are_one_line_errors_with_status_2(flags, message, tmp_path, capsys):
    status, err = run_cli(train_cli.main, [*flags, "--workdir", tmp_path / "run"], capsys)
    assert status == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- bad options


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: vae_jax.HierarchicalVAE(latent_dims=()), "latent_dims must name at least one"),
        (lambda: vae_jax.HierarchicalVAE(latent_dims=(4, 0)), "latent_dims must be >= 1"),
        (
            lambda: vae_jax.HierarchicalVAE(latent_dims=(100, 50), hidden=((100, 100),)),
            "the hierarchy does not chain: 2 latent layers",
        ),
        (
            lambda: vae_jax.HierarchicalVAE(latent_dims=(4, 2), hidden=((8,), ())),
            "each upper layer needs hidden widths >= 1",
        ),
        (lambda: vae_jax.HierarchicalVAE(activation="nope"), "activation must be one of"),
        (lambda: vae_jax.VampPriorVAE(BASE, num_pseudo_inputs=0), "num_pseudo_inputs must be"),
        (
            lambda: vae_jax.VampPriorVAE(vae_jax.VAE(num_classes=10)),
            "the VampPrior is not supported on a conditional model",
        ),
        (lambda: vae_jax.IAFVAE(BASE, flow_depth=0), "flow_depth must be >= 1, got 0"),
        (lambda: vae_jax.IAFVAE(BASE, flow_hidden=()), "flow_hidden needs at least one width"),
        (lambda: vae_jax.IAFVAE(vae_jax.VAE(z_dim=0)), "z_dim must be >= 1"),
        (lambda: vae_jax.IAFVAE("vae"), "base must be a VAE, got str"),
        # wrong types (before: bare TypeErrors from comparisons or from Flax's shapes)
        (lambda: vae_jax.HierarchicalVAE(latent_dims=4), "latent_dims must be a tuple of"),
        (lambda: vae_jax.HierarchicalVAE(hidden=(200, 100)), "each of hidden's tuples must be"),
        (lambda: vae_jax.VampPriorVAE(BASE, num_pseudo_inputs=2.5), "must be an integer, got 2.5"),
        (lambda: vae_jax.IAFVAE(BASE, flow_depth="2"), "flow_depth must be an integer, got '2'"),
        (lambda: vae_jax.IAFVAE(BASE, flow_hidden=16), "flow_hidden must be a tuple of integers"),
    ],
)
def test_bad_options_are_one_line_value_errors(build, message):
    with pytest.raises(ValueError, match=message) as error:
        build()
    assert "\n" not in str(error.value)


def test_the_checks_accept_the_defaults():
    for model in (vae_jax.HierarchicalVAE(), vae_jax.VampPriorVAE(), vae_jax.IAFVAE()):
        check_latent_model(model)
    assert vae_jax.VampPriorVAE().num_pseudo_inputs == 500
    assert vae_jax.HierarchicalVAE().latent_dims == (100, 50)


def test_empty_shapes_bad_dtypes_and_no_prior_samples_are_refused():
    """(Before: image_shape=() and dtype="foo" were accepted, failing inside the first
    layer; sample_prior(key, 0) gave a ZeroDivisionError or an empty array.)"""
    import vae_jax

    for make, message in [
        (lambda: vae_jax.HierarchicalVAE(image_shape=()), r"image_shape must be one or more"),
        (lambda: vae_jax.HierarchicalVAE(dtype="foo"), "dtype must be a floating-point dtype"),
        (
            lambda: vae_jax.init_params(vae_jax.VAE(image_shape=()), jax.random.key(0)),
            r"image_shape must be one or more positive sizes, got \(\)",
        ),
    ]:
        with pytest.raises(ValueError, match=message):
            make()
    for model in (
        vae_jax.HierarchicalVAE(image_shape=(4,), latent_dims=(2, 2), hidden=((8,), (8,))),
        vae_jax.VampPriorVAE(base=vae_jax.VAE(image_shape=(4,), z_dim=2, hidden=(8,))),
    ):
        params = vae_jax.init_params(model, jax.random.key(0))
        draw = functools.partial(model.apply, {"params": params}, method="sample_prior")
        with pytest.raises(ValueError, match="num_samples must be >= 1, got 0"):
            draw(jax.random.key(1), 0)
        assert jax.tree.leaves(draw(jax.random.key(1), 3))[0].shape[0] == 3
