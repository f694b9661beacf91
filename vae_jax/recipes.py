"""Named configurations that reproduce a tutorial or a paper.

Each recipe's docstring gives its command and the result it reaches; the measured numbers
are in the README's Results section (with their protocols).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

from vae_jax.config import DataConfig, ExperimentConfig, ModelConfig, ObjectiveConfig, TrainConfig


def pytorch() -> ExperimentConfig:
    """The PyTorch `examples/vae` recipe: MLP 784-400-20 (ReLU), Bernoulli cross-entropy on
    grey-level MNIST plus analytic KL, Adam 1e-3, batch 128, 10 epochs.

    Command: ``python -m experiments.mnist --recipe pytorch`` (the default).
    Expected: test loss (minus the single-sample ELBO) about 105.8 nats per example after 10
    epochs (the PyTorch reference; REFERENCES.md section 1).
    """
    return ExperimentConfig()


def softplus500() -> ExperimentConfig:
    """The deeper tutorial MLP: 784-500-500-20 with softplus, batch 100, Adam 1e-3, grey
    levels, Bernoulli likelihood (J. H. Metzen's TensorFlow VAE tutorial), 75 epochs.

    Command: ``python -m experiments.mnist --recipe softplus500``.
    """
    return ExperimentConfig(
        model=ModelConfig(hidden=(500, 500), activation="softplus", z_dim=20),
        train=TrainConfig(batch_size=100, epochs=75),
    )


def conv32() -> ExperimentConfig:
    """The convolutional VAE: 32x32 inputs (MNIST zero-padded), stride-2 4x4 convs 32-64-128
    with GroupNorm and LeakyReLU(0.2), transposed-conv decoder, z_dim 20, dynamically
    binarized MNIST, Bernoulli likelihood, Adam 1e-3, batch 128.

    Command: ``python -m experiments.mnist --recipe conv32``.
    Measured (README, "Conv VAE against the MLP"): test -ELBO 96.39 nats per example after
    10 epochs (single sample, 1024 pixels of which 240 are always-zero padding), against
    102.76 for the default MLP on the same dynamically binarized data; about 75 s per epoch
    on the project's 2-core CPU.
    """
    return ExperimentConfig(
        model=ModelConfig(architecture="conv", conv_channels=(32, 64, 128), z_dim=20),
        data=DataConfig(binarize="dynamic", image_size=32),
    )


def iwae_paper_vae() -> ExperimentConfig:
    """Burda et al. (2016), 1 stochastic layer, trained as a VAE (k=1): MLP 784-200-200-50
    (tanh), dynamically binarized MNIST, batch 20, and the paper's optimisation: Adam
    (beta1 0.9, beta2 0.999, epsilon 1e-4) with learning rate 1e-3 * 10^(-i/7) for 3^i
    epochs, i = 0..7: 3280 epochs (the `iwae_paper` schedule). The paper reports 86.76 nats
    (IS, k=5000, dynamically binarized test set).

    Command: ``python -m experiments.mnist --recipe iwae_paper_vae`` (the whole protocol,
    3280 epochs: hours on a CPU, docs/benchmarks.md). ``--epochs N`` truncates the same
    schedule to its first N epochs.
    """
    return ExperimentConfig(
        model=ModelConfig(hidden=(200, 200), activation="tanh", z_dim=50),
        data=DataConfig(binarize="dynamic"),
        train=TrainConfig(batch_size=20, epochs=3280, schedule="iwae_paper", adam_eps=1e-4),
    )


def iwae_paper_iwae() -> ExperimentConfig:
    """As `iwae_paper_vae`, trained with the IWAE bound at k=50 (paper: 84.78 nats).

    Command: ``python -m experiments.mnist --recipe iwae_paper_iwae`` (``--epochs N``
    truncates the schedule).
    """
    return paper_row("iwae_paper_iwae")


def iwae_paper_2layer_vae() -> ExperimentConfig:
    """Burda et al. (2016), 2 stochastic layers, trained as a VAE (k=1): x -200-200- z_1
    (100) -100-100- z_2 (50), tanh (Section 5.1 and Appendix C; yburda/iwae's
    experiments.py), 521,084 parameters, the mirrored generative path (p(z_1|z_2) a diagonal
    Gaussian), Bernoulli p(x|z_1); data and optimisation as `iwae_paper_vae` (batch 20,
    Adam epsilon 1e-4, the 3280-epoch `iwae_paper` schedule). The paper reports 85.33 nats
    (IS, k=5000, dynamically binarized test set).

    Command: ``python -m experiments.mnist --recipe iwae_paper_2layer_vae`` (``--epochs N``
    truncates the schedule).
    """
    base = iwae_paper_vae()
    return ExperimentConfig(
        model=ModelConfig(
            hidden=(200, 200),
            activation="tanh",
            z_dim=100,
            upper_latent_dims=(50,),
            upper_hidden=(100, 100),
        ),
        data=base.data,
        train=base.train,
    )


def iwae_paper_2layer_iwae() -> ExperimentConfig:
    """As `iwae_paper_2layer_vae`, trained with the IWAE bound at k=50 (paper: 82.90 nats).

    Command: ``python -m experiments.mnist --recipe iwae_paper_2layer_iwae`` (``--epochs N``
    truncates the schedule).
    """
    return paper_row("iwae_paper_2layer_iwae")


class PaperRow(NamedTuple):
    """One cell of Burda et al. (2016), Table 1 (MNIST, dynamically binarized; test NLL by
    importance sampling with k = 5000, after the 3280-epoch `iwae_paper` schedule).

    Attributes:
      layers: stochastic layers (1: 784-200-200-50; 2: 784-200-200-100-100-100-50, tanh).
      bound: "vae" (the ELBO with k samples: the multi-sample SGVB estimator, L = k) or
        "iwae" (the IWAE bound with k samples).
      k: samples per example in training.
      published_nll: the paper's test negative log-likelihood in nats per example.
    """

    layers: int
    bound: str
    k: int
    published_nll: float


# Table 1 of Burda, Grosse & Salakhutdinov (2016), MNIST; ../shared/REFERENCES.md section 3.
# (k = 1 is the same model for both bounds: one row.)
PAPER_ROWS = {
    "iwae_paper_vae": PaperRow(1, "vae", 1, 86.76),
    "iwae_paper_vae_k5": PaperRow(1, "vae", 5, 86.47),
    "iwae_paper_iwae_k5": PaperRow(1, "iwae", 5, 85.54),
    "iwae_paper_vae_k50": PaperRow(1, "vae", 50, 86.35),
    "iwae_paper_iwae": PaperRow(1, "iwae", 50, 84.78),
    "iwae_paper_2layer_vae": PaperRow(2, "vae", 1, 85.33),
    "iwae_paper_2layer_vae_k5": PaperRow(2, "vae", 5, 85.01),
    "iwae_paper_2layer_iwae_k5": PaperRow(2, "iwae", 5, 83.89),
    "iwae_paper_2layer_vae_k50": PaperRow(2, "vae", 50, 84.78),
    "iwae_paper_2layer_iwae": PaperRow(2, "iwae", 50, 82.90),
}


def _paper_row(name: object) -> PaperRow:
    """The `PaperRow` called `name`, or a one-line ValueError listing the rows (before: a
    KeyError for another recipe's name, a TypeError for a list)."""
    if not isinstance(name, str) or name not in PAPER_ROWS:
        raise ValueError(f"{name!r} is not a row of the IWAE paper's Table 1: {sorted(PAPER_ROWS)}")
    return PAPER_ROWS[name]


def paper_row(name: str) -> ExperimentConfig:
    """The configuration of the IWAE paper's row `name` (a key of `PAPER_ROWS`): the 1- or
    2-layer recipe above with the row's bound and k.

    Command: ``python -m experiments.paper --recipe NAME`` trains it, evaluates it with the
    paper's protocol and prints the result beside the published number (``--epochs N``
    truncates the schedule).
    """
    row = _paper_row(name)
    base = iwae_paper_vae() if row.layers == 1 else iwae_paper_2layer_vae()
    bound = "iwae" if row.bound == "iwae" else "elbo"
    objective = ObjectiveConfig(bound=bound, num_samples=row.k)
    return dataclasses.replace(base, objective=objective)


RECIPES: dict[str, Callable[[], ExperimentConfig]] = {
    "pytorch": pytorch,
    "softplus500": softplus500,
    "conv32": conv32,
    **{name: functools.partial(paper_row, name) for name in PAPER_ROWS},
}


def differences(config: object, reference: object, prefix: str = "") -> list[str]:
    """The dotted names of the fields in which two configuration dataclasses differ."""
    names = []
    for field in dataclasses.fields(reference):  # type: ignore[arg-type]
        a, b = getattr(config, field.name), getattr(reference, field.name)
        if dataclasses.is_dataclass(b):
            names += differences(a, b, f"{prefix}{field.name}.")
        elif a != b:
            names.append(prefix + field.name)
    return names


def comparison(recipe: str, config: Any, report: dict[str, Any]) -> str:
    """Lines that put the evaluation `report` of a run of `config` beside the published
    number of the paper's row `recipe`, or say why there is none to compare with."""
    row = _paper_row(recipe)
    # The paper's row with this run's length: anything else changed is another model.
    changed = [
        name
        for name in differences(config, paper_row(recipe))
        if not name.startswith(
            ("train.epochs", "train.eval_batch_size", "train.checkpoint", "train.tensorboard")
        )
    ]
    is_key = report["is_key"]
    k, n = report["num_samples"], report["num_examples"]
    bound = "VAE (ELBO)" if row.bound == "vae" else "IWAE"
    lines = [
        f"Burda et al. (2016) Table 1, {row.layers} stochastic layer"
        f"{'s' if row.layers > 1 else ''}, {bound}, k={row.k}:",
        f"  this run:  test NLL {report[is_key]:.2f} +- {report[is_key + '_stderr']:.2f} nats "
        f"(IS k={k}, {n} test images; {config.train.epochs} of the schedule's 3280 epochs)",
    ]
    if changed:
        lines.append(
            f"  published: none for this configuration (it differs from the row in "
            f"{', '.join(changed)}); the unmodified row's is {row.published_nll:.2f}"
        )
    else:
        protocol = "same protocol" if (k, n) == (5000, 10_000) else "IS k=5000, 10000 test images"
        lines.append(
            f"  published: test NLL {row.published_nll:.2f} nats (3280 epochs, {protocol})"
        )
    return "\n".join(lines)
