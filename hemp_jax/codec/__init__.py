"""The ``.hemp`` file format, its context-adaptive entropy coder, checkpoint IO and PTQ.

``compress(params, codebooks)`` -> bytes and ``decompress(bytes)`` -> nested dicts of numpy
arrays. The byte layout is ``hemp_jax/codec/FORMAT.md``. Modules, from the bytes up:
:mod:`~hemp_jax.codec.wire` (varints, the bounds-checked reader),
:mod:`~hemp_jax.codec.kernel` (range coder, log-code tables, contexts),
:mod:`~hemp_jax.codec.legacy` (the coder of versions 1-2),
:mod:`~hemp_jax.codec.context_models` and :mod:`~hemp_jax.codec.model_selection` (the
coder of version 3 and its encoder's choice of model),
:mod:`~hemp_jax.codec.trellis` (dependent quantization and the coder of its records),
:mod:`~hemp_jax.codec.records` (leaf records), :mod:`~hemp_jax.codec.container` (the
file), :mod:`~hemp_jax.codec.inspection` (what a file holds),
:mod:`~hemp_jax.codec.checkpoints` (other checkpoint formats) and
:mod:`~hemp_jax.codec.ptq` (post-training quantization).
"""

import importlib as _importlib

from hemp_jax.codec.container import (
  DEFAULT_MAX_BYTES,
  DEFAULT_MAX_ELEMENTS,
  FORMAT_VERSION,
  compress,
  compress_file,
  decompress,
  decompress_file,
  load_into,
  reencode,
  write_bytes_atomic,
)
from hemp_jax.codec.inspection import LeafReport, Report, format_inspection, inspect
from hemp_jax.codec.records import QuantizationWarning
from hemp_jax.codec.wire import FormatError

__all__ = [
  "FormatError",
  "QuantizationWarning",
  "FORMAT_VERSION",
  "DEFAULT_MAX_ELEMENTS",
  "LeafReport",
  "Report",
  "compress",
  "decompress",
  "inspect",
  "format_inspection",
  "load_into",
  "compress_file",
  "decompress_file",
  "reencode",
  "write_bytes_atomic",
  "DEFAULT_MAX_BYTES",
]

# Checkpoints of other formats and post-training quantization.
from hemp_jax.codec.checkpoints import (
  checkpoint_format,
  read_checkpoint,
  reencode_hemp,
  write_checkpoint,
)
from hemp_jax.codec.ptq import compress_checkpoint, quantize_tree, select_leaves

__all__ += [
  "checkpoint_format",
  "read_checkpoint",
  "write_checkpoint",
  "reencode_hemp",
  "compress_checkpoint",
  "quantize_tree",
  "select_leaves",
]

_DEPRECATED_MODULES = ("coder", "format", "models")  # old import paths, for one release


def __getattr__(name):
  if name in _DEPRECATED_MODULES:
    return _importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
