"""VAEEstimator as scikit-learn sees it: its estimator checks, pipelines, grid search."""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.decomposition import FactorAnalysis
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from vae_jax.estimator import VAEEstimator

# A tiny model, one epoch: the checks test the API, not the fit.
TINY = dict(
    z_dim=1,
    hidden=(4,),
    likelihood="gaussian",
    obs_std=1.0,
    max_epochs=1,
    early_stopping=False,
    batch_size=32,
)
# A small one, 3 epochs with early stopping's held-out split, the default likelihood
# ("gaussian_pixel"): the uses below. 3 epochs end training before early stopping does, so
# fit warns (ConvergenceWarning); the tests that use it for speed ignore that warning
# (SHORT), and test_early_stopping_keeps_the_best_epoch tests it.
SMALL = dict(z_dim=2, hidden=(16,), max_epochs=3)
SHORT = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
    """The checks fit ~25 data shapes, and compiling them is most of their time: XLA's
    cheaper optimisation level halves it (measured: 16.3 s -> 8.7 s for five shapes). Only
    this module's programs; the numbers of the other tests are untouched."""
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


# The checks that fit on data outside [0, 1] (measured with scikit-learn 1.9.1: each fails
# with the Bernoulli likelihood's one-line refusal, "X has values in [a, b]; a Bernoulli
# likelihood needs values in [0, 1]", raised before what the check looks at).
OUTSIDE_UNIT_INTERVAL = (
    "check_dict_unchanged check_dont_overwrite_parameters check_estimators_dtypes "
    "check_estimators_fit_returns_self check_estimators_overwrite_params "
    "check_estimators_pickle check_f_contiguous_array_estimator check_fit2d_1feature "
    "check_fit2d_1sample check_fit2d_predict1d check_fit_check_is_fitted "
    "check_fit_idempotent check_methods_sample_order_invariance "
    "check_methods_subset_invariance check_n_features_in check_n_features_in_after_fitting "
    "check_pipeline_consistency check_positive_only_tag_during_fit "
    "check_readonly_memmap_input check_transformer_data_not_an_array "
    "check_transformer_general check_transformer_preserve_dtypes"
).split()


def expected_failed_checks(estimator):
    """Checks that cannot apply, with the reason: with a Gaussian likelihood none (every
    check of scikit-learn 1.9.1 passes); with the Bernoulli one, those whose data is
    outside [0, 1]. xfail_strict makes a check listed here fail the suite if it passes."""
    if estimator.likelihood != "bernoulli":
        return {}
    reason = "the check's X is outside [0, 1], which the Bernoulli likelihood refuses"
    return dict.fromkeys(OUTSIDE_UNIT_INTERVAL, reason)


# The default as a user meets it, VAEEstimator(), and a tiny one with each other likelihood
# (bernoulli: data in [0, 1], which the checks' data is not: expected_failed_checks).
@parametrize_with_checks(
    [
        VAEEstimator(),
        VAEEstimator(**TINY),
        VAEEstimator(**{**TINY, "likelihood": "gaussian_global"}),
        VAEEstimator(**{**TINY, "likelihood": "gaussian_pixel", "linear_path": False}),
        VAEEstimator(**{**TINY, "likelihood": "bernoulli"}),
    ],
    expected_failed_checks=expected_failed_checks,
    xfail_strict=True,
)
# The checks fit a 4-unit model for one epoch on random data, where an uninformative
# posterior is the expected outcome, not a bug (the warning is tested in test_estimator.py).
@pytest.mark.filterwarnings("ignore::vae_jax.estimator.PosteriorCollapseWarning")
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ----------------------------------------------------------------------------- in use


@pytest.fixture(scope="module")
def cancer():
    x, y = load_breast_cancer(return_X_y=True)  # [569, 30] real values of many scales
    return x, y


@SHORT
def test_grid_search_over_a_scaled_pipeline_gives_finite_scores(cancer):
    """The issue's case (StandardScaler, gaussian_pixel, z_dim 1 or 2, cv=2), shortened to
    3 epochs: every held-out score is a finite log-density, and the refit pipeline works."""
    x, _ = cancer
    pipe = Pipeline([("scale", StandardScaler()), ("vae", VAEEstimator(**SMALL))])
    search = GridSearchCV(pipe, {"vae__z_dim": [1, 2]}, cv=2).fit(x)
    scores = search.cv_results_["mean_test_score"]
    assert scores.shape == (2,) and np.all(np.isfinite(scores))
    assert search.best_params_["vae__z_dim"] == [1, 2][int(np.argmax(scores))]
    assert search.transform(x[:5]).shape == (5, search.best_params_["vae__z_dim"])
    assert np.isfinite(search.score(x))
    vae = search.best_estimator_["vae"]
    assert vae.n_iter_ == 3 and "test_loss" in vae.history_[-1]  # early stopping's held-out loss


@pytest.mark.parametrize("scaler", [StandardScaler, MinMaxScaler])
# (3 epochs on [0, 1] data leave the latents near the prior, KL ~0.008: the warning is right,
# and tested in test_estimator.py; here only the scores matter)
@pytest.mark.filterwarnings("ignore::vae_jax.estimator.PosteriorCollapseWarning")
@SHORT
def test_the_default_likelihood_cross_validates_after_either_scaler(cancer, scaler):
    """The issue's case: the default likelihood takes any real values, so every fold fits
    and every held-out score is a finite log-density (with the old Bernoulli default,
    StandardScaler failed every fit and MinMaxScaler scored NaN on held-out folds)."""
    x, _ = cancer
    scores = cross_val_score(make_pipeline(scaler(), VAEEstimator(**SMALL)), x, cv=2)
    assert scores.shape == (2,) and np.all(np.isfinite(scores))


@SHORT
def test_bernoulli_in_a_pipeline_with_minmax_scaling(cancer):
    """MinMaxScaler's round-off (1.0000000000000002) is accepted; held-out folds that leave
    [0, 1] are clipped by MinMaxScaler(clip=True), so every fold gets a finite score, and
    without clip=True the held-out half is refused with a message that says so."""
    x, _ = cancer
    # (10 epochs: after 3, the Bernoulli model's latents are still near the prior, KL ~0.01,
    # and fit rightly warns of posterior collapse; after 10 their KLs are ~0.05 nats.)
    small = {**SMALL, "likelihood": "bernoulli", "max_epochs": 10}
    scores = cross_val_score(make_pipeline(MinMaxScaler(clip=True), VAEEstimator(**small)), x, cv=2)
    assert np.all(np.isfinite(scores)) and np.all(scores < 0)
    scaler = MinMaxScaler().fit(x[::2])
    half = scaler.transform(x[::2])
    half[0, 0] = 1.0 + 2.2e-16  # the round-off MinMaxScaler produced in the issue
    assert half.max() > 1.0
    vae = VAEEstimator(**small).fit(half)  # (the shape of a fold above: no new compilation)
    held_out = scaler.transform(x[1::2])
    assert held_out.min() < 0.0 or held_out.max() > 1.0
    with pytest.raises(ValueError, match=r"MinMaxScaler\(clip=True\)"):
        vae.score(held_out)


@SHORT
def test_dataframe_feature_names_and_pandas_output(cancer):
    pd = pytest.importorskip("pandas")
    x, _ = cancer
    frame = pd.DataFrame(StandardScaler().fit_transform(x), columns=[f"f{i}" for i in range(30)])
    vae = VAEEstimator(**SMALL).fit(frame)
    assert list(vae.feature_names_in_) == list(frame.columns) and vae.n_features_in_ == 30
    codes = vae.set_output(transform="pandas").transform(frame)
    assert list(codes.columns) == ["vaeestimator0", "vaeestimator1"]
    with pytest.raises(ValueError, match="feature names should match"):
        vae.transform(frame.rename(columns={"f0": "other"}))


# (With the linear path, 1-D Gaussian data are factor analysis's with no factor: the latent
# is unused, as it should be, and fit says so.)
@pytest.mark.filterwarnings("ignore::vae_jax.estimator.PosteriorCollapseWarning")
@pytest.mark.parametrize("linear_path", [True, False])
def test_gaussian_score_is_a_normalised_log_density(linear_path):
    """score_samples is log p(x) in nats of x as given: on 1-D data the importance-sampled
    density exp(score_samples) (an unbiased estimate of p(x)) integrates to 1 over x."""
    x = np.random.default_rng(0).normal(size=(256, 1)) * 2.0 + 1.0
    vae = VAEEstimator(
        z_dim=1, hidden=(8,), likelihood="gaussian_pixel", max_epochs=5, early_stopping=False,
        linear_path=linear_path,
    ).fit(x)  # fmt: skip
    grid = np.linspace(-15.0, 17.0, 2048)[:, None]
    density = np.exp(vae.score_samples(grid, num_samples=200))
    assert np.trapezoid(density, grid[:, 0]) == pytest.approx(1.0, abs=0.03)
    assert density[0] < 1e-4 and density[-1] < 1e-4  # the grid holds the mass


def test_early_stopping_keeps_the_best_epoch(cancer):
    """With tol so large that no epoch counts as better than the first, training stops
    after n_iter_no_change more epochs and keeps epoch 1's parameters: bitwise those of a
    run of 1 epoch (same seed, so the same split, order and updates). Stopped by early
    stopping it does not warn (warnings are errors here); ended by max_epochs first, it
    warns with scikit-learn's ConvergenceWarning."""
    x = StandardScaler().fit_transform(cancer[0])
    stopped = VAEEstimator(**{**SMALL, "max_epochs": 50, "n_iter_no_change": 2, "tol": 1e9}).fit(x)
    assert stopped.n_iter_ == 3 and stopped.best_epoch_ == 1 and len(stopped.history_) == 3
    with pytest.warns(ConvergenceWarning, match=r"max_epochs=1 ended training before early"):
        one = VAEEstimator(**{**SMALL, "max_epochs": 1}).fit(x)
    assert one.n_iter_ == 1  # (fitted all the same)
    for a, b in zip(jax.tree.leaves(stopped.params_), jax.tree.leaves(one.params_), strict=True):
        np.testing.assert_array_equal(a, b)
    losses = [r["test_loss"] for r in stopped.history_]
    assert all(np.isfinite(losses))


def test_the_noise_variances_maximise_the_training_elbo(cancer):
    """Without the linear path, after training, "gaussian_pixel"'s per-feature noise
    variances are set to the mean squared residual over X (the ELBO's maximiser given the
    encoder and decoder): the ELBO on X (same key, so the same posterior samples) is lower
    with every log-variance moved by -0.3 or +0.3. (Without that step they stay near the 0
    they start at: Adam moves them by ~1e-3 per step, 45 steps here, while the residuals'
    mean log-variance is 0.13 after these 5 epochs.)"""
    x = StandardScaler().fit_transform(cancer[0])
    settings = {**SMALL, "max_epochs": 5, "early_stopping": False, "linear_path": False}
    vae = VAEEstimator(**settings).fit(x)
    best = vae.score(x, num_samples=1)
    fitted = vae.params_
    for delta in (-0.3, 0.3):
        vae.params_ = {**fitted, "obs_logvar": fitted["obs_logvar"] + delta}
        assert vae.score(x, num_samples=1) < best


# ----------------------------------------------------------------------------- factor analysis


def _linear_gaussian(n, seed):
    """[n, 8] draws of a 2-factor model with per-feature noise (x = z W + mu + e)."""
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(0).normal(size=(2, 8))
    noise_std = np.linspace(0.2, 1.0, 8)
    return rng.normal(size=(n, 2)) @ w + 3.0 + noise_std * rng.normal(size=(n, 8))


def test_the_default_starts_at_factor_analysis_exactly():
    """With linear_path (the default) and "gaussian_pixel", training starts at a
    FactorAnalysis fit of standardized X (the model's units are X's: its density is FA's
    less the log-scales) whose loadings are rotated so that its posterior is diagonal:
    before any update the encoder is FA's exact posterior, so every importance weight
    p(x, z) / q(z|x) is FA's density of x and the estimate of each example is its exact FA
    log-density, whatever the samples. (A posterior 10% too wide fails it: the weights then
    vary, and the estimate falls below.)"""
    x, test = _linear_gaussian(300, 1), _linear_gaussian(200, 2)
    scaler = StandardScaler().fit(x)
    fa = FactorAnalysis(n_components=2, random_state=0).fit(scaler.transform(x))
    expected = fa.score_samples(scaler.transform(test)) - np.sum(np.log(scaler.scale_))
    start = VAEEstimator(z_dim=2, max_epochs=1, early_stopping=False, learning_rate=1e-12)
    start.fit(x)
    np.testing.assert_allclose(start.score_samples(test), expected, atol=2e-3)


def test_the_factor_analysis_start_sees_only_the_rows_it_trains_on():
    """With early stopping (the default), the factor-analysis start is fitted to the rows
    left after the held-out 10% (`fit`'s permutation of seed 0), so the held-out score that
    chooses the epoch is of unseen rows: before any update the model is FA of those rows
    (fitted to all of X, it failed this: up to 0.27 nats apart on an example)."""
    x, test = _linear_gaussian(300, 1), _linear_gaussian(200, 2)
    order = np.random.default_rng(0).permutation(len(x))
    train = x[order[30:]]  # (ceil(0.1 * 300) rows held out)
    scaler = StandardScaler().fit(train)
    fa = FactorAnalysis(n_components=2, random_state=0).fit(scaler.transform(train))
    expected = fa.score_samples(scaler.transform(test)) - np.sum(np.log(scaler.scale_))
    with pytest.warns(ConvergenceWarning, match="max_epochs=1 ended training"):
        start = VAEEstimator(z_dim=2, max_epochs=1, learning_rate=1e-12).fit(x)
    np.testing.assert_allclose(start.score_samples(test), expected, atol=2e-3)


def test_the_default_is_not_worse_than_factor_analysis_on_factor_analysis_data():
    """On data that factor analysis models exactly, the trained default VAE scores held-out
    data within 0.05 nats of FactorAnalysis (it starts there; early stopping keeps an epoch
    no worse on its held-out split), and on X * 1e-3 + 100 the same up to the change of
    units (-8 log 1e-3): the MLP's updates are in units of the noise and its first layer
    sees standardized inputs (before: the second update diverged)."""
    x, test = _linear_gaussian(400, 3), _linear_gaussian(400, 4)
    fa = FactorAnalysis(n_components=2).fit(x).score(test)
    vae = VAEEstimator(z_dim=2, hidden=(32,)).fit(x)
    assert vae.score(test) > fa - 0.05
    scaled = VAEEstimator(z_dim=2, hidden=(32,)).fit(x * 1e-3 + 100.0)
    shift = -8 * np.log(1e-3)
    assert scaled.score(test * 1e-3 + 100.0) - shift > fa - 0.05


# ----------------------------------------------------------------------------- warm_start

WARM = dict(z_dim=2, hidden=(16,), early_stopping=False, batch_size=32)


def test_warm_start_continues_bitwise_as_one_longer_fit(cancer):
    """warm_start=True continues from the fitted parameters, Adam's state and step: 2
    epochs then 1 more are bitwise one fit of 3 epochs (the same orders, keys and updates),
    with the history appended and the epochs numbered on."""
    x = StandardScaler().fit_transform(cancer[0][:96])
    three = VAEEstimator(**WARM, max_epochs=3).fit(x)
    vae = VAEEstimator(**WARM, max_epochs=2).fit(x)
    vae.set_params(warm_start=True, max_epochs=1).fit(x)
    for a, b in zip(jax.tree.leaves(vae.params_), jax.tree.leaves(three.params_), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [r["epoch"] for r in vae.history_] == [1, 2, 3] == [r["epoch"] for r in three.history_]
    assert vae.n_iter_ == vae.best_epoch_ == 3
    # warm_start=False (the default) starts afresh: the 2-epoch fit again
    fresh = vae.set_params(warm_start=False, max_epochs=2).fit(x)
    assert fresh.n_iter_ == 2


def test_warm_start_refuses_another_model_or_example_shape_in_one_line(cancer):
    x = StandardScaler().fit_transform(cancer[0][:96])
    vae = VAEEstimator(**WARM, max_epochs=1, warm_start=True).fit(x)  # (nothing to continue)
    with pytest.raises(ValueError, match=r"settings changed \(z_dim 2 -> 3\)") as error:
        vae.set_params(z_dim=3).fit(x)
    assert "\n" not in str(error.value)
    vae.set_params(z_dim=2)
    with pytest.raises(ValueError, match=r"examples of shape \(30,\); X has examples of shape"):
        vae.fit(x[:, :5])
    assert vae.n_features_in_ == 30  # (refused before X was recorded: still the fitted model)
    # a loaded estimator keeps no optimizer state: it continues from the kept epoch's step
    # (96 rows in batches of 32: 3 per epoch) with a fresh Adam state
    del vae._train_state
    vae.fit(x)
    assert [(r["epoch"], r["step"]) for r in vae.history_] == [(1, 3), (2, 6)]


def test_warm_start_after_early_stopping_continues_from_the_kept_epoch(cancer):
    """The kept (best) epoch's state is continued; the epochs after it, whose updates early
    stopping discarded, are replaced in history_ by the new ones."""
    x = StandardScaler().fit_transform(cancer[0][:96])
    stop = dict(early_stopping=True, n_iter_no_change=2, tol=1e9)  # epoch 1 stays the best
    vae = VAEEstimator(**{**WARM, **stop}, max_epochs=5).fit(x)
    assert vae.n_iter_ == 3 and vae.best_epoch_ == 1
    with pytest.warns(ConvergenceWarning, match="max_epochs=2 ended training"):
        vae.set_params(warm_start=True, tol=0.0, max_epochs=2).fit(x)  # (still improving)
    assert [r["epoch"] for r in vae.history_] == [1, 2, 3] and vae.n_iter_ == 3


# ----------------------------------------------------------------------------- compilation


@SHORT
def test_a_second_fit_of_one_configuration_and_shape_compiles_nothing(cancer, caplog):
    """Every fold of a cross-validation fits the same configuration on data of one shape:
    the trainer keeps its compiled programs (vae_jax.trainer._reused), so only the first
    fit compiles (before: 3 programs compiled again by every fit)."""
    x = StandardScaler().fit_transform(cancer[0])
    settings = dict(WARM, max_epochs=1, early_stopping=True, learning_rate=2e-3)
    VAEEstimator(**settings).fit(x[:96])
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING, logger="jax"):
            vae = VAEEstimator(**settings, random_state=1).fit(x[96:192])  # other data and seed
            vae.transform(x[:5])
    finally:
        jax.config.update("jax_log_compiles", False)
    compiled = [r.getMessage()[:80] for r in caplog.records if "Compiling" in r.getMessage()]
    assert compiled == []


def test_training_errors_name_the_estimators_own_parameters():
    """(Before: a diverging fit advised "Lower --learning_rate (in a new --workdir), or rerun
    with --skip_nonfinite", the CLI's flags; max_epochs=2**31 was refused as "epochs".)"""
    import vae_jax

    x = np.random.default_rng(0).normal(size=(64, 4))
    with pytest.raises(vae_jax.NonFiniteError) as caught:
        VAEEstimator(**WARM, max_epochs=1, learning_rate=1e30).fit(x)
    assert str(caught.value).endswith("; training stopped: lower learning_rate (it is 1e+30)")
    assert "--" not in str(caught.value)
    with pytest.raises(ValueError, match=r"^max_epochs=2147483648 epochs of 2 steps each exceed"):
        VAEEstimator(**WARM, max_epochs=2**31).fit(x)
    # (before: a numpy MemoryError from the factor-analysis start; without it, advice that
    # named the CLI's --z_dim, --hidden, --conv_channels)
    for linear_path in (True, False):
        with pytest.raises(ValueError, match=r"GiB, more than one device's .* z_dim or hidden\)$"):
            VAEEstimator(z_dim=2 * 10**9, linear_path=linear_path).fit(x)
    vae = VAEEstimator(**WARM, max_epochs=1).fit(x)
    # (before: XLA's RESOURCE_EXHAUSTED, 30,720,002,048 bytes, after compiling)
    with pytest.raises(ValueError, match=r"^sample_chunk=10,000,000: 128 examples x 10,000,000"):
        vae.score_samples(x, num_samples=10**7, sample_chunk=10**7)
    with pytest.raises(
        ValueError, match=r"after the 1 trained \(warm_start\) .* lower max_epochs$"
    ):
        vae.set_params(warm_start=True, max_epochs=2**30).fit(x)
