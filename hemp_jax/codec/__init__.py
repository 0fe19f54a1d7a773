"""The ``.hemp`` file format and its context-adaptive entropy coder.

``compress(params, codebooks)`` -> bytes and ``decompress(bytes)`` -> nested dict of numpy
arrays; :mod:`hemp_jax.codec.format` describes the byte layout and
:mod:`hemp_jax.codec.models` the coder (contexts = the weights before each one in the
estimator's scan order, optionally with its place inside the estimator's disjoint tuples;
:mod:`hemp_jax.codec.coder` is the coder of format versions 1-2).
"""

from hemp_jax.codec._wire import FormatError
from hemp_jax.codec.format import (
  DEFAULT_MAX_BYTES,
  DEFAULT_MAX_ELEMENTS,
  FORMAT_VERSION,
  LeafReport,
  Report,
  compress,
  compress_file,
  decompress,
  decompress_file,
  format_inspection,
  inspect,
  load_into,
  reencode,
  write_bytes_atomic,
)

__all__ = [
  "FormatError",
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

# Checkpoints of other formats and post-training quantization (issue 11).
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
