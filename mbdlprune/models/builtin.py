"""Imports every built-in architecture module so their ``register_arch`` calls run."""

from . import deq, priors, unrolled, varnet  # noqa: F401

__all__ = ["deq", "priors", "unrolled", "varnet"]
