"""Training: the state, the jitted train step and call, evaluation (the loop: `vae_jax.loop`).

Design (each choice measured in docs/benchmarks.md):
- The data set lives on the device (uint8 stays uint8, floats are float32); each step
  gathers its batch by index and scales it (uint8 by 1/255; floats as given) and, for
  dynamically binarized data, binarizes it inside the compiled step.
- `steps_per_call` train steps run as one `lax.scan` inside one `jax.jit` call with the
  train state donated: no host round trip per step. (`chunks` rounds it to a divisor of
  the epoch's steps when one is near, so one compiled program serves the whole epoch. On
  CPU, a model whose program has convolutions dispatches its steps one compiled call each
  instead, since XLA:CPU convolutions are slow inside loops: `step_loop_for`.)
- Every step's key is ``fold_in(train_key, step)`` and every epoch's order is a permutation
  from ``np.random.default_rng((seed, epoch))``: a run resumed at a step draws exactly the
  randomness an uninterrupted run draws.
- The batch is sharded over the ``data`` axis of a device mesh and the parameters are
  replicated (`jax.sharding`), so the same code runs on 1 CPU, N GPUs or a TPU slice.
- An epoch of N examples takes ceil(N / batch_size) steps; the last batch is padded to full
  size and the padding has weight 0, so every example counts once and shapes stay static.
- On CPU, the train and evaluation calls are compiled with XLA's own (Eigen) dots instead of
  its default YNNPACK fusions: 15% faster per epoch, 30% faster evaluation for the seed MLP.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vae_jax.arrays import Split, check_inputs, check_labels, to_float
from vae_jax.fields import require_bool, require_int
from vae_jax.models import init_params
from vae_jax.objectives import Objective, require_objective
from vae_jax.options import STEP_LOOPS

NO_BOUND = np.float32(np.inf)  # a train call's default max_loss: no divergence bound


class DivergenceError(FloatingPointError):
    """Training diverged: a loss far above the divergence bound, or not finite.

    Attributes:
      problem: what happened and where ("the loss exploded at step 12 ...").
      advice: what was kept and what to do; the message is ``"{problem}; {advice}"``. A
        caller with other knobs (`VAEEstimator`) raises it again with its own advice.
    """

    def __init__(self, problem: str, advice: str = "") -> None:
        super().__init__(f"{problem}; {advice}" if advice else problem)
        self.problem, self.advice = problem, advice


class NonFiniteError(DivergenceError):
    """The loss or a gradient became NaN or infinite."""


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training. The model and optimiser are static.

    Attributes:
      step: int32 scalar, the number of updates applied.
      params: the model's parameter pytree (float32).
      opt_state: the Optax optimiser state.
      skipped: int32 scalar, updates skipped because of a non-finite loss or gradient.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    skipped: jax.Array


class Keys(NamedTuple):
    """The independent random streams of a run, all derived from its seed."""

    init: jax.Array
    train: jax.Array
    eval: jax.Array


class DeviceData(NamedTuple):
    """A split on the device: image [N, *event_shape] uint8 (scaled by 1/255 in the step)
    or float32 (used as given), label int32 [N]."""

    image: jax.Array
    label: jax.Array


def make_keys(seed: int) -> Keys:
    init, train, eval_ = jax.random.split(jax.random.key(seed), 3)
    return Keys(init, train, eval_)


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D mesh with axis "data" over the first `num_devices` devices (0 = all)."""
    if require_int("num_devices", num_devices) < 0:  # (-1 made a mesh of all but one)
        raise ValueError(f"num_devices must be >= 0 (0: all devices), got {num_devices}")
    devices = jax.devices()
    if num_devices and jax.process_count() > 1:
        raise ValueError(
            f"num_devices ({num_devices}) applies to one process; with "
            f"{jax.process_count()} processes every device of every process is used (0)"
        )
    if num_devices > len(devices):
        raise ValueError(f"asked for {num_devices} devices, only {len(devices)} are available")
    devices = devices[: num_devices or len(devices)]
    return Mesh(np.array(devices), ("data",))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every array of `tree` on all devices of `mesh` (works across hosts too)."""
    sharding = NamedSharding(mesh, PartitionSpec())

    def put(x: Any) -> jax.Array:
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def init_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    key: jax.Array,
    mesh: Mesh | None = None,
    *,
    example: Any = None,
) -> TrainState:
    """A fresh state: `init_params(model, key, example)` and the optimizer's initial state."""
    params = init_params(model, key, example)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=jax.jit(tx.init)(params),
        skipped=jnp.zeros((), jnp.int32),
    )
    return state if mesh is None else replicate(state, mesh)


def to_device(image: np.ndarray, label: np.ndarray, mesh: Mesh) -> DeviceData:
    """Put a split on the mesh's devices, replicated: uint8 stays uint8 (a quarter of the
    memory of float32), anything else becomes float32 (`vae_jax.arrays`). The labels must be
    integers, one per example (`check_labels`; before: 3 labels for 16 images were taken,
    and float labels truncated)."""
    image = np.asarray(image)
    image = image if image.dtype == np.uint8 else image.astype(np.float32)
    label = check_labels(np.asarray(label), len(image), name="to_device", num_classes=None)
    on_device = replicate((image, label), mesh)
    return DeviceData(*on_device)


# Device splits already checked (`check_device_data`): id(image) -> (a weak reference to the
# image, the model it was checked for). A test split is checked at its first evaluation.
_CHECKED: dict[int, tuple[weakref.ref[Any], Any]] = {}


def check_device_data(model: Any, data: Any, *, name: str) -> None:
    """Raise (one line) unless `data` is a `DeviceData` that fits `model`: `check_inputs`
    (event shape, finite values, [0, 1] for a Bernoulli likelihood, labels) of one replica
    copied to the host, once per array and model (a split already checked passes free).
    Before, values were not looked at: floats 0..255 gave a Bernoulli ELBO of -5e12."""
    if not isinstance(data, DeviceData):
        raise TypeError(
            f"{name} must be a DeviceData (vae_jax.train.to_device), got {type(data).__name__}"
        )

    def host(a: jax.Array) -> np.ndarray:  # (replicated: any local shard is the whole array)
        return np.asarray(a.addressable_shards[0].data)

    _check_once(model, data.image, lambda: (host(data.image), host(data.label)), name=name)


def _check_once(model: Any, image: Any, arrays: Callable[[], Any], *, name: str) -> None:
    """`check_inputs` of ``arrays()`` (image, label), unless `image` (the same object) was
    checked for `model` before (`_CHECKED`)."""
    seen = _CHECKED.get(id(image))
    if seen is not None and seen[0]() is image and seen[1] == model:
        return
    check_inputs(model, *arrays(), name=name)
    for dead in [k for k, (ref, _) in _CHECKED.items() if ref() is None]:
        del _CHECKED[dead]
    _CHECKED[id(image)] = (weakref.ref(image), model)


def padded_batches(order: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """`order` (example indices) cut into batches: (index, weight), [steps, batch_size] each.

    The last batch is filled up by continuing `order` from its start, with weight 0, so
    every example counts once and every batch has the same shape (one compiled program).
    """
    steps_per_epoch(len(order), batch_size)  # (checks batch_size)
    n = len(order)
    steps = math.ceil(n / batch_size)
    index = np.resize(order, steps * batch_size).reshape(steps, batch_size)
    weight = (np.arange(steps * batch_size) < n).astype(np.float32).reshape(steps, batch_size)
    return index, weight


def epoch_order(n: int, batch_size: int, *, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The example indices and weights of one epoch (`padded_batches` of a permutation
    drawn from ``np.random.default_rng((seed, epoch))``): every example once per epoch, the
    same order for the same (seed, epoch)."""
    perm = np.random.default_rng((seed, epoch)).permutation(n).astype(np.int32)
    return padded_batches(perm, batch_size)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches of `batch_size` (>= 1; before: 0 divided by zero, -3 gave -2 steps) that
    cover `n` examples, the last one padded."""
    require_int("batch_size", batch_size, low=1)
    return math.ceil(n / batch_size)


def batch_x(
    data: DeviceData,
    index: jax.Array,
    sharding: NamedSharding,
    key: jax.Array | None,
    *,
    binarize: bool,
) -> jax.Array:
    """The batch ``data.image[index]`` as float32 x [batch, *event_shape].

    uint8 data are scaled by 1/255, float data used as given (`vae_jax.arrays.to_float`);
    with `binarize`, each value is then resampled ~ Bernoulli(value) from `key`.
    The examples are gathered as rows of ``data.image`` viewed as [N, prod(event_shape)] and
    scaled (and binarized) in that flat shape, then viewed as [batch, *event_shape] again (a
    free bitcast). The values, and the Bernoulli draws, are the same as in image shape; but
    XLA:CPU vectorizes along the minor dimension, which in [N, 28, 28, 1] has size 1, so the
    flat gather and scale are several times cheaper (docs/benchmarks.md).
    """
    n = data.image.shape[0]
    rows = jax.lax.with_sharding_constraint(data.image.reshape(n, -1)[index], sharding)
    return _rows_to_x(rows, data.image.shape[1:], key, binarize=binarize)


def _rows_to_x(
    rows: jax.Array, event_shape: tuple[int, ...], key: jax.Array | None, *, binarize: bool
) -> jax.Array:
    """[batch, prod(event_shape)] stored rows -> float32 x [batch, *event_shape]."""
    x = to_float(rows)  # [batch, prod(event_shape)]
    if binarize:
        assert key is not None
        x = jax.random.bernoulli(key, x).astype(jnp.float32)
    return x.reshape(rows.shape[0], *event_shape)


class HostBatches(NamedTuple):
    """Train batches gathered on the host, for data streamed from host memory.

    Attributes:
      rows: [steps, batch, prod(event_shape)] stored values (uint8 or float32).
      label: [steps, batch] int32.
      weight: [steps, batch] float32 example weights (0 for the last batch's padding).
    """

    rows: np.ndarray
    label: np.ndarray
    weight: np.ndarray


def gather_batches(image: np.ndarray, label: np.ndarray, index: np.ndarray, weight: np.ndarray):
    """`HostBatches` of the examples ``image[index]`` ([steps, batch] indices), on the host.

    `image` may be a memory-mapped array: only the rows asked for are read.
    """
    rows = np.asarray(image.reshape(image.shape[0], -1)[index.reshape(-1)])
    rows = rows.reshape(*index.shape, -1)
    rows = rows if rows.dtype == np.uint8 else rows.astype(np.float32)
    return HostBatches(rows, np.asarray(label[index], np.int32), weight)


def kl_weight(step: jax.Array, *, beta: float, warmup_steps: int) -> jax.Array:
    """beta, ramped linearly from 0 over the first `warmup_steps` steps (0 = no warm-up)."""
    if warmup_steps == 0:
        return jnp.asarray(beta, jnp.float32)
    return beta * jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)


def all_finite(tree: Any) -> jax.Array:
    """Whether every floating-point array of `tree` is finite (a boolean scalar)."""
    leaves = jax.tree.leaves(tree)
    checks = [jnp.all(jnp.isfinite(x)) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(checks))


# The XLA compiler options of every train and evaluation call on a CPU mesh (when this
# jaxlib knows them). XLA:CPU compiles dots and some reductions to YNNPACK fusions by
# default; for this library's shapes XLA's own emitters are faster (Eigen dots use both
# cores; the YNNPACK reduce over [batch, 28, 28, 1] images is slow): seed MLP 2.31 -> 1.98
# s/epoch, test-set ELBO 296 -> 200 ms (docs/benchmarks.md). An empty list turns the
# YNNPACK fusions off. Public for benchmarks that compile their own programs alike.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _cpu_compiler_options_supported() -> bool:
    """Whether this jaxlib's XLA knows the options (they are experimental): compile a probe."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(1.0).compile()
    except jax.errors.JaxRuntimeError:
        return False
    return True


def _compiler_options(mesh: Mesh) -> dict[str, Any] | None:
    """The XLA compiler options for calls on `mesh`'s devices (None: XLA's defaults)."""
    if mesh.devices.flat[0].platform == "cpu" and _cpu_compiler_options_supported():
        return dict(CPU_COMPILER_OPTIONS)
    return None


def step_loop_for(objective: Objective, mesh: Mesh, event_shape: tuple[int, ...]) -> str:
    """Whether a call's steps run inside one `lax.scan` ("scan") or as a host loop of
    compiled steps ("host"), decided from what the step's program contains.

    XLA:CPU runs a convolution inside a loop body many times slower than the same
    convolution outside one (jax-ml/jax#12868, open): the conv32 VAE's train step took
    3.5 s inside a `lax.scan` and 0.15 s as its own call (`benchmarks/conv.py`,
    docs/benchmarks.md). So on a CPU mesh, a model whose objective lowers to a StableHLO
    program with a ``convolution`` (any module: the built-in conv VAE, or your own) gets
    "host": one compiled step at a time, dispatched asynchronously (the per-call cost is
    well under 1% of such a step); everything else, and every other backend, "scan".

    The objective is lowered (traced, not compiled) once per (objective, event shape) on
    abstract parameters: nothing is allocated or run. (`FitOptions.step_loop` overrides.)
    """
    if mesh.devices.flat[0].platform != "cpu":
        return "scan"
    try:
        return _cpu_step_loop(objective, tuple(event_shape))
    except TypeError:  # an unhashable objective (a module with list fields): not cached
        return _cpu_step_loop.__wrapped__(objective, tuple(event_shape))


@functools.lru_cache(maxsize=64)
def _cpu_step_loop(objective: Objective, event_shape: tuple[int, ...]) -> str:
    example = np.zeros((2, *event_shape), np.float32)
    key = jax.eval_shape(lambda: jax.random.key(0))  # abstract: lowering allocates nothing
    params = jax.eval_shape(lambda key: init_params(objective.model, key, example), key)
    batch = {
        "image": jax.ShapeDtypeStruct(example.shape, jnp.float32),
        "label": jax.ShapeDtypeStruct((2,), jnp.int32),
    }
    lowered = jax.jit(objective.per_example).lower(params, batch, key)
    return "host" if "stablehlo.convolution" in lowered.as_text() else "scan"


def _resolve_step_loop(
    step_loop: str, objective: Objective, mesh: Mesh, event_shape: tuple[int, ...]
) -> str:
    if step_loop not in STEP_LOOPS:
        raise ValueError(f"step_loop must be 'auto', 'scan' or 'host', got {step_loop!r}")
    return step_loop_for(objective, mesh, event_shape) if step_loop == "auto" else step_loop


def make_train_call(
    objective: Objective,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    binarize: bool = False,
    kl_warmup_steps: int = 0,
    skip_nonfinite: bool = False,
    event_shape: tuple[int, ...] | None = None,
    streamed: bool = False,
    step_loop: str = "auto",
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """Build ``call(state, data, index, weight, train_key, max_loss) -> (state, metrics)``.

    With `streamed` (data streamed from the host; `event_shape` required), the call is
    instead ``call(state, batches, train_key, max_loss)`` with `HostBatches` gathered by
    `gather_batches`: the same steps on the same examples, the batches sent with the call.

    The call runs ``index.shape[0]`` train steps with `state` donated: as one compiled
    `lax.scan`, or as a host loop of compiled steps, as `step_loop` says ("scan", "host",
    or "auto": `step_loop_for` the examples' `event_shape`; without it, decided at the
    first call from ``data``'s shape, and the call is then a plain function, not a jitted
    one). Step s uses batch ``data[index[s]]`` with example weights ``weight[s]`` and key
    ``fold_in(train_key, state.step)``. The loss is minus the objective (batch-weighted mean,
    nats per example); its gradient updates the parameters through `tx`. A step whose loss
    or gradient is not finite, or whose loss is above `max_loss` (a float32 scalar, default
    `NO_BOUND`: the divergence bound), leaves the state unchanged when `skip_nonfinite`,
    else it is applied and the caller must stop (metrics["finite"] and ["bounded"] say where;
    without `skip_nonfinite`, "finite" is the loss's alone: a non-finite gradient makes the
    parameters non-finite, so the caller checks the state after the call, as `fit` does).

    Returns metrics of shape [steps]: loss, log_likelihood, kl, weight (the batch's total
    example weight), finite and bounded.

    Raises:
      ValueError: (one line) a flag that is not True or False, `kl_warmup_steps` not an
        integer >= 0 (`FitOptions`' rules, for callers that build the call themselves).
    """
    for name, flag in (("binarize", binarize), ("skip_nonfinite", skip_nonfinite)):
        require_bool(name, flag)  # (a truthy "no" would binarize, or skip updates)
    require_bool("streamed", streamed)
    require_int("kl_warmup_steps", kl_warmup_steps, low=0)  # (a negative KL weight)
    settings: dict[str, Any] = dict(binarize=binarize, kl_warmup_steps=kl_warmup_steps)
    settings.update(skip_nonfinite=skip_nonfinite, streamed=streamed)
    if streamed and event_shape is None:
        raise ValueError("a streamed train call needs the examples' event_shape")
    if event_shape is None and step_loop == "auto":  # decided when the data are seen
        built: dict[tuple[int, ...], Callable[..., Any]] = {}

        def call_by_shape(state: TrainState, data: DeviceData, *args: Any) -> Any:
            shape = tuple(data.image.shape[1:])
            if shape not in built:
                built[shape] = make_train_call(objective, tx, mesh, event_shape=shape, **settings)
            return built[shape](state, data, *args)

        return call_by_shape
    if step_loop != "host":
        step_loop = _resolve_step_loop(step_loop, objective, mesh, event_shape or ())
    step = _train_step(objective, tx, mesh, **settings)
    options = _compiler_options(mesh)
    if streamed:  # batches gathered on the host
        step = functools.partial(step, event_shape=tuple(event_shape or ()))
    if step_loop == "host":
        return _host_loop_call(jax.jit(step, donate_argnums=0, compiler_options=options), streamed)

    if streamed:

        def stream_call(state: TrainState, batches: HostBatches, train_key, max_loss=NO_BOUND):
            def body(state: TrainState, xs: Any):
                rows, label, weight = xs
                return step(state, rows, label, weight, train_key, max_loss)

            return jax.lax.scan(body, state, tuple(batches))

        return jax.jit(stream_call, donate_argnums=0, compiler_options=options)

    def call(state: TrainState, data: DeviceData, index, weight, train_key, max_loss=NO_BOUND):
        def body(state: TrainState, xs: tuple[jax.Array, jax.Array]):
            return step(state, data, *xs, train_key, max_loss)

        return jax.lax.scan(body, state, (index, weight))

    return jax.jit(call, donate_argnums=0, compiler_options=options)


def _host_loop_call(step_jit: Callable[..., Any], streamed: bool) -> Callable[..., Any]:
    """The train call as a host loop of `step_jit` (one compiled, donated step each),
    dispatched asynchronously (no host sync per step); metrics stacked to [steps]."""

    def stack(metrics: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
        return jax.tree.map(lambda *ms: jnp.stack(ms), *metrics)

    if streamed:

        def host_stream_call(state: TrainState, batches: HostBatches, train_key, max_loss=NO_BOUND):
            metrics = []
            for s in range(len(batches.rows)):
                row, label, weight = batches.rows[s], batches.label[s], batches.weight[s]
                state, m = step_jit(state, row, label, weight, train_key, max_loss)
                metrics.append(m)
            return state, stack(metrics)

        return host_stream_call

    def host_call(state: TrainState, data: DeviceData, index, weight, train_key, max_loss=NO_BOUND):
        metrics = []
        for s in range(len(index)):
            state, m = step_jit(state, data, index[s], weight[s], train_key, max_loss)
            metrics.append(m)
        return state, stack(metrics)

    return host_call


def _train_step(
    objective: Objective,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    binarize: bool,
    kl_warmup_steps: int,
    skip_nonfinite: bool,
    streamed: bool,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """One train step (see `make_train_call`): ``step(state, data, index, weight, train_key,
    max_loss)`` on device data, or with `streamed` ``step(state, rows, label, weight,
    train_key, max_loss, *, event_shape)`` on a batch gathered on the host."""
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    beta = objective.beta

    def step_on_rows(
        state: TrainState,
        rows: jax.Array,
        label: jax.Array,
        weight: jax.Array,
        train_key: jax.Array,
        max_loss: jax.Array,
        event_shape: tuple[int, ...],
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        key = jax.random.fold_in(train_key, state.step)
        data_key, sample_key = jax.random.split(key)
        rows = jax.lax.with_sharding_constraint(rows, batch_sharding)
        batch = {
            "image": _rows_to_x(rows, event_shape, data_key, binarize=binarize),
            "label": label,
        }
        weight = jax.lax.with_sharding_constraint(weight, batch_sharding)
        weight_kl = kl_weight(state.step, beta=beta, warmup_steps=kl_warmup_steps)

        def loss_fn(params: Any):
            terms = objective.terms(params, batch, sample_key, beta=weight_kl, weights=weight)
            return -terms.elbo, terms

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # (the gradient's own check reads every gradient again, a fifth of a small step on
        # the CPU; without skip_nonfinite a non-finite gradient makes the parameters
        # non-finite, which the next step's loss or `fit`'s state check catches)
        finite = jnp.isfinite(loss) & all_finite(grads) if skip_nonfinite else jnp.isfinite(loss)
        bounded = loss <= max_loss
        new = TrainState(state.step + 1, params, opt_state, state.skipped)
        if skip_nonfinite:
            keep = TrainState(state.step + 1, state.params, state.opt_state, state.skipped + 1)
            new = jax.tree.map(lambda a, b: jnp.where(finite & bounded, a, b), new, keep)
        metrics = {
            "loss": loss,
            "log_likelihood": terms.log_likelihood,
            "kl": terms.kl,
            "weight": jnp.sum(weight),
            "finite": finite,
            "bounded": bounded,
        }
        return new, metrics

    def train_step(
        state: TrainState,
        data: DeviceData,
        index: jax.Array,
        weight: jax.Array,
        train_key: jax.Array,
        max_loss: jax.Array,
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        rows = data.image.reshape(data.image.shape[0], -1)[index]
        event_shape = data.image.shape[1:]
        label = data.label[index]
        return step_on_rows(state, rows, label, weight, train_key, max_loss, event_shape)

    return step_on_rows if streamed else train_step


def make_evaluate(
    objective: Objective, mesh: Mesh, *, batch_size: int, step_loop: str = "auto"
) -> Callable[[Any, DeviceData, jax.Array], dict[str, jax.Array]]:
    """Build ``evaluate(params, data, key) -> {"elbo", "log_likelihood", "kl"}``.

    Means over every example of `data`, in nats per example, of `objective`'s per-example
    terms, computed in batches of `batch_size` (the last padded with weight 0). Batch i uses
    key ``fold_in(key, i)``, so the same key gives the same numbers. Images are used as
    stored: a binarized test set is stored binarized once (0/255), never resampled.
    The batches run in one `lax.scan` or as a host loop, as `step_loop` says ("auto":
    `step_loop_for` the data's event shape, decided at each call; cached).

    Raises:
      TypeError, ValueError: (one line) at construction, an `objective` that is not an
        `Objective` or a `batch_size` not an integer >= 1; at a call, `data` that is not a
        `DeviceData` or does not fit the model (`check_device_data`: shape, values, labels).
    """
    _check_evaluate_settings(objective, batch_size)
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    names = ("elbo", "log_likelihood", "kl")

    def batches(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Index and weight [steps, batch_size] of the padded batches, and the batch ids."""
        index, weight = padded_batches(np.arange(n), batch_size)
        return index, weight, np.arange(len(index))

    def batch_sums(params, data, key, totals, xs):
        index, weight, i = xs
        x = batch_x(data, index, batch_sharding, None, binarize=False)
        batch = {"image": x, "label": data.label[index]}
        terms = objective.per_example(params, batch, jax.random.fold_in(key, i))
        sums = [jnp.sum(weight * t) for t in terms]
        return [a + b for a, b in zip(totals, sums, strict=True)], None

    def evaluate(params: Any, data: DeviceData, key: jax.Array) -> dict[str, jax.Array]:
        n = data.image.shape[0]
        body = functools.partial(batch_sums, params, data, key)
        totals, _ = jax.lax.scan(body, [jnp.zeros((), jnp.float32)] * 3, batches(n))
        return {name: total / n for name, total in zip(names, totals, strict=True)}

    options = _compiler_options(mesh)
    scan_evaluate = jax.jit(evaluate, compiler_options=options)
    batch_sums_jit = jax.jit(batch_sums, compiler_options=options)

    def host_evaluate(params: Any, data: DeviceData, key: jax.Array) -> dict[str, jax.Array]:
        n = data.image.shape[0]
        totals = [jnp.zeros((), jnp.float32)] * 3
        for xs in zip(*batches(n), strict=True):
            totals, _ = batch_sums_jit(params, data, key, totals, xs)
        return {name: total / n for name, total in zip(names, totals, strict=True)}

    def chosen(params: Any, data: DeviceData, key: jax.Array) -> dict[str, jax.Array]:
        check_device_data(objective.model, data, name="evaluate: data")
        event_shape = tuple(data.image.shape[1:])
        if _resolve_step_loop(step_loop, objective, mesh, event_shape) == "host":
            return host_evaluate(params, data, key)
        return scan_evaluate(params, data, key)

    return chosen


def _check_evaluate_settings(objective: Any, batch_size: Any) -> None:
    require_objective(objective)
    require_int("batch_size", batch_size, low=1)


def make_host_evaluate(
    objective: Objective, mesh: Mesh, *, batch_size: int
) -> Callable[[Any, Any, jax.Array], dict[str, jax.Array]]:
    """`make_evaluate` for a split held in host memory: ``evaluate(params, split, key)``.

    The same batches, weights and keys as `make_evaluate` (batch i: ``fold_in(key, i)``);
    each batch is gathered on the host and sent with its compiled call. The numbers agree
    with `make_evaluate`'s to float rounding (the sums are accumulated in another order).
    What it is given is checked as `make_evaluate` checks it (the split: a `Split` of host
    arrays, at its first call).
    """
    _check_evaluate_settings(objective, batch_size)
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    names = ("elbo", "log_likelihood", "kl")

    @functools.partial(
        jax.jit, static_argnames="event_shape", compiler_options=_compiler_options(mesh)
    )
    def batch_sums(params, rows, label, weight, i, key, *, event_shape):
        rows = jax.lax.with_sharding_constraint(rows, batch_sharding)
        batch = {"image": _rows_to_x(rows, event_shape, None, binarize=False), "label": label}
        terms = objective.per_example(params, batch, jax.random.fold_in(key, i))
        return jnp.stack([jnp.sum(weight * t) for t in terms])

    def evaluate(params: Any, split: Any, key: jax.Array) -> dict[str, jax.Array]:
        if not isinstance(split, Split):
            raise TypeError(f"evaluate: data must be a vae_jax.Split, got {type(split).__name__}")
        arrays = lambda: (split.image, split.label)  # noqa: E731
        _check_once(objective.model, split.image, arrays, name="evaluate: data")
        n, event_shape = split.image.shape[0], tuple(split.image.shape[1:])
        index, weight = padded_batches(np.arange(n), batch_size)
        totals = jnp.zeros(3, jnp.float32)
        for i in range(len(index)):
            batches = gather_batches(split.image, split.label, index[i : i + 1], weight[i : i + 1])
            rows, label, w = (a[0] for a in batches)
            totals = totals + batch_sums(
                params, rows, label, w, np.int32(i), key, event_shape=event_shape
            )
        return {name: totals[j] / n for j, name in enumerate(names)}

    return evaluate


def chunk_size(steps: int, size: int) -> int:
    """The length of the compiled calls that split an epoch of `steps` train steps.

    The divisor of `steps` nearest to the requested `size` (the smaller on a tie), among those
    within a factor of 2 of it, so that every call of the epoch has the same length and one
    compiled program serves them all; `size` itself when there is none (the last call is then
    shorter, and compiles once more). The seed recipe's 469 steps with `size` 64 give 67.
    """
    if steps <= size:
        return steps
    divisors = [d for d in range((size + 1) // 2, min(steps, 2 * size) + 1) if steps % d == 0]
    return min(divisors, key=lambda d: (abs(d - size), d)) if divisors else size


def chunks(steps: int, size: int) -> Iterator[tuple[int, int]]:
    """Split [0, steps) into [start, stop) runs of ``chunk_size(steps, size)`` steps.

    The runs depend only on (steps, size), and are aligned to 0: a resumed epoch makes the
    same calls as an uninterrupted one.
    """
    length = chunk_size(steps, size)
    for start in range(0, steps, length):
        yield start, min(start + length, steps)
