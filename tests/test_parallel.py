"""Data parallelism: training on 8 (virtual CPU) devices matches training on 1.

Each run is a fresh subprocess, because the number of host devices is fixed when JAX
starts (``XLA_FLAGS=--xla_force_host_platform_device_count=8``, ``JAX_PLATFORMS=cpu``).
Both runs see the same 8 devices and differ only in the mesh: ``make_mesh(8)`` shards every
batch over the "data" axis (2 examples per device), ``make_mesh(1)`` keeps it on one.

Tolerance: after 6 Adam steps (lr 1e-3) the parameters agree to atol 1e-5 and rtol 1e-4.
Sharding changes only the order of floating-point sums (per-device partial sums, then an
all-reduce over devices), which moves each float32 gradient by a few ulps (~1e-7
relative); Adam's normalised update passes that on without amplifying it over so few
steps, so the parameters (whose own updates are ~1e-3 per step) differ by ~1e-8 (measured:
3e-8 at most). A real sharding bug (a device training on the wrong examples, a missing
gradient all-reduce, padding weights dropped) changes the loss or the parameters at ~1e-3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NUM_DEVICES = 8
BATCH = 16  # 2 examples per device
STEPS_PER_CALL = 3

# Runs in the subprocess: 90 synthetic uint8 images (the last batch of the epoch is padded
# with 6 zero-weight examples), a small MLP, 2 compiled calls of 3 steps each.
SCRIPT = f"""
import json, re, sys
import numpy as np
import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec

jax.config.update("jax_numpy_rank_promotion", "raise")
from vae_jax.config import ModelConfig
from vae_jax.objectives import make_elbo
from vae_jax.train import (
    batch_x, chunks, epoch_order, init_train_state, make_keys, make_mesh,
    make_train_call, to_device,
)

num_devices, out = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (90, 8, 8, 1), dtype=np.uint8)
labels = rng.integers(0, 10, 90).astype(np.int32)
mesh = make_mesh(num_devices)
model = ModelConfig(hidden=(32,), z_dim=4).build((8, 8, 1))
tx = optax.adam(1e-3)
keys = make_keys(0)
state = init_train_state(model, tx, keys.init, mesh)
call = make_train_call(make_elbo(model), tx, mesh, event_shape=(8, 8, 1))
data = to_device(images, labels, mesh)
index, weight = epoch_order(90, {BATCH}, seed=0, epoch=0)

# How the batch is laid out: the train step's own gather helper, and the compiled call.
batch = jax.jit(
    lambda i: batch_x(data, i, NamedSharding(mesh, PartitionSpec("data")), None, binarize=False)
)(index[0])
hlo = call.lower(
    state, data, index[:{STEPS_PER_CALL}], weight[:{STEPS_PER_CALL}], keys.train
).compile().as_text()
gather_rows = [
    int(m) for m in re.findall(r"= u8\\[(\\d+),[\\d,]*\\]\\{{[\\d,]*\\}} gather\\(", hlo)
]

initial = [np.asarray(x) for x in jax.tree.leaves(state.params)]
losses = []
for lo, hi in chunks(len(index), {STEPS_PER_CALL}):
    state, metrics = call(state, data, index[lo:hi], weight[lo:hi], keys.train)
    losses += [float(v) for v in metrics["loss"]]
leaves = jax.tree.leaves(state.params)
np.savez(out, *[np.asarray(x) for x in leaves])
print(json.dumps({{
    "mesh_devices": int(mesh.size),
    "batch_shard_rows": sorted({{s.data.shape[0] for s in batch.addressable_shards}}),
    "batch_shard_devices": len({{s.device for s in batch.addressable_shards}}),
    "gather_rows": gather_rows,
    "all_reduces": hlo.count("all-reduce("),
    "param_devices": len(leaves[0].sharding.device_set),
    "param_dtypes": sorted({{str(x.dtype) for x in leaves}}),
    "losses": losses,
    "moved": max(float(np.abs(np.asarray(a) - b).max()) for a, b in zip(leaves, initial)),
}}))
"""


def _start(num_devices: int, out: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = (
        f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={NUM_DEVICES}"
    )
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(num_devices), str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-4000:]
    return json.loads(stdout.strip().splitlines()[-1])


def test_eight_devices_match_one(tmp_path):
    out8, out1 = tmp_path / "params8.npz", tmp_path / "params1.npz"
    procs = [_start(NUM_DEVICES, out8), _start(1, out1)]  # in parallel: ~10 s each
    info8, info1 = (_finish(p) for p in procs)

    # The 8-device run really is data parallel: 8 devices in the mesh, every batch split
    # into 8 shards of 2 examples, the compiled step gathers 2 rows per device and
    # all-reduces (the gradients and the batch sums); the parameters stay replicated.
    assert info8["mesh_devices"] == NUM_DEVICES
    assert info8["batch_shard_devices"] == NUM_DEVICES
    assert info8["batch_shard_rows"] == [BATCH // NUM_DEVICES]
    assert info8["gather_rows"] and set(info8["gather_rows"]) == {BATCH // NUM_DEVICES}
    assert info8["all_reduces"] > 0
    assert info8["param_devices"] == NUM_DEVICES
    # The reference run is on one device: whole batches, nothing to reduce.
    assert info1["mesh_devices"] == 1
    assert info1["batch_shard_rows"] == [BATCH]
    assert set(info1["gather_rows"]) == {BATCH}
    assert info1["all_reduces"] == 0
    assert info8["param_dtypes"] == info1["param_dtypes"] == ["float32"]

    # Same training: 6 steps, same losses and parameters (tolerance: module docstring).
    assert len(info8["losses"]) == len(info1["losses"]) == 6
    np.testing.assert_allclose(info8["losses"], info1["losses"], rtol=1e-5)
    params8, params1 = np.load(out8), np.load(out1)
    assert sorted(params8.files) == sorted(params1.files)
    for name in params1.files:
        np.testing.assert_allclose(params8[name], params1[name], rtol=1e-4, atol=1e-5)
    # ... and they did train: the parameters moved by far more than the tolerance.
    assert info1["moved"] > 1e-3 and info8["moved"] > 1e-3


# A run on 4 devices into a work directory; its final parameters saved beside it.
TRAIN_ON_DEVICES = """
import sys
import numpy as np
import jax
import vae_jax
from vae_jax.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig

workdir, out = sys.argv[1], sys.argv[2]
x = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
config = ExperimentConfig(
    model=ModelConfig(hidden=(16,), z_dim=2),
    data=DataConfig(dataset="toy", event_shape=(8, 8, 1)),
    train=TrainConfig(epochs=1, batch_size=16),
)
model = config.model.build((8, 8, 1))
result = vae_jax.fit(
    config.objective.build(model), vae_jax.make_optimizer(config.train, 4), x,
    options=config.fit_options(), workdir=vae_jax.RunDir(workdir, config), progress=False,
)
leaves = jax.tree.leaves(result.state.params)
assert len(leaves[0].sharding.device_set) == jax.device_count() == 4
np.savez(out, *[np.asarray(p) for p in leaves])
"""


def test_a_checkpoint_written_on_four_devices_loads_on_one(tmp_path):
    """Restoring targets the loading process's devices, not the writer's (before: 'no
    readable checkpoint' for load_checkpoint of a multi-device run)."""
    import jax

    import vae_jax

    workdir, out = tmp_path / "run", tmp_path / "params.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", TRAIN_ON_DEVICES, str(workdir), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert jax.device_count() == 1
    loaded = vae_jax.load_checkpoint(workdir)
    assert loaded.step == 4
    expected = np.load(out)
    leaves = jax.tree.leaves(loaded.params)
    assert len(leaves) == len(expected.files)
    for i, leaf in enumerate(leaves):
        np.testing.assert_array_equal(leaf, expected[f"arr_{i}"])
