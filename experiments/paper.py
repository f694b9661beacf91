"""One row of the IWAE paper in one command: train, evaluate, print it beside the published one.

    python -m experiments.paper --recipe iwae_paper_2layer_iwae --epochs 50

The same command as ``vae-jax paper`` (`vae_jax.cli.paper`). Trains the row's recipe
(`vae_jax.recipes.PAPER_ROWS`: Burda et al. 2016, Table 1; 1 or 2 stochastic layers, VAE or
IWAE, k = 1, 5, 50; batch 20, the `iwae_paper` schedule, truncated by ``--epochs``) into
``--workdir`` (default ``runs/RECIPE``), then evaluates the newest checkpoint with the
paper's protocol (importance sampling with k = 5000 on the 10,000 dynamically binarized test
images, or the shorter protocol that ``--eval_num_samples`` and ``--eval_num_examples``
state), and prints the test NLL beside the published number. Every other flag is a flag of
``python -m experiments.mnist``; flags that change the model or the objective make a
configuration the paper did not report, and the output says so. Re-running the command
resumes the training and evaluates again. Exit statuses: `vae_jax.cli.EXIT_STATUSES`.
"""

from __future__ import annotations

import sys

from vae_jax.cli import paper
from vae_jax.recipes import comparison, differences

__all__ = ["comparison", "differences", "main"]


def main(argv: list[str] | None = None) -> int:
    return paper(argv, prog="python -m experiments.paper")


if __name__ == "__main__":
    sys.exit(main())
