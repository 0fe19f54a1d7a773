"""Deprecated import path; use hemp_jax.codec (or .container, .inspection, .records)."""

from hemp_jax.codec.container import (
  DEFAULT_MAX_BYTES,
  DEFAULT_MAX_ELEMENTS,
  FORMAT_VERSION,
  MAGIC,
  compress,
  compress_file,
  decompress,
  decompress_file,
  load_into,
  reencode,
  write_bytes_atomic,
)
from hemp_jax.codec.inspection import (
  LeafReport,
  Report,
  format_inspection,
  inspect,
  quantized_symbols,
)
from hemp_jax.codec.records import quantize_indices_np
from hemp_jax.codec.wire import FormatError

__all__ = [
  "FormatError",
  "FORMAT_VERSION",
  "MAGIC",
  "DEFAULT_MAX_ELEMENTS",
  "DEFAULT_MAX_BYTES",
  "LeafReport",
  "Report",
  "compress",
  "decompress",
  "inspect",
  "format_inspection",
  "quantized_symbols",
  "quantize_indices_np",
  "load_into",
  "compress_file",
  "decompress_file",
  "reencode",
  "write_bytes_atomic",
]
