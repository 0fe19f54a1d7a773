"""Moved to :mod:`hemp_jax.train` (config, checkpoints, input); re-exported for one release."""

from hemp_jax.train.checkpoints import load_init_checkpoint, read_checkpoint_arrays
from hemp_jax.train.config import load_python_file
from hemp_jax.train.input import mock_tfds

__all__ = ["load_init_checkpoint", "read_checkpoint_arrays", "mock_tfds", "load_python_file"]
