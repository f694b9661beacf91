"""Train a VAE on any data set: ``python -m experiments.train --dataset SPEC``. See ``--help``.

SPEC is ``mnist`` (the default), the name of a TFDS dataset prepared as array_record, or a
``.npz`` / ``.npy`` file (`vae_jax.sources`). ``python -m experiments.mnist`` is this
command with its default data set.

Exit status: 0 done; 2 a bad flag, configuration, path, data file or work directory (one
line on stderr); 1 a failure while running: a non-finite loss, a checkpoint that cannot be
written or read, a full disk (one line that says what is intact), or no data (the sources
tried and how to fix it); 75 preempted (SIGTERM or SIGUSR1: the current compiled call
finished and a checkpoint was written; resumable, so a scheduler may requeue the job);
130 interrupted. With ``--distributed``, 1 also when another process failed, stopped or
never came (one line, within the bounds docs/parallel.md gives). Re-running the same
command resumes from the last checkpoint.
"""

from __future__ import annotations

import logging
import sys

PREEMPTED_STATUS = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, to be retried


def main(argv: list[str] | None = None, *, prog: str = "python -m experiments.train") -> int:
    from vae_jax.cli import build_parser, config_from_args, fail

    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        fail(parser.prog, str(error), 2)

    from vae_jax.checkpoint import CheckpointError, NoReadableCheckpointError
    from vae_jax.experiment import run_experiment
    from vae_jax.loop import Preempted
    from vae_jax.mnist import DataUnavailableError
    from vae_jax.train import DivergenceError
    from vae_jax.workdir import WorkdirError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Orbax logs its failures (with tracebacks from its threads) before raising them; the
    # exception is reported below, in one line.
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    if args.no_progress:  # also TFDS's own bars, shown while it prepares MNIST
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
    from vae_jax.distributed import CLUSTER_STATUS, ClusterError, initialize, watch_peers

    run = run_experiment
    if args.distributed:  # (a missing peer or address: one line and CLUSTER_STATUS within 60 s)
        try:
            initialize(prog=parser.prog)
        except ValueError as error:  # (a variable, or nothing that says how many processes)
            fail(parser.prog, f"--distributed: {_one_line(error)}", 2)
        except ClusterError as error:  # (the processes disagree on their count)
            fail(parser.prog, f"--distributed: {error}", CLUSTER_STATUS)
        run = watch_peers(run_experiment)  # (a peer stopped: ClusterError, not a Gloo error)
    resume_hint = f"run the same command again to resume from the last checkpoint in {args.workdir}"
    try:
        run(
            config,
            args.workdir,
            data_dir=args.data_dir,
            mnist_dir=args.mnist_dir,
            overwrite=args.overwrite,
            resume=not args.no_resume,
            progress=not args.no_progress,
            skip_nonfinite=args.skip_nonfinite,
            checkpoint_every_steps=args.checkpoint_every_steps,
            placement=args.data_placement,
        )
    except ClusterError as error:  # another process failed or stopped
        fail(parser.prog, _one_line(error), CLUSTER_STATUS)
    except (WorkdirError, ValueError) as error:
        fail(parser.prog, _one_line(error), 2)
    except NoReadableCheckpointError as error:  # (resuming cannot help: the message says)
        fail(parser.prog, _one_line(error), 1)
    except CheckpointError as error:
        fail(parser.prog, f"{_one_line(error)}; once fixed, {resume_hint}", 1)
    except DivergenceError as error:  # (NonFiniteError is one)
        fail(parser.prog, _one_line(error), 1)
    except DataUnavailableError as error:  # several lines: each source tried, and the fixes
        fail(parser.prog, str(error), 1)
    except OSError as error:  # e.g. disk full while writing metrics or images
        fail(parser.prog, f"{error}; the checkpoints are intact, once fixed, {resume_hint}", 1)
    except Preempted as error:  # resumable: schedulers may requeue on this status
        print(f"{parser.prog}: preempted: {_one_line(error)}", file=sys.stderr)
        return PREEMPTED_STATUS
    except KeyboardInterrupt:
        fail(parser.prog, f"interrupted; {resume_hint}", 130)
    return 0


def _one_line(error: BaseException) -> str:
    return " | ".join(line.strip() for line in str(error).splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
