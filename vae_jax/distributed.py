"""Several processes, one run: start-up, waiting for process 0, and leaving.

`initialize` connects the processes (`jax.distributed.initialize`) from the environment:
``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID``, or what JAX detects itself (SLURM, Open MPI, Cloud TPU) where those are
unset. Afterwards every process sees every device and the mesh spans them all.

Every process runs the same program on the same data; process 0 alone (`is_primary`) owns
the work directory: its lock, its configuration record, metrics, pictures and the
checkpoints' file lists. Orbax writes each checkpoint collectively (every process calls
save).

Waiting and failing, with bounds (docs/parallel.md lists what each case prints):

- Start-up: every process connected, the counts agreed and the devices listed within
  `INIT_TIMEOUT_S`, else each process prints one line (what is missing) and exits with
  status `CLUSTER_STATUS`. (JAX alone waits 5 minutes, then its global device list 5 more,
  then aborts with a C++ stack trace.)
- Waiting for process 0 (`on_primary`: data preparation, the work directory's claim) goes
  through the coordination service's key-value store, not a collective (whose Gloo
  connection set-up gives up after 30 s): the others wait up to `PRIMARY_TIMEOUT_S` and say
  so; if process 0 fails, it publishes its one-line error and the others stop at once with it.
- A collective whose peer stopped (Gloo: "Connection reset by peer") becomes `ClusterError`;
  a process that knows a peer is gone leaves without JAX's shutdown barrier, which would
  otherwise wait for the dead peer and then abort. At a normal exit every process waits for
  the others up to `EXIT_TIMEOUT_S`.
- A peer that stops while this process is outside any collective or wait is found by JAX's
  heartbeats after `HEARTBEAT_TIMEOUT_S`: JAX then aborts this process (exit 134, its own
  C++ stack trace; nothing in Python can intercept it).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import jax
import numpy as np

T = TypeVar("T")
P = ParamSpec("P")

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"

INIT_TIMEOUT_S = 60  # every process connected, counts agreed, devices listed
PRIMARY_TIMEOUT_S = 30 * 60  # process 0 preparing the data (a first MNIST download) or claiming
HEARTBEAT_TIMEOUT_S = 60  # JAX's own detection of a silent peer (then a C++ abort)
EXIT_TIMEOUT_S = 60  # at exit, how long a process waits for the others to finish too
WAIT_NOTICE_S = 5  # a waiting process says so after this long
CLUSTER_STATUS = 1  # the exit status of every failure in this module (a failure while running)

# Messages of a collective (Gloo on CPU) or coordination call whose peer is gone.
_LOST_PEER_SIGNS = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Connection refused",
    "Broken pipe",
    "Gloo",
    "UNAVAILABLE",
    "heartbeat",
)


class ClusterError(RuntimeError):
    """Another process failed or stopped, or never came (one line; exit `CLUSTER_STATUS`)."""


class _State:
    lost = False  # a peer is known to be gone: leave without JAX's shutdown barrier
    prog = "vae_jax"  # prefix of the lines printed from a watchdog thread


_state = _State()
_calls = itertools.count()  # on_primary's call number, the same sequence in every process


def initialize(timeout_seconds: int | None = None, *, prog: str | None = None) -> None:
    """Connect this process to the others (before anything touches a device).

    Reads the variables above (JAX itself reads only the coordinator's address from the
    environment); what they leave unset JAX detects from SLURM, Open MPI or a Cloud TPU.
    Returns once every process has connected, all agree on the count, and the global
    device list is known. If that takes over `timeout_seconds`, this process prints one
    line that says what is missing (``{prog}: error: ...``) and exits with status
    `CLUSTER_STATUS` (from a watchdog thread: JAX's connection call cannot be interrupted).
    `timeout_seconds` defaults to `INIT_TIMEOUT_S`.

    Raises:
      ValueError: a variable that is not a number, or an index outside 0..count - 1
        (one line); JAX's own error when nothing says how many processes there are.
      ClusterError: the processes disagree on their count (one line).
    """
    num_processes = _env_int(ENV_NUM_PROCESSES, minimum=1)
    process_id = _env_int(ENV_PROCESS_ID, minimum=0)
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise ValueError(
            f"{ENV_PROCESS_ID}={process_id} must be below {ENV_NUM_PROCESSES}={num_processes}"
        )
    if prog is not None:
        _state.prog = prog
    if timeout_seconds is None:
        timeout_seconds = INIT_TIMEOUT_S
    coordinator = os.environ.get(ENV_COORDINATOR) or None
    who = f"process {process_id if process_id is not None else '?'}"
    of = f" of {num_processes}" if num_processes is not None else ""
    phase = ["connect"]  # what the watchdog reports, if it fires

    def missing() -> str:
        where = coordinator or "the address JAX detected"
        if phase[0] == "connect":
            if coordinator is not None and not _reachable(coordinator):
                return (
                    f"{who}{of}: nothing answers at the coordinator address {where} "
                    f"({ENV_COORDINATOR}) after {timeout_seconds} s: start process 0 with "
                    "this address, or fix the address"
                )
            return (
                f"{who}{of}: not every process connected to the coordinator at {where} within "
                f"{timeout_seconds} s: start all {num_processes or 'the'} processes with the "
                f"same {ENV_COORDINATOR} and {ENV_NUM_PROCESSES}, each with its own "
                f"{ENV_PROCESS_ID}"
            )
        return (
            f"{who}{of}: the processes connected but did not agree on their devices within "
            f"{timeout_seconds} s (a process stopped during start-up? see the others' output)"
        )

    watchdog = _Watchdog(timeout_seconds, missing)
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        # (JAX's own limit comes later than the watchdog's: its end is an abort)
        initialization_timeout=timeout_seconds + 30,
        heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
        shutdown_timeout_seconds=EXIT_TIMEOUT_S + 30,
    )
    atexit.register(_leave)  # (runs before JAX's own exit handler, registered at import)
    phase[0] = "agree"
    try:
        _check_counts(timeout_seconds)
        jax.devices()  # the global device list: every process's devices
    except ClusterError:
        _state.lost = True  # (the cluster never formed: nothing to wait for at exit)
        raise
    except Exception as error:  # (e.g. the coordinator gone in the meantime)
        _state.lost = True
        raise ClusterError(f"{who}{of}: start-up failed: {_short(error)}") from None
    finally:
        watchdog.cancel()


def _check_counts(timeout_seconds: int) -> None:
    """Every process publishes its count; each compares with process 0's, and process 0
    with every other's (a mismatch would otherwise wait in the device exchange, 5 minutes)."""
    from jax._src.distributed import global_state  # (process_index() would start the backend)

    client = _client()
    index, count = global_state.process_id, global_state.num_processes
    client.key_value_set(f"vae_jax/init/count/{index}", str(count))
    others = range(1, count) if index == 0 else [0]
    wait_ms = 1000 * timeout_seconds
    for other in others:
        try:
            theirs = int(client.blocking_key_value_get(f"vae_jax/init/count/{other}", wait_ms))
        except Exception as error:  # (a deadline, or the coordinator gone)
            if "DEADLINE_EXCEEDED" in str(error):
                raise ClusterError(
                    f"process {index}: process {other} did not report its count within "
                    f"{timeout_seconds} s"
                ) from None
            raise ClusterError(
                f"process {index}: process 0 stopped during start-up (see its output)"
            ) from None
        if theirs != count:
            with contextlib.suppress(Exception):  # (so that each of them can see it too)
                client.wait_at_barrier("vae_jax/init/disagree", 10_000)
            raise ClusterError(
                f"process {index} has {ENV_NUM_PROCESSES}={count} but process {other} has "
                f"{theirs}: start every process with the same count"
            )


def _env_int(name: str, *, minimum: int) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def is_primary() -> bool:
    """Whether this process owns the work directory's files (process 0)."""
    return jax.process_index() == 0


def barrier(name: str, timeout_seconds: int = PRIMARY_TIMEOUT_S) -> None:
    """Wait until every process reaches the barrier `name` (nothing with one process).

    Raises:
      ClusterError: not every process came within `timeout_seconds`, or one is gone.
    """
    if jax.process_count() == 1:
        return
    try:
        _client().wait_at_barrier(f"vae_jax/barrier/{name}", 1000 * timeout_seconds)
    except Exception as error:
        _state.lost = True
        raise ClusterError(
            f"process {jax.process_index()}: not every process reached {name!r} within "
            f"{timeout_seconds} s ({_short(error)})"
        ) from None


def on_primary(action: Callable[[], T], what: str) -> T | None:
    """Run `action` on process 0 only; every process returns once it is done.

    With several processes the others wait through the coordination service (up to
    `PRIMARY_TIMEOUT_S`, printing "process i: waiting for process 0 to WHAT ..." after
    `WAIT_NOTICE_S`). If `action` raised, process 0 raises that error and the others a
    `ClusterError` with process 0's message ("process 0 could not WHAT: ..."), at once.
    Returns its value on process 0, None elsewhere.

    Raises:
      ClusterError: (not process 0) process 0 failed, stopped, or took over the timeout.
    """
    if jax.process_count() == 1:
        return action()
    key = f"vae_jax/on_primary/{next(_calls)}"
    client = _client()
    if is_primary():
        try:
            result = action()
        except BaseException as error:  # (told to the others, then raised)
            client.key_value_set(key, "error " + (_one_line(error) or type(error).__name__))
            raise
        client.key_value_set(key, "ok")
        return result
    value = _wait_for_primary(client, key, what)
    if value != "ok":
        raise ClusterError(f"process 0 could not {what}: {value.removeprefix('error ')}")
    return None


def _wait_for_primary(client: Any, key: str, what: str) -> str:
    index = jax.process_index()
    start = time.monotonic()
    told = False
    while True:
        waited = time.monotonic() - start
        if waited >= PRIMARY_TIMEOUT_S:
            _state.lost = True
            raise ClusterError(
                f"process {index}: process 0 did not {what} within {PRIMARY_TIMEOUT_S // 60} "
                "minutes (see its output)"
            )
        if waited >= WAIT_NOTICE_S and not told:
            print(
                f"process {index}: waiting for process 0 to {what} "
                f"(up to {PRIMARY_TIMEOUT_S // 60} minutes) ...",
                flush=True,
            )
            told = True
        chunk = WAIT_NOTICE_S if not told else 30
        try:
            return str(client.blocking_key_value_get(key, 1000 * chunk))
        except Exception as error:
            if "DEADLINE_EXCEEDED" in str(error):
                continue
            _state.lost = True
            raise ClusterError(
                f"process {index}: process 0 stopped while it was to {what} (the coordinator "
                f"does not answer: {_short(error)})"
            ) from None


def any_process(flag: bool) -> bool:
    """Whether `flag` holds in any process (a collective: every process must call it).

    Raises:
      ClusterError: another process stopped (the collective failed).
    """
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    with lost_peers():
        return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


@contextlib.contextmanager
def lost_peers() -> Iterator[None]:
    """Turn the failure of a collective whose peer stopped into a one-line `ClusterError`.

    Use around code that runs collectives (a training loop); other errors pass unchanged.
    After one, this process leaves without waiting for the others at exit.
    """
    try:
        yield
    except ClusterError:
        raise
    except Exception as error:
        if jax.process_count() == 1 or not any(sign in str(error) for sign in _LOST_PEER_SIGNS):
            raise
        _state.lost = True
        raise ClusterError(
            f"process {jax.process_index()}: another process stopped during a collective "
            f"({_short(error)}); see the other processes' output, then start them all again "
            "to resume"
        ) from None


def watch_peers(function: Callable[P, T]) -> Callable[P, T]:
    """`function`, with `lost_peers` around each call."""

    def watched(*args: P.args, **kwargs: P.kwargs) -> T:
        with lost_peers():
            return function(*args, **kwargs)

    return watched


def _leave() -> None:
    """At exit (before JAX's handler): wait for the others, boundedly, or leave at once."""
    if _state.lost:
        _exit_now()
    if jax.process_count() == 1:
        return
    try:
        _client().wait_at_barrier("vae_jax/exit", 1000 * EXIT_TIMEOUT_S)
    except Exception as error:
        _state.lost = True
        print(
            f"{_state.prog}: error: process {jax.process_index()}: not every process reached "
            f"the end within {EXIT_TIMEOUT_S} s of this one; leaving without them "
            f"({_short(error)})",
            file=sys.stderr,
        )
        _exit_now()


def _exit_now() -> None:
    if not _state.lost:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(CLUSTER_STATUS)


class _Watchdog:
    """After `seconds`, print ``message()`` in one line and end the process, unless cancelled."""

    def __init__(self, seconds: float, message: Callable[[], str]) -> None:
        self._done = threading.Event()
        self._message = message
        self._thread = threading.Thread(target=self._run, args=(seconds,), daemon=True)
        self._thread.start()

    def _run(self, seconds: float) -> None:
        if self._done.wait(seconds):
            return
        print(f"{_state.prog}: error: --distributed: {self._message()}", file=sys.stderr)
        _state.lost = True
        _exit_now()

    def cancel(self) -> None:
        self._done.set()


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


def _client() -> Any:
    from jax._src.distributed import global_state  # (JAX has no public handle on it)

    if global_state.client is None:
        raise ClusterError("jax.distributed is not initialized")
    return global_state.client


def _short(error: BaseException, limit: int = 300) -> str:
    text = _one_line(error)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(error: BaseException) -> str:
    return " | ".join(line.strip() for line in str(error).splitlines() if line.strip())
