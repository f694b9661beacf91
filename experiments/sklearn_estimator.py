"""VAEEstimator with default settings, measured against scikit-learn's own baselines.

    python -m experiments.sklearn_estimator       # ~3-4 min on a 2-core CPU

1. Density: the mean held-out log-density (nats per example, 13 standardized features) of
   a Pipeline(StandardScaler, VAEEstimator(likelihood="gaussian_pixel")), against a
   full-covariance Gaussian fitted to the same training rows (GaussianMixture with one
   component: the best single Gaussian) and a diagonal one. Both are log-densities of the
   same standardized X, so they are comparable; higher is better.
2. Codes: 5-nearest-neighbour accuracy on 2-D codes (VAE transform with z_dim=2 against
   PCA with 2 components), stratified 5-fold cross-validation.
3. Digits (the issue's case): 5-NN accuracy on 2-D codes of load_digits / 16, the Bernoulli
   likelihood and "gaussian_pixel" (the default), both with the default linear path, and
   "gaussian_pixel" without it (`linear_path=False`), against PCA(2); one stratified 5-fold
   CV.
4. Grid search: GridSearchCV(Pipeline([StandardScaler(), VAEEstimator(likelihood=
   "gaussian_pixel")]), z_dim in {1, 2}, cv=2) on breast cancer, default settings
   otherwise (issue #12's check): the held-out scores.

Every number is printed by this script; docs/evaluation.md quotes one run.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import (
    GridSearchCV,
    StratifiedKFold,
    cross_val_score,
    cross_validate,
    train_test_split,
)
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from vae_jax.estimator import PosteriorCollapseWarning, VAEEstimator

SEEDS = (0, 1, 2, 3, 4)


def vae(seed: int, **kwargs) -> VAEEstimator:
    return VAEEstimator(likelihood="gaussian_pixel", random_state=seed, **kwargs)


def density(x: np.ndarray, y: np.ndarray) -> None:
    print("## Held-out log-density, nats per example (higher is better)\n")
    print(
        "| split seed | full-cov Gaussian | diagonal Gaussian | VAE IS k=100 | VAE IS k=1000 "
        "| VAE ELBO | epochs (best) | latent KLs | collapse warning |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for seed in SEEDS:
        x_train, x_test = train_test_split(x, test_size=0.3, stratify=y, random_state=seed)
        full = make_pipeline(StandardScaler(), GaussianMixture(1, covariance_type="full"))
        diag = make_pipeline(StandardScaler(), GaussianMixture(1, covariance_type="diag"))
        model = make_pipeline(StandardScaler(), vae(seed, z_dim=2))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PosteriorCollapseWarning)
            model.fit(x_train)
        collapsed = any(issubclass(w.category, PosteriorCollapseWarning) for w in caught)
        scaled_test, est = model[0].transform(x_test), model[-1]
        row = (
            full.fit(x_train).score(x_test),
            diag.fit(x_train).score(x_test),
            model.score(x_test),  # the pipeline's score: k = 100
            est.score(scaled_test, num_samples=1000),
            est.score(scaled_test, num_samples=1),
        )
        rows.append(row)
        kls = ", ".join(f"{v:.2f}" for v in est.latent_kl_)
        print(
            f"| {seed} | "
            + " | ".join(f"{v:.2f}" for v in row)
            + f" | {est.n_iter_} ({est.best_epoch_}) | {kls} | {'yes' if collapsed else 'no'} |"
        )
    mean = np.mean(rows, axis=0)
    print("| mean | " + " | ".join(f"{v:.2f}" for v in mean) + " | | | |\n")


def codes(x: np.ndarray, y: np.ndarray) -> None:
    print("## 5-NN accuracy on 2-D codes, stratified 5-fold CV (mean +- std over folds)\n")
    print("| seed | PCA(2) | VAE z_dim=2 |")
    print("|---|---|---|")
    pca_scores, vae_scores = [], []
    for seed in SEEDS:
        cv = StratifiedKFold(5, shuffle=True, random_state=seed)
        knn = KNeighborsClassifier(5)
        pca = cross_val_score(make_pipeline(StandardScaler(), PCA(2), knn), x, y, cv=cv)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PosteriorCollapseWarning)
            model = make_pipeline(StandardScaler(), vae(seed, z_dim=2), knn)
            ours = cross_val_score(model, x, y, cv=cv)
        pca_scores.append(pca.mean())
        vae_scores.append(ours.mean())
        pm, ps, om, os_ = pca.mean(), pca.std(), ours.mean(), ours.std()
        print(f"| {seed} | {pm:.3f} +- {ps:.3f} | {om:.3f} +- {os_:.3f} |")
    print(f"| mean | {np.mean(pca_scores):.3f} | {np.mean(vae_scores):.3f} |\n")


def digits() -> None:
    x, y = load_digits(return_X_y=True)
    x = x / 16.0  # [1797, 64] in [0, 1]
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    knn = KNeighborsClassifier(5)
    print("## Digits: 5-NN accuracy on 2-D codes, stratified 5-fold CV\n")
    print("| codes | accuracy | epochs run per fold |")
    print("|---|---|---|")
    pca = cross_val_score(make_pipeline(PCA(2), knn), x, y, cv=cv)
    print(f"| PCA(2) | {pca.mean():.3f} +- {pca.std():.3f} | |")
    for likelihood, linear_path in (
        ("bernoulli", True),
        ("gaussian_pixel", True),
        ("gaussian_pixel", False),  # (codes over density: docs/evaluation.md)
    ):
        estimator = VAEEstimator(z_dim=2, likelihood=likelihood, linear_path=linear_path)
        model = make_pipeline(estimator, knn)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PosteriorCollapseWarning)
            result = cross_validate(model, x, y, cv=cv, return_estimator=True)
        scores = result["test_score"]
        epochs = ", ".join(str(m[0].n_iter_) for m in result["estimator"])
        print(
            f"| VAE z_dim=2, {likelihood}, linear_path={linear_path} | {scores.mean():.3f} +- "
            f"{scores.std():.3f} | {epochs} |"
        )
    print()


def grid_search() -> None:
    x, _ = load_breast_cancer(return_X_y=True)  # [569, 30]
    pipe = Pipeline([("scale", StandardScaler()), ("vae", vae(0))])
    search = GridSearchCV(pipe, {"vae__z_dim": [1, 2]}, cv=2).fit(x)
    print("## GridSearchCV on breast cancer, cv=2 (held-out mean log-density, nats)\n")
    for params, score, std in zip(
        search.cv_results_["params"],
        search.cv_results_["mean_test_score"],
        search.cv_results_["std_test_score"],
        strict=True,
    ):
        print(f"- {params}: {score:.2f} +- {std:.2f}")
    print(f"- best: {search.best_params_}\n")


def main() -> None:
    # (no options: --help describes the run instead of starting it)
    argparse.ArgumentParser(
        prog="python -m experiments.sklearn_estimator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args()
    x, y = load_wine(return_X_y=True)  # [178, 13], 3 classes
    t0 = time.perf_counter()
    density(x, y)
    codes(x, y)
    digits()
    grid_search()
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
