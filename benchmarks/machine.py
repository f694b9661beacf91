"""What a benchmark ran on: CPU model and the vector flags that matter, devices, versions, load.

Every benchmark prints `describe(machine_info())` first and the load average again at the
end, because the project's machines change from session to session (AVX2, AVX-512,
AVX-512 BF16, AMX) and share their cores: only ratios measured in one run compare.
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import Any

import jax

# The CPU flags that decide which kernels XLA and PyTorch can use.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def _cpuinfo() -> tuple[str, list[str]]:
    """(model name with family/model numbers, the `CPU_FLAGS` it has) from /proc/cpuinfo."""
    model_name, flags, numbers = platform.processor() or "unknown", [], {}
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return model_name, flags
    for line in lines:
        if line.startswith("model name"):
            model_name = line.split(":", 1)[1].strip()
        elif line.split(":")[0].strip() in ("cpu family", "model"):
            numbers.setdefault(line.split(":")[0].strip(), line.split(":", 1)[1].strip())
        elif line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            flags = [f for f in CPU_FLAGS if f in have]
        if flags and len(numbers) == 2:
            break
    if numbers:
        model_name += f" (family {numbers.get('cpu family')} model {numbers.get('model')})"
    return model_name, flags


def machine_info() -> dict[str, Any]:
    """Date, CPU model and flags, cores, load average, devices, XLA_FLAGS and versions."""
    model_name, flags = _cpuinfo()
    versions = {"python": platform.python_version(), "jax": jax.__version__}
    for name in ("jaxlib", "flax", "optax", "torch"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    devices = jax.devices()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": model_name,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "platform": platform.platform(),
        "jax_devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": versions,
    }


def describe(info: dict[str, Any]) -> str:
    """Three lines for a benchmark's header."""
    return (
        f"machine: {info['cpu']} ({' '.join(info['cpu_flags']) or 'no flags read'}), "
        f"{info['cores']} cores, load average {info['loadavg_start']}\n"
        f"devices: {info['jax_devices']} ({info['device_kind']})\n"
        f"versions: {info['versions']}; XLA_FLAGS={info['xla_flags']!r}"
    )
