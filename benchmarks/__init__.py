"""Benchmarks of encoderkit against its peers; outside the package, run from the repository root:
``python -m benchmarks.compare``."""
