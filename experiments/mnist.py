"""Train a VAE on MNIST: ``python -m experiments.mnist --z_dim 20``. See ``--help``.

The same command as ``python -m experiments.train`` (whose default data set is MNIST);
kept under this name because the tutorials and the README use it.
"""

from __future__ import annotations

import sys

from experiments.train import main as train_main


def main(argv: list[str] | None = None) -> int:
    return train_main(argv, prog="python -m experiments.mnist")


if __name__ == "__main__":
    sys.exit(main())
