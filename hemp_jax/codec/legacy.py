"""The coder of ``.hemp`` format versions 1 and 2: static context models of order 0..3.

Kept so that every file of those versions decodes (:func:`decode_symbols`); the library
writes version 3 only (:mod:`hemp_jax.codec.model_selection`). :func:`encode_symbols`
writes this coder's sections, for tests that build version-1/2 files. The section layout,
the matrix view and its row segments are defined in ``FORMAT.md`` ("Coder of versions
1-2").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hemp_jax.codec import kernel
from hemp_jax.codec.kernel import MAX_CONTEXT_ALPHABET, MAX_CONTEXTS, MAX_ORDER, S_VALUES
from hemp_jax.codec.wire import Reader, pack_bits, varint_size, write_varint

__all__ = [
  "CodedStream",
  "ModelInfo",
  "MAX_ORDER",
  "MAX_CONTEXTS",
  "MAX_CONTEXT_ALPHABET",
  "MIN_CONTEXT_COLUMNS",
  "SEGMENT_MAX_COLUMNS",
  "SEGMENT_MIN_ROWS",
  "allowed_orders",
  "matrix_view",
  "segments",
  "coded_view",
  "best_codes",
  "encode_symbols",
  "decode_symbols",
  "parse_model",
]

MIN_CONTEXT_COLUMNS = 8
SEGMENT_MAX_COLUMNS = 256
SEGMENT_MIN_ROWS = 256
_ENCODE_CHUNK = 1 << 20  # gathered probabilities per encode call (floats)


@dataclass(frozen=True)
class CodedStream:
  """One coded leaf: the model section and the payload."""

  order: int
  model: bytes
  payload: bytes
  estimated_bits: float


@dataclass(frozen=True)
class ModelInfo:
  """A parsed model section."""

  order: int
  pad: int
  s: int
  bits: int
  present: np.ndarray  # context ids with a table, increasing
  codes: np.ndarray  # (P, A) int64 log-codes
  model_bytes: int


def matrix_view(shape: Sequence[int]) -> tuple[int, int]:
  """``(L, C)`` of the coder's matrix view; rank 0/1 leaves are one row."""
  shape = tuple(int(d) for d in shape)
  n = math.prod(shape)
  if len(shape) < 2:
    return 1, n
  c = shape[-1]
  return (n // c if c else 0), c


def segments(rows: int, cols: int) -> int:
  """How many row segments each column is cut into (1 unless the matrix is tall and
  thin): the largest divisor ``S`` of ``rows`` with ``S * cols <=``
  :data:`SEGMENT_MAX_COLUMNS` and ``rows / S >=`` :data:`SEGMENT_MIN_ROWS`; 1 when
  ``cols >= 32``. A function of the shape alone: nothing is stored."""
  if cols <= 0 or cols >= 32:
    return 1
  best = 1
  for d in range(2, SEGMENT_MAX_COLUMNS // cols + 1):
    if rows % d == 0 and rows // d >= SEGMENT_MIN_ROWS:
      best = d
  return best


def coded_view(shape: Sequence[int]) -> tuple[int, int, int]:
  """``(rows, columns, S)`` of the matrix the coder actually walks (see :func:`segments`)."""
  rows, cols = matrix_view(shape)
  if len(tuple(shape)) < 2:
    return rows, cols, 1
  seg = segments(rows, cols)
  return rows // seg, cols * seg, seg


def _to_coded(x: np.ndarray, seg: int) -> np.ndarray:
  if seg == 1:
    return x
  rows, cols = x.shape
  return x.reshape(seg, rows // seg, cols).transpose(1, 0, 2).reshape(rows // seg, seg * cols)


def _from_coded(y: np.ndarray, seg: int) -> np.ndarray:
  if seg == 1:
    return y
  rows, cols = y.shape[0], y.shape[1] // seg
  return y.reshape(rows, seg, cols).transpose(1, 0, 2).reshape(rows * seg, cols)


def allowed_orders(shape: Sequence[int], alphabet: int, max_order: int = MAX_ORDER) -> list[int]:
  """Orders the coder may use for a leaf (the decoder enforces the same rule)."""
  orders = [0]
  if len(tuple(shape)) < 2 or alphabet > MAX_CONTEXT_ALPHABET:
    return orders
  rows, cols, _ = coded_view(shape)
  if cols < MIN_CONTEXT_COLUMNS or rows < 2:
    return orders
  for m in range(1, min(int(max_order), MAX_ORDER) + 1):
    if alphabet**m <= MAX_CONTEXTS:
      orders.append(m)
  return orders


def _model_bytes(order: int, alphabet: int, pad: int, present: int, bits: int) -> int:
  size = 1 + (present * alphabet * bits + 7) // 8
  if order:
    size += varint_size(pad) + (alphabet**order + 7) // 8
  return size


def _probability_table(codes: np.ndarray, s: int) -> np.ndarray:
  """float32 weights (exactly reproducible) of a (P, A) code table."""
  return kernel.int_weights(codes, s).astype(np.float32)


def best_codes(counts: np.ndarray):
  """Best (bits_estimate, s index, b, codes) for the count table of the present contexts.

  All (s, b) candidates are scored in one vectorized pass: for each s, the codes
  ``round(s log2(n_max / n))`` clipped to what b bits hold, for b from the width that
  holds every code down by two (narrower codes only clip the rarest symbols more).
  """
  n = counts.astype(np.float64)
  occ = counts > 0
  nmax = n.max(axis=1, keepdims=True)
  with np.errstate(divide="ignore", invalid="ignore"):
    lr = np.where(occ, np.log2(nmax / np.where(occ, n, 1.0)), 0.0)
  cands, all_codes, offsets = [], [], []
  for s_index, s in enumerate(S_VALUES):
    j0 = np.rint(s * lr).astype(np.int64)
    cap = (kernel.MAX_SHIFT + 1) * s - 1
    need = min(int(j0[occ].max(initial=0)), cap) + 1  # largest code wanted
    b_full = min(max(need.bit_length(), 1), kernel.MAX_CODE_BITS)
    for b in range(max(1, b_full - 2), b_full + 1):
      cands.append((s_index, b))
      all_codes.append(np.where(occ, np.minimum(j0, kernel.max_j(s, b)) + 1, 0))
      offsets.append(kernel.CODE_OFFSET[s])
  codes = np.stack(all_codes)  # (cands, P, A)
  w = kernel.ALL_CODE_WEIGHTS[codes + np.array(offsets)[:, None, None]]
  w = kernel.floored(w).astype(np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    logq = np.log2(w) - np.log2(w.sum(axis=2, keepdims=True))
  bits = -(np.where(occ, logq, 0.0) * n).sum(axis=(1, 2))
  table_bits = np.array([b for _, b in cands], np.float64) * counts.size
  i = int(np.argmin(bits + table_bits))
  s_index, b = cands[i]
  return float(bits[i]), s_index, b, codes[i]


def _all_counts(x: np.ndarray, a: int, top: int, pad: int):
  """Context ids of order ``top`` and the count tables of every order up to it.

  One histogram of the highest order; lower orders are its marginals (summing out the
  oldest context symbol, the most significant digit of the id; pad rows included)."""
  ctx = kernel.contexts(x, a, top, pad)
  joint = np.bincount((ctx.reshape(-1) * a + x.reshape(-1)), minlength=a ** (top + 1))
  all_counts = {top: joint.reshape(-1, a)}
  for m in range(top - 1, -1, -1):
    all_counts[m] = all_counts[m + 1].reshape(a, -1, a).sum(axis=0)
  return ctx, all_counts


def _best_model(all_counts: dict, orders: list, a: int, pad: int):
  """``(total, order, present, s index, b, codes, bits)`` of the smallest estimated total
  over ``orders`` (ties: the lower order)."""
  best = None
  for m in orders:
    counts = all_counts[m]
    present = np.flatnonzero(counts.sum(axis=1))
    counts = counts[present]
    if best is not None:
      # the exact conditional entropy is a lower bound of any table's cost
      h_bits = kernel.cond_bits(counts)
      if h_bits + 8 * _model_bytes(m, a, pad, present.size, 1) >= best[0]:
        continue
    bits, s_index, b, codes = best_codes(counts)
    total = bits + 8 * _model_bytes(m, a, pad, present.size, b)
    if best is None or total < best[0]:
      best = (total, m, present, s_index, b, codes, bits)
  return best


def encode_symbols(
  symbols: np.ndarray, alphabet: int, *, max_order: int = MAX_ORDER
) -> CodedStream:
  """Codes a leaf's compact symbols (ints in ``[0, alphabet)``, the leaf's shape).

  Requires at least one symbol and ``alphabet >= 2``. Tries every allowed order and keeps
  the smallest estimated total (payload + model section).
  """
  symbols = np.asarray(symbols)
  shape = symbols.shape
  rows, cols, seg = coded_view(shape)
  x = _to_coded(symbols.reshape(rows * seg, cols // seg).astype(np.int32), seg)
  a = int(alphabet)
  orders = allowed_orders(shape, a, max_order)
  top = orders[-1]
  pad = int(np.argmax(np.bincount(x.reshape(-1), minlength=a))) if top else 0
  ctx, all_counts = _all_counts(x, a, top, pad)
  _, m, present, s_index, b, codes, bits = _best_model(all_counts, orders, a, pad)
  s = S_VALUES[s_index]

  model = bytearray([m | (s_index << 2) | ((b - 1) << 5)])
  if m:
    write_varint(model, pad)
    model += kernel.presence_bitmap(present, a**m)
  model += pack_bits(codes.reshape(-1), b)

  weights = _probability_table(codes, s)
  enc = kernel.RangeEncoder()
  if m == 0:
    enc.encode(x.reshape(-1), kernel.Categorical(weights[0], perfect=False))
  else:
    table = np.ones((a**m, a), np.float32)
    table[present] = weights
    family = kernel.Categorical(perfect=False)
    if m < top:
      ctx %= a**m
    step = max(1, _ENCODE_CHUNK // max(1, cols * a))
    for r0 in range(0, rows, step):
      c = ctx[r0 : r0 + step].reshape(-1)
      probs = np.take(table, c, axis=0, mode="clip")
      enc.encode(x[r0 : r0 + step].reshape(-1), family, probs)
  payload = kernel.words_to_bytes(enc.get_compressed())
  return CodedStream(order=m, model=bytes(model), payload=payload, estimated_bits=bits)


def parse_model(reader: Reader, shape: Sequence[int], alphabet: int) -> ModelInfo:
  """Reads and validates a model section (leaves ``reader`` at the payload)."""
  start = reader.pos
  head = reader.u8("coder model header")
  m, s_index, b = head & 3, (head >> 2) & 7, (head >> 5) + 1
  a = int(alphabet)
  if m not in allowed_orders(shape, a):
    reader.fail(f"context order {m} is not allowed for shape {tuple(shape)} with {a} symbols")
  s = S_VALUES[s_index]
  pad = 0
  if m:
    pad = reader.varint("pad symbol", max_value=a - 1)
    nctx = a**m
    mask = np.unpackbits(
      np.frombuffer(bytes(reader.take((nctx + 7) // 8, "context bitmap")), np.uint8),
      bitorder="little",
    )[:nctx]
    present = np.flatnonzero(mask)
  else:
    present = np.zeros(1, np.int64)
  codes = kernel.read_codes(reader, present.size, a, s, b)
  if present.size and not np.all(codes.max(axis=1) > 0):
    reader.fail("a context table has no symbol with nonzero probability")
  if m and present.size == 0:
    reader.fail("context model without any context")
  return ModelInfo(
    order=m, pad=pad, s=s, bits=b, present=present, codes=codes, model_bytes=reader.pos - start
  )


def decode_symbols(reader: Reader, shape: Sequence[int], alphabet: int) -> np.ndarray:
  """Decodes a coder section (model + payload, to ``reader.end``) into int32 symbols."""
  shape = tuple(int(d) for d in shape)
  info = parse_model(reader, shape, alphabet)
  payload = reader.take(reader.remaining, "payload")
  rows, cols, seg = coded_view(shape)
  a = int(alphabet)
  weights = _probability_table(info.codes, info.s)

  def run():
    dec = kernel.RangeDecoder(kernel.bytes_to_words(payload))
    if info.order == 0:
      model = kernel.Categorical(weights[0], perfect=False)
      return np.asarray(dec.decode(model, rows * cols), np.int32)
    m = info.order
    nctx = a**m
    table = np.ones((nctx, a), np.float32)
    table[info.present] = weights
    family = kernel.Categorical(perfect=False)
    out = np.empty((rows, cols), np.int32)
    ctx = np.full(cols, sum(info.pad * a**j for j in range(m)), np.int64)
    probs = np.empty((cols, a), np.float32)
    for r in range(rows):
      np.take(table, ctx, axis=0, out=probs, mode="clip")
      row = dec.decode(family, probs)
      out[r] = row
      ctx *= a
      ctx += row
      ctx %= nctx
    return out

  out = kernel.range_decoded(reader, a, run)
  return _from_coded(out.reshape(rows, cols), seg).reshape(shape)
