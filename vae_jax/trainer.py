"""`Trainer`: the train state, the compiled train call, the mesh, the evaluators and the
data placement of one run, built once from the pieces `vae_jax.loop.fit` takes.

`fit` is the epoch loop around it (resume, checkpoints, divergence, preemption, the hook);
the benchmarks time the same object, so what they measure is what `fit` runs. The shape
follows google-deepmind/nanodo's `train.py` `Trainer` (state, jitted step and shardings in
one place), with vae_jax's data on the device (or streamed from the host) and its compiled
chunks of steps (`vae_jax.train`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from vae_jax.arrays import Split, check_split, to_float_np
from vae_jax.fields import require_int, require_optimizer
from vae_jax.objectives import Objective, make_elbo, make_iwae, require_objective
from vae_jax.options import FitOptions
from vae_jax.train import (
    NO_BOUND,
    HostBatches,
    TrainState,
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
    step_loop_for,
    steps_per_epoch,
    to_device,
)

MAX_STEPS = 2**31 - 1  # TrainState.step is int32
# Compiled programs kept for reuse by later Trainers of this process (`_reused`): the
# estimator fits the same configuration and shapes again and again (every fold of a
# cross-validation, every refit), and each new jax.jit wrapper would compile again
# (measured on wine, 5 epochs: 3 programs compiled again by a second fit).
_REUSE_SIZE = 32
_REUSED: dict[Any, Any] = {}
FULL_HASH_BYTES = 2**30  # `data_fingerprint` hashes every byte of a split up to this size
SAMPLE_ROWS = 65_536  # and this many evenly spaced rows of a larger one


def check_data(
    objective: Objective,
    tx: optax.GradientTransformation,
    train: Split,
    test: Split | None,
    *,
    binarize: bool,
) -> tuple[Split, Split | None]:
    """A run's pieces checked where they enter (`Trainer`, so `fit` too): the objective's
    and the optimizer's types, and both splits by `vae_jax.arrays.check_split` against the
    model: its ``image_shape`` (the test split: the training split's event shape), values
    in [0, 1] for a Bernoulli likelihood or `binarize`, labels in range for a conditional
    model. A split from `check_split` or the data sources passes again unchanged: a uint8
    one costs nothing, a float32 one a second read (50 ms for 60,000 x 784 values).

    Returns:
      (train, test) as `check_split` returns them (uint8 or float32 images, int32 labels).
    """
    require_objective(objective)
    require_optimizer("tx", tx)
    model = objective.model
    checks: dict[str, Any] = {
        "num_classes": getattr(model, "num_classes", 0) or None,
        "unit_interval": model.likelihood == "bernoulli" or binarize,
    }

    def check(split: Any, name: str, event_shape: Any) -> Split:
        if not isinstance(split, Split):
            raise TypeError(
                f"{name} must be a vae_jax.Split(image, label), got {type(split).__name__}"
            )
        return check_split(*split, name=name, event_shape=event_shape, **checks)

    train = check(train, "training data", tuple(getattr(model, "image_shape", ()) or ()) or None)
    if test is not None:
        test = check(test, "test data", train.image.shape[1:])
    return train, test


class EpochTiming(NamedTuple):
    """`Trainer.train_epoch`'s result: wall seconds, the mean train loss (nats per example)
    and the number of steps run."""

    seconds: float
    loss: float
    steps: int


class Trainer:
    """Everything one run trains with, built and checked once.

    Example (what `benchmarks/` time)::

        trainer = Trainer(make_elbo(model), optax.adam(1e-3), Split(images, labels),
                          options=FitOptions(batch_size=128))
        seconds, loss, steps = trainer.train_epoch(0)

    Args:
      objective: what to maximise (`make_elbo` / `make_iwae` of a model).
      tx: the optax optimizer.
      train: the training split. It is checked here (`check_data`), like any data entering
        the library: a `Split` built by hand is not trusted.
      test: the test split (evaluated by `evaluate`), or None.
      options: `FitOptions` (None = its defaults).

    Attributes:
      mesh: the 1-D device mesh (axis "data") over ``options.num_devices`` devices.
      keys: the run's random streams (`vae_jax.train.make_keys` of ``options.seed``).
      placement: where the training set lives: "device" or "host" (streamed).
      step_loop: how a call runs its steps: "scan" or "host" (`step_loop_for`).
      event_shape, num_examples, steps_per_epoch, total_steps: the run's sizes.
      abstract_state: the `TrainState`'s shapes and dtypes (`jax.eval_shape`).
      state: the current `TrainState`, replicated over `mesh`; each call donates it.
      call: the compiled train call (`make_train_call`).
      evaluators: {"elbo": ...} (and "iwae" when training with IWAE) for the test split.

    Raises:
      TypeError: (one line) an objective that is not an `Objective`, an optimizer that is not
        an optax `GradientTransformation`, a split that is not a `Split`.
      ValueError: (one line) data that do not fit the model (`check_data`), a batch size
        larger than the training set or not dividing over the devices, more steps than the
        int32 step counter holds, or a model that does not fit in one device's memory
        (checked before anything is allocated).
    """

    def __init__(
        self,
        objective: Objective,
        tx: optax.GradientTransformation,
        train: Split,
        test: Split | None = None,
        options: FitOptions | None = None,
    ) -> None:
        opts = self.options = options or FitOptions()
        train, test = check_data(objective, tx, train, test, binarize=opts.binarize)
        self.objective, self.tx, self.train, self.test = objective, tx, train, test
        self.event_shape = tuple(train.image.shape[1:])
        self.num_examples = n = len(train.image)
        if opts.batch_size > n:
            raise ValueError(
                f"batch_size ({opts.batch_size}) is larger than the training set ({n} examples)"
            )
        self.steps_per_epoch = steps_per_epoch(n, opts.batch_size)
        self.total_steps = opts.epochs * self.steps_per_epoch
        if self.total_steps > MAX_STEPS:
            raise ValueError(
                f"{opts.epochs} epochs of {self.steps_per_epoch} steps exceed {MAX_STEPS} steps "
                "(the int32 step counter)"
            )
        self.mesh = mesh = make_mesh(opts.num_devices)
        for name in ("batch_size", "eval_batch_size"):
            if getattr(opts, name) % mesh.size:
                raise ValueError(
                    f"{name} ({getattr(opts, name)}) must divide evenly over {mesh.size} devices"
                )
        self.keys = make_keys(opts.seed)
        example = to_float_np(train.image[:1])  # (shapes only, for a module without image_shape)
        init = functools.partial(init_train_state, objective.model, tx, example=example)
        self.abstract_state = jax.eval_shape(init, self.keys.init)
        check_state_fits(self.abstract_state, mesh)  # (allocates nothing)
        self.placement = opts.placement
        if self.placement == "auto":
            self.placement = default_placement(train.image.nbytes, mesh)
        streamed = self.placement == "host"
        self.step_loop = opts.step_loop
        if self.step_loop == "auto":
            self.step_loop = step_loop_for(objective, mesh, self.event_shape)
        # (one compiled call: eager Flax init goes op by op; the example is an argument, so
        # the program is reused for other data of its shape)
        self._init = functools.partial(_reused(_jit_init, objective.model, tx), example=example)
        self.state: TrainState = self.initial_state()
        self.call = _reused(
            make_train_call,
            objective,
            tx,
            mesh,
            binarize=opts.binarize,
            kl_warmup_steps=opts.kl_warmup_steps,
            skip_nonfinite=opts.skip_nonfinite,
            event_shape=self.event_shape,
            streamed=streamed,
            step_loop=self.step_loop,
        )
        self.evaluators: dict[str, Callable[..., Any]] = {}
        if test is not None:  # (streamed data: the test split stays in host memory too)
            make = make_host_evaluate if streamed else make_evaluate
            loop = {} if streamed else {"step_loop": self.step_loop}
            bounds = {"elbo": make_elbo(objective.model)}
            if objective.kind == "iwae":
                bounds["iwae"] = make_iwae(objective.model, num_samples=objective.num_samples)
            for name, bound in bounds.items():
                self.evaluators[name] = _reused(
                    make, bound, mesh, batch_size=opts.eval_batch_size, **loop
                )
        self.train_data = None if streamed else to_device(train.image, train.label, mesh)
        self.test_data: Any = test
        if test is not None and not streamed:
            self.test_data = to_device(test.image, test.label, mesh)

    @property
    def streamed(self) -> bool:
        """Whether the training set stays in host memory (``placement == "host"``)."""
        return self.placement == "host"

    def initial_state(self) -> TrainState:
        """A fresh initial state from ``keys.init`` (what `state` starts as), replicated
        over `mesh`: bitwise the parameters of an eager ``init_train_state``."""
        return replicate(self._init(self.keys.init), self.mesh)

    def restore(self, state: TrainState) -> None:
        """Continue from `state` (a restored checkpoint, or a `FitResult`'s state),
        replicated over the mesh. TypeError / ValueError (one line) unless it is a
        `TrainState` of this model's and optimizer's structure and shapes (before: None or
        a params dict failed later, inside the compiled call)."""
        if not isinstance(state, TrainState):
            raise TypeError(f"state must be a TrainState, got {type(state).__name__}")
        try:  # (jax.tree.map raises ValueError for another structure)
            same = all(
                jax.tree.leaves(
                    jax.tree.map(lambda a, b: np.shape(a) == b.shape, state, self.abstract_state)
                )
            )
        except ValueError:
            same = False
        if not same:
            raise ValueError(
                "the state does not have the structure and shapes of this model and "
                "optimizer's state"
            )
        self.state = replicate(state, self.mesh)

    def batches(self, epoch: int, offset: int = 0) -> Iterator[tuple[int, int, tuple[Any, ...]]]:
        """``(start, stop, inputs)`` of each compiled call of `epoch`, from its step `offset`.

        The calls are `vae_jax.train.chunks` of the epoch (aligned to its start, so a
        resumed epoch makes the same calls), on the examples of ``epoch_order(seed,
        epoch)``; `inputs` is what `run` takes: ``(data, index, weight)`` on the device, or
        ``(HostBatches,)`` gathered on the host and prefetched by a Grain thread.
        """
        require_int("epoch", epoch, low=0)  # (before: numpy's "expected non-negative")
        if not 0 <= require_int("offset", offset) < self.steps_per_epoch:  # (-5 acted as 0)
            raise ValueError(f"offset must be in 0..{self.steps_per_epoch - 1}, got {offset}")
        opts = self.options
        index, weight = epoch_order(self.num_examples, opts.batch_size, seed=opts.seed, epoch=epoch)
        # (a chunk starts later than its boundary only after a checkpoint made mid-chunk)
        spans = [(max(a, offset), b) for a, b in chunks(self.steps_per_epoch, opts.steps_per_call)]
        spans = [(a, b) for a, b in spans if a < b]
        if self.streamed:
            loaded = _host_batches(self.train, index, weight, spans)
            for (start, stop), batches in zip(spans, loaded, strict=True):
                yield start, stop, (batches,)
            return
        for start, stop in spans:
            yield start, stop, (self.train_data, index[start:stop], weight[start:stop])

    def run(self, inputs: tuple[Any, ...], max_loss: np.float32 = NO_BOUND) -> dict[str, Any]:
        """One compiled call on `inputs` (from `batches`): updates `state`, returns its
        metrics on the host (numpy, [steps] each; see `make_train_call`)."""
        self.state, metrics = self.call(self.state, *inputs, self.keys.train, max_loss)
        return jax.device_get(metrics)

    def evaluate(self) -> dict[str, float]:
        """The test split's numbers for an epoch record: test_loss (minus the 1-sample ELBO,
        fixed key), test_log_likelihood, test_kl, and test_iwae_loss when training with
        IWAE; {} without a test split."""
        out: dict[str, float] = {}
        for name, evaluate in self.evaluators.items():
            values = jax.device_get(evaluate(self.state.params, self.test_data, self.keys.eval))
            prefix = "test" if name == "elbo" else f"test_{name}"
            out[f"{prefix}_loss"] = -float(values["elbo"])
            if name == "elbo":
                out["test_log_likelihood"] = float(values["log_likelihood"])
                out["test_kl"] = float(values["kl"])
        return out

    def train_epoch(self, epoch: int, max_steps: int | None = None) -> EpochTiming:
        """Epoch `epoch` as `fit` runs it (its calls, metrics fetched after each; no
        divergence checks, no checkpoints), or its whole calls until `max_steps` (>= 1) steps
        ran. ValueError (one line) for a negative `epoch` (`batches`) or `max_steps` below 1
        (before: max_steps=0 reported a loss of 0.0 for no training)."""
        if max_steps is not None and require_int("max_steps", max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1 (or None: the whole epoch), got {max_steps}")
        start, total, count, steps = time.perf_counter(), 0.0, 0.0, 0
        for begin, stop, inputs in self.batches(epoch):
            if max_steps is not None and steps >= max_steps:
                break
            metrics = self.run(inputs)
            total += float(np.sum(metrics["loss"] * metrics["weight"]))
            count += float(np.sum(metrics["weight"]))
            steps += stop - begin
        return EpochTiming(time.perf_counter() - start, total / max(count, 1.0), steps)

    def parameter_structure(self) -> dict[str, str]:
        """{"encoder/Dense_0/kernel": "float32[784, 400]", ...}: every parameter's path,
        dtype and shape (from `abstract_state`): what a checkpoint must have to be resumed."""
        leaves = jax.tree_util.tree_flatten_with_path(self.abstract_state.params)[0]
        return {_path_name(path): f"{x.dtype}{list(x.shape)}" for path, x in leaves}


def _jit_init(model: Any, tx: optax.GradientTransformation) -> Callable[..., TrainState]:
    """``init(key, example=...)``: `init_train_state` of `model` and `tx`, compiled."""
    return jax.jit(lambda key, example: init_train_state(model, tx, key, example=example))


def _reused(make: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``make(*args, **kwargs)``, built once per equal arguments and kept (the newest
    `_REUSE_SIZE`), so its jitted programs compile once per shape in this process. The
    arguments are the static configuration: objectives (frozen dataclasses, equal by value),
    optimizers (equal when they are the same object), the mesh and options. Unhashable
    arguments (a model with a list attribute, say) are built afresh each time."""
    key = (make, args, tuple(sorted(kwargs.items())))
    try:
        hash(key)
    except TypeError:
        return make(*args, **kwargs)
    built = _REUSED.get(key)
    if built is None:
        if len(_REUSED) >= _REUSE_SIZE:
            _REUSED.pop(next(iter(_REUSED)))  # (the oldest)
        built = _REUSED[key] = make(*args, **kwargs)
    return built


def _path_name(path: tuple[Any, ...]) -> str:
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return "/".join(names)


def data_fingerprint(split: Split | None) -> dict[str, Any] | None:
    """What identifies a split for resuming: shape, dtype and a SHA-256 of its examples
    and labels (None for None).

    Every byte is hashed up to `FULL_HASH_BYTES` (MNIST's 47 MB train split: about 30 ms
    with SHA extensions); a larger split (memory-mapped, say) hashes `SAMPLE_ROWS` evenly
    spaced rows and says so in "rows_hashed", so resuming never reads a huge file whole.
    """
    if split is None:
        return None
    image, label = split.image, np.asarray(split.label)
    n, digest = len(image), hashlib.sha256()
    rows: Any = slice(None)
    if image.nbytes > FULL_HASH_BYTES:
        rows = np.unique(np.linspace(0, n - 1, SAMPLE_ROWS).astype(np.int64))
    digest.update(np.ascontiguousarray(image[rows]).data)
    digest.update(np.ascontiguousarray(label[rows]).data)
    hashed = "all" if isinstance(rows, slice) else len(rows)
    return {
        "shape": list(image.shape),
        "dtype": str(image.dtype),
        "sha256": digest.hexdigest(),
        "rows_hashed": hashed,
    }


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


def check_state_fits(
    state: Any, mesh: Any, *, advice: str = "a smaller model: --z_dim, --hidden, --conv_channels"
) -> None:
    """Raise ValueError (one line) when the parameters, their gradients and the optimizer
    state (`state`'s shapes; each replicated on every device) cannot fit in one device's
    memory, before anything is allocated (a huge --z_dim used to hang the machine). `advice`
    ends the message (the caller's own knobs)."""
    params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.params))
    total = params + sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))  # + grads
    memory = device_memory(mesh)
    if total > memory:
        count = sum(x.size for x in jax.tree.leaves(state.params))
        raise ValueError(
            f"the model has {count:,} parameters: with their gradients and the optimizer state "
            f"{total / 2**30:,.1f} GiB, more than one device's {memory / 2**30:,.1f} GiB "
            f"({advice})"
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
