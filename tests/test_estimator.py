"""Tests for VAEEstimator on scikit-learn's bundled 8x8 digits (not MNIST)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from vae_jax.estimator import NotFittedError, VAEEstimator


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return data.images / 16.0, data.target  # [1797, 8, 8] in [0, 1], labels


@pytest.fixture(scope="module")
def fitted(digits):
    x, _ = digits
    return VAEEstimator(z_dim=2, hidden=(64,), epochs=15, batch_size=64, seed=0).fit(x)


def test_fit_learns(fitted):
    losses = [r["train_loss"] for r in fitted.history_]
    assert len(losses) == 15 and losses[-1] < 0.8 * losses[0]
    assert fitted.feature_shape_ == (8, 8) and fitted.n_features_in_ == 64
    assert "8, 8" in fitted.history_[0]["data"]


def test_transform_generate_reconstruct(fitted, digits):
    x, labels = digits
    z = fitted.transform(x)
    assert z.shape == (1797, 2) and z.dtype == np.float32 and np.all(np.isfinite(z))
    # The codes carry label information: class means are spread out relative to the codes.
    centres = np.stack([z[labels == k].mean(axis=0) for k in range(10)])
    assert centres.std(axis=0).sum() > 0.2 * z.std(axis=0).sum()
    samples = fitted.generate(5, key=jax.random.key(1))
    assert samples.shape == (5, 8, 8) and samples.min() >= 0.0 and samples.max() <= 1.0
    np.testing.assert_array_equal(fitted.generate(5, key=1), fitted.generate(5, key=1))
    recon = fitted.reconstruct(x[:100])
    assert recon.shape == (100, 8, 8)
    mean_error = np.mean(np.abs(recon - x[:100]))
    assert mean_error < np.mean(np.abs(x[:100] - x.mean(axis=0)[None]))  # beats the mean image


def test_score_elbo_and_importance_sampling(fitted, digits):
    x, _ = digits
    elbo = fitted.score(x[:300])
    log_px = fitted.score(x[:300], num_samples=500, key=0)
    assert np.isfinite(elbo) and np.isfinite(log_px)
    assert log_px >= elbo  # IS estimate >= ELBO (both nats per example)
    assert fitted.score(x[:300], key=3) == fitted.score(x[:300], key=3)


def test_save_and_load(fitted, digits, tmp_path):
    x, _ = digits
    path = fitted.save(tmp_path / "vae")
    meta = json.loads((path / "estimator.json").read_text())
    assert meta["feature_shape"] == [8, 8] and meta["hyperparameters"]["z_dim"] == 2
    assert not list(path.rglob("*.pkl")) and not list(path.rglob("*.pickle"))
    loaded = VAEEstimator.load(path)
    np.testing.assert_array_equal(loaded.transform(x), fitted.transform(x))
    np.testing.assert_array_equal(loaded.generate(3, key=2), fitted.generate(3, key=2))
    assert loaded.get_params() == fitted.get_params()
    with pytest.raises(FileExistsError, match="overwrite"):
        fitted.save(path)
    fitted.save(path, overwrite=True)
    with pytest.raises(FileNotFoundError, match="not a saved VAEEstimator"):
        VAEEstimator.load(tmp_path)


def test_vectors(digits):
    x, _ = digits
    vectors = x.reshape(len(x), 64)[:256]
    vae = VAEEstimator(z_dim=3, hidden=(32,), epochs=2, binarize=True).fit(vectors)
    assert vae.transform(vectors).shape == (256, 3)
    assert vae.reconstruct(vectors[:4]).shape == (4, 64)
    assert vae.generate(2, key=0).shape == (2, 64)
    with pytest.raises(ValueError, match=r"shape \(8, 8\).*fitted on examples of shape \(64,\)"):
        vae.transform(x[:4])


def test_input_validation(fitted, digits):
    x, _ = digits
    with pytest.raises(NotFittedError, match="not fitted"):
        VAEEstimator().transform(x)
    with pytest.raises(NotFittedError):
        VAEEstimator().generate(3)
    with pytest.raises(ValueError, match="shape"):
        VAEEstimator().fit(x[0, 0])  # 1-D
    with pytest.raises(ValueError, match="empty"):
        VAEEstimator().fit(x[:0])
    bad = x[:10].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        VAEEstimator().fit(bad)
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        fitted.transform(bad)
    with pytest.raises(ValueError, match=r"values in \[0, 16\].*Bernoulli"):
        VAEEstimator().fit(x * 16.0)
    with pytest.raises(ValueError, match="numeric"):
        VAEEstimator().fit(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match=r"shape \(8, 7\).*fitted on examples of shape \(8, 8\)"):
        fitted.transform(x[:, :, :7])
    with pytest.raises(ValueError, match=r"shape \(8, 8, 1\)"):
        fitted.transform(x[..., None])  # [N, H, W, C] is a different example shape
    with pytest.raises(ValueError, match="num_samples"):
        fitted.score(x[:10], num_samples=0)
    with pytest.raises(ValueError, match="n must be"):
        fitted.generate(0)
    with pytest.raises(ValueError, match="activation"):
        VAEEstimator(activation="nope").fit(x[:10])
    with pytest.raises(ValueError, match="binarize"):
        VAEEstimator(binarize=True, likelihood="gaussian").fit(x[:10])
    with pytest.raises(ValueError, match="unknown parameter"):
        VAEEstimator().set_params(zdim=3)
    assert VAEEstimator().set_params(z_dim=7).z_dim == 7
