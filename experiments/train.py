"""Train a VAE on any data set: ``python -m experiments.train --dataset SPEC``. See ``--help``.

The same command as ``vae-jax train`` (`vae_jax.cli.train`). SPEC is ``mnist`` (the
default), the name of a TFDS dataset prepared as array_record, or a ``.npz`` / ``.npy`` file
(`vae_jax.sources`). ``--config FILE`` reads a run's ``config.json`` (flags override it).
Re-running the same command resumes from the last checkpoint. Exit statuses:
`vae_jax.cli.EXIT_STATUSES` (0 done, 1 a failure while running, 2 a bad input, 75
preempted and resumable, 130 interrupted).
"""

from __future__ import annotations

import sys

from vae_jax.cli import PREEMPTED
from vae_jax.cli import train as _train

PREEMPTED_STATUS = PREEMPTED  # EX_TEMPFAIL (sysexits.h): a temporary failure, to be retried


def main(argv: list[str] | None = None, *, prog: str = "python -m experiments.train") -> int:
    return _train(argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
