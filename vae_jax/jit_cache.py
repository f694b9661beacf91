"""JAX's persistent compilation cache for `VAEEstimator`, on by default, per user.

A fit compiles its programs once per configuration and shape in a process
(`vae_jax.trainer`); across processes (every script run, every joblib worker of a grid
search) only a disk cache avoids compiling again, and compiling is most of a small fit's
time. On the estimator's first use, unless the cache is already set up, JAX's cache
(``jax_compilation_cache_dir``) is pointed at a private directory:

- ``$VAE_JAX_COMPILATION_CACHE`` if set: a directory, or ``0`` / ``off`` to leave the cache
  off;
- else ``$XDG_CACHE_HOME/vae_jax/jax`` (default ``~/.cache/vae_jax/jax``).

A cache set up by the caller (``jax.config.update("jax_compilation_cache_dir", ...)`` or
``JAX_COMPILATION_CACHE_DIR``, as the test suite does) is left as it is. The directory is
created private (mode 0700) and used only if it is the user's own and nobody else can write
to it: JAX runs what it finds there (JAX's documentation: a compilation cache is trusted
code). Programs that took at least `MIN_COMPILE_SECONDS` to compile are kept, up to
`MAX_BYTES` (JAX evicts the least recently used). The cache changes no number: it stores the
executables XLA compiled.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import jax

ENV = "VAE_JAX_COMPILATION_CACHE"
MIN_COMPILE_SECONDS = 0.2  # (JAX's default, 1 s, leaves out the estimator's evaluators)
MAX_BYTES = 2**30
_OFF = {"0", "off", "false", "no"}
_checked = False


def cache_dir() -> Path | None:
    """The directory the estimator's cache goes to, or None when `ENV` turns it off."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in _OFF or not value.strip() else Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vae_jax" / "jax"


def use_compilation_cache() -> None:
    """Turn JAX's persistent compilation cache on in `cache_dir` (once per process; nothing
    when the caller has set one up or `ENV` turns it off). An unusable directory warns once
    and leaves the cache off: it costs time, never a result."""
    global _checked
    if _checked:
        return
    _checked = True
    path = cache_dir()
    if path is None or getattr(jax.config, "jax_compilation_cache_dir", None) is not None:
        return
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as error:
        problem = f"cannot be created ({error.strerror})"
    else:
        mine = not hasattr(os, "getuid") or info.st_uid == os.getuid()
        if not stat.S_ISDIR(info.st_mode):
            problem = "is not a directory"
        elif not mine or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            problem = "is not private (another user owns it or may write to it)"
        else:
            problem = ""
    if problem:
        warnings.warn(
            f"vae_jax: the compilation cache {path} {problem}; compiling without it (set "
            f"{ENV} to another directory, or to 0)",
            UserWarning,
            stacklevel=3,
        )
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
