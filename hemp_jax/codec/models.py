"""Deprecated import path; use hemp_jax.codec.context_models or .model_selection."""

from hemp_jax.codec.context_models import *  # noqa: F403
from hemp_jax.codec.model_selection import *  # noqa: F403
