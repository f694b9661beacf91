"""The epoch loop: resume, train in compiled chunks, evaluate, checkpoint, report.

`fit` is what the experiments and the estimator call, with the pieces: an objective (which
holds the model), an optax optimizer, arrays and `FitOptions`. It builds one
`vae_jax.trainer.Trainer` (state, compiled call, mesh, evaluators, data placement) and runs
the epochs around it. It owns no model code and writes nothing but ``config.json`` (claimed
once, `RunDir`) and checkpoints; images and metrics files are the caller's `on_epoch_end`
hook.

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
import json
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

from vae_jax.arrays import Split
from vae_jax.checkpoint import Checkpointer, CheckpointMismatchError
from vae_jax.config import ExperimentConfig
from vae_jax.distributed import any_process, is_primary, on_primary
from vae_jax.fields import require_bool, require_callable, require_path
from vae_jax.objectives import Objective
from vae_jax.options import FitOptions
from vae_jax.train import NO_BOUND, DivergenceError, NonFiniteError, TrainState, all_finite
from vae_jax.trainer import Trainer, data_fingerprint
from vae_jax.workdir import (
    claim,
    describe_difference,
    held_workdir_lock,
    one_line,
    writable_dir,
)

# Whether the parameters and optimizer state are finite (checked before each checkpoint).
_state_finite = jax.jit(lambda state: all_finite((state.params, state.opt_state)))

# on_epoch_end(epoch, state, records); returning True stops training after this epoch.
EpochHook = Callable[[int, TrainState, list[dict[str, Any]]], bool | None]

# What schedulers send before they kill a job: SIGTERM (Kubernetes, `timeout`, SLURM at the
# time limit), SIGUSR1 (SLURM's `--signal=USR1@SECONDS`, sent ahead of the time limit).
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """`fit` stopped on a preemption signal after writing a checkpoint (with a work
    directory): the same call again resumes it, to the same parameters as an uninterrupted
    run."""


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


class RunDir(NamedTuple):
    """A work directory for `fit` and how to claim it (`vae_jax.workdir.claim`, once).

    ``fit(..., workdir=path)`` is ``workdir=RunDir(path)``.

    Attributes:
      path: the directory: ``config.json`` and the checkpoints go there.
      record: the `ExperimentConfig` the run was made from, recorded as ``config.json``
        (what the experiments and `load_checkpoint` use). None records the objective, the
        model's class and fields and the options instead; `tx` cannot be recorded, so
        resuming with another optimizer is refused only when its state's shapes differ.
      resume: continue from the newest readable checkpoint, if any. With False, a
        directory that already holds checkpoints is refused (nothing is deleted).
      overwrite: where the directory would be refused, delete its checkpoints, metrics and
        pictures and start afresh instead.
    """

    path: str | os.PathLike
    record: ExperimentConfig | None = None
    resume: bool = True
    overwrite: bool = False


def fit(
    objective: Objective,
    tx: optax.GradientTransformation,
    x_train: np.ndarray | Split,
    y_train: np.ndarray | None = None,
    x_test: np.ndarray | Split | None = None,
    y_test: np.ndarray | None = None,
    *,
    options: FitOptions | None = None,
    workdir: str | os.PathLike | RunDir | None = None,
    on_epoch_end: EpochHook | None = None,
    progress: bool = True,
    initial_state: TrainState | None = None,
) -> FitResult:
    """Train ``objective.model`` by maximising `objective` with `tx`; return the final state.

    Example (README, "Python API")::

        model = VAE(image_shape=(28, 28, 1))
        result = fit(make_elbo(model), optax.adam(1e-3), x_train, x_test=x_test,
                     options=FitOptions(epochs=10, batch_size=128))
        params = result.state.params

    Args:
      objective: `make_elbo(model, ...)` or `make_iwae(model, ...)` of a `VAE` or any module
        that follows the model protocol (README, "Your own model").
      tx: any `optax.GradientTransformation`; its schedule counts update steps.
      x_train: ``[N, *event_shape]`` examples (`vae_jax.arrays`): uint8 levels (scaled by
        1/255 in the step) or real values used exactly as given (float32); in [0, 1] for a
        Bernoulli likelihood or dynamic binarization. The event shape must be the model's
        ``image_shape`` when it has one. Or a `vae_jax.arrays.Split` (with its labels;
        `y_train` None), checked by the same rules.
      y_train: int ``[N]`` labels, or None (needed by a conditional model).
      x_test, y_test: evaluated after every epoch (single-sample ELBO with a fixed key; also
        the IWAE bound when training with IWAE), placed like the training set.
      options: `FitOptions` (None = its defaults): batches, epochs, seed, devices, data
        placement (``"host"`` streams batches from host memory: the same batches and random
        streams, numbers equal to float rounding), step loop, checkpoints, `log`.
      workdir: a path or a `RunDir`: where ``config.json`` and the checkpoints go (none if
        None). It is claimed once the data and the model are known to fit: a directory of
        another run is refused, and so is a resume whose data (`data_fingerprint` of both
        splits), configuration or parameter shapes differ from the checkpoint's.
      on_epoch_end: called as ``hook(epoch, state, records)`` after each epoch, with all the
        records so far, before that epoch's checkpoint is written. Returning True stops
        training there (that epoch is checkpointed). (`state` is donated to the next step:
        copy what you keep, e.g. ``jax.device_get(state.params)``.)
      progress: show a progress bar per epoch.
      initial_state: continue from this `TrainState` (parameters, optimizer state and step
        count, e.g. a previous result's ``jax.device_get(result.state)``) instead of a fresh
        one: training goes on from its step to ``options.epochs`` epochs counted from step
        0, with the random streams of those steps (a warm start; a checkpoint in
        `workdir` still takes precedence). Its shapes must be those a fresh state has.

    Returns:
      A `FitResult`. Each record holds epoch, step, train_loss (minus the training
      objective, nats per example, averaged over the epoch's updates), test_loss (minus the
      single-sample test ELBO), test_log_likelihood, test_kl, seconds and the names of the
      bound and the data variant.

    Raises:
      ValueError: invalid options or data (one-line message); `WorkdirError` (a ValueError)
        for a work directory of another run or other data.
      CheckpointError: no readable checkpoint, or one cannot be written.
      NonFiniteError, DivergenceError: a non-finite loss or gradient, or a loss above
        `divergence_bound` (the message names the step).
      Preempted: SIGTERM or SIGUSR1 arrived (in the main thread): the current compiled call
        finished, a checkpoint was written (with `workdir`) and training stopped; calling
        `fit` again the same way resumes it. A second signal ends the process at once.
    """
    _check_arguments(options, on_epoch_end, initial_state, progress)
    opts = options or FitOptions()
    train = _as_split(x_train, y_train, name="training data")
    if x_test is None and y_test is not None:  # (before: ignored, so no test set was scored)
        raise ValueError("y_test was given without x_test")
    test = None if x_test is None else _as_split(x_test, y_test, name="test data")
    trainer = Trainer(objective, tx, train, test, opts)  # (checks them all, once)
    if initial_state is not None:  # (Trainer.restore checks its structure and shapes)
        trainer.restore(initial_state)
    log, n_epoch, total_steps = opts.log, trainer.steps_per_epoch, trainer.total_steps
    if trainer.streamed:
        log(
            f"data: the training set ({trainer.train.image.nbytes / 2**20:.0f} MiB) stays in host "
            "memory; batches are gathered there and prefetched to the device"
        )
    run = _Run(opts.data_variant or _variant(trainer.event_shape, opts.binarize))
    signals: list[int] = []  # the preemption signals received (`_catch_preemption`)
    with contextlib.ExitStack() as stack:  # (closes the signal handler, then the checkpoints)
        saver = _Saver(stack, workdir, trainer)
        stack.enter_context(_catch_preemption(signals))
        saver.restore(trainer, run)
        step = int(trainer.state.step)
        while step < total_steps:
            epoch, offset = divmod(step, n_epoch)
            skipped_before = int(trainer.state.skipped)
            desc = f"epoch {epoch + 1}/{opts.epochs}"
            bar_options = dict(disable=not progress, leave=False, dynamic_ncols=True)
            with tqdm(total=n_epoch, initial=offset, desc=desc, unit="step", **bar_options) as bar:
                for start, stop, inputs in trainer.batches(epoch, offset):
                    t0, in_step = time.perf_counter(), run.initial_loss is not None
                    metrics = trainer.run(inputs, run.max_loss())
                    run.partial["seconds"] += time.perf_counter() - t0
                    run.account(metrics, in_step, opts.skip_nonfinite, step, n_epoch, saver.kept)
                    if not opts.skip_nonfinite and not bool(_state_finite(trainer.state)):
                        raise NonFiniteError(
                            f"the parameters or optimizer state are not finite after step "
                            f"{step + stop - start - 1} (a non-finite gradient in steps {step} to "
                            f"{step + stop - start - 1}, epoch {epoch + 1})",
                            _advice(saver.kept(), skip_hint=True),
                        )
                    step += stop - start
                    bar.update(stop - start)
                    bar.set_postfix(
                        loss=f"{run.partial['loss'] / max(run.partial['weight'], 1):.2f}"
                    )
                    every = opts.checkpoint_every_steps
                    if every and step % n_epoch and step - saver.last_saved >= every:
                        saver.save(trainer, run, epoch, step)
                    stop_now = any_process(bool(signals))  # (all processes stop at the same call)
                    if stop_now and step % n_epoch:  # (at an epoch's end: after its record)
                        saver.save(trainer, run, epoch, step)
                        raise saver.preempted(signals, f"at step {step} (epoch {epoch + 1})")
            skipped = int(trainer.state.skipped) - skipped_before
            if opts.skip_nonfinite and skipped == n_epoch - offset:
                raise NonFiniteError(
                    f"every update of epoch {epoch + 1} (steps {epoch * n_epoch + offset} "
                    f"to {step - 1}) had a non-finite loss or gradient and was skipped",
                    _advice(saver.kept(), skip_hint=False),
                )
            summary = run.summary(objective, epoch + 1, step, trainer)
            log(_format_record(summary))
            enough = on_epoch_end is not None and bool(
                on_epoch_end(epoch + 1, trainer.state, run.records)
            )
            stop_now = any_process(bool(signals))
            if (
                (epoch + 1) % opts.checkpoint_every == 0
                or step == total_steps
                or stop_now
                or enough
            ):
                saver.save(trainer, run, epoch + 1, step)
            if stop_now and step < total_steps:
                raise saver.preempted(signals, f"after epoch {epoch + 1} (step {step})")
            if enough:  # (the hook stopped training early: every process's hook says so)
                log(f"stopped after epoch {epoch + 1} of {opts.epochs}, as on_epoch_end asked")
                break
        return FitResult(objective.model, objective, trainer.state, run.records)


PARTIAL_KEYS = ("loss", "log_likelihood", "kl", "weight", "seconds")


@dataclasses.dataclass
class _Run:
    """What `fit` carries from call to call and into each checkpoint's metadata: the
    epoch records, the current epoch's partial sums, and the run's first finite loss."""

    variant: str
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    partial: dict[str, float] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(PARTIAL_KEYS, 0.0)
    )
    initial_loss: float | None = None

    def max_loss(self) -> np.float32:
        """The divergence bound a call checks in its steps (`NO_BOUND` before a first loss)."""
        if self.initial_loss is None:
            return NO_BOUND
        return np.float32(divergence_bound(self.initial_loss))

    def meta(self, epoch_done: int) -> dict[str, Any]:
        return {
            "epoch": epoch_done,
            "records": self.records,
            "partial": self.partial,
            "initial_loss": self.initial_loss,
        }

    def account(
        self,
        metrics: dict[str, np.ndarray],
        in_step: bool,
        skip_nonfinite: bool,
        step: int,
        n_epoch: int,
        kept: Callable[[], str],
    ) -> None:
        """Add one call's metrics (of the updates it applied) to the partial sums, or raise
        `NonFiniteError` / `DivergenceError` at its first bad update that was applied (none
        is, with `skip_nonfinite`, except an exploded one in the run's first call, which has
        no bound yet: `in_step` says whether the call had one)."""
        finite, bounded = metrics["finite"], metrics["bounded"]
        if self.initial_loss is None and finite.any():  # the run's first loss
            self.initial_loss = float(metrics["loss"][np.argmax(finite)])
            bounded = metrics["loss"] <= np.float32(divergence_bound(self.initial_loss))
        stops = (~finite | ~bounded) if not skip_nonfinite else finite & ~bounded & (not in_step)
        if stops.any():
            bad = step + int(np.argmax(stops))
            epoch = bad // n_epoch
            where = (
                f"step {bad} (epoch {epoch + 1}, update {bad - epoch * n_epoch + 1} of {n_epoch})"
            )
            advice = _advice(kept(), skip_hint=not skip_nonfinite)
            first = self.initial_loss or 0.0  # (set: a bounded check needs a first loss)
            if not finite[bad - step] and skip_nonfinite:
                raise NonFiniteError(f"non-finite loss or gradient at {where}", advice)
            if not finite[bad - step]:  # (a gradient is checked through the state: `fit`)
                raise NonFiniteError(
                    f"non-finite loss at {where}, or a non-finite gradient in the update before it",
                    advice,
                )
            raise DivergenceError(
                f"the loss exploded at {where}: {metrics['loss'][bad - step]:.4g} nats per "
                f"example, above the divergence bound {divergence_bound(first):.4g} (the first "
                f"loss, {first:.4g}, plus 1000 times its size)",
                advice,
            )
        finite = finite & bounded  # (with skip_nonfinite: the updates applied)
        w = metrics["weight"] * finite
        for name in ("loss", "log_likelihood", "kl"):
            self.partial[name] += float(np.sum(np.where(finite, metrics[name], 0.0) * w))
        self.partial["weight"] += float(np.sum(w))

    def summary(
        self, objective: Objective, epoch: int, step: int, trainer: Trainer
    ) -> dict[str, Any]:
        """Close epoch `epoch`: its record (train sums, then the test split's numbers),
        appended to `records`; the partial sums start again."""
        summary = _epoch_record(self.variant, objective, epoch, step, self.partial, trainer.state)
        t0 = time.perf_counter()
        summary.update(trainer.evaluate())
        summary["eval_seconds"] = time.perf_counter() - t0
        self.records.append(summary)
        self.partial = dict.fromkeys(self.partial, 0.0)
        return summary


class _Saver:
    """The work directory's side of a run: its claim (once), its checkpoints, and the
    run's identity that a resume must match (`run_identity`)."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        workdir: str | os.PathLike | RunDir | None,
        trainer: Trainer,
    ) -> None:
        self.checkpointer: Checkpointer | None = None
        self.last_saved = int(trainer.state.step)
        self.resume = False
        if workdir is None:
            return
        where = workdir if isinstance(workdir, RunDir) else RunDir(workdir)
        require_path("workdir", where.path)
        require_bool("resume", where.resume)  # (a truthy "no" would delete a run's work)
        require_bool("overwrite", where.overwrite)
        if where.record is not None and not isinstance(where.record, ExperimentConfig):
            raise TypeError(
                f"record must be an ExperimentConfig or None, got {type(where.record).__name__}"
            )
        record = where.record
        if record is not None:
            _check_record(record, trainer)
        owner = record if record is not None else _run_record(trainer)
        self.identity = run_identity(owner, trainer)
        if is_primary():  # (before: fit wrote, even --overwrite deleted, a directory in use)
            stack.enter_context(held_workdir_lock(writable_dir(where.path, probe=False)))
        on_primary(
            lambda: claim(where.path, owner, resume=where.resume, overwrite=where.overwrite),
            "claim the work directory",
        )
        self.path, self.resume, self.overwrite = Path(where.path), where.resume, where.overwrite
        self.owner, self.stack, self.keep = owner, stack, trainer.options.keep_checkpoints
        self.checkpointer = self._open()

    def _open(self) -> Checkpointer:
        checkpointer = Checkpointer(
            self.path, max_to_keep=self.keep, identity=self.identity, upgrade=upgrade_identity
        )
        return self.stack.enter_context(contextlib.closing(checkpointer))

    def restore(self, trainer: Trainer, run: _Run) -> None:
        """Continue from the newest readable checkpoint, if any (and `resume`)."""
        if self.checkpointer is None or not self.resume:
            return
        try:
            restored = self.checkpointer.restore(trainer.state, check=_check_meta)
        except CheckpointMismatchError as error:  # (the configuration matched: claim kept it)
            if not self.overwrite:
                raise
            trainer.options.log(f"{one_line(error)}: overwrite, so the run starts afresh")
            self.checkpointer.close()
            on_primary(
                lambda: claim(self.path, self.owner, resume=False, overwrite=True),
                "start the work directory afresh",
            )
            self.checkpointer = self._open()
            return
        if restored is None:
            return
        state, meta, step = restored
        trainer.restore(state)
        self.last_saved = step
        run.records, run.partial = meta["records"], meta["partial"]
        run.initial_loss = meta.get("initial_loss")  # (absent in older checkpoints)
        n_epoch, log = trainer.steps_per_epoch, trainer.options.log
        log(f"resumed from the checkpoint at step {step} (epoch {step / n_epoch:.2f})")
        if step >= trainer.total_steps:
            log(
                f"it already covers the {trainer.options.epochs} epochs asked for; nothing to train"
            )

    def save(self, trainer: Trainer, run: _Run, epoch_done: int, step: int) -> None:
        if self.checkpointer is None or step == self.last_saved:
            return
        if not bool(_state_finite(trainer.state)):  # never replace a good checkpoint with inf/NaN
            raise NonFiniteError(
                f"the parameters or optimizer state are not finite at step {step} (an update "
                "overflowed)",
                _advice(self.kept(), skip_hint=False),
            )
        self.checkpointer.save(step, trainer.state, run.meta(epoch_done))
        self.last_saved = step

    def kept(self) -> str:
        if self.checkpointer is None:
            return "no checkpoints are written (no work directory)"
        if self.last_saved:
            return f"the last good checkpoint, at step {self.last_saved}, is kept"
        return "no checkpoint had been written yet"

    def preempted(self, signals: list[int], where: str) -> Preempted:
        name = signal.Signals(signals[0]).name if signals else "a signal to another process"
        if self.checkpointer is None:
            saved = "no work directory, so nothing was saved"
        else:
            saved = f"the checkpoint at step {self.last_saved} is written; run again to resume"
        return Preempted(f"stopped by {name} {where}; {saved}")


def _advice(kept: str, *, skip_hint: bool) -> str:
    """The end of every message that stops training on a non-finite or exploding update."""
    text = f"training stopped and {kept}. Lower --learning_rate (in a new --workdir)"
    if skip_hint:
        text += ", or rerun with --skip_nonfinite to skip and count such updates"
    return text


def run_identity(record: ExperimentConfig | dict[str, Any], trainer: Trainer) -> dict[str, Any]:
    """What a checkpoint must match to be resumed, as JSON values: the configuration (its
    `ExperimentConfig.identity`, or the pieces' record without its "run" section), the
    `data_fingerprint` of the train and test splits, and the parameters' paths, dtypes and
    shapes (`Trainer.parameter_structure`)."""
    if isinstance(record, ExperimentConfig):
        config = record.identity()
    else:
        config = {key: value for key, value in record.items() if key != "run"}
    identity = {
        "config": config,
        "data": {"train": data_fingerprint(trainer.train), "test": data_fingerprint(trainer.test)},
        "parameters": trainer.parameter_structure(),
    }
    return json.loads(json.dumps(identity))  # (tuples as lists: as a checkpoint reads back)


def upgrade_identity(stored: Any) -> Any:
    """A checkpoint's stored `run_identity` in today's terms: the configuration an older
    vae_jax recorded is read back through `ExperimentConfig.from_dict`, so that a field
    added since takes its default, as `vae_jax.workdir.claim` reads an older config.json
    (a field is only added with the default that keeps the old behaviour: ``adam_b1``
    0.9, optax's). A run made from pieces (no `ExperimentConfig`), or anything
    unreadable, is returned as it is."""
    if not isinstance(stored, dict) or not isinstance(stored.get("config"), dict):
        return stored
    try:
        config = ExperimentConfig.from_dict(stored["config"]).identity()
    except (TypeError, ValueError):
        return stored
    return json.loads(json.dumps({**stored, "config": config}))


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


def _check_arguments(options: Any, on_epoch_end: Any, initial_state: Any, progress: Any) -> None:
    """Raise (one line) unless `fit`'s other arguments are of their kinds (before: bare
    AttributeErrors and TypeErrors from inside)."""
    require_bool("progress", progress)
    if options is not None and not isinstance(options, FitOptions):
        raise TypeError(f"options must be a FitOptions or None, got {type(options).__name__}")
    if on_epoch_end is not None:
        require_callable("on_epoch_end", on_epoch_end)
    if initial_state is not None and not isinstance(initial_state, TrainState):
        raise TypeError(
            f"initial_state must be a TrainState (a FitResult's state), got "
            f"{type(initial_state).__name__}"
        )


def _as_split(x: Any, y: Any, *, name: str) -> Split:
    """`fit`'s ``(x, y)`` as the `Split` the `Trainer` checks: a `Split` carries its labels."""
    if isinstance(x, Split):
        if y is not None:
            raise ValueError(f"{name}: a Split carries its labels; pass None as its y")
        return x
    return Split(x, y)


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


# The options a configuration sets that decide what is trained (the others: how it runs).
_RECORDED_OPTIONS = ("epochs", "batch_size", "seed", "binarize", "kl_warmup_steps")


def _check_record(record: ExperimentConfig, trainer: Trainer) -> None:
    """Raise ValueError (one line) unless `record` (what config.json will say, and what
    `load_checkpoint` rebuilds the model from) describes what `trainer` trains: its model
    and objective for the data's event shape, and the options it sets (before: a relu model
    recorded as tanh loaded as tanh with relu's weights). The optimizer is not compared."""
    built = record.build(trainer.event_shape).objective  # (made once: ExperimentConfig.build)
    objective = trainer.objective
    if built.model != objective.model:
        raise ValueError(
            f"the record describes another model ({_describe(built.model)}) than the one "
            f"trained ({_describe(objective.model)})"
        )
    if built != objective:
        fields = ("kind", "beta", "num_samples", "free_bits")
        theirs, ours = ({f: getattr(o, f) for f in fields} for o in (built, objective))
        raise ValueError(
            f"the record describes another objective ({describe_difference(theirs, ours)})"
        )
    expected = record.fit_options()
    for name in _RECORDED_OPTIONS:
        if getattr(expected, name) != getattr(trainer.options, name):
            raise ValueError(
                f"the record says {name} {getattr(expected, name)!r}, the options "
                f"{getattr(trainer.options, name)!r}"
            )


def _run_record(trainer: Trainer) -> dict[str, Any]:
    """What a work directory records of a run made from pieces (no `ExperimentConfig`):
    the objective, the model's class and fields (`_describe`), the event shape and the
    options, with what may change on resume (the epoch budget, the checkpoint cadence,
    the device count, the placement, the step loop) under "run"."""
    objective, options = trainer.objective, trainer.options
    fit_options = {
        f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name != "log"
    }
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
            "step_loop",
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
        "event_shape": list(trainer.event_shape),
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
