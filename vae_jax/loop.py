"""The epoch loop: resume, train in compiled chunks, evaluate, checkpoint, report.

`fit` is what the experiments and the estimator call. It owns no model code and writes
nothing but ``config.json`` and checkpoints; images and metrics files are the caller's
`on_epoch_end` hook.

Resuming is exact: a checkpoint holds the step, the parameters, the optimizer state, the
skip counter and the epoch's partial sums (JSON floats round-trip exactly). Everything
random is a function of (seed, step): the batch order of an epoch comes from
``default_rng((seed, epoch))``, each step's key from ``fold_in(train_key, step)``, the
evaluation key is fixed. Checkpoints are only written at chunk boundaries, and chunks are
aligned to the epoch start, so a resumed run makes the same compiled calls on the same
data as an uninterrupted one: on one CPU its final parameters are bitwise equal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from vae_jax.arrays import Split, check_split, to_float_np
from vae_jax.checkpoint import Checkpointer
from vae_jax.config import ExperimentConfig, check_config
from vae_jax.objectives import Objective, make_elbo, make_iwae
from vae_jax.optim import check_schedule, make_optimizer
from vae_jax.train import (
    HostBatches,
    NonFiniteError,
    TrainState,
    all_finite,
    chunks,
    epoch_order,
    gather_batches,
    init_train_state,
    make_evaluate,
    make_host_evaluate,
    make_keys,
    make_mesh,
    make_train_call,
    replicate,
    steps_per_epoch,
    to_device,
)
from vae_jax.workdir import claim

# Whether the parameters and optimizer state are finite (checked before each checkpoint).
_state_finite = jax.jit(lambda state: all_finite((state.params, state.opt_state)))

EpochHook = Callable[[int, TrainState, list[dict[str, Any]]], None]

MAX_STEPS = 2**31 - 1  # TrainState.step is int32
PARTIAL_KEYS = ("loss", "log_likelihood", "kl", "weight", "seconds")


class FitResult(NamedTuple):
    model: nn.Module
    objective: Objective
    state: TrainState
    records: list[dict[str, Any]]


def fit(
    config: ExperimentConfig,
    x_train: np.ndarray,
    y_train: np.ndarray | None = None,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    *,
    model: nn.Module | None = None,
    tx: optax.GradientTransformation | None = None,
    placement: str = "auto",
    workdir: str | Path | None = None,
    resume: bool = True,
    on_epoch_end: EpochHook | None = None,
    progress: bool = True,
    skip_nonfinite: bool = False,
    checkpoint_every_steps: int = 0,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Train `config`'s model on in-memory arrays; return the final state and the records.

    Args:
      config: the experiment configuration. For data other than MNIST
        (``config.data.dataset != "mnist"``), an empty ``config.data.event_shape`` is
        taken from `x_train` (and recorded in the work directory).
      x_train: ``[N, *event_shape]`` examples (`vae_jax.arrays`): uint8 levels
        (scaled by 1/255 in the step) or real values used exactly as given (float32);
        values in [0, 1] for a Bernoulli likelihood or dynamic binarization (which
        happens inside the train step). Vectors ``[N, D]`` or images ``[N, H, W, C]``
        for the MLP, images for the conv VAE.
      y_train: int ``[N]`` labels, or None (needed by a conditional model).
      x_test, y_test: evaluated after every epoch (single-sample ELBO with a fixed
        key; also the IWAE bound when training with IWAE). Already binarized if binarized.
      model: your own Flax module (README, "Your own model") to train instead of the `VAE`
        that ``config.model`` describes; ``config.objective`` and ``config.train`` still
        apply.
      tx: any `optax.GradientTransformation` to use instead of the one `config.train`
        describes (`vae_jax.optim.make_optimizer`).
      (A work directory records the configuration only, not a `model` or `tx` passed here:
      resuming with other ones is refused only when the parameter shapes differ.)
      placement: where the training set lives while training. "device": on the device(s),
        each step gathering its batch there (the fast path); "host": in host memory (a
        memory-mapped .npy works), each call's batches gathered on the host and sent to
        the device ahead of use, for data larger than device memory; "auto": "device"
        when the data take at most a quarter of one device's memory (`default_placement`).
        The same batches and random streams either way, and exact resume in both; the
        numbers agree to float rounding, not bitwise (XLA compiles the two programs
        differently: MNIST's first-epoch train loss 152.657 against 152.658). The test split
        is placed like the training set.
      workdir: where ``config.json`` and the checkpoints go (none if None); claimed with
        `vae_jax.workdir.claim`: a directory of a different configuration is refused.
      resume: continue from the newest readable checkpoint in `workdir`, if any. With
        False, a `workdir` that already holds checkpoints is refused (nothing is deleted).
      on_epoch_end: called as ``hook(epoch, state, records)`` after each epoch, with all
        the records so far (those restored from a checkpoint included), before that
        epoch's checkpoint is written (so a run killed in between redoes the epoch).
      skip_nonfinite: skip (and count, in ``skipped_updates``) updates with a non-finite
        loss or gradient instead of stopping with `NonFiniteError`; training still stops if
        every update of an epoch is skipped.
      checkpoint_every_steps: also checkpoint once at least this many steps have passed
        since the last checkpoint (at the end of a compiled call); 0 = only every
        `config.train.checkpoint_every` epochs.
      log: where the one-line epoch summaries go.

    Returns:
      A `FitResult`. Each record holds epoch, step, train_loss (minus the training
      objective, nats per example, averaged over the epoch's updates), test_loss (minus the
      single-sample test ELBO), test_log_likelihood, test_kl, seconds and the names of the
      bound and the data variant.

    Raises:
      ValueError: invalid configuration or data (one-line message).
      WorkdirError (a ValueError): `workdir` belongs to another configuration, or holds
        checkpoints while `resume` is False.
      CheckpointError: `workdir` has no readable checkpoint, or a checkpoint cannot be
        written (the message names the checkpoint that is intact).
      NonFiniteError: a non-finite loss or gradient (the message names the step).
    """
    # ---------------------------------------------------------------- check what comes in
    mc, tc = config.model, config.train
    likelihood: str | None
    if model is None:
        likelihood, num_classes = mc.likelihood, mc.num_classes if mc.conditional else 0
    else:
        likelihood = getattr(model, "likelihood", None)  # (checked by the objective below)
        num_classes = getattr(model, "num_classes", None) or 0
    checks: dict[str, Any] = {
        "num_classes": num_classes or None,
        "unit_interval": likelihood == "bernoulli" or config.data.binarize == "dynamic",
    }
    train = check_split(
        x_train,
        y_train,
        name="training data",
        event_shape=config.data.image_shape or None,
        **checks,
    )
    event_shape = tuple(train.image.shape[1:])
    if not config.data.image_shape:
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, event_shape=event_shape)
        )
    check_config(config)  # the model, for the data's event shape
    test = None
    if x_test is not None:
        test = check_split(x_test, y_test, name="test data", event_shape=event_shape, **checks)
    if checkpoint_every_steps < 0:
        raise ValueError(f"checkpoint_every_steps must be >= 0, got {checkpoint_every_steps}")
    n_train = len(train.image)
    if tc.batch_size > n_train:
        raise ValueError(
            f"batch_size ({tc.batch_size}) is larger than the training set ({n_train} examples)"
        )
    n_steps_epoch = steps_per_epoch(n_train, tc.batch_size)
    total_steps = tc.epochs * n_steps_epoch
    if total_steps > MAX_STEPS:
        raise ValueError(
            f"{tc.epochs} epochs of {n_steps_epoch} steps exceed {MAX_STEPS} steps "
            "(the int32 step counter)"
        )
    if tx is None:
        check_schedule(tc, n_steps_epoch)
        tx = make_optimizer(tc, n_steps_epoch)
    mesh = make_mesh(tc.num_devices)
    for name in ("batch_size", "eval_batch_size"):
        if getattr(tc, name) % mesh.size:
            raise ValueError(
                f"{name} ({getattr(tc, name)}) must divide evenly over {mesh.size} devices"
            )
    if placement == "auto":
        placement = default_placement(train.image.nbytes, mesh)
    if placement not in ("device", "host"):
        raise ValueError(f"placement must be 'auto', 'device' or 'host', got {placement!r}")
    streamed = placement == "host"
    if streamed:
        log(
            f"data: the training set ({train.image.nbytes / 2**20:.0f} MiB) stays in host "
            "memory; batches are gathered there and prefetched to the device"
        )
    if model is None:
        model = config.model.build(event_shape)
    objective = config.objective.build(model)
    keys = make_keys(tc.seed)
    records: list[dict[str, Any]] = []
    partial = dict.fromkeys(PARTIAL_KEYS, 0.0)

    checkpointer = None
    if workdir is not None:
        claim(workdir, config, resume=resume)
        checkpointer = Checkpointer(workdir, max_to_keep=tc.keep_checkpoints)
    try:
        # One compiled call (eager Flax init compiles op by op); bitwise the same parameters.
        example = to_float_np(train.image[:1])  # (shapes only, for a module without image_shape)
        init = functools.partial(init_train_state, model, tx, example=example)
        state = jax.jit(init)(keys.init)
        state = replicate(state, mesh)
        if checkpointer is not None and resume:
            restored = checkpointer.restore(state, check=_check_meta)
            if restored is not None:
                state, meta, step = restored
                state = replicate(state, mesh)
                records, partial = meta["records"], meta["partial"]
                log(
                    f"resumed from the checkpoint at step {step} (epoch {step / n_steps_epoch:.2f})"
                )
                if step >= total_steps:
                    log(f"it already covers the {tc.epochs} epochs asked for; nothing to train")
        # ------------------------------------------------------------ compile and place
        call = make_train_call(
            objective,
            tx,
            mesh,
            binarize=config.data.binarize == "dynamic",
            kl_warmup_steps=config.objective.kl_warmup_steps,
            skip_nonfinite=skip_nonfinite,
            event_shape=event_shape if streamed else None,
        )
        evaluators: dict[str, Callable[..., Any]] = {}
        if test is not None:
            # (streamed data: the test split stays in host memory too)
            make = make_host_evaluate if streamed else make_evaluate
            bound = make_elbo(model)
            evaluators["elbo"] = make(bound, mesh, batch_size=tc.eval_batch_size)
            if objective.kind == "iwae":
                bound = make_iwae(model, num_samples=objective.num_samples)
                evaluators["iwae"] = make(bound, mesh, batch_size=tc.eval_batch_size)
        train_data = None if streamed else to_device(train.image, train.label, mesh)
        test_data: Any = test
        if test is not None and not streamed:
            test_data = to_device(test.image, test.label, mesh)
        last_saved = int(state.step)

        def save(epoch_done: int, step: int) -> None:
            nonlocal last_saved
            if checkpointer is not None and step != last_saved:
                if not bool(_state_finite(state)):  # never replace a good checkpoint with inf/NaN
                    raise NonFiniteError(
                        f"the parameters or optimizer state are not finite at step {step} (an "
                        f"update overflowed); training stopped and {kept()}. Lower "
                        "--learning_rate (in a new --workdir)"
                    )
                meta = {
                    "epoch": epoch_done,
                    "records": records,
                    "partial": partial,
                    "config": config.to_dict(),
                }
                checkpointer.save(step, state, meta)
                last_saved = step

        def kept() -> str:
            if checkpointer is None:
                return "no checkpoints are written (no work directory)"
            if last_saved:
                return f"the last good checkpoint, at step {last_saved}, is kept"
            return "no checkpoint had been written yet"

        step = int(state.step)
        while step < total_steps:
            epoch, offset = divmod(step, n_steps_epoch)
            index, weight = epoch_order(n_train, tc.batch_size, seed=tc.seed, epoch=epoch)
            skipped_before = int(state.skipped)
            bar = tqdm(
                total=n_steps_epoch,
                initial=offset,
                desc=f"epoch {epoch + 1}/{tc.epochs}",
                unit="step",
                disable=not progress,
                leave=False,
                dynamic_ncols=True,
            )
            # (a chunk starts later than its boundary only after a checkpoint made mid-chunk)
            spans = [(max(a, offset), b) for a, b in chunks(n_steps_epoch, tc.steps_per_call)]
            spans = [(a, b) for a, b in spans if a < b]
            if streamed:  # batches gathered and sent to the device ahead of use, by Grain
                streamed_batches = iter(_host_batches(train, index, weight, spans))
            for start, stop in spans:
                t0 = time.perf_counter()
                if streamed:
                    state, metrics = call(state, next(streamed_batches), keys.train)
                else:
                    state, metrics = call(
                        state, train_data, index[start:stop], weight[start:stop], keys.train
                    )
                metrics = jax.device_get(metrics)
                partial["seconds"] += time.perf_counter() - t0
                if not metrics["finite"].all() and not skip_nonfinite:
                    bad = step + int(np.argmin(metrics["finite"]))
                    bar.close()
                    raise NonFiniteError(
                        f"non-finite loss or gradient at step {bad} (epoch {epoch + 1}, update "
                        f"{bad - epoch * n_steps_epoch + 1} of {n_steps_epoch}); training stopped "
                        f"and {kept()}. Lower --learning_rate (in a new --workdir), or rerun "
                        "with --skip_nonfinite to skip and count such updates"
                    )
                finite = metrics["finite"]
                w = metrics["weight"] * finite
                for name in ("loss", "log_likelihood", "kl"):
                    partial[name] += float(np.sum(np.where(finite, metrics[name], 0.0) * w))
                partial["weight"] += float(np.sum(w))
                step += stop - start
                bar.update(stop - start)
                bar.set_postfix(loss=f"{partial['loss'] / max(partial['weight'], 1):.2f}")
                if (
                    checkpoint_every_steps
                    and step % n_steps_epoch
                    and step - last_saved >= checkpoint_every_steps
                ):
                    save(epoch, step)
            bar.close()
            if skip_nonfinite and int(state.skipped) - skipped_before == n_steps_epoch - offset:
                raise NonFiniteError(
                    f"every update of epoch {epoch + 1} (steps {epoch * n_steps_epoch + offset} "
                    f"to {step - 1}) had a non-finite loss or gradient and was skipped; training "
                    f"stopped and {kept()}. Lower --learning_rate (in a new --workdir)"
                )
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
        return FitResult(model, objective, state, records)
    finally:
        if checkpointer is not None:
            checkpointer.close()


def _check_meta(state: TrainState, meta: dict[str, Any]) -> None:
    """Raise ValueError unless `meta` has the records and partial sums `fit` writes."""
    records, partial = meta.get("records"), meta.get("partial")
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in records
    ):
        raise ValueError("its metadata has no valid per-epoch records")
    if not isinstance(partial, dict) or sorted(partial) != sorted(PARTIAL_KEYS):
        raise ValueError("its metadata has no valid partial-epoch sums")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in partial.values()):
        raise ValueError("its partial-epoch sums are not numbers")


def default_placement(nbytes: int, mesh: Any) -> str:
    """ "device" when a training set of `nbytes` takes at most a quarter of one device's
    memory (its ``bytes_limit``, or the machine's RAM for a CPU device), else "host"."""
    stats = None
    with contextlib.suppress(Exception):  # not every backend reports memory
        stats = mesh.devices.flat[0].memory_stats()
    limit = (stats or {}).get("bytes_limit")
    if not limit:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return "device" if nbytes <= limit // 4 else "host"


def _host_batches(
    train: Split, index: np.ndarray, weight: np.ndarray, spans: list[tuple[int, int]]
) -> Any:
    """The `HostBatches` of each (start, stop) span of an epoch's steps, in order, each
    gathered on the host and put on the device by a Grain thread while the previous call
    runs (2 calls ahead)."""
    import grain

    def load(span: tuple[int, int]) -> HostBatches:
        start, stop = span
        batches = gather_batches(train.image, train.label, index[start:stop], weight[start:stop])
        return jax.device_put(batches)

    options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
    return grain.MapDataset.source(spans).map(load).to_iter_dataset(options)


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
