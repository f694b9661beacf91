"""Several processes, one run: start-up, and which process owns the work directory.

`initialize` connects the processes (`jax.distributed.initialize`) from the environment:
``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID``, or what JAX detects itself (SLURM, Open MPI, Cloud TPU) where those are
unset. Afterwards every process sees every device and the mesh spans them all.

Every process runs the same program on the same data; process 0 alone (`is_primary`) owns
the work directory: its lock, its configuration record, metrics, pictures and the
checkpoints' file lists. Orbax writes each checkpoint collectively (every process calls
save). `barrier` makes the other processes wait where they need something process 0 wrote.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import jax
import numpy as np

T = TypeVar("T")

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def initialize(timeout_seconds: int = 300) -> None:
    """Connect this process to the others (before anything touches a device).

    Reads the variables above (JAX itself reads only the coordinator's address from the
    environment); what they leave unset JAX detects from SLURM, Open MPI or a Cloud TPU.

    Raises:
      ValueError: a variable that is not a number, or an index outside 0..count - 1
        (one line); JAX's own error when nothing says how many processes there are.
    """
    num_processes = _env_int(ENV_NUM_PROCESSES, minimum=1)
    process_id = _env_int(ENV_PROCESS_ID, minimum=0)
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise ValueError(
            f"{ENV_PROCESS_ID}={process_id} must be below {ENV_NUM_PROCESSES}={num_processes}"
        )
    jax.distributed.initialize(
        coordinator_address=os.environ.get(ENV_COORDINATOR) or None,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=timeout_seconds,
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


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def on_primary(action: Callable[[], T], what: str) -> T | None:
    """Run `action` on process 0 only; every process returns once it is done.

    With several processes, whether it succeeded is sent to all of them: if it raised,
    process 0 raises that error and the others a `RuntimeError` that points to process 0's
    output (instead of waiting forever for a process that stopped). Returns its value on
    process 0, None elsewhere.
    """
    if jax.process_count() == 1:
        return action()
    from jax.experimental import multihost_utils

    result, error = None, None
    if is_primary():
        try:
            result = action()
        except Exception as caught:  # (told to the others, then raised)
            error = caught
    failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if error is not None:
        raise error
    if int(failed):
        raise RuntimeError(f"process 0 could not {what}; its output says why")
    return result


def any_process(flag: bool) -> bool:
    """Whether `flag` holds in any process (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))
