"""Train a VAE on MNIST: ``python -m experiments.mnist --z_dim 20``. See ``--help``."""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from vae_jax.cli import build_parser, config_from_args, fail

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        fail(parser.prog, str(error), 2)

    import jax

    from vae_jax.checkpoint import CheckpointError
    from vae_jax.data import DataUnavailableError
    from vae_jax.experiment import WorkdirError, run_experiment
    from vae_jax.train import NonFiniteError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.distributed:
        jax.distributed.initialize()
    try:
        run_experiment(
            config,
            args.workdir,
            data_dir=args.data_dir,
            mnist_dir=args.mnist_dir,
            overwrite=args.overwrite,
            resume=not args.no_resume,
            progress=not args.no_progress,
            skip_nonfinite=args.skip_nonfinite,
            checkpoint_every_steps=args.checkpoint_every_steps,
        )
    except (WorkdirError, ValueError) as error:
        fail(parser.prog, str(error), 2)
    except (DataUnavailableError, NonFiniteError, CheckpointError) as error:
        fail(parser.prog, str(error), 1)
    except KeyboardInterrupt:
        fail(
            parser.prog,
            "interrupted; run the same command again to resume from the last "
            f"checkpoint in {args.workdir}",
            130,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
