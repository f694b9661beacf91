"""The epoch loop: resume, train in compiled chunks, evaluate, checkpoint, report.

`fit` is what the experiments and the estimator call, with the pieces: an objective (which
holds the model), an optax optimizer, arrays and `FitOptions`. It owns no model code and
writes nothing but ``config.json`` and checkpoints; images and metrics files are the
caller's `on_epoch_end` hook.

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
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from vae_jax.arrays import Split, check_split, to_float_np
from vae_jax.checkpoint import Checkpointer
from vae_jax.config import ExperimentConfig
from vae_jax.distributed import any_process, on_primary
from vae_jax.objectives import Objective, make_elbo, make_iwae
from vae_jax.options import FitOptions
from vae_jax.train import (
    NO_BOUND,
    DivergenceError,
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

# on_epoch_end(epoch, state, records); returning True stops training after this epoch.
EpochHook = Callable[[int, TrainState, list[dict[str, Any]]], bool | None]

MAX_STEPS = 2**31 - 1  # TrainState.step is int32
# What schedulers send before they kill a job: SIGTERM (Kubernetes, `timeout`, SLURM at the
# time limit), SIGUSR1 (SLURM's `--signal=USR1@SECONDS`, sent ahead of the time limit).
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """`fit` stopped on a preemption signal after writing a checkpoint (with a work
    directory): the same call again resumes it, to the same parameters as an uninterrupted
    run."""


PARTIAL_KEYS = ("loss", "log_likelihood", "kl", "weight", "seconds")
DIVERGENCE_FACTOR = 1000.0  # `divergence_bound`


def divergence_bound(initial_loss: float) -> float:
    """The loss (nats per example) above which a step has diverged: the run's first loss
    plus 1000 times its size (at least 1 nat). Healthy runs stay far below it (MNIST starts
    near 543 and falls to about 100); an exploding one passes it by orders of magnitude
    (a learning rate of 1e3 reaches 1e16 within an epoch)."""
    return initial_loss + DIVERGENCE_FACTOR * max(abs(initial_loss), 1.0)


class FitResult(NamedTuple):
    model: nn.Module
    objective: Objective
    state: TrainState
    records: list[dict[str, Any]]


def fit(
    objective: Objective,
    tx: optax.GradientTransformation,
    x_train: np.ndarray | Split,
    y_train: np.ndarray | None = None,
    x_test: np.ndarray | Split | None = None,
    y_test: np.ndarray | None = None,
    *,
    options: FitOptions | None = None,
    workdir: str | Path | None = None,
    record: ExperimentConfig | None = None,
    resume: bool = True,
    overwrite: bool = False,
    on_epoch_end: EpochHook | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Train ``objective.model`` by maximising `objective` with `tx`; return the final state.

    Example (README, "Python API")::

        model = VAE(image_shape=(28, 28, 1))
        result = fit(make_elbo(model), optax.adam(1e-3), x_train, x_test=x_test,
                     options=FitOptions(epochs=10, batch_size=128))
        params = result.state.params

    Args:
      objective: what to maximise: `make_elbo(model, ...)` or `make_iwae(model, ...)`, for a
        `VAE` or any module that follows the model protocol (README, "Your own model").
      tx: any `optax.GradientTransformation` (`vae_jax.optim.make_optimizer` builds the
        CLI's); its schedule counts update steps.
      x_train: ``[N, *event_shape]`` examples (`vae_jax.arrays`): uint8 levels
        (scaled by 1/255 in the step) or real values used exactly as given (float32);
        values in [0, 1] for a Bernoulli likelihood or dynamic binarization (which
        happens inside the train step). Vectors ``[N, D]`` or images ``[N, H, W, C]``
        for the MLP, images for the conv VAE; the event shape must be the model's
        ``image_shape`` when it has one.
        A `vae_jax.arrays.Split` (what `check_split` and `vae_jax.sources.prepare_data`
        return, with its labels; `y_train` None) is taken as checked: only its shape is
        looked at again, so a large (memory-mapped) split is not read twice.
      y_train: int ``[N]`` labels, or None (needed by a conditional model).
      x_test, y_test: evaluated after every epoch (single-sample ELBO with a fixed
        key; also the IWAE bound when training with IWAE). Already binarized if binarized.
      options: batches, epochs, seed, devices, data placement, checkpoints (`FitOptions`;
        None = its defaults).
        With ``placement="host"`` the training set stays in host memory (a memory-mapped
        .npy works) and each call's batches are gathered there and sent to the device ahead
        of use: the same batches and random streams as on the device, exact resume too, and
        numbers equal to float rounding, not bitwise (XLA compiles the two programs
        differently: MNIST's first-epoch train loss 152.657 against 152.658). The test
        split is placed like the training set.
      workdir: where ``config.json`` and the checkpoints go (none if None); claimed with
        `vae_jax.workdir.claim`: a directory of another run is refused.
      record: the `ExperimentConfig` this run was made from, recorded in the work
        directory (what the experiments and `load_checkpoint` use). None records the
        objective, the model's class and fields, and `options` instead; `tx` cannot be recorded, so
        resuming with another optimizer is refused only when its state's shapes differ.
      resume: continue from the newest readable checkpoint in `workdir`, if any. With
        False, a `workdir` that already holds checkpoints is refused (nothing is deleted).
      overwrite: where `workdir` would be refused, delete its checkpoints, metrics and
        pictures and start afresh instead (`vae_jax.workdir.claim`).
      on_epoch_end: called as ``hook(epoch, state, records)`` after each epoch, with all
        the records so far (those restored from a checkpoint included), before that
        epoch's checkpoint is written (so a run killed in between redoes the epoch). If it
        returns True, training stops there (early stopping): that epoch is checkpointed and
        `fit` returns. (`state` is donated to the next step: copy what you keep of it,
        e.g. ``jax.device_get(state.params)``.)
      progress: show a progress bar per epoch.
      log: where the one-line epoch summaries go.

    Returns:
      A `FitResult`. Each record holds epoch, step, train_loss (minus the training
      objective, nats per example, averaged over the epoch's updates), test_loss (minus the
      single-sample test ELBO), test_log_likelihood, test_kl, seconds and the names of the
      bound and the data variant.

    Raises:
      ValueError: invalid options or data (one-line message).
      WorkdirError (a ValueError): `workdir` belongs to another run, or holds
        checkpoints while `resume` is False.
      CheckpointError: `workdir` has no readable checkpoint, or a checkpoint cannot be
        written (the message names the checkpoint that is intact).
      NonFiniteError: a non-finite loss or gradient (the message names the step).
      DivergenceError: a loss above `divergence_bound` (NonFiniteError is a kind of it).
      Preempted: SIGTERM or SIGUSR1 arrived (in the main thread): the current compiled call
        finished, a checkpoint was written (with `workdir`), and training stopped; calling
        `fit` again the same way resumes it. A second signal ends the process at once.
    """
    # ---------------------------------------------------------------- check what comes in
    if not isinstance(objective, Objective):
        raise TypeError(
            f"objective must be an Objective (make_elbo(model) or make_iwae(model)), got "
            f"{type(objective).__name__}"
        )
    if not all(callable(getattr(tx, name, None)) for name in ("init", "update")):
        raise TypeError(f"tx must be an optax.GradientTransformation, got {type(tx).__name__}")
    model, opts = objective.model, options or FitOptions()
    num_classes = getattr(model, "num_classes", 0) or 0
    checks: dict[str, Any] = {
        "num_classes": num_classes or None,
        "unit_interval": model.likelihood == "bernoulli" or opts.binarize,
    }
    model_shape = tuple(getattr(model, "image_shape", ()) or ()) or None
    train = _enter(x_train, y_train, name="training data", event_shape=model_shape, **checks)
    event_shape = tuple(train.image.shape[1:])
    test = None
    if x_test is not None:
        test = _enter(x_test, y_test, name="test data", event_shape=event_shape, **checks)
    n_train = len(train.image)
    if opts.batch_size > n_train:
        raise ValueError(
            f"batch_size ({opts.batch_size}) is larger than the training set ({n_train} examples)"
        )
    n_steps_epoch = steps_per_epoch(n_train, opts.batch_size)
    total_steps = opts.epochs * n_steps_epoch
    if total_steps > MAX_STEPS:
        raise ValueError(
            f"{opts.epochs} epochs of {n_steps_epoch} steps exceed {MAX_STEPS} steps "
            "(the int32 step counter)"
        )
    mesh = make_mesh(opts.num_devices)
    for name in ("batch_size", "eval_batch_size"):
        if getattr(opts, name) % mesh.size:
            raise ValueError(
                f"{name} ({getattr(opts, name)}) must divide evenly over {mesh.size} devices"
            )
    placement = opts.placement
    if placement == "auto":
        placement = default_placement(train.image.nbytes, mesh)
    streamed = placement == "host"
    if streamed:
        log(
            f"data: the training set ({train.image.nbytes / 2**20:.0f} MiB) stays in host "
            "memory; batches are gathered there and prefetched to the device"
        )
    variant = opts.data_variant or _variant(event_shape, opts.binarize)
    keys = make_keys(opts.seed)
    records: list[dict[str, Any]] = []
    partial = dict.fromkeys(PARTIAL_KEYS, 0.0)
    initial_loss: float | None = None  # the run's first finite loss (`divergence_bound`)
    run_record: dict[str, Any] = (
        record.to_dict() if record is not None else _run_record(objective, opts, event_shape)
    )

    example = to_float_np(train.image[:1])  # (shapes only, for a module without image_shape)
    init = functools.partial(init_train_state, model, tx, example=example)
    _check_state_fits(jax.eval_shape(init, keys.init), mesh)  # (allocates nothing)

    checkpointer = None
    signals: list[int] = []  # the preemption signals received (`_catch_preemption`)
    stack = contextlib.ExitStack()
    if workdir is not None:
        owner = record if record is not None else run_record
        on_primary(
            lambda: claim(workdir, owner, resume=resume, overwrite=overwrite),
            "claim the work directory",
        )
        checkpointer = stack.enter_context(
            contextlib.closing(Checkpointer(workdir, max_to_keep=opts.keep_checkpoints))
        )
    with stack:  # (closes the preemption handler, then the checkpointer)
        stack.enter_context(_catch_preemption(signals))
        # One compiled call (eager Flax init compiles op by op); bitwise the same parameters.
        state = jax.jit(init)(keys.init)
        state = replicate(state, mesh)
        if checkpointer is not None and resume:
            restored = checkpointer.restore(state, check=_check_meta)
            if restored is not None:
                state, meta, step = restored
                state = replicate(state, mesh)
                records, partial = meta["records"], meta["partial"]
                initial_loss = meta.get("initial_loss")  # (absent in older checkpoints)
                log(
                    f"resumed from the checkpoint at step {step} (epoch {step / n_steps_epoch:.2f})"
                )
                if step >= total_steps:
                    log(f"it already covers the {opts.epochs} epochs asked for; nothing to train")
        # ------------------------------------------------------------ compile and place
        call = make_train_call(
            objective,
            tx,
            mesh,
            binarize=opts.binarize,
            kl_warmup_steps=opts.kl_warmup_steps,
            skip_nonfinite=opts.skip_nonfinite,
            event_shape=event_shape if streamed else None,
        )
        evaluators: dict[str, Callable[..., Any]] = {}
        if test is not None:
            # (streamed data: the test split stays in host memory too)
            make = make_host_evaluate if streamed else make_evaluate
            bound = make_elbo(model)
            evaluators["elbo"] = make(bound, mesh, batch_size=opts.eval_batch_size)
            if objective.kind == "iwae":
                bound = make_iwae(model, num_samples=objective.num_samples)
                evaluators["iwae"] = make(bound, mesh, batch_size=opts.eval_batch_size)
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
                    "config": run_record,
                    "initial_loss": initial_loss,
                }
                checkpointer.save(step, state, meta)
                last_saved = step

        def kept() -> str:
            if checkpointer is None:
                return "no checkpoints are written (no work directory)"
            if last_saved:
                return f"the last good checkpoint, at step {last_saved}, is kept"
            return "no checkpoint had been written yet"

        def preempted(where: str) -> Preempted:
            name = signal.Signals(signals[0]).name if signals else "a signal to another process"
            if checkpointer is None:
                saved = "no work directory, so nothing was saved"
            else:
                saved = f"the checkpoint at step {last_saved} is written; run again to resume"
            return Preempted(f"stopped by {name} {where}; {saved}")

        step = int(state.step)
        while step < total_steps:
            epoch, offset = divmod(step, n_steps_epoch)
            index, weight = epoch_order(n_train, opts.batch_size, seed=opts.seed, epoch=epoch)
            skipped_before = int(state.skipped)
            bar = tqdm(
                total=n_steps_epoch,
                initial=offset,
                desc=f"epoch {epoch + 1}/{opts.epochs}",
                unit="step",
                disable=not progress,
                leave=False,
                dynamic_ncols=True,
            )
            # (a chunk starts later than its boundary only after a checkpoint made mid-chunk)
            spans = [(max(a, offset), b) for a, b in chunks(n_steps_epoch, opts.steps_per_call)]
            spans = [(a, b) for a, b in spans if a < b]
            if streamed:  # batches gathered and sent to the device ahead of use, by Grain
                streamed_batches = iter(_host_batches(train, index, weight, spans))
            for start, stop in spans:
                t0 = time.perf_counter()
                loss_bound = None if initial_loss is None else divergence_bound(initial_loss)
                in_step = loss_bound is not None  # (else: this call is checked after it ran)
                max_loss = NO_BOUND if loss_bound is None else np.float32(loss_bound)
                if streamed:
                    state, metrics = call(state, next(streamed_batches), keys.train, max_loss)
                else:
                    batches = (index[start:stop], weight[start:stop])
                    state, metrics = call(state, train_data, *batches, keys.train, max_loss)
                metrics = jax.device_get(metrics)
                partial["seconds"] += time.perf_counter() - t0
                finite, bounded = metrics["finite"], metrics["bounded"]
                if loss_bound is None and finite.any():  # the run's first loss
                    initial_loss = float(metrics["loss"][np.argmax(finite)])
                    loss_bound = divergence_bound(initial_loss)
                    bounded = metrics["loss"] <= np.float32(loss_bound)
                # Stop at the first bad update that was applied (none is, with skip_nonfinite,
                # except an exploded one in the run's first call, which has no bound yet).
                if not opts.skip_nonfinite:
                    stops = ~finite | ~bounded
                else:
                    stops = finite & ~bounded & (not in_step)
                if stops.any():
                    bad = int(np.argmax(stops))
                    where = (
                        f"step {step + bad} (epoch {epoch + 1}, update "
                        f"{step + bad - epoch * n_steps_epoch + 1} of {n_steps_epoch})"
                    )
                    advice = (
                        f"training stopped and {kept()}. Lower --learning_rate (in a new --workdir)"
                    )
                    if not opts.skip_nonfinite:
                        advice += ", or rerun with --skip_nonfinite to skip and count such updates"
                    bar.close()
                    if not finite[bad]:
                        raise NonFiniteError(f"non-finite loss or gradient at {where}; {advice}")
                    raise DivergenceError(
                        f"the loss exploded at {where}: {metrics['loss'][bad]:.4g} nats per "
                        f"example, above the divergence bound {loss_bound:.4g} (the first loss, "
                        f"{initial_loss:.4g}, plus 1000 times its size); {advice}"
                    )
                finite = finite & bounded  # (with skip_nonfinite: the updates applied)
                w = metrics["weight"] * finite
                for name in ("loss", "log_likelihood", "kl"):
                    partial[name] += float(np.sum(np.where(finite, metrics[name], 0.0) * w))
                partial["weight"] += float(np.sum(w))
                step += stop - start
                bar.update(stop - start)
                bar.set_postfix(loss=f"{partial['loss'] / max(partial['weight'], 1):.2f}")
                if (
                    opts.checkpoint_every_steps
                    and step % n_steps_epoch
                    and step - last_saved >= opts.checkpoint_every_steps
                ):
                    save(epoch, step)
                stop = any_process(bool(signals))  # (all processes stop at the same call)
                if stop and step % n_steps_epoch:  # (at an epoch's end: after its record)
                    save(epoch, step)
                    bar.close()
                    raise preempted(f"at step {step} (epoch {epoch + 1})")
            bar.close()
            all_skipped = int(state.skipped) - skipped_before == n_steps_epoch - offset
            if opts.skip_nonfinite and all_skipped:
                raise NonFiniteError(
                    f"every update of epoch {epoch + 1} (steps {epoch * n_steps_epoch + offset} "
                    f"to {step - 1}) had a non-finite loss or gradient and was skipped; training "
                    f"stopped and {kept()}. Lower --learning_rate (in a new --workdir)"
                )
            summary = _epoch_record(variant, objective, epoch + 1, step, partial, state)
            t0 = time.perf_counter()
            if test_data is not None:
                for name, evaluate in evaluators.items():
                    values = jax.device_get(evaluate(state.params, test_data, keys.eval))
                    prefix = "test" if name == "elbo" else f"test_{name}"
                    summary[f"{prefix}_loss"] = -float(values["elbo"])
                    if name == "elbo":
                        summary["test_log_likelihood"] = float(values["log_likelihood"])
                        summary["test_kl"] = float(values["kl"])
            summary["eval_seconds"] = time.perf_counter() - t0
            records.append(summary)
            partial = dict.fromkeys(partial, 0.0)
            log(_format_record(summary))
            enough = on_epoch_end is not None and bool(on_epoch_end(epoch + 1, state, records))
            stop = any_process(bool(signals))
            if (epoch + 1) % opts.checkpoint_every == 0 or step == total_steps or stop or enough:
                save(epoch + 1, step)
            if stop and step < total_steps:
                raise preempted(f"after epoch {epoch + 1} (step {step})")
            if enough:  # (the hook stopped training early: every process's hook says so)
                log(f"stopped after epoch {epoch + 1} of {opts.epochs}, as on_epoch_end asked")
                break
        return FitResult(model, objective, state, records)


@contextlib.contextmanager
def _catch_preemption(received: list[int]) -> Iterator[None]:
    """While training, a preemption signal is recorded in `received` (the loop then
    checkpoints at the end of the compiled call and raises `Preempted`); a second one
    ends the process at once, as without this handler. Only the main thread can
    handle signals: elsewhere, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        del frame
        if received:  # asked twice: stop now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in PREEMPTION_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _enter(x: Any, y: Any, *, name: str, event_shape: Any, **checks: Any) -> Split:
    """`check_split` of arrays; a `Split` (checked where it entered) has its shape checked."""
    if not isinstance(x, Split):
        return check_split(x, y, name=name, event_shape=event_shape, **checks)
    if y is not None:
        raise ValueError(f"{name}: a Split carries its labels; pass None as its y")
    if event_shape is not None and tuple(x.image.shape[1:]) != tuple(event_shape):
        raise ValueError(
            f"{name}: examples are {tuple(x.image.shape[1:])}, expected {tuple(event_shape)}"
        )
    return x


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


def device_memory(mesh: Any) -> int:
    """Bytes of memory of one device of `mesh`: its ``bytes_limit``, or the machine's RAM
    for a CPU device (or any backend that does not say)."""
    stats = None
    with contextlib.suppress(Exception):  # not every backend reports memory
        stats = mesh.devices.flat[0].memory_stats()
    limit = (stats or {}).get("bytes_limit")
    return int(limit or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def default_placement(nbytes: int, mesh: Any) -> str:
    """ "device" when a training set of `nbytes` takes at most a quarter of one device's
    memory (`device_memory`), else "host"."""
    return "device" if nbytes <= device_memory(mesh) // 4 else "host"


def _check_state_fits(state: Any, mesh: Any) -> None:
    """Raise ValueError (one line) when the parameters, their gradients and the optimizer
    state (`state`'s shapes; each replicated on every device) cannot fit in one device's
    memory, before anything is allocated (a huge --z_dim used to hang the machine)."""
    params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.params))
    total = params + sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))  # + grads
    memory = device_memory(mesh)
    if total > memory:
        count = sum(x.size for x in jax.tree.leaves(state.params))
        raise ValueError(
            f"the model has {count:,} parameters: with their gradients and the optimizer state "
            f"{total / 2**30:,.1f} GiB, more than one device's {memory / 2**30:,.1f} GiB "
            "(a smaller model: --z_dim, --hidden, --conv_channels)"
        )


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
    variant: str,
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
        "data": variant,
        "skipped_updates": int(state.skipped),
        "seconds": partial["seconds"],
    }


def _variant(event_shape: tuple[int, ...], binarize: bool) -> str:
    values = "dynamically binarized" if binarize else "values as given"
    return f"event shape {'x'.join(map(str, event_shape))}, {values}"


def _describe(module: nn.Module) -> str:
    """``Name(field=value, ...)`` of a Linen module's fields, on one line."""
    fields = [f for f in dataclasses.fields(module) if f.name not in ("parent", "name")]
    text = ", ".join(f"{f.name}={getattr(module, f.name)!r}" for f in fields)
    return " ".join(f"{type(module).__name__}({text})".split())


def _run_record(
    objective: Objective, options: FitOptions, event_shape: tuple[int, ...]
) -> dict[str, Any]:
    """What a work directory records of a run made from pieces (no `ExperimentConfig`):
    the objective, the model's class and fields (`_describe`) and the
    options, with what may change on resume (the epoch budget, the checkpoint cadence,
    the device count, the placement) under "run"."""
    fit_options = dataclasses.asdict(options)
    run = {
        name: fit_options.pop(name)
        for name in (
            "epochs",
            "checkpoint_every",
            "checkpoint_every_steps",
            "keep_checkpoints",
            "num_devices",
            "placement",
            "eval_batch_size",
        )
    }
    return {
        "objective": {
            "kind": objective.kind,
            "beta": objective.beta,
            "num_samples": objective.num_samples,
            "free_bits": objective.free_bits,
        },
        "model": _describe(objective.model),
        "event_shape": list(event_shape),
        "options": fit_options,
        "run": run,
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
