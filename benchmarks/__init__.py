"""Speed benchmarks (not part of the library): ``python -m benchmarks.speed --help``."""
