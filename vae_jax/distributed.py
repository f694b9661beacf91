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
- A collective whose peer stopped (Gloo: "Connection reset by peer") becomes `ClusterError`.
  A watcher thread (`_watch_peers`) publishes a sign of life each second and reads the
  others': a process silent for `PEER_SILENCE_S` (killed, or hung), or one that failed
  while this one still runs (which would wait for it in its next collective), makes this
  one print one line and leave (`LEAVE_GRACE_S` after a failure).
- Leaving (`_leave`, at exit): each process says how it leaves (done, failed, lost) and
  waits up to `EXIT_TIMEOUT_S` for the others to say so too, then JAX's shutdown barrier;
  once one is lost, all leave at once without that barrier (which would wait for the dead
  one and then abort), process 0 last: it hosts the coordination service, whose end makes
  JAX abort every process still connected.
- What JAX alone decides, nothing in Python can intercept: process 0's death aborts the
  others at once, a process whose index process 0 does not expect is aborted at start-up,
  and a silent peer aborts the rest after `HEARTBEAT_TIMEOUT_S` (the watcher acts before
  that). JAX logs these with absl's FATAL record, GRPC detail and a C++ stack trace, then
  calls ``abort()``: exit status 134, which stays (only a signal handler could change it,
  and one that runs Python made the process crash at exit). So `initialize` sends file
  descriptor 2 through a filter process (`_filter_stderr`, vae_jax/_cpp_log_filter.py) that
  passes everything on but that record, what follows it and the C++ log just before it, and
  prints one line of ours instead (``PROG: error: process 1: process 0 (the coordinator at
  HOST:PORT) is gone ...``); not with ``TF_CPP_MIN_LOG_LEVEL=0`` (JAX's whole log). At exit
  (`_unfilter`) descriptor 2 is restored (`_exit_now`: sent to /dev/null, as JAX may abort
  the process while it leaves) and the filter drained (up to `FILTER_DRAIN_S`), so that
  every line is out once the process has ended; after an abort, the filter's line may come
  a few milliseconds after the process's end.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import jax
import numpy as np

from vae_jax.fields import is_number

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
PEER_SILENCE_S = 20  # a process silent this long is taken for dead (JAX's own check: 60 s)
LEAVE_GRACE_S = 10  # a process still running this long after a peer failed stops too
LAST_WAIT_S = 5  # process 0, lost, waits this long for the others to leave first
CLUSTER_STATUS = 1  # the exit status of every failure in this module (a failure while running)
FILTER_DRAIN_S = 2  # at exit, how long a process waits for its stderr filter to pass all on
ENV_CPP_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"  # 0: JAX's whole C++ log, unfiltered
_FILTER = Path(__file__).with_name("_cpp_log_filter.py")

# Keys in the coordination service's store: each process's sign of life (a counter set
# each second), and how it leaves: "done", "failed" (a `watch_peers` call raised) or "lost"
# (a peer is gone or failed: it leaves at once, without JAX's shutdown barrier).
_ALIVE = "vae_jax/alive/"
_LEAVING = "vae_jax/leaving/"

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
    failed = False  # a `watch_peers` call raised: the others cannot finish without this one
    leaving = False  # this process is in its exit handler
    connected = False  # to the coordination service (its key-value store works)
    formed = False  # every process connected, the counts agreed, the devices known
    finished = False  # every process is leaving: JAX's shutdown barrier next
    prog = "vae_jax"  # prefix of the lines printed from a watchdog thread
    stderr: tuple[subprocess.Popen[bytes], int] | None = None  # the filter, the original fd 2


_state = _State()
_calls = itertools.count()  # on_primary's call number, the same sequence in every process


def _check_address(address: str) -> None:
    """Raise ValueError (one line) unless `address` is ``host:port`` with a port in
    1..65535 (before: no port was an IndexError; "notaport" a JAX runtime error)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{ENV_COORDINATOR}={address!r} must be host:port with a port in 1..65535")


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
    if not is_number(timeout_seconds) or not 0 < timeout_seconds < math.inf:
        # (before: -1 exited at once "within -1 s", 0 killed a process that had connected,
        # "5" a TypeError in the watchdog thread)
        raise ValueError(f"timeout_seconds must be a number > 0, got {timeout_seconds!r}")
    coordinator = os.environ.get(ENV_COORDINATOR) or None
    if coordinator is not None:
        _check_address(coordinator)
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

    _filter_stderr(process_id, num_processes, coordinator)
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
    _state.connected = True
    atexit.register(_leave)  # (runs before JAX's own exit handler, registered at import)
    phase[0] = "agree"
    try:
        _check_counts(timeout_seconds)
        jax.devices()  # the global device list: every process's devices
        _state.formed = True
        threading.Thread(target=_watch_peers, daemon=True).start()
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
    client = _client()
    index, count = _here()
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
    """`function` (the whole run: every collective in it), with `lost_peers` around each
    call; if it raises, the others learn at exit that this process failed, and stop
    (`LEAVE_GRACE_S` later) instead of waiting in a collective for it."""

    def watched(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            with lost_peers():
                return function(*args, **kwargs)
        except BaseException:
            _state.failed = True
            raise

    return watched


def _leave() -> None:
    """At exit (before JAX's handler): say how this process leaves, and wait (up to
    `EXIT_TIMEOUT_S`) until every other has said so too; then JAX's shutdown barrier, which
    they all reach. Once one of them is "lost", all leave at once without that barrier."""
    _state.leaving = True
    if not _state.formed:  # (a start-up failure: every process leaves now)
        _publish("lost")
        _exit_now()
        return
    count, client = jax.process_count(), _client()
    _publish("lost" if _state.lost else "failed" if _state.failed else "done")
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while not _state.lost:
        leaving = _leaving(client)
        if leaving is None or "lost" in leaving.values():
            _state.lost = True  # (that one skips the shutdown barrier: so must this one)
        elif len(leaving) == count:
            _state.finished = True  # (the watcher stops: JAX's shutdown comes next)
            return
        elif time.monotonic() > deadline:
            print(
                f"{_state.prog}: error: process {jax.process_index()}: not every process "
                f"reached the end within {EXIT_TIMEOUT_S} s of this one; leaving without them",
                file=sys.stderr,
            )
            _state.lost = True
        else:
            time.sleep(0.2)
    _exit_now()


def _watch_peers() -> None:
    """(A daemon thread from `initialize` on.) Each second, publish a sign of life and read
    the others'. If another process lost a peer, or failed while this one still runs (which
    may wait in a collective or a barrier for it forever), or gave no sign of life for
    `PEER_SILENCE_S` (killed: JAX's own heartbeat check would abort this process later, with
    a stack trace), say so in one line and leave: at once, or `LEAVE_GRACE_S` after a
    failure unless this one is leaving by then too."""
    client, index, count = _client(), jax.process_index(), jax.process_count()
    heard = dict.fromkeys(range(count), (time.monotonic(), ""))  # (when, what) last heard
    tick = 0
    while not _state.finished:  # (while leaving too: waiting for the others in `_leave`)
        time.sleep(1.0)
        tick += 1
        with contextlib.suppress(Exception):
            client.key_value_set(f"{_ALIVE}{index}", str(tick), allow_overwrite=True)
        leaving, alive = _leaving(client), _read_dir(client, _ALIVE)
        if leaving is None or alive is None:  # (the coordinator is gone: JAX ends this process)
            return
        now = time.monotonic()
        for key, value in alive.items():
            other = _index(key)
            if heard[other][1] != value:
                heard[other] = (now, value)
        left = {_index(key) for key in leaving}
        silent = [i for i in range(count) if i not in left and now - heard[i][0] > PEER_SILENCE_S]
        stopped = sorted(_index(key) for key, how in leaving.items() if how != "done")
        if silent and index not in silent:
            why = f"gave no sign of life for {PEER_SILENCE_S} s (killed?)"
        elif stopped and not _state.leaving:
            why = "stopped (its output says why)"
            if "lost" not in leaving.values():
                time.sleep(LEAVE_GRACE_S)
            if _state.leaving:
                continue
        else:
            continue
        if _state.finished:
            return
        print(
            f"{_state.prog}: error: process {index}: process "
            f"{', '.join(map(str, silent or stopped))} {why}; leaving too: start them all "
            "again to resume",
            file=sys.stderr,
        )
        _state.lost = True
        _publish("lost")
        _exit_now()


def _here() -> tuple[int, int]:
    """This process's index and count, as given to JAX (`jax.process_index()` would start
    the backend, which waits for every process's devices)."""
    from jax._src.distributed import global_state

    return global_state.process_id, global_state.num_processes


def _index(key: str) -> int:
    return int(key.rsplit("/", 1)[-1])


def _publish(how: str) -> None:
    with contextlib.suppress(Exception):  # (the coordinator gone: nothing to tell)
        _client().key_value_set(f"{_LEAVING}{_here()[0]}", how, allow_overwrite=True)


def _leaving(client: Any) -> dict[str, str] | None:
    """How the processes that are leaving leave (by key), or None if the coordinator is gone."""
    return _read_dir(client, _LEAVING)


def _read_dir(client: Any, prefix: str) -> dict[str, str] | None:
    try:
        return dict(client.key_value_dir_get(prefix))
    except Exception:
        return None


def _exit_now() -> None:
    """Leave at once (without JAX's shutdown barrier) if a peer is lost, status 1.

    Process 0 hosts the coordination service, whose end makes JAX abort every process still
    connected; so it leaves last: once every other has said how it leaves (they leave at
    once after a "lost"), or after `LAST_WAIT_S` (a dead one never says).
    """
    if not _state.lost:
        return
    index, count = _here()
    if _state.connected and index == 0 and count > 1:
        client, deadline = _client(), time.monotonic() + LAST_WAIT_S
        while time.monotonic() < deadline:
            leaving = _leaving(client)
            if leaving is None or len(leaving) == count:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # (they poll every 0.2 s in `_leave`, every 1 s in the watcher)
    _unfilter(quiet=True)  # (JAX may abort this process meanwhile: no stack trace then)
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


_filter_lock = threading.Lock()


def _filter_stderr(index: int | None, count: int | None, coordinator: str | None) -> None:
    """Send file descriptor 2 (Python's stderr, JAX's C++ log) through the filter process
    vae_jax/_cpp_log_filter.py until `_unfilter` (registered at exit here), on POSIX, unless
    ``TF_CPP_MIN_LOG_LEVEL=0`` (JAX sets it to 1 where unset: only 0 asks for its log).

    The filter runs in a session of its own (a terminal's Ctrl-C reaches the process group:
    the filter ends at the end of its input instead, after the trainer's last line).
    Without a filter (it cannot start), stderr is left as it is.
    """
    if os.name != "posix" or os.environ.get(ENV_CPP_LOG_LEVEL, "").strip() == "0":
        return
    if _state.stderr is not None:
        return
    args = [
        _state.prog,
        "?" if index is None else str(index),
        "?" if count is None else str(count),
        coordinator or "",
    ]
    try:
        saved = os.dup(2)
    except OSError:  # (no stderr at all)
        return
    read, write = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", str(_FILTER), *args],
            stdin=read,
            stdout=saved,
            stderr=saved,
            start_new_session=True,
            close_fds=True,
        )
    except OSError:
        os.close(saved)
        os.close(write)
        return
    finally:
        os.close(read)
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os.dup2(write, 2)
    os.close(write)
    _state.stderr = (process, saved)
    atexit.register(_unfilter)  # (before `_leave`: runs after it)


def _unfilter(*, quiet: bool = False) -> None:
    """File descriptor 2 back to the original stderr (`quiet`: to /dev/null, for a process
    that has said all and leaves at once, while JAX may abort it with a C++ stack trace);
    wait (up to `FILTER_DRAIN_S`) until the filter has passed on all it holds and ended (it
    reads to the end of its input)."""
    with _filter_lock:
        held, _state.stderr = _state.stderr, None
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        if held is None:
            return
        process, saved = held
        if quiet:
            with contextlib.suppress(OSError):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, saved)
                os.close(null)
        os.dup2(saved, 2)
        os.close(saved)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=FILTER_DRAIN_S)


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
