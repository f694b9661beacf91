"""Tests for VAEEstimator on scikit-learn's bundled 8x8 digits (not MNIST)."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import sklearn.exceptions
from sklearn.datasets import load_digits

import vae_jax
from vae_jax.estimator import (
    IncomparableScoreWarning,
    NotFittedError,
    PosteriorCollapseWarning,
    SavedEstimatorError,
    VAEEstimator,
    VersionWarning,
)


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return data.images / 16.0, data.target  # [1797, 8, 8] float64 in [0, 1], labels


@pytest.fixture(scope="module")
def fitted(digits):
    x, _ = digits
    vae = VAEEstimator(
        z_dim=2, hidden=(64,), likelihood="bernoulli", max_epochs=15, early_stopping=False,
        random_state=0,
    )  # fmt: skip
    return vae.fit(x)


def test_fit_learns(fitted):
    losses = [r["train_loss"] for r in fitted.history_]
    assert len(losses) == 15 == fitted.n_iter_ == fitted.best_epoch_
    assert losses[-1] < 0.8 * losses[0]
    assert fitted.feature_shape_ == (8, 8) and fitted.n_features_in_ == 64
    assert "8x8" in fitted.history_[0]["data"] and fitted.seed_ == 0
    assert fitted.latent_kl_.shape == (2,) and np.all(fitted.latent_kl_ > 0.1)  # not collapsed


def test_transform_generate_reconstruct(fitted, digits):
    x, labels = digits
    z = fitted.transform(x)
    assert z.shape == (1797, 2) and np.all(np.isfinite(z))
    # float64 in, float64 out (computed in float32); float32 in, float32 out, same values.
    assert z.dtype == np.float64
    z32 = fitted.transform(x.astype(np.float32))
    assert z32.dtype == np.float32
    np.testing.assert_array_equal(z32, z.astype(np.float32))
    # The codes carry label information: class means are spread out relative to the codes.
    centres = np.stack([z[labels == k].mean(axis=0) for k in range(10)])
    assert centres.std(axis=0).sum() > 0.2 * z.std(axis=0).sum()
    samples = fitted.generate(5, key=jax.random.key(1))
    assert samples.shape == (5, 8, 8) and samples.min() >= 0.0 and samples.max() <= 1.0
    np.testing.assert_array_equal(fitted.generate(5, key=1), fitted.generate(5, key=1))
    # a legacy jax.random.PRNGKey is the same key (before: refused by a message that said
    # a jax.random key was accepted)
    legacy = fitted.generate(5, key=jax.random.PRNGKey(1))
    np.testing.assert_array_equal(legacy, samples)
    assert fitted.score(x[:20], key=jax.random.PRNGKey(2)) == fitted.score(
        x[:20], key=jax.random.key(2)
    )
    recon = fitted.reconstruct(x[:100])
    assert recon.shape == (100, 8, 8)
    mean_error = np.mean(np.abs(recon - x[:100]))
    assert mean_error < np.mean(np.abs(x[:100] - x.mean(axis=0)[None]))  # beats the mean image


def test_inverse_transform_and_sample(fitted, digits):
    x, _ = digits
    z = fitted.transform(x[:50])
    np.testing.assert_allclose(fitted.inverse_transform(z), fitted.reconstruct(x[:50]), atol=1e-6)
    means = fitted.sample(200, random_state=3, mean=True)
    draws = fitted.sample(200, random_state=3)  # true samples of p(x|z): 0/1 for Bernoulli
    assert means.shape == draws.shape == (200, 8, 8)
    assert set(np.unique(draws)) <= {0.0, 1.0} and 0.0 < means.min() and means.max() < 1.0
    # The draws are Bernoulli(means) at the same z: their average follows the means.
    assert abs(draws.mean() - means.mean()) < 0.02
    np.testing.assert_array_equal(
        fitted.sample(3, random_state=7), fitted.sample(3, random_state=7)
    )
    np.testing.assert_array_equal(fitted.generate(3), fitted.sample(3, mean=True))  # seed_ default
    names = fitted.get_feature_names_out()
    assert list(names) == ["vaeestimator0", "vaeestimator1"]
    with pytest.raises(ValueError, match="z_dim = 2 columns"):
        fitted.inverse_transform(np.zeros((3, 5)))
    # (before: it allocated until the machine ran out of memory)
    with pytest.raises(ValueError, match="more than this machine's memory.*draw them in parts"):
        fitted.sample(2**40)


def test_score_samples_elbo_and_importance_sampling(fitted, digits):
    x, _ = digits
    elbo = fitted.score_samples(x[:256], num_samples=1)
    log_px = fitted.score_samples(x[:256], key=0)  # k = 100 importance samples
    assert elbo.shape == log_px.shape == (256,) and log_px.dtype == np.float64
    assert np.all(np.isfinite(elbo)) and np.all(np.isfinite(log_px))
    assert log_px.mean() >= elbo.mean()  # IS estimate >= ELBO (both nats per example)
    assert fitted.score(x[:256], key=0) == pytest.approx(log_px.mean())
    # An example's estimate depends on its values and the key only (not its neighbours).
    np.testing.assert_array_equal(fitted.score_samples(x[5:133], key=0), log_px[5:133])
    assert fitted.score(x[:256], key=3) != fitted.score(x[:256], key=0)


def test_save_and_load(fitted, digits, tmp_path):
    x, _ = digits
    path = fitted.save(tmp_path / "vae")
    meta = json.loads((path / "estimator.json").read_text())
    assert meta["feature_shape"] == [8, 8] and meta["hyperparameters"]["z_dim"] == 2
    assert meta["version"] == 2 and meta["files"] and len(meta["sha256"]) == 64
    assert meta["vae_jax_version"] == vae_jax.__version__
    assert not list(path.rglob("*.pkl")) and not list(path.rglob("*.pickle"))
    loaded = VAEEstimator.load(path)
    np.testing.assert_array_equal(loaded.transform(x), fitted.transform(x))
    np.testing.assert_array_equal(loaded.generate(3, key=2), fitted.generate(3, key=2))
    assert loaded.get_params() == fitted.get_params()
    assert loaded.history_ == fitted.history_ and loaded.seed_ == fitted.seed_
    with pytest.raises(FileExistsError, match="overwrite"):
        fitted.save(path)
    # (before: a truthy "no" replaced the save; allow_unverified="no" skipped the digests)
    with pytest.raises(ValueError, match="overwrite must be True or False, got 'no'"):
        fitted.save(path, overwrite="no")
    with pytest.raises(ValueError, match="allow_unverified must be True or False, got 'no'"):
        VAEEstimator.load(path, allow_unverified="no")
    fitted.save(path, overwrite=True)
    with pytest.raises(FileNotFoundError, match="not a saved VAEEstimator"):
        VAEEstimator.load(tmp_path)


def test_vectors_and_deprecated_epochs_and_seed(digits):
    x, _ = digits
    vectors = x.reshape(len(x), 64)[:256]
    with pytest.warns(FutureWarning) as record:
        vae = VAEEstimator(
            z_dim=3, hidden=(32,), likelihood="bernoulli", epochs=2, seed=5, binarize=True
        ).fit(vectors)
    assert {str(w.message).split(":")[0] for w in record} == {
        "VAEEstimator(epochs=...) is deprecated",
        "VAEEstimator(seed=...) is deprecated",
    }
    assert vae.n_iter_ == 2 and vae.seed_ == 5  # epochs=2: exactly 2, no early stopping
    assert vae.transform(vectors).shape == (256, 3)
    assert vae.reconstruct(vectors[:4]).shape == (4, 64)
    assert vae.generate(2, key=0).shape == (2, 64)
    with pytest.raises(ValueError, match=r"shape \(8, 8\).*fitted on examples of shape \(64,\)"):
        vae.transform(x[:4])


def test_input_validation(fitted, digits):
    x, _ = digits
    with pytest.raises(NotFittedError, match="not fitted"):
        VAEEstimator().transform(x)
    assert NotFittedError is sklearn.exceptions.NotFittedError
    with pytest.raises(NotFittedError):
        VAEEstimator().generate(3)
    with pytest.raises(ValueError, match="1-D data of shape"):
        VAEEstimator().fit(x[0, 0])
    with pytest.raises(ValueError, match="0 sample"):
        VAEEstimator().fit(x[:0])
    bad = x[:10].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="X contains NaN"):
        VAEEstimator().fit(bad)
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="X contains infinite values"):
        fitted.transform(bad)
    # finite in float64 but not in the float32 the model computes in: refused by the same
    # rule as fit's (vae_jax.arrays.check_values), not encoded to NaN codes
    with pytest.raises(
        ValueError, match=re.escape("X contains infinite values (or beyond float32) (")
    ):
        fitted.transform(np.full(x[:3].shape, 1e300))
    with pytest.raises(ValueError, match=re.escape("X contains infinite values (or beyond")):
        fitted.inverse_transform(np.full((3, 2), 1e300))  # (before: NaN, and numpy's warning)
    with pytest.raises(ValueError, match=r"values in \[0, 16\].*Bernoulli.*clip=True"):
        VAEEstimator(likelihood="bernoulli").fit(x * 16.0)
    with pytest.raises(ValueError, match=r"values in \[0, 16\]"):
        fitted.score(x[:5] * 16.0)  # the Bernoulli likelihood is for [0, 1]...
    assert fitted.transform(x[:5] * 16.0).shape == (5, 2)  # ...the encoder takes any value
    with pytest.raises(ValueError, match="could not convert string to float"):
        VAEEstimator().fit(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match=r"shape \(8, 7\).*fitted on examples of shape \(8, 8\)"):
        fitted.transform(x[:, :, :7])
    with pytest.raises(ValueError, match=r"shape \(8, 8, 1\)"):
        fitted.transform(x[..., None])  # [N, H, W, C] is a different example shape
    with pytest.raises(ValueError, match="num_samples must be an int >= 1, got 0"):
        fitted.score(x[:10], num_samples=0)
    with pytest.raises(ValueError, match="key must be None, an int"):
        fitted.score(x[:10], key="abc")
    with pytest.raises(ValueError, match="n_samples must be an int >= 1"):
        fitted.generate(0)
    with pytest.raises(ValueError, match="Invalid parameter 'zdim'"):
        VAEEstimator().set_params(zdim=3)
    assert VAEEstimator().set_params(z_dim=7).z_dim == 7


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_epochs": 2.5}, r"max_epochs must be an int >= 1, got 2\.5"),
        ({"epochs": 0}, "epochs must be an int >= 1, got 0"),
        ({"hidden": 32}, r"hidden must be a tuple of widths such as \(64,\), got 32"),
        ({"hidden": (32, 0)}, "each hidden width must be an int >= 1, got 0"),
        ({"z_dim": True}, "z_dim must be an int >= 1, got True"),
        ({"random_state": "abc"}, "random_state must be None, an int in 0..4294967295"),
        ({"seed": None, "random_state": 0}, None),  # seed=None: a fresh seed (deprecated)
        ({"random_state": -1}, "random_state must be None, an int"),
        ({"learning_rate": 0}, "learning_rate must be > 0, got 0"),
        ({"validation_fraction": 1.0}, r"validation_fraction must be in \(0, 1\), got 1\.0"),
        ({"tol": float("nan")}, "tol must be a finite number, got nan"),
        ({"n_iter_no_change": 0}, "n_iter_no_change must be an int >= 1"),
        ({"batch_size": "64"}, "batch_size must be an int >= 1, got '64'"),
        ({"early_stopping": "yes"}, "early_stopping must be True or False, got 'yes'"),
        ({"linear_path": 1}, "linear_path must be True or False, got 1"),
        ({"activation": "nope"}, "activation must be one of"),
        ({"likelihood": "poisson"}, "likelihood must be one of"),
        ({"obs_std": 0.0}, "obs_std must be > 0"),
        (
            {"binarize": True, "likelihood": "gaussian"},
            "binarize=True needs likelihood='bernoulli'",
        ),
        ({"binarize": True}, "binarize=True needs likelihood='bernoulli'"),  # (the default)
    ],
)
def test_constructor_arguments_are_checked_by_fit_in_one_line(params, message):
    vae = VAEEstimator(**params)
    deprecated = "epochs" in params or "seed" in params
    with pytest.warns(FutureWarning) if deprecated else contextlib.nullcontext():
        if message is None:
            assert 0 <= vae._check_params().seed <= 2**32 - 1
            return
        with pytest.raises(ValueError, match=message) as error:
            vae._check_params()  # (what fit runs first, before it looks at X)
    assert "\n" not in str(error.value)


def test_changing_a_fitted_estimators_likelihood_kind_warns(fitted):
    """A Bernoulli score (log-probability mass) and a Gaussian one (log-density) are not
    comparable: set_params says so when it switches a fitted estimator between the two."""
    vae = copy.deepcopy(fitted)  # (the fixture stays as it is)
    with pytest.warns(IncomparableScoreWarning, match="from 'bernoulli' to 'gaussian_pixel'") as w:
        vae.set_params(likelihood="gaussian_pixel")
    assert len(w) == 1 and "\n" not in str(w[0].message)
    assert isinstance(w[0].message, UserWarning)
    vae.set_params(likelihood="bernoulli", z_dim=3)  # back to the fitted kind: no warning
    VAEEstimator().set_params(likelihood="bernoulli")  # not fitted: nothing to compare
    assert VAEEstimator().likelihood == "gaussian_pixel"  # the default: any real values


def test_random_state_kinds():
    assert VAEEstimator(random_state=7)._check_params().seed == 7
    a = VAEEstimator(random_state=np.random.RandomState(0))._check_params().seed
    b = VAEEstimator(random_state=np.random.RandomState(0))._check_params().seed
    assert a == b  # drawn from the generator, so reproducible with it
    assert VAEEstimator(random_state=np.random.default_rng(1))._check_params().seed >= 0
    seeds = {VAEEstimator(random_state=None)._check_params().seed for _ in range(3)}
    assert len(seeds) == 3  # fresh entropy each time


def test_posterior_collapse_warns():
    """A likelihood so broad (std 10 for data of std 1) that encoding X gains nothing: the
    KL term wins, q(z|x) becomes the prior (120 updates: KLs 0.0009 and 0.007 here), and
    fit says so. (The digits model above, KLs > 0.1, does not warn: warnings are errors.)"""
    x = np.random.default_rng(0).normal(size=(64, 3))
    vae = VAEEstimator(
        z_dim=2, hidden=(4,), likelihood="gaussian", obs_std=10.0, max_epochs=40,
        early_stopping=False, batch_size=16, learning_rate=1e-2,
    )  # fmt: skip
    with pytest.warns(PosteriorCollapseWarning, match="every latent's mean KL on X is below"):
        vae.fit(x)
    assert np.all(vae.latent_kl_ < 0.01)


def test_importing_vae_jax_without_scikit_learn():
    """vae_jax imports without scikit-learn; VAEEstimator then says what to install."""
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "import vae_jax\n"
        "try:\n    vae_jax.VAEEstimator\n"
        "except ImportError as e:\n    print('ImportError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        "ImportError: vae_jax.VAEEstimator needs scikit-learn >= 1.6: "
        "pip install 'vae-jax[sklearn]'"
    )


# ----------------------------------------------------------------------------- damaged saves


@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory):
    return fitted.save(tmp_path_factory.mktemp("saved") / "vae")


def _largest_params_file(path):
    return max(
        (p for p in (path / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )


def _truncate_json(path):
    meta = path / "estimator.json"
    meta.write_text(meta.read_text()[:100])
    return "estimator.json is not valid JSON"


def _edit_json(path):  # still valid JSON: a changed value
    meta = path / "estimator.json"
    meta.write_text(meta.read_text().replace('"z_dim": 2', '"z_dim": 3'))
    return "estimator.json is damaged: its content differs from its recorded SHA-256"


def _foreign_json(path):
    (path / "estimator.json").write_text('{"format": "something else"}')
    return "estimator.json was not written by vae_jax.VAEEstimator.save"


def _future_version(path):
    meta = json.loads((path / "estimator.json").read_text())
    (path / "estimator.json").write_text(json.dumps({**meta, "version": 99}))
    return "estimator.json has format version 99"


def _flip_byte(path):
    target = _largest_params_file(path)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x10
    target.write_bytes(bytes(data))
    return f"{target.name} is damaged: its SHA-256 differs"


def _truncate_params(path):
    target = _largest_params_file(path)
    target.write_bytes(target.read_bytes()[:-7])
    return f"{target.name} is damaged: .* bytes now"


def _remove_params_file(path):
    target = _largest_params_file(path)
    target.unlink()
    return f"{target.name} is missing"


def _add_file(path):
    (path / "params" / "stray.bin").write_bytes(b"x")
    return "stray.bin was not written by save"


def _add_top_level_file(path):  # (before: loaded silently)
    (path / "notes.txt").write_text("x")
    return "notes.txt was not written by save"


def _edited_setting(name, value, why):
    """An edited setting whose digest was recomputed (damage by design: the digest cannot
    tell; before: loaded, then `transform` failed with a Flax ScopeParamShapeError)."""

    def edit(path):
        from vae_jax.estimator_files import _meta_digest

        meta = json.loads((path / "estimator.json").read_text())
        meta["hyperparameters"][name] = value
        meta["sha256"] = _meta_digest(meta)
        (path / "estimator.json").write_text(json.dumps(meta))
        return re.escape("estimator.json: its settings do not fit the saved parameters (") + why

    edit.__name__ = f"_edited_{name}"
    return edit


def _edited_activation(path):
    """relu -> tanh, digest recomputed: no parameter shape changes, so only the fingerprint
    finds it (before: loaded silently, and scored -7.87 instead of -7.50)."""
    from vae_jax.estimator_files import _meta_digest

    meta = json.loads((path / "estimator.json").read_text())
    assert meta["hyperparameters"]["activation"] == "relu"
    meta["hyperparameters"]["activation"] = "tanh"
    meta["sha256"] = _meta_digest(meta)
    (path / "estimator.json").write_text(json.dumps(meta))
    return re.escape("estimator.json: its settings do not reproduce the saved model's outputs")


def _edited_fingerprint(path):
    from vae_jax.estimator_files import _meta_digest

    meta = json.loads((path / "estimator.json").read_text())
    meta["fingerprint"] = meta["fingerprint"][:-1]
    meta["sha256"] = _meta_digest(meta)
    (path / "estimator.json").write_text(json.dumps(meta))
    return re.escape("estimator.json: its fingerprint is not 8 numbers")


def _remove_params_dir(path):
    shutil.rmtree(path / "params")
    return "params is missing"


@pytest.mark.parametrize(
    "damage",
    [
        _truncate_json,
        _edit_json,
        _foreign_json,
        _future_version,
        _flip_byte,
        _truncate_params,
        _remove_params_file,
        _add_file,
        _add_top_level_file,
        _remove_params_dir,
        _edited_setting(
            "z_dim", 3, r"decoder/Dense_0/kernel: \(3, 64\) for these settings, \(2, 64\) saved\)"
        ),
        _edited_setting(
            "hidden", [64, 64], r"decoder/Dense_2/bias: \(64,\) for these settings, none saved\)"
        ),
        _edited_activation,
        _edited_fingerprint,
    ],
    ids=lambda damage: damage.__name__,
)
def test_a_damaged_save_is_a_one_line_error_naming_the_file(saved, tmp_path, damage):
    path = shutil.copytree(saved, tmp_path / "copy")
    message = damage(path)
    with pytest.raises(SavedEstimatorError, match=message) as error:
        VAEEstimator.load(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    assert isinstance(error.value, ValueError)


def test_a_version_1_save_still_loads_with_a_warning(digits, tmp_path):
    """What the estimator saved before digests (epochs/seed, no files list, no linear_path:
    a plain MLP VAE) loads, and the old names mean what they meant: a fixed number of
    epochs, that seed, no linear path."""
    fitted = VAEEstimator(
        z_dim=2, hidden=(64,), likelihood="bernoulli", max_epochs=2, early_stopping=False,
        linear_path=False,
    ).fit(digits[0])  # fmt: skip
    path = fitted.save(tmp_path / "v1")
    meta = json.loads((path / "estimator.json").read_text())
    hyper = meta["hyperparameters"]
    old = {k: hyper[k] for k in ("z_dim", "hidden", "activation", "likelihood", "obs_std")}
    old.update(epochs=15, batch_size=64, learning_rate=1e-3, seed=0, binarize=False)
    v1 = {"format": meta["format"], "version": 1, "hyperparameters": {**old, "verbose": False}}
    v1.update(feature_shape=meta["feature_shape"], history=meta["fitted"]["history_"])
    (path / "estimator.json").write_text(json.dumps(v1))
    with pytest.raises(SavedEstimatorError, match="version 1 save has no digests.*allow_unv"):
        VAEEstimator.load(path)  # (before: loaded, every check skipped, with a warning only)
    with pytest.warns(UserWarning, match="version 1 save has no digests"):
        loaded = VAEEstimator.load(path, allow_unverified=True)
    assert loaded.max_epochs == 15 and loaded.early_stopping is False and loaded.random_state == 0
    assert loaded.linear_path is False
    np.testing.assert_array_equal(
        loaded.transform(digits[0][:50]), fitted.transform(digits[0][:50])
    )


def test_a_save_records_transforms_fingerprint_and_one_without_it_loads(saved, digits, tmp_path):
    """The fingerprint is `transform` of the probe input; a save from before fingerprints
    (none recorded, digest recomputed as it was written) loads as before, unchecked."""
    from vae_jax.estimator_files import _meta_digest, probe_input

    meta = json.loads((saved / "estimator.json").read_text())
    loaded = VAEEstimator.load(saved)
    probe = probe_input(loaded.feature_shape_, "bernoulli")
    assert probe.shape == (4, 8, 8) and 0 <= probe.min() and probe.max() <= 1
    np.testing.assert_allclose(
        np.reshape(meta["fingerprint"], (4, 2)), loaded.transform(probe), rtol=1e-6
    )
    path = shutil.copytree(saved, tmp_path / "old")
    del meta["fingerprint"]
    meta["sha256"] = _meta_digest(meta)
    (path / "estimator.json").write_text(json.dumps(meta))
    x = digits[0][:20]
    np.testing.assert_array_equal(VAEEstimator.load(path).transform(x), loaded.transform(x))


def _as_written_by(path, version):
    """The save at `path`, its recorded vae_jax version changed (digest recomputed, as a
    save by that version would have it), or removed (None: a save from before versions)."""
    from vae_jax.estimator_files import _meta_digest

    meta = json.loads((path / "estimator.json").read_text())
    meta.pop("vae_jax_version")
    if version is not None:
        meta["vae_jax_version"] = version
    meta["sha256"] = _meta_digest(meta)
    (path / "estimator.json").write_text(json.dumps(meta))


def test_a_save_of_another_version_loads_with_a_warning_naming_both(saved, digits, tmp_path):
    path = shutil.copytree(saved, tmp_path / "other")
    _as_written_by(path, "0.0.1")
    with pytest.warns(VersionWarning, match="written by vae_jax 0.0.1; this is vae_jax ") as w:
        loaded = VAEEstimator.load(path)
    assert len(w) == 1 and vae_jax.__version__ in str(w[0].message)
    assert "\n" not in str(w[0].message) and w[0].filename == __file__
    x = digits[0][:20]
    np.testing.assert_array_equal(loaded.transform(x), VAEEstimator.load(saved).transform(x))
    _as_written_by(path, None)  # (before versions were recorded: nothing to compare)
    VAEEstimator.load(path)  # (no warning: warnings are errors)


def test_a_pickle_records_the_version_and_another_versions_pickle_warns(fitted, digits):
    data = pickle.dumps(fitted)
    state = pickle.loads(pickle.dumps(fitted.__getstate__()))
    assert state["_vae_jax_version"] == vae_jax.__version__
    same = pickle.loads(data)  # this version's pickle: no warning
    assert "_vae_jax_version" not in vars(same)
    np.testing.assert_array_equal(same.transform(digits[0][:5]), fitted.transform(digits[0][:5]))
    other = VAEEstimator.__new__(VAEEstimator)
    with pytest.warns(VersionWarning, match="pickled VAEEstimator was written by vae_jax 9.9"):
        other.__setstate__({**state, "_vae_jax_version": "9.9"})
    assert "_vae_jax_version" not in vars(other) and other.z_dim == fitted.z_dim


# ----------------------------------------------------------------------------- safe saves


def _listing(directory):
    return sorted(
        (p.relative_to(directory).as_posix(), p.read_bytes())
        for p in directory.rglob("*")
        if p.is_file()
    )


@pytest.mark.parametrize("kind", ["source tree", "link to a directory", "file"])
def test_overwrite_replaces_only_a_saved_estimator(fitted, tmp_path, kind):
    """(Before: ``save(path, overwrite=True)`` deleted whatever directory `path` was.)"""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')\n")
    path = {"source tree": project, "file": project / "src" / "main.py"}.get(kind)
    if path is None:
        path = tmp_path / "link"
        path.symlink_to(project)
    before = _listing(project)
    with pytest.raises(FileExistsError) as error:
        fitted.save(path, overwrite=True)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    assert _listing(project) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["project", *(["link"] if kind == "link to a directory" else [])]
    )  # (no temporary directory left)


def test_a_save_failing_half_way_leaves_the_previous_save(fitted, saved, tmp_path, monkeypatch):
    from vae_jax import estimator_files

    path = shutil.copytree(saved, tmp_path / "vae")
    before = _listing(path)

    def dies(*args):
        raise KeyboardInterrupt  # (the parameters are written; estimator.json is not)

    monkeypatch.setattr(estimator_files, "write_json", dies)
    with pytest.raises(KeyboardInterrupt):
        fitted.save(path, overwrite=True)
    assert _listing(path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["vae"]
    VAEEstimator.load(path)


def test_a_save_killed_mid_write_leaves_the_previous_save_loadable(saved, digits, tmp_path):
    """SIGKILL once the new parameters are written (before: no loadable estimator in 6 of
    6 tries)."""
    path = shutil.copytree(saved, tmp_path / "vae")
    code = (
        "import os, signal\n"
        "from vae_jax import estimator_files\n"
        "from vae_jax.estimator import VAEEstimator\n"
        f"vae = VAEEstimator.load({str(path)!r})\n"
        "estimator_files.write_json = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"vae.save({str(path)!r}, overwrite=True)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    loaded = VAEEstimator.load(path)
    x = digits[0][:20]
    np.testing.assert_array_equal(loaded.transform(x), VAEEstimator.load(saved).transform(x))
    (leftover,) = [p.name for p in tmp_path.iterdir() if p.name != "vae"]
    assert re.fullmatch(r"\.vae\.[0-9a-f]{8}\.saving", leftover)
    loaded.save(path, overwrite=True)  # (the next save removes what the killed one left)
    assert [p.name for p in tmp_path.iterdir()] == ["vae"]


def test_a_save_removes_only_leftovers_of_dead_saves_of_that_path(fitted, saved, tmp_path):
    """Only a real ``.vae.<8 hex>.saving`` directory holding what save writes, and not
    locked by a live save, is removed; links are not followed."""
    from vae_jax.estimator_files import _lock_dir

    def leftover(name, *extra):
        shutil.copytree(saved / "params", tmp_path / name / "params")
        (tmp_path / name / "estimator.json.tmp").write_text("{")
        for entry in extra:
            (tmp_path / name / entry).write_text("mine")
        return tmp_path / name

    leftover(".vae.0123abcd.saving")  # (a killed save's: removed)
    kept = [
        leftover(".vae.0123abce.saving", "notes.txt").name,  # (something save never writes)
        leftover(".vae.0123abcf.saving.old").name,  # (may hold the only previous save)
        leftover(".other.0123abd0.saving").name,  # (another path's)
        leftover(".vae.0123abcdef.saving").name,  # (not save's pattern)
        leftover(".vae.0123abd1.saving").name,  # (a live save's)
    ]
    outside = leftover("outside")
    (tmp_path / ".vae.0123abd2.saving").symlink_to(outside)
    (tmp_path / ".vae.0123abd3.saving").mkdir()  # (empty: maybe a save not yet locked)
    kept += [".vae.0123abd2.saving", "outside", ".vae.0123abd3.saving"]
    live = _lock_dir(tmp_path / ".vae.0123abd1.saving")
    try:
        fitted.save(tmp_path / "vae")
    finally:
        os.close(live)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "vae"])
    assert (outside / "params").is_dir() and (outside / "estimator.json.tmp").is_file()


@pytest.mark.parametrize("name", ["../../outside.txt", "/etc/hostname", "params/../x"])
def test_a_file_list_naming_files_outside_the_save_is_refused_unread(saved, tmp_path, name):
    """(Before: a ``../..`` entry was read, and the outside file's size printed.)"""
    from vae_jax.estimator_files import _meta_digest

    path = shutil.copytree(saved, tmp_path / "copy")
    (tmp_path / "outside.txt").write_text("private")
    meta = json.loads((path / "estimator.json").read_text())
    meta["files"][name] = "0" * 64
    meta["sha256"] = _meta_digest(meta)  # (consistent: damage by design, not by accident)
    (path / "estimator.json").write_text(json.dumps(meta))
    with pytest.raises(SavedEstimatorError, match="not a plain name inside it") as error:
        VAEEstimator.load(path)
    assert "\n" not in str(error.value) and "bytes" not in str(error.value)
