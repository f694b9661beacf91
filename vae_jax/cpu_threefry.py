"""Threefry on the CPU without JAX's rolled loop: the same random bits, fewer kernels.

JAX lowers its threefry2x32 hash (every `jax.random` draw with the default key) in two
ways that compute the same function: unrolled (its 20 rounds in line) on every platform
but the CPU, and on the CPU as a ``fori_loop`` of 5 iterations of 4 rounds, which compiles
faster but runs each iteration as a few small kernels plus copies of the loop's state. A
small train step draws three times (the step's keys, the reparameterization noise, the
dynamic binarization), so there the rolled loops are a large part of the step
(docs/benchmarks.md, "Small batches").

`use_unrolled_threefry` registers JAX's own unrolled lowering for the CPU, as the other
platforms use it. The random bits are the same (the same hash of the same counters:
tests/test_cpu_threefry.py checks the published test vectors and draws against the rolled
form), but XLA compiles the program around them differently, so a model's floating-point
results may differ in their last bits and a training run's numbers by a little
(docs/benchmarks.md says by how much). `vae_jax` does this when it is imported;
``VAE_JAX_ROLLED_THREEFRY=1`` in the environment leaves JAX's lowering as it is, and so
reproduces runs made before. It touches JAX internals (``jax._src.random.threefry2x32``):
where this JAX version does not keep them there, it does nothing and returns False.
"""

from __future__ import annotations

import os

ENV = "VAE_JAX_ROLLED_THREEFRY"


def use_unrolled_threefry() -> bool:
    """Lower threefry2x32 unrolled on the CPU; True if the lowering is now registered."""
    if os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32
    except ImportError:
        return False
    rule = getattr(threefry2x32, "_threefry2x32_lowering_rule", None)
    primitive = getattr(threefry2x32, "threefry2x32_p", None)
    if rule is None or primitive is None:
        return False
    # (JAX's own default rule: the unrolled rounds, emitted as one out-of-line function)
    mlir.register_lowering(primitive, rule, platform="cpu", inline=False)
    return True


UNROLLED = use_unrolled_threefry()
