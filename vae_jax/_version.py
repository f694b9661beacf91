"""`__version__`: the installed distribution's version (package metadata, from pyproject.toml).

Saved estimators, their pickles and a run's ``config.json`` record it, so a file written by
another version can say so when it is read. Running from a source tree that is not installed
(``PYTHONPATH=.``), there is no metadata: the version is then ``"0+unknown"``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vae-jax")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"
