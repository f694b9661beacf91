"""Held-out log-density of `VAEEstimator` beside FactorAnalysis, GaussianMixture and KDE.

Issue #22, item 3 ("never worse than factor analysis"): on scikit-learn's wine, breast
cancer and digits, each split 70/30 stratified by class (``train_test_split(...,
stratify=y, random_state=seed)``, seeds 0, 1, 2) and standardized by a `StandardScaler`
fitted on the train part, every model is fitted on the train part and scored on the test
part with its own ``score``: the mean log-density of a test example, nats per example (of
the standardized data), higher is better. Per model and latent size k (2, 5, 10):

Features constant on the train part are dropped first (digits: 3 or 4 of its 64 pixels are
0 in every train image; a few are not 0 in some test image, which any model fitted by maximum
likelihood gives a vanishing variance: FactorAnalysis scored -9e8 there).

- ``VAEEstimator(z_dim=k)``: every other setting is the default; its ``score`` is the
  importance-sampled estimate with 100 samples (the default).
- ``FactorAnalysis(n_components=k)`` (scikit-learn's defaults).
- ``GaussianMixture``: full covariances, ``reg_covar=1e-3`` (digits has constant pixels),
  ``n_init=1``, ``random_state=0``; its number of components, 1 to 10, chosen by BIC on the
  train part. Does not depend on k.
- ``KernelDensity``: Gaussian kernel, bandwidth chosen by 5-fold ``GridSearchCV`` on the
  train part over 20 log-spaced values from 0.1 to 3. Does not depend on k.

Prints one line per data set and k: the mean over the seeds and the smallest VAE - FA
difference, then the VAEs' epochs and the seeds on which ``fit`` reached ``max_epochs``
(a `ConvergenceWarning`). Usage::

    python -m benchmarks.estimator_density
    python -m benchmarks.estimator_density --datasets wine --k 2 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_digits, load_wine  # noqa: E402
from sklearn.decomposition import FactorAnalysis  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.mixture import GaussianMixture  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.neighbors import KernelDensity  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from benchmarks.machine import describe, machine_info  # noqa: E402
from vae_jax.estimator import VAEEstimator  # noqa: E402

DATASETS = {"wine": load_wine, "breast_cancer": load_breast_cancer, "digits": load_digits}


def split(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) of data set `name`: a stratified 70/30 split, the features constant on
    the train part dropped, standardized by train."""
    x, y = DATASETS[name](return_X_y=True)
    train, test = train_test_split(x, test_size=0.3, stratify=y, random_state=seed)
    keep = np.ptp(train, axis=0) > 0  # (digits: pixels that are 0 in every train image)
    scaler = StandardScaler().fit(train[:, keep])
    return scaler.transform(train[:, keep]), scaler.transform(test[:, keep])


def gmm_by_bic(train: np.ndarray) -> GaussianMixture:
    """The full-covariance mixture of 1..10 components with the lowest BIC on `train`."""
    fits = [
        GaussianMixture(c, covariance_type="full", reg_covar=1e-3, random_state=0).fit(train)
        for c in range(1, 11)
    ]
    return min(fits, key=lambda g: g.bic(train))


def kde_by_cv(train: np.ndarray) -> KernelDensity:
    """A Gaussian KDE whose bandwidth maximises 5-fold cross-validated log-density on train."""
    grid = {"bandwidth": np.logspace(-1, np.log10(3.0), 20)}
    search = GridSearchCV(KernelDensity(kernel="gaussian"), grid, cv=5).fit(train)
    best = search.best_estimator_
    assert isinstance(best, KernelDensity)
    return best


def run(datasets: list[str], ks: list[int], seeds: list[int], vae_kwargs: dict[str, Any]) -> dict:
    """Fit and score every model; returns {dataset: {...}} of per-seed numbers."""
    results: dict[str, Any] = {}
    for name in datasets:
        per: dict[str, Any] = {"gmm": [], "gmm_components": [], "kde": [], "kde_bandwidth": []}
        per.update({f"fa{k}": [] for k in ks})
        per.update({f"vae{k}": [] for k in ks})
        per.update({f"vae{k}_epochs": [] for k in ks})
        per.update({f"vae{k}_max_epochs_reached": [] for k in ks})
        per.update({f"vae{k}_seconds": [] for k in ks})
        for seed in seeds:
            train, test = split(name, seed)
            gmm = gmm_by_bic(train)
            per["gmm"].append(gmm.score(test))
            per["gmm_components"].append(gmm.n_components)
            kde = kde_by_cv(train)
            per["kde"].append(kde.score(test) / len(test))  # (KDE's score is a sum)
            per["kde_bandwidth"].append(float(kde.bandwidth))
            for k in ks:
                per[f"fa{k}"].append(FactorAnalysis(n_components=k).fit(train).score(test))
                start = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ConvergenceWarning)
                    vae = VAEEstimator(z_dim=k, **vae_kwargs).fit(train)
                per[f"vae{k}_seconds"].append(time.perf_counter() - start)
                reached = any(issubclass(w.category, ConvergenceWarning) for w in caught)
                per[f"vae{k}"].append(vae.score(test))
                per[f"vae{k}_epochs"].append(vae.n_iter_)
                per[f"vae{k}_max_epochs_reached"].append(reached)
        results[name] = per
    return results


def report(results: dict, ks: list[int], seeds: list[int]) -> list[str]:
    lines = [
        f"Held-out log-density, nats per example (mean over seeds {seeds}; higher is better)",
        "| data set | k | VAE | FA | VAE - FA (worst seed) | GMM (BIC) | KDE (CV) "
        "| VAE epochs | max_epochs reached |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, per in results.items():
        for k in ks:
            vae, fa = np.array(per[f"vae{k}"]), np.array(per[f"fa{k}"])
            reached = sum(per[f"vae{k}_max_epochs_reached"])
            lines.append(
                f"| {name} | {k} | {vae.mean():.2f} | {fa.mean():.2f} | "
                f"{(vae - fa).mean():+.2f} ({(vae - fa).min():+.2f}) | "
                f"{np.mean(per['gmm']):.2f} | {np.mean(per['kde']):.2f} | "
                f"{'/'.join(str(e) for e in per[f'vae{k}_epochs'])} | {reached} of {len(seeds)} |"
            )
    lines.append("")
    for name, per in results.items():
        lines.append(
            f"{name}: GMM components by BIC {per['gmm_components']}, KDE bandwidth "
            f"{[round(b, 3) for b in per['kde_bandwidth']]}; VAE fit seconds "
            + ", ".join(f"k={k} {np.mean(per[f'vae{k}_seconds']):.1f}" for k in ks)
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--k", nargs="+", type=int, default=[2, 5, 10])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--vae", default="{}", help="JSON of VAEEstimator settings other than the defaults"
    )
    parser.add_argument("--json", help="also write the per-seed numbers here")
    args = parser.parse_args(argv)
    print(describe(machine_info()), flush=True)
    start = time.perf_counter()
    results = run(args.datasets, args.k, args.seeds, json.loads(args.vae))
    print("\n".join(report(results, args.k, args.seeds)))
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
