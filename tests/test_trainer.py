"""The `Trainer` behind `fit`: its loop choice (from the lowered program, not an attribute)
and the run identity a resume must match (configuration, data, parameter shapes)."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import vae_jax
from experiments import train as train_cli
from tests.cli_runner import run_cli
from tests.fit_config import fit_config
from vae_jax.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from vae_jax.train import make_mesh, step_loop_for
from vae_jax.trainer import data_fingerprint
from vae_jax.workdir import CHECKPOINT_SUBDIR, WorkdirError


class TinyUserConv(nn.Module):
    """A user's conv VAE from the model protocol alone: no `architecture` attribute."""

    z_dim: int = 2
    image_shape: tuple[int, ...] = (8, 8, 1)
    likelihood: str = "bernoulli"

    def setup(self):
        self.conv = nn.Conv(4, (3, 3), strides=(2, 2))
        self.head = nn.Dense(2 * self.z_dim)
        self.out = nn.Dense(64)

    def encode(self, x, label=None):  # x [batch, 8, 8, 1] -> (mean, logvar) [batch, z_dim]
        h = nn.relu(self.conv(x)).reshape(x.shape[0], -1)
        mean, logvar = jnp.split(self.head(h), 2, axis=-1)
        return mean, logvar

    def decode(self, z, label=None):  # z [..., batch, z_dim] -> logits [..., batch, 8, 8, 1]
        return vae_jax.DecoderOutput(self.out(z).reshape(*z.shape[:-1], 8, 8, 1), None)


def test_a_user_conv_module_without_the_attribute_gets_the_host_loop_on_cpu():
    """The loop is chosen from what the step's program contains: a convolution on CPU means
    a host loop of compiled steps, whatever the module's attributes; an MLP keeps the scan,
    and `FitOptions.step_loop` overrides the choice."""
    assert not hasattr(TinyUserConv(), "architecture")
    mesh = make_mesh(1)
    assert step_loop_for(vae_jax.make_elbo(TinyUserConv()), mesh, (8, 8, 1)) == "host"
    mlp = vae_jax.VAE(image_shape=(8, 8, 1), hidden=(8,), z_dim=2)
    assert step_loop_for(vae_jax.make_iwae(mlp, num_samples=2), mesh, (8, 8, 1)) == "scan"
    x = np.random.default_rng(0).integers(0, 256, (32, 8, 8, 1), dtype=np.uint8)
    split = vae_jax.Split(x, np.zeros(32, np.int32))
    objective, tx = vae_jax.make_elbo(TinyUserConv()), optax.adam(1e-3)
    trainer = vae_jax.Trainer(objective, tx, split, options=vae_jax.FitOptions(batch_size=16))
    assert trainer.step_loop == "host"
    options = vae_jax.FitOptions(batch_size=16, step_loop="scan")
    assert vae_jax.Trainer(objective, tx, split, options=options).step_loop == "scan"
    with pytest.raises(
        ValueError, match=r"step_loop must be one of \('auto', 'scan', 'host'\), got 'x'"
    ):
        vae_jax.FitOptions(step_loop="x")


def test_the_data_fingerprint_hashes_every_byte_or_a_sample_of_rows(monkeypatch):
    x = np.random.default_rng(0).integers(0, 256, (100, 3), dtype=np.uint8)
    split = vae_jax.Split(x, np.zeros(100, np.int32))
    fingerprint = data_fingerprint(split)
    assert fingerprint["shape"] == [100, 3] and fingerprint["dtype"] == "uint8"
    assert fingerprint["rows_hashed"] == "all"
    edited = x.copy()
    edited[57, 1] ^= 1
    assert data_fingerprint(split._replace(image=edited))["sha256"] != fingerprint["sha256"]
    relabelled = split._replace(label=np.ones(100, np.int32))
    assert data_fingerprint(relabelled)["sha256"] != fingerprint["sha256"]
    monkeypatch.setattr(vae_jax.trainer, "FULL_HASH_BYTES", 10)
    monkeypatch.setattr(vae_jax.trainer, "SAMPLE_ROWS", 4)  # rows 0, 33, 66, 99
    sampled = data_fingerprint(split)
    assert sampled["rows_hashed"] == 4 and sampled["sha256"] != fingerprint["sha256"]
    assert data_fingerprint(split._replace(image=edited)) == sampled  # row 57: not sampled


def _pieces_run(workdir, x, epochs=1):
    model = vae_jax.VAE(image_shape=(4,), hidden=(8,), z_dim=2, likelihood="gaussian_global")
    options = vae_jax.FitOptions(epochs=epochs, batch_size=16, log=lambda _: None)
    return vae_jax.fit(
        vae_jax.make_elbo(model), optax.adam(1e-3), x, options=options, workdir=workdir,
        progress=False,
    )  # fmt: skip


def test_a_resume_on_other_data_is_refused_in_one_line_and_nothing_is_set_aside(tmp_path):
    """(Before: other data at the same path resumed with "nothing to train", exit 0.)"""
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    workdir = tmp_path / "run"
    _pieces_run(workdir, x)
    steps = sorted(p.name for p in (workdir / CHECKPOINT_SUBDIR).iterdir())
    edited = x.copy()
    edited[3, 2] += 1.0
    with pytest.raises(WorkdirError, match=r"data\.train\.sha256: \w+ there, \w+ here") as error:
        _pieces_run(workdir, edited, epochs=2)
    assert "\n" not in str(error.value)
    with pytest.raises(WorkdirError, match=r"data\.train\.shape: \[64, 4\] there, \[48, 4\] here"):
        _pieces_run(workdir, x[:48], epochs=2)
    assert sorted(p.name for p in (workdir / CHECKPOINT_SUBDIR).iterdir()) == steps
    assert [r["epoch"] for r in _pieces_run(workdir, x, epochs=2).records] == [1, 2]


def test_an_edited_config_json_does_not_resume_the_checkpoints_of_another_model(tmp_path):
    """(Before: config.json edited relu -> tanh and a run with tanh trained the relu run's
    parameters as tanh, exit 0.) The checkpoint's own record of the run refuses it."""
    x = np.random.default_rng(1).integers(0, 256, (64, 4, 4, 1), dtype=np.uint8)
    workdir = tmp_path / "run"

    def config(activation):
        return ExperimentConfig(
            model=ModelConfig(hidden=(8,), z_dim=2, activation=activation),
            data=DataConfig(dataset="toy", event_shape=(4, 4, 1)),
            train=TrainConfig(epochs=1, batch_size=16),
        )

    fit_config(config("relu"), x, workdir=workdir, progress=False, log=lambda _: None)
    record = json.loads((workdir / "config.json").read_text())
    record["model"]["activation"] = "tanh"
    (workdir / "config.json").write_text(json.dumps(record))
    with pytest.raises(WorkdirError, match=r"config\.model\.activation: relu there, tanh here"):
        fit_config(config("tanh"), x, workdir=workdir, progress=False, log=lambda _: None)


def test_the_cli_refuses_a_resume_on_a_replaced_npz_with_status_2(tmp_path, capsys):
    rng = np.random.default_rng(2)
    path = tmp_path / "vectors.npz"
    np.savez(path, x_train=rng.normal(size=(64, 6)).astype(np.float32))
    argv = ["--dataset", path, "--likelihood", "gaussian_global", "--hidden", "8"]
    argv += ["--z_dim", "2", "--batch_size", "16", "--no_progress", "--workdir", tmp_path / "r"]
    status, err = run_cli(train_cli.main, [*argv, "--epochs", "1"], capsys)
    assert status == 0, err
    np.savez(path, x_train=rng.normal(size=(80, 6)).astype(np.float32))  # same path, more rows
    status, err = run_cli(train_cli.main, [*argv, "--epochs", "2"], capsys)
    assert status == 2
    assert "data.train.shape: [64, 6] there, [80, 6] here" in err
    assert len(err.strip().splitlines()) == 1


def test_overwrite_starts_afresh_when_only_the_data_differ(tmp_path, capsys):
    """The refusal above advises --overwrite: with it, the run on the new data starts
    afresh (the old checkpoints are discarded), instead of being refused again."""
    rng = np.random.default_rng(3)
    path = tmp_path / "vectors.npz"
    np.savez(path, x_train=rng.normal(size=(64, 6)).astype(np.float32))
    argv = ["--dataset", path, "--likelihood", "gaussian_global", "--hidden", "8"]
    argv += ["--z_dim", "2", "--batch_size", "16", "--no_progress", "--workdir", tmp_path / "r"]
    assert run_cli(train_cli.main, [*argv, "--epochs", "1"], capsys)[0] == 0
    np.savez(path, x_train=rng.normal(size=(80, 6)).astype(np.float32))
    status, err = run_cli(train_cli.main, [*argv, "--epochs", "1", "--overwrite"], capsys)
    assert status == 0, err
    steps = sorted(int(p.name) for p in (tmp_path / "r" / CHECKPOINT_SUBDIR).iterdir())
    assert steps == [5]  # 80 examples / 16: the new run's one epoch, the old step 4 gone


def test_a_trainer_epoch_is_fits_epoch():
    """What the benchmarks time (`Trainer.train_epoch`) is what `fit` runs: the same loss
    and the same parameters after one epoch, bitwise."""
    x = np.random.default_rng(3).integers(0, 256, (72, 4, 4, 1), dtype=np.uint8)
    model = vae_jax.VAE(image_shape=(4, 4, 1), hidden=(8,), z_dim=2)
    options = vae_jax.FitOptions(epochs=1, batch_size=16, steps_per_call=2, log=lambda _: None)
    objective, tx = vae_jax.make_elbo(model), optax.adam(1e-3)
    result = vae_jax.fit(objective, tx, x, options=options, progress=False)
    trainer = vae_jax.Trainer(
        objective, tx, vae_jax.Split(x, np.zeros(72, np.int32)), options=options
    )
    seconds, loss, steps = trainer.train_epoch(0)
    assert steps == 5 and seconds > 0 and loss == result.records[0]["train_loss"]
    for a, b in zip(
        jax.tree.leaves(trainer.state.params), jax.tree.leaves(result.state.params), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    for bad, message in [
        ({"max_steps": 0}, r"max_steps must be >= 1 \(or None: the whole epoch\), got 0"),
        ({"epoch": -1}, "epoch must be >= 0, got -1"),
        ({"epoch": 1.5}, "epoch must be an integer, got 1.5"),
    ]:  # (before: max_steps=0 reported a loss of 0.0 for no training)
        with pytest.raises(ValueError, match=message):
            trainer.train_epoch(**{"epoch": 0, **bad})
    # (before: restore(None) or a params dict failed later, in the compiled call; offset -5
    # acted as 0 and 1.5 gave "slice indices must be integers")
    with pytest.raises(TypeError, match="state must be a TrainState, got dict"):
        trainer.restore({"params": result.state.params})
    other = vae_jax.VAE(image_shape=(4, 4, 1), hidden=(16,), z_dim=2)
    other_state = vae_jax.fit(
        vae_jax.make_elbo(other), tx, x, options=options, progress=False
    ).state
    with pytest.raises(ValueError, match="the state does not have the structure and shapes"):
        trainer.restore(other_state)
    for offset, message in [(-5, r"offset must be in 0\.\.4, got -5"), (1.5, "offset must be an")]:
        with pytest.raises(ValueError, match=message):
            next(trainer.batches(0, offset))
