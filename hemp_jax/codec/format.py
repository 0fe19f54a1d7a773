"""Deprecated import path; use hemp_jax.codec (or .container, .inspection, .records)."""

from hemp_jax.codec.container import *  # noqa: F403
from hemp_jax.codec.inspection import *  # noqa: F403
from hemp_jax.codec.records import quantize_indices_np  # noqa: F401
from hemp_jax.codec.wire import FormatError  # noqa: F401
