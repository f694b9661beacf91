"""``python -m tests.cluster_driver ARGS``: ``python -m experiments.train ARGS``, made unlucky.

For tests/test_distributed.py: ``VAE_JAX_TEST_PREPARE_SLEEP`` (seconds) makes process 0's
data preparation that much slower, as a first MNIST preparation on a loaded machine is (or
process ``VAE_JAX_TEST_SLEEPER``'s: each process reads the data once process 0 prepared it);
``VAE_JAX_TEST_INIT_TIMEOUT`` (seconds) lowers the start-up bound
(`vae_jax.distributed.INIT_TIMEOUT_S`) so that a missing peer is found sooner;
``VAE_JAX_TEST_FULL_DISK=1`` makes process 0 alone fail to write metrics.jsonl after
epoch 2 (a full disk on its side), while the others go on training.
"""

from __future__ import annotations

import os
import sys
import time

import jax

import vae_jax.distributed
import vae_jax.experiment
from experiments.train import main

if __name__ == "__main__":
    sleep = float(os.environ.get("VAE_JAX_TEST_PREPARE_SLEEP", "0"))
    sleeper = int(os.environ.get("VAE_JAX_TEST_SLEEPER", "0"))
    prepare = vae_jax.experiment.prepare_data

    def slow_prepare(*args, **kwargs):
        if jax.process_index() == sleeper and sleep:
            print(f"process {sleeper}: preparing the data for {sleep:g} s more", flush=True)
            time.sleep(sleep)
        return prepare(*args, **kwargs)

    vae_jax.experiment.prepare_data = slow_prepare
    write_metrics = vae_jax.experiment.write_metrics

    def full_disk(path, records):
        if vae_jax.distributed.is_primary() and len(records) >= 2:
            raise OSError(28, "No space left on device (simulated)")
        return write_metrics(path, records)

    if os.environ.get("VAE_JAX_TEST_FULL_DISK"):
        vae_jax.experiment.write_metrics = full_disk
    if "VAE_JAX_TEST_INIT_TIMEOUT" in os.environ:
        vae_jax.distributed.INIT_TIMEOUT_S = int(os.environ["VAE_JAX_TEST_INIT_TIMEOUT"])
    sys.exit(main(sys.argv[1:]))
