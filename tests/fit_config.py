"""`fit_config`: `vae_jax.loop.fit` driven by an `ExperimentConfig`, as the experiments do.

Tests that describe a run by its configuration build the pieces here the way
`run_experiment` does: the model for the data's event shape, the objective, the
optimizer with its schedule, the options, and the configuration as the work-directory record.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vae_jax.config import ExperimentConfig
from vae_jax.loop import FitResult, RunDir, fit
from vae_jax.optim import check_schedule, make_optimizer
from vae_jax.train import steps_per_epoch

RUN_OPTIONS = ("placement", "skip_nonfinite", "checkpoint_every_steps")


def fit_config(
    config: ExperimentConfig,
    x_train: Any,
    *arrays: Any,
    model: Any = None,
    tx: Any = None,
    **kwargs: Any,
) -> FitResult:
    """`fit(...)` for `config`; `model` / `tx` replace the configured ones; `kwargs` holds
    `fit`'s keyword arguments (with `workdir`: `RunDir`'s resume and overwrite) and the
    run-only `FitOptions` (RUN_OPTIONS, and log)."""
    run = {name: kwargs.pop(name) for name in (*RUN_OPTIONS, "log") if name in kwargs}
    if kwargs.get("workdir") is not None:  # (claimed for `config`, as `run_experiment` does)
        resume, overwrite = kwargs.pop("resume", True), kwargs.pop("overwrite", False)
        kwargs["workdir"] = RunDir(kwargs["workdir"], config, resume=resume, overwrite=overwrite)
    if not config.data.image_shape:
        data = dataclasses.replace(config.data, event_shape=tuple(np.shape(x_train)[1:]))
        config = dataclasses.replace(config, data=data)
    if model is None:
        model = config.model.build(config.data.image_shape)
    if tx is None:
        n_steps = steps_per_epoch(len(x_train), config.train.batch_size)
        check_schedule(config.train, n_steps)
        tx = make_optimizer(config.train, n_steps)
    return fit(
        config.objective.build(model),
        tx,
        x_train,
        *arrays,
        options=config.fit_options(**run),
        **kwargs,
    )
