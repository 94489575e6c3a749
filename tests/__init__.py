"""The suite. pytest imports this package before tests/conftest.py, and so before torch: src sets
OpenMP's waiting threads to sleep, as for every entry point (src/__init__.py). Spinning, the two
xdist workers' in-process training and kernel tests took each other's cores: the resume matrix and
the scan kernels' tests took 202 s against 125 s with this import, on a 2-core machine like CI's."""

import src  # noqa: F401
