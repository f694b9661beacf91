"""What a `VAEEstimator` fit costs, beside PCA and GaussianMixture, in one run.

Issue #22, item 2's timings. On wine (178 x 13) and digits (1797 x 64), standardized, with
the default ``VAEEstimator(random_state=0)`` (``z_dim=2``):

1. ``first fit``: the first fit in a fresh process with an empty persistent compilation
   cache (a new temporary directory as ``$VAE_JAX_COMPILATION_CACHE``): tracing and
   compiling included;
2. ``second fit``: a second, equal fit in the same process (same configuration and shapes:
   the compiled programs are reused, `vae_jax.trainer`);
3. ``first fit, warm disk cache``: the first fit in another new process that finds the
   cache written by 1 (`vae_jax.jit_cache`);
4. ``grid search``: in process 1, after 1 and 2, ``GridSearchCV`` of 4 candidates
   (``z_dim`` 1 to 4) x 3 folds, then its refit (``n_jobs=1``);

and the same for ``PCA(n_components=2)`` and ``GaussianMixture(n_components=2,
random_state=0)`` (grid over ``n_components`` 1 to 4). Wall-clock seconds, one
measurement each (``time.perf_counter``); the ratios are VAE / PCA and VAE / GMM of the
same row. Usage::

    python -m benchmarks.estimator_speed
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("wine", "digits")


def _data(name: str) -> Any:
    from sklearn.datasets import load_digits, load_wine
    from sklearn.preprocessing import StandardScaler

    x = (load_wine if name == "wine" else load_digits)().data
    return StandardScaler().fit_transform(x)


def _models() -> dict[str, Any]:
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    from vae_jax.estimator import VAEEstimator

    return {
        "vae": (VAEEstimator(random_state=0), "z_dim"),
        "pca": (PCA(n_components=2), "n_components"),
        "gmm": (GaussianMixture(n_components=2, random_state=0), "n_components"),
    }


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def child(stage: str) -> dict[str, Any]:
    """Stage "first": first fit, second fit, grid search; stage "warm": first fit only."""
    import warnings

    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV

    warnings.simplefilter("ignore", ConvergenceWarning)  # (timings; the density benchmark
    # reports which fits reach max_epochs)
    out: dict[str, Any] = {}
    for name in DATASETS:
        x = _data(name)
        for model, (estimator, param) in _models().items():
            row: dict[str, Any] = {}
            row["first_fit"] = _timed(lambda e=estimator, x=x: clone(e).fit(x))
            if stage == "first":
                row["second_fit"] = _timed(lambda e=estimator, x=x: clone(e).fit(x))
                grid = GridSearchCV(clone(estimator), {param: [1, 2, 3, 4]}, cv=3)
                row["grid_search"] = _timed(lambda g=grid, x=x: g.fit(x))
            if model == "vae":
                row["epochs"] = clone(estimator).fit(x).n_iter_ if stage == "first" else None
            out[f"{name}/{model}"] = row
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--child", choices=["first", "warm"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return
    from benchmarks.machine import describe, machine_info

    print(describe(machine_info()), flush=True)
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "VAE_JAX_COMPILATION_CACHE": cache}
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        runs = {}
        for stage in ("first", "warm"):
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.estimator_speed", "--child", stage],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            runs[stage] = json.loads(done.stdout.strip().splitlines()[-1])
    print("Wall-clock seconds (one measurement each)")
    print("| data set | what | VAE | PCA | GMM | VAE / PCA | VAE / GMM |")
    print("|---|---|---|---|---|---|---|")
    rows = [
        ("first fit (empty disk cache)", "first", "first_fit"),
        ("second fit, same process", "first", "second_fit"),
        ("first fit, warm disk cache", "warm", "first_fit"),
        ("GridSearchCV 4 x 3 folds + refit", "first", "grid_search"),
    ]
    for name in DATASETS:
        for label, stage, key in rows:
            t = {m: runs[stage][f"{name}/{m}"][key] for m in ("vae", "pca", "gmm")}
            print(
                f"| {name} | {label} | {t['vae']:.2f} | {t['pca']:.4f} | {t['gmm']:.3f} | "
                f"{t['vae'] / t['pca']:.0f} | {t['vae'] / t['gmm']:.0f} |"
            )
    for name in DATASETS:
        print(f"{name}: the default VAE fit ran {runs['first'][f'{name}/vae']['epochs']} epochs")


if __name__ == "__main__":
    main()
