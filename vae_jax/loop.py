"""The epoch loop: resume, train in compiled chunks, evaluate, checkpoint, report.

`fit` is what the experiments and the estimator call. It owns no model code and writes
nothing but checkpoints; images and metrics files are the caller's `on_epoch_end` hook.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from tqdm.auto import tqdm

from vae_jax.checkpoint import Checkpointer
from vae_jax.config import ExperimentConfig
from vae_jax.models import VAE
from vae_jax.objectives import Objective, make_elbo, make_iwae
from vae_jax.train import (
    NonFiniteError,
    TrainState,
    chunks,
    epoch_order,
    init_train_state,
    make_evaluate,
    make_keys,
    make_mesh,
    make_optimizer,
    make_train_call,
    replicate,
    steps_per_epoch,
    to_device,
)

EpochHook = Callable[[int, TrainState, list[dict[str, Any]]], None]


class FitResult(NamedTuple):
    model: VAE
    objective: Objective
    state: TrainState
    records: list[dict[str, Any]]


def _resolve_checkpoint_steps(every_steps: int, n_steps_epoch: int, chunk: int) -> int:
    """Checkpoint cadence in steps, rounded up to a whole number of chunks."""
    return max(chunk, math.ceil(every_steps / chunk) * chunk) if every_steps else 0


def fit(
    config: ExperimentConfig,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    *,
    workdir: str | Path | None = None,
    resume: bool = True,
    on_epoch_end: EpochHook | None = None,
    progress: bool = True,
    skip_nonfinite: bool = False,
    checkpoint_every_steps: int = 0,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Train `config`'s model on uint8 images; return the final state and per-epoch records.

    Args:
      config: the experiment configuration.
      train_images, train_labels: uint8 [N, H, W, C] grey levels (or 0/255 binarized) and
        int [N] labels. Dynamic binarization, if configured, happens inside the train step.
      test_images, test_labels: evaluated after every epoch (single-sample ELBO with a fixed
        key; also the IWAE bound when training with IWAE). Already binarized if binarized.
      workdir: where checkpoints go (none if None).
      resume: continue from the newest readable checkpoint in `workdir`, if any.
      on_epoch_end: called as ``hook(epoch, state, records)`` after each epoch, with all
        the records so far (those restored from a checkpoint included).
      skip_nonfinite: skip (and count) updates with a non-finite loss or gradient instead of
        stopping with `NonFiniteError`.
      checkpoint_every_steps: also checkpoint every this many steps (rounded up to whole
        compiled calls); 0 = only every `config.train.checkpoint_every` epochs.
      log: where the one-line epoch summaries go.

    Returns:
      A `FitResult`. Each record holds epoch, step, train_loss (minus the training
      objective, nats per example, averaged over the epoch's updates), test_loss (minus the
      single-sample test ELBO), test_log_likelihood, test_kl, seconds and the names of the
      bound and the data variant.
    """
    tc = config.train
    mesh = make_mesh(tc.num_devices)
    for name in ("batch_size", "eval_batch_size"):
        if getattr(tc, name) % mesh.size:
            raise ValueError(
                f"{name} ({getattr(tc, name)}) must divide evenly over {mesh.size} devices"
            )
    model = config.model.build(tuple(train_images.shape[1:]))
    objective = config.objective.build(model)
    tx = make_optimizer(tc.learning_rate)
    keys = make_keys(tc.seed)
    state = init_train_state(model, tx, keys.init, mesh)

    n_train = len(train_images)
    n_steps_epoch = steps_per_epoch(n_train, tc.batch_size)
    total_steps = tc.epochs * n_steps_epoch
    records: list[dict[str, Any]] = []
    partial = {"loss": 0.0, "log_likelihood": 0.0, "kl": 0.0, "weight": 0.0, "seconds": 0.0}

    checkpointer = Checkpointer(workdir, max_to_keep=tc.keep_checkpoints) if workdir else None
    if checkpointer is not None and resume:
        restored = checkpointer.restore(state)
        if restored is not None:
            state, meta, step = restored
            state = replicate(state, mesh)
            records, partial = meta["records"], meta["partial"]
            log(f"resumed from the checkpoint at step {step} (epoch {step / n_steps_epoch:.2f})")

    call = make_train_call(
        objective,
        tx,
        mesh,
        binarize=config.data.binarize == "dynamic",
        kl_warmup_steps=config.objective.kl_warmup_steps,
        skip_nonfinite=skip_nonfinite,
    )
    evaluators: dict[str, Callable[..., Any]] = {}
    if test_images is not None:
        evaluators["elbo"] = make_evaluate(make_elbo(model), mesh, batch_size=tc.eval_batch_size)
        if objective.kind == "iwae":
            evaluators["iwae"] = make_evaluate(
                make_iwae(model, num_samples=objective.num_samples),
                mesh,
                batch_size=tc.eval_batch_size,
            )
    train_data = to_device(train_images, train_labels, mesh)
    test_data = None if test_images is None else to_device(test_images, test_labels, mesh)
    every = _resolve_checkpoint_steps(checkpoint_every_steps, n_steps_epoch, tc.steps_per_call)
    last_saved = int(state.step)

    def save(epoch_done: int, step: int) -> None:
        nonlocal last_saved
        if checkpointer is not None and step != last_saved:
            meta = {
                "epoch": epoch_done,
                "records": records,
                "partial": partial,
                "config": config.to_dict(),
            }
            checkpointer.save(step, state, meta)
            last_saved = step

    step = int(state.step)
    try:
        while step < total_steps:
            epoch, offset = divmod(step, n_steps_epoch)
            index, weight = epoch_order(n_train, tc.batch_size, seed=tc.seed, epoch=epoch)
            bar = tqdm(
                total=n_steps_epoch,
                initial=offset,
                desc=f"epoch {epoch + 1}/{tc.epochs}",
                unit="step",
                disable=not progress,
                leave=False,
                dynamic_ncols=True,
            )
            for start, stop in chunks(n_steps_epoch, tc.steps_per_call):
                if stop <= offset:
                    continue
                t0 = time.perf_counter()
                state, metrics = call(
                    state, train_data, index[start:stop], weight[start:stop], keys.train
                )
                metrics = jax.device_get(metrics)
                partial["seconds"] += time.perf_counter() - t0
                if not metrics["finite"].all() and not skip_nonfinite:
                    bad = step + int(np.argmin(metrics["finite"]))
                    kept = (
                        f"the checkpoint at step {last_saved} is kept"
                        if last_saved
                        else "no checkpoint was written"
                    )
                    raise NonFiniteError(
                        f"non-finite loss or gradient at step {bad} (epoch {epoch + 1}); "
                        f"training stopped, {kept}. Try a lower --learning_rate, or "
                        "--skip_nonfinite to skip such updates."
                    )
                finite = metrics["finite"]
                w = metrics["weight"] * finite
                for name in ("loss", "log_likelihood", "kl"):
                    partial[name] += float(np.sum(np.where(finite, metrics[name], 0.0) * w))
                partial["weight"] += float(np.sum(w))
                step += stop - start
                bar.update(stop - start)
                bar.set_postfix(loss=f"{partial['loss'] / max(partial['weight'], 1):.2f}")
                if every and step % n_steps_epoch and step % every == 0:
                    save(epoch, step)
            bar.close()
            record = _epoch_record(config, objective, epoch + 1, step, partial, state)
            t0 = time.perf_counter()
            if test_data is not None:
                for name, evaluate in evaluators.items():
                    values = jax.device_get(evaluate(state.params, test_data, keys.eval))
                    prefix = "test" if name == "elbo" else f"test_{name}"
                    record[f"{prefix}_loss"] = -float(values["elbo"])
                    if name == "elbo":
                        record["test_log_likelihood"] = float(values["log_likelihood"])
                        record["test_kl"] = float(values["kl"])
            record["eval_seconds"] = time.perf_counter() - t0
            records.append(record)
            partial = dict.fromkeys(partial, 0.0)
            log(_format_record(record))
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, state, records)
            if (epoch + 1) % tc.checkpoint_every == 0 or step == total_steps:
                save(epoch + 1, step)
    finally:
        if checkpointer is not None:
            checkpointer.close()
    return FitResult(model, objective, state, records)


def _epoch_record(
    config: ExperimentConfig,
    objective: Objective,
    epoch: int,
    step: int,
    partial: dict[str, float],
    state: TrainState,
) -> dict[str, Any]:
    weight = max(partial["weight"], 1.0)
    return {
        "epoch": epoch,
        "step": step,
        "train_loss": partial["loss"] / weight,
        "train_log_likelihood": partial["log_likelihood"] / weight,
        "train_kl": partial["kl"] / weight,
        "train_bound": objective.name,
        "test_bound": "ELBO (1 sample, fixed key)",
        "data": config.data.variant,
        "skipped_updates": int(state.skipped),
        "seconds": partial["seconds"],
    }


def _format_record(r: dict[str, Any]) -> str:
    line = f"epoch {r['epoch']:3d}  train -{r['train_bound']} {r['train_loss']:8.3f}"
    if "test_loss" in r:
        line += (
            f"  test -ELBO {r['test_loss']:8.3f} (E[log p(x|z)] {r['test_log_likelihood']:.2f},"
            f" KL {r['test_kl']:.2f})"
        )
    for key, value in r.items():
        if key.startswith("test_iwae"):
            line += f"  test -IWAE {value:8.3f}"
    line += f"  nats/example  [{r['data']}]  {r['seconds']:.1f} s"
    if r["skipped_updates"]:
        line += f"  ({r['skipped_updates']} updates skipped)"
    return line
