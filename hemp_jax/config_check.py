"""Moved to :mod:`hemp_jax.train.config`; this module re-exports it for one release."""

from hemp_jax.train.config import ConfigError, config_diff, flatten_config, validate_config

__all__ = ["ConfigError", "validate_config", "config_diff", "flatten_config"]
