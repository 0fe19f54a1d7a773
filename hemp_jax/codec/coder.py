"""Deprecated import path; use hemp_jax.codec.legacy (or .kernel for the shared kernel)."""

from hemp_jax.codec.kernel import MAX_CODE_BITS, S_VALUES, cond_bits, context_counts  # noqa: F401
from hemp_jax.codec.legacy import *  # noqa: F403
