"""Deprecated import path; use hemp_jax.codec.legacy (or .kernel for the shared kernel)."""

from hemp_jax.codec.kernel import (
  MAX_CODE_BITS,
  MAX_CONTEXT_ALPHABET,
  MAX_CONTEXTS,
  MAX_ORDER,
  S_VALUES,
  cond_bits,
  context_counts,
)
from hemp_jax.codec.legacy import (
  MIN_CONTEXT_COLUMNS,
  SEGMENT_MAX_COLUMNS,
  SEGMENT_MIN_ROWS,
  CodedStream,
  ModelInfo,
  allowed_orders,
  best_codes,
  coded_view,
  decode_symbols,
  encode_symbols,
  matrix_view,
  parse_model,
  segments,
)

__all__ = [
  "CodedStream",
  "ModelInfo",
  "MAX_ORDER",
  "MAX_CONTEXTS",
  "MAX_CONTEXT_ALPHABET",
  "MIN_CONTEXT_COLUMNS",
  "SEGMENT_MAX_COLUMNS",
  "SEGMENT_MIN_ROWS",
  "S_VALUES",
  "MAX_CODE_BITS",
  "allowed_orders",
  "matrix_view",
  "segments",
  "coded_view",
  "best_codes",
  "cond_bits",
  "encode_symbols",
  "decode_symbols",
  "parse_model",
  "context_counts",
]
