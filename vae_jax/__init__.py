"""vae_jax: variational autoencoders in JAX/Flax, every number in nats.

The public API; see the README for a tour. `VAEEstimator` needs the optional scikit-learn
(``pip install 'vae-jax[sklearn]'``), so it is imported on first use.
"""

from typing import Any

from vae_jax import cpu_threefry  # noqa: F401  (before any lowering: see its docstring)
from vae_jax._version import __version__
from vae_jax.arrays import Split
from vae_jax.checkpoint import Checkpointer, CheckpointError, LoadedModel, load_checkpoint
from vae_jax.config import DataConfig, ExperimentConfig, ModelConfig, ObjectiveConfig, TrainConfig
from vae_jax.evaluation_run import evaluate_checkpoint
from vae_jax.experiment import run_experiment
from vae_jax.importance import importance_log_likelihood
from vae_jax.latents import IAFVAE, HierarchicalVAE, VampPriorVAE
from vae_jax.loop import FitResult, Preempted, RunDir, fit
from vae_jax.mnist import DataUnavailableError, load_mnist, prepare_mnist
from vae_jax.models import (
    LIKELIHOODS,
    VAE,
    DecoderOutput,
    decoder_mean,
    init_params,
    reconstruct,
)
from vae_jax.objectives import (
    ElboTerms,
    LatentSample,
    Objective,
    bernoulli_log_likelihood,
    gaussian_kl,
    gaussian_log_likelihood,
    make_elbo,
    make_iwae,
    reparameterize,
    sample_latent,
)
from vae_jax.optim import make_optimizer, make_schedule
from vae_jax.options import FitOptions
from vae_jax.recipes import RECIPES
from vae_jax.sources import Dataset, load_dataset
from vae_jax.train import (
    DivergenceError,
    NonFiniteError,
    TrainState,
    make_evaluate,
    make_mesh,
    make_train_call,
)
from vae_jax.trainer import Trainer

__all__ = [
    "LIKELIHOODS",
    "RECIPES",
    "VAE",
    "CheckpointError",
    "Checkpointer",
    "DataConfig",
    "DataUnavailableError",
    "DecoderOutput",
    "DivergenceError",
    "Dataset",
    "ElboTerms",
    "ExperimentConfig",
    "FitOptions",
    "FitResult",
    "HierarchicalVAE",
    "IAFVAE",
    "LatentSample",
    "LoadedModel",
    "ModelConfig",
    "NonFiniteError",
    "Objective",
    "ObjectiveConfig",
    "Preempted",
    "RunDir",
    "Split",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "VAEEstimator",
    "VampPriorVAE",
    "__version__",
    "bernoulli_log_likelihood",
    "decoder_mean",
    "evaluate_checkpoint",
    "fit",
    "gaussian_kl",
    "gaussian_log_likelihood",
    "importance_log_likelihood",
    "init_params",
    "load_checkpoint",
    "load_mnist",
    "make_elbo",
    "make_evaluate",
    "make_iwae",
    "load_dataset",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "make_train_call",
    "prepare_mnist",
    "reconstruct",
    "reparameterize",
    "sample_latent",
    "run_experiment",
]


def __getattr__(name: str) -> Any:
    if name == "VAEEstimator":  # (scikit-learn is optional: a one-line ImportError without it)
        from vae_jax.estimator import VAEEstimator

        return VAEEstimator
    raise AttributeError(f"module 'vae_jax' has no attribute {name!r}")
