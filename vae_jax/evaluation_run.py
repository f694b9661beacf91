"""Evaluating a trained run: load its checkpoint and test data once, score, report, draw.

`evaluate_checkpoint` is what ``python -m experiments.evaluate`` and
``python -m experiments.paper`` call. In order: check that the report and the pictures
can be written (before anything long), load the checkpoint (once: the pictures reuse it),
prepare the test data with the run's own configuration, run `vae_jax.evaluate.evaluate_dataset`,
print the report's numbers, then write the JSON report and the pictures. A failure to write
comes after the numbers were printed, so they are never lost.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import jax
import numpy as np

from vae_jax.checkpoint import CheckpointError, LoadedModel, load_checkpoint
from vae_jax.config import ExperimentConfig
from vae_jax.evaluate import (
    DatasetResult,
    evaluate_dataset,
    format_report,
    make_report,
    write_evaluation_pictures,
)
from vae_jax.fields import MAX_SEED, require_bool, require_callable, require_int, require_path
from vae_jax.models import VAE
from vae_jax.sources import check_paths, prepare_data
from vae_jax.workdir import PiecesRunError, write_json


class EvaluationError(RuntimeError):
    """The evaluation failed a sanity check (the IS estimate fell below the ELBO) or cannot
    write its outputs (the message says which; the numbers were printed first if computed)."""


def evaluate_checkpoint(
    workdir: str | os.PathLike,
    *,
    num_samples: int = 5000,
    sample_chunk: int = 20,
    batch_size: int = 100,
    num_examples: int | None = None,
    seed: int = 0,
    step: int | None = None,
    data_dir: str | None = None,
    mnist_dir: str | None = None,
    report_path: str | os.PathLike | None = None,
    pictures_dir: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Any], DatasetResult]:
    """Evaluate a trained checkpoint on the test set: IS log-likelihood, ELBO, KL, bits/dim,
    active units; print them, then write a JSON report (and the pictures).

    The data come from `vae_jax.sources.prepare_data` with the checkpoint's own
    configuration, so padding and binarization match training: a dynamically binarized
    model is scored on the test set binarized once with the configured fixed seed.

    Report keys (nats per example, means over the evaluated test examples):
      ``nll_is_k{k}``: minus the importance-sampled log p(x) with k samples (binarized data
      with a Bernoulli likelihood only; on grey levels the same number is called
      ``neg_is_estimate_k{k}`` and is a loss, not an NLL), ``neg_elbo`` (minus the ELBO,
      E_q[log p(x|z)] from the same k samples, KL in closed form), ``kl``,
      ``neg_log_px_z``, ``bits_per_dim_is_k{k}`` (binarized data only), ``active_units``,
      standard errors over examples, the check ``is_ge_elbo`` and its per-example fraction,
      wall time, peak memory and decoder evaluations per second.

    Args:
      workdir: an experiment work directory (config.json and checkpoints/); only read.
      num_samples: k importance samples per example.
      sample_chunk, batch_size: memory/speed knobs (see `evaluate_dataset`); the numbers do
        not depend on them.
      num_examples: evaluate the first N test examples (default all).
      seed: seed of the importance-sampling key.
      step: checkpoint step (default the newest).
      report_path: where the JSON goes (default ``workdir/evaluation_k{k}.json``).
      pictures_dir: if given, also write `write_evaluation_pictures`'s PNGs there.
      log: where the report's lines and notes go (default: standard output).

    Returns:
      (report dict, `DatasetResult`).

    Raises:
      EvaluationError: (one line) the report's or the pictures' directory is not writable
        (found before the computation), a write failed afterwards (the numbers were logged
        first), or the mean IS estimate is below the mean ELBO (written to the report
        first; this cannot happen for a correct estimator, up to Monte Carlo noise).
      CheckpointError: no readable checkpoint, or a run that `fit` made from your own
        model (no `ExperimentConfig` to rebuild it from; the message says what to call).
      ValueError: `num_examples` below 1, or data that do not fit the model.
    """
    # (Python ints, which the report's JSON takes; before: np.int64 failed the report's
    # write after the whole evaluation, and seed 2**32 drew seed 0's samples)
    num_samples = require_int("num_samples", num_samples)
    sample_chunk = require_int("sample_chunk", sample_chunk)
    batch_size = require_int("batch_size", batch_size)
    seed = require_int("seed", seed)
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in 0..{MAX_SEED}, got {seed}")
    if num_examples is not None:
        num_examples = require_int("num_examples", num_examples)
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    require_bool("progress", progress)
    require_callable("log", log)
    workdir = require_path("workdir", workdir)
    check_paths(data_dir=data_dir, mnist_dir=mnist_dir)
    if report_path is not None:
        report_path = require_path("report_path", report_path)
    if pictures_dir is not None:
        pictures_dir = require_path("pictures_dir", pictures_dir)
    report_file = Path(report_path or workdir / f"evaluation_k{num_samples}.json")
    check_writable(report_file.parent, "the report", hint="--report")
    if report_file.is_dir():
        raise EvaluationError(f"cannot write the report to {report_file}: it is a directory")
    if pictures_dir is not None:
        check_writable(pictures_dir, "the pictures", hint="--out")

    try:
        loaded = load_checkpoint(workdir, step)
    except CheckpointError as error:
        if not isinstance(error.__cause__, PiecesRunError):
            raise
        raise CheckpointError(
            f"{workdir} holds a run that fit made from your own model: evaluate_checkpoint "
            "rebuilds the model and the test data from a recorded ExperimentConfig; load it "
            "with load_checkpoint(workdir, model=...) and score it with "
            "evaluate_dataset(model, params, x_test, labels, key)"
        ) from None
    config = loaded.config
    assert config is not None  # (loaded without a model: from its recorded configuration)
    images, labels = _test_data(
        config, num_examples, data_dir=data_dir, mnist_dir=mnist_dir, log=log
    )
    # A true log-density of the data: a Bernoulli likelihood of binary data, or a Gaussian
    # density (continuous, of the values as the model sees them: uint8 scaled by 1/255).
    normalised = config.model.likelihood != "bernoulli" or config.data.binarize != "none"
    if not normalised:
        log(
            f"note: {config.data.variant} with a {config.model.likelihood} likelihood: the "
            "IS estimate and the ELBO are reported as losses (neg_is_estimate_k*, neg_elbo); "
            "they are not negative log-likelihoods and no bits/dim is given"
        )
    result = evaluate_dataset(
        loaded.model,
        loaded.params,
        images,
        labels,
        jax.random.key(seed),
        num_samples=num_samples,
        sample_chunk=sample_chunk,
        batch_size=batch_size,
        progress=progress,
    )
    report = make_report(
        result,
        config=config,
        model=cast(VAE, loaded.model),
        params=loaded.params,
        num_samples=num_samples,
        normalised=normalised,
    )
    report.update(
        workdir=str(Path(workdir).absolute()),
        step=loaded.step,
        epoch=loaded.meta.get("epoch"),
        seed=seed,
        sample_chunk=sample_chunk,
        batch_size=batch_size,
    )
    log(format_report(report))  # (the numbers first: a failed write below cannot lose them)
    _write_outputs(
        report, result, loaded, (images, labels), workdir, report_file, pictures_dir, log
    )
    if not report["is_ge_elbo"]:
        raise EvaluationError(
            f"mean IS estimate ({-report[report['is_key']]:.4f}) is below the mean ELBO "
            f"({-report['neg_elbo']:.4f}): the estimator or the checkpoint is broken"
        )
    return report, result


def check_writable(directory: Path, what: str, *, hint: str = "") -> None:
    """Raise EvaluationError (one line) unless files can be created in `directory`.

    Nothing is created: the nearest existing directory on the way to `directory` (itself,
    or the parent it will be created in) must be a directory in which a temporary file
    without a name (``O_TMPFILE`` on Linux; elsewhere a random name, created with
    ``O_EXCL`` and removed at once) can be opened.
    """
    where = f" (choose another place with {hint})" if hint else ""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise EvaluationError(
            f"cannot write {what} in {directory}: {existing} is not a directory{where}"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        why = error.strerror or type(error).__name__  # (not the probe's random name)
        raise EvaluationError(f"cannot write {what} in {directory}: {why}{where}") from None


def _test_data(
    config: ExperimentConfig,
    num_examples: int | None,
    *,
    data_dir: str | None,
    mnist_dir: str | None,
    log: Callable[[str], None],
) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the run's test split (its training split when it has none),
    prepared as for training, the first `num_examples` of them."""
    _, train, test = prepare_data(config, data_dir=data_dir, mnist_dir=mnist_dir, log=log)
    if test is None:
        log(f"note: {config.data.dataset} has no test split: evaluating the training set")
        test = train
    images, labels = test.image, test.label
    if num_examples is not None:
        images, labels = images[:num_examples], labels[:num_examples]
    return images, labels


def _write_outputs(
    report: dict[str, Any],
    result: DatasetResult,
    loaded: LoadedModel,
    data: tuple[np.ndarray, np.ndarray],
    workdir: str | os.PathLike,
    report_file: Path,
    pictures_dir: str | os.PathLike | None,
    log: Callable[[str], None],
) -> None:
    """The pictures (their paths go into the report), then the JSON report: each failure is
    one EvaluationError line, and a failure of the pictures does not keep the report from
    being written."""
    picture_error = None
    if pictures_dir is not None:
        try:
            pictures = write_evaluation_pictures(
                workdir,
                pictures_dir,
                posterior_mean=result.posterior_mean,
                images=data[0],
                labels=data[1],
                loaded=loaded,
            )
            report["pictures"] = [str(p) for p in pictures]
        except OSError as error:
            picture_error = f"could not write the pictures in {pictures_dir}: {_why(error)}"
    try:
        report_file.parent.mkdir(parents=True, exist_ok=True)
        write_json(report_file, report)
    except OSError as error:
        raise EvaluationError(
            f"could not write the report {report_file}: {_why(error)} (its "
            "numbers are printed above)" + (f"; also {picture_error}" if picture_error else "")
        ) from None
    if picture_error:
        raise EvaluationError(f"wrote {report_file}, but {picture_error}")
    log(
        f"wrote {report_file}"
        + (f" and {len(report['pictures'])} PNGs in {pictures_dir}" if pictures_dir else "")
    )


def _why(error: OSError) -> str:
    """An OSError in a few words: its reason and the path it concerns."""
    if error.strerror:
        return error.strerror + (f": {error.filename}" if error.filename else "")
    return str(error).splitlines()[0] if str(error) else type(error).__name__


__all__ = ["EvaluationError", "check_writable", "evaluate_checkpoint"]
