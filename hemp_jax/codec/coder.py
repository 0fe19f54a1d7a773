"""Context-adaptive range coding of quantized index streams (on ``constriction``).

This is the coder of format versions 1 and 2, kept to read those files (and for its
table machinery, which :mod:`hemp_jax.codec.models`, the coder of version 3, reuses).

The matrix view (the contract with the entropy estimator)
---------------------------------------------------------
A quantized leaf of shape ``(..., C)`` (Flax layout ``(..., in, out)``, ``C`` output units)
with ``n`` elements is coded as the matrix ``X = indices.reshape(L, C)``, ``L = n / C``:
``X[r, c]`` is the index of the r-th fan-in weight of output unit c. Its transpose read
row by row is exactly the scan order of :func:`hemp_jax.groups.scan_stream`::

    scan_stream(x) == x.reshape(L, C).T.reshape(-1)

so column c of ``X`` is output unit c's stretch of the scan stream, and the predecessor of
``X[r, c]`` in the estimator's sliding tuples is ``X[r-1, c]``.

An order-m context model codes ``X[r, c]`` with the context
``(X[r-1, c], ..., X[r-m, c])``: the m symbols before it in the scan stream. The ideal code
length of such a model with static per-context frequencies is the empirical conditional
entropy ``H_{m+1} - H_m`` of sliding (m+1)-tuples, which is what
``hemp_jax.empirical_entropy(..., order=m+1, tuples="sliding", rate="conditional")`` and the
soft training objective of the same order measure. The only difference is at the C
column starts: the estimator's stream runs from the end of unit c-1 into the start of
unit c, while the coder gives the first m rows a fixed start context instead.

Start convention: context symbols above the first row (``r - j < 0``) are the *pad*
symbol, stored in the model; the encoder picks the most frequent symbol of the leaf, so
row 0 shares the statistics of the commonest context rather than needing its own table.

Tall, thin matrices (few output units, long fan-in) are cut into S row segments laid
side by side (:func:`segments`, a function of the shape only), so the decoder's Python
loop runs over ``L / S`` rows of ``S * C`` symbols; each segment starts from the pad
context. Measured here: a row costs ~8 us of fixed overhead plus ~0.1 us per symbol, so
an order-1 (50000, 8) matrix decodes at ~1 M symbols/s unsegmented and ~4.5 M symbols/s
as (2000, 200). Matrices too short to segment (L < 512) cost little time in total.

Leaves of rank 0 or 1, matrices that still have fewer than :data:`MIN_CONTEXT_COLUMNS`
columns or fewer than 2 rows, or an alphabet larger than :data:`MAX_CONTEXT_ALPHABET`
(the per-symbol model costs O(A)), use order 0 only. Orders 1..3 are candidates while
``A**m <= MAX_CONTEXTS``.

Decoding: symbols are coded row after row (row-major ``X``) in one queue (FIFO) range
coder stream. The encoder pushes the whole matrix in a few large calls; the decoder pulls
one row (C symbols, or S * C for a segmented matrix) per ``constriction`` call, with per-symbol categorical probabilities
gathered from the context table by the contexts of the rows above (a Python loop per row,
never per symbol). Order 0 uses one concrete categorical model for the whole leaf.

Model tables (stored, counted in the size)
------------------------------------------
Per present context, each symbol's frequency is stored as a small *log-code*
``c in [0, 2**b)``: ``c = 0`` means "never occurs here", otherwise the weight is
``W_s(c - 1)`` with ``W_s(j) = floor(2**40 * 2**(-(j mod s) / s)) >> (j // s)``, an exact
integer (computed with integer roots, so both sides build bit-identical tables), then
raised to at least ``(sum of the context's weights) >> 20``: ``constriction``'s leaky
float32 quantization can give a zero-width interval to a nonzero but tiny probability of
the last symbol (measured: a panic), which this floor rules out. ``s``
(codes per octave, 8 choices) and ``b`` (bits per code, the width that holds every code
and the two narrower ones) are chosen per tensor by minimizing estimated payload + table
bits. The encoder derives the codes from the exact
counts (``j = round(s log2(n_max / n))``) and both sides feed exactly these weights (as
float32) to ``constriction``, so decoding is bit-exact.

Model section byte layout (``A`` = alphabet size, ``m`` = order)::

    u8      order (bits 0-1) | s index (bits 2-4) | b - 1 (bits 5-7)
    varint  pad symbol                            (m >= 1 only)
    bytes   presence bitmap of the A**m contexts  (m >= 1 only, ceil(A**m / 8) bytes,
                                                  bit i of the little-endian bit order =
                                                  context id i present)
    bytes   codes: P x A values of b bits (P present contexts in id order), LSB first
    bytes   payload: range coder words (u32 LE), trailing zero bytes dropped,
            to the end of the record

Context id of ``(X[r-1], ..., X[r-m])`` is ``sum_j X[r-j] * A**(j-1)``.

Candidates per tensor: all allowed orders (their counts are marginals of one histogram of
the highest order); the smallest estimated total wins (ties go to the lower order). An
order whose exact conditional entropy plus its smallest possible table already exceeds
the best total is skipped. The estimate is exact up to the range coder's fixed-point
rounding and its final word (a few bytes).

Throughput (measured on this project's 2-core machine, unloaded): order 0 ~12-30 ns per
symbol to encode / decode (one concrete model); orders >= 1 ~0.1 us per symbol plus the
per-row cost above to decode (the per-symbol model is built from A gathered weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import constriction
import numpy as np

from hemp_jax.codec._wire import (
  FormatError,
  Reader,
  pack_bits,
  unpack_bits,
  varint_size,
  write_varint,
)

__all__ = [
  "CodedStream",
  "ModelInfo",
  "MAX_ORDER",
  "MAX_CONTEXTS",
  "MAX_CONTEXT_ALPHABET",
  "MIN_CONTEXT_COLUMNS",
  "allowed_orders",
  "matrix_view",
  "segments",
  "coded_view",
  "encode_symbols",
  "decode_symbols",
  "parse_model",
  "context_counts",
]

MAX_ORDER = 3
MAX_CONTEXTS = 4096
MAX_CONTEXT_ALPHABET = 64
MIN_CONTEXT_COLUMNS = 8
SEGMENT_MAX_COLUMNS = 256
SEGMENT_MIN_ROWS = 256
S_VALUES = (1, 2, 3, 4, 6, 8, 12, 16)
MAX_CODE_BITS = 8
_WEIGHT_BITS = 40
_MAX_SHIFT = 30  # j // s <= 30: weights stay >= 2**9
_FLOOR_SHIFT = 20  # nonzero weights >= (row sum) / 2**20
_ENCODE_CHUNK = 1 << 20  # gathered probabilities per encode call (floats)

_Categorical = constriction.stream.model.Categorical
_RangeEncoder = constriction.stream.queue.RangeEncoder
_RangeDecoder = constriction.stream.queue.RangeDecoder


def _iroot(x: int, k: int) -> int:
  """floor(x ** (1/k)) for ints, exactly."""
  if x < 2:
    return x
  lo, hi = 1, 1 << (x.bit_length() // k + 1)
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if mid**k <= x:
      lo = mid
    else:
      hi = mid - 1
  return lo


def _weight_table(s: int) -> np.ndarray:
  base = [_iroot(1 << (_WEIGHT_BITS * s - f), s) for f in range(s)]
  j = np.arange((_MAX_SHIFT + 1) * s)
  return np.array([base[int(t) % s] >> (int(t) // s) for t in j], np.int64)


_WEIGHTS = {s: _weight_table(s) for s in S_VALUES}
# index by code: code 0 -> weight 0, code c -> W_s(c - 1)
_CODE_WEIGHTS = {s: np.concatenate([np.zeros(1, np.int64), w]) for s, w in _WEIGHTS.items()}
_ALL_CODE_WEIGHTS = np.concatenate([_CODE_WEIGHTS[s] for s in S_VALUES])
_CODE_OFFSET = dict(
  zip(S_VALUES, np.cumsum([0] + [_CODE_WEIGHTS[s].size for s in S_VALUES[:-1]]).tolist())
)


def _max_j(s: int, b: int) -> int:
  return min((1 << b) - 2, (_MAX_SHIFT + 1) * s - 1)


@dataclass(frozen=True)
class CodedStream:
  """One coded leaf: the model section and the payload (see the module docstring)."""

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
  """How many segments each column is cut into (1 unless the matrix is tall and thin).

  With few columns the row-by-row decoder would pay its fixed per-row cost (~8 us) for
  a handful of symbols. Such a matrix is decoded as ``S`` row segments side by side:
  ``X.reshape(S, L/S, C).transpose(1, 0, 2).reshape(L/S, S*C)``; each segment starts
  from the pad context like row 0. ``S`` is the largest divisor of L with ``S*C <=``
  :data:`SEGMENT_MAX_COLUMNS` and ``L/S >=`` :data:`SEGMENT_MIN_ROWS` (so at most 1 in
  256 symbols gets the weaker start context: measured, a segment start on strongly
  correlated data costs about what the order-0 model pays for that symbol), and 1 when
  ``C >= 32``. A function of the shape alone: nothing is stored.
  """
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


def _contexts(x: np.ndarray, alphabet: int, order: int, pad: int) -> np.ndarray:
  """Context ids (L, C) of the matrix ``x`` for an order-m model."""
  rows = x.shape[0]
  ctx = np.zeros(x.shape, np.int64)
  mult = 1
  for j in range(1, order + 1):
    if j < rows:
      ctx[j:] += x[:-j].astype(np.int64) * mult
    ctx[: min(j, rows)] += pad * mult
    mult *= alphabet
  return ctx


def context_counts(x: np.ndarray, alphabet: int, order: int, pad: int) -> np.ndarray:
  """Counts ``(A**m, A)`` of (context, symbol) pairs of the matrix ``x``."""
  ctx = _contexts(x, alphabet, order, pad)
  joint = ctx.reshape(-1) * alphabet + x.reshape(-1)
  return np.bincount(joint, minlength=alphabet**order * alphabet).reshape(-1, alphabet)


def _model_bytes(order: int, alphabet: int, pad: int, present: int, bits: int) -> int:
  size = 1 + (present * alphabet * bits + 7) // 8
  if order:
    size += varint_size(pad) + (alphabet**order + 7) // 8
  return size


def _floored(w: np.ndarray) -> np.ndarray:
  """Integer weights (last axis: the symbols) with every nonzero one raised to at least
  the sum of its row ``>> _FLOOR_SHIFT`` (see the module docstring): the one rule both
  sides apply, so encoder and decoder build bit-identical tables."""
  floor = w.sum(axis=-1, keepdims=True) >> _FLOOR_SHIFT
  return np.where(w > 0, np.maximum(w, floor), 0)


def _cond_bits(counts: np.ndarray) -> float:
  """Exact code length (bits) of a ``(contexts, A)`` count table under each context's own
  frequencies: the empirical conditional entropy, a lower bound of any table's cost."""
  occ = counts > 0
  tot = np.broadcast_to(counts.sum(axis=1, keepdims=True), counts.shape)
  return float((counts[occ] * np.log2(tot[occ] / counts[occ])).sum())


def _int_weights(codes: np.ndarray, s: int) -> np.ndarray:
  """Exact int64 weights of a (P, A) code table (codes validated ``<= _max_j + 1``)."""
  return _floored(_CODE_WEIGHTS[s][codes])


def _probability_table(codes: np.ndarray, s: int) -> np.ndarray:
  """float32 weights (exactly reproducible) of a (P, A) code table."""
  return _int_weights(codes, s).astype(np.float32)


def _best_codes(counts: np.ndarray):
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
    cap = (_MAX_SHIFT + 1) * s - 1
    need = min(int(j0[occ].max(initial=0)), cap) + 1  # largest code wanted
    b_full = min(max(need.bit_length(), 1), MAX_CODE_BITS)
    for b in range(max(1, b_full - 2), b_full + 1):
      cands.append((s_index, b))
      all_codes.append(np.where(occ, np.minimum(j0, _max_j(s, b)) + 1, 0))
      offsets.append(_CODE_OFFSET[s])
  codes = np.stack(all_codes)  # (cands, P, A)
  w = _floored(_ALL_CODE_WEIGHTS[codes + np.array(offsets)[:, None, None]]).astype(np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    logq = np.log2(w) - np.log2(w.sum(axis=2, keepdims=True))
  bits = -(np.where(occ, logq, 0.0) * n).sum(axis=(1, 2))
  table_bits = np.array([b for _, b in cands], np.float64) * counts.size
  i = int(np.argmin(bits + table_bits))
  s_index, b = cands[i]
  return float(bits[i]), s_index, b, codes[i]


def _words_to_bytes(words: np.ndarray) -> bytes:
  return np.asarray(words, np.uint32).astype("<u4").tobytes().rstrip(b"\x00")


def _bytes_to_words(data) -> np.ndarray:
  data = bytes(data)
  pad = (-len(data)) % 4
  return np.frombuffer(data + b"\x00" * pad, "<u4").astype(np.uint32)


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
  # One histogram of the highest order; lower orders are its marginals (summing out the
  # oldest context symbol, the most significant digit of the id; pad rows included).
  ctx = _contexts(x, a, top, pad)
  joint = np.bincount((ctx.reshape(-1) * a + x.reshape(-1)), minlength=a ** (top + 1))
  all_counts = {top: joint.reshape(-1, a)}
  for m in range(top - 1, -1, -1):
    all_counts[m] = all_counts[m + 1].reshape(a, -1, a).sum(axis=0)
  best = None
  for m in orders:
    counts = all_counts[m]
    ctx_tot = counts.sum(axis=1)
    present = np.flatnonzero(ctx_tot)
    counts = counts[present]
    if best is not None:
      # the exact conditional entropy is a lower bound of any table's cost
      h_bits = _cond_bits(counts)
      if h_bits + 8 * _model_bytes(m, a, pad, present.size, 1) >= best[0]:
        continue
    bits, s_index, b, codes = _best_codes(counts)
    total = bits + 8 * _model_bytes(m, a, pad, present.size, b)
    if best is None or total < best[0]:
      best = (total, m, present, s_index, b, codes, bits)
  _, m, present, s_index, b, codes, bits = best
  s = S_VALUES[s_index]

  model = bytearray([m | (s_index << 2) | ((b - 1) << 5)])
  if m:
    write_varint(model, pad)
    mask = np.zeros(a**m, np.uint8)
    mask[present] = 1
    model += np.packbits(mask, bitorder="little").tobytes()
  model += pack_bits(codes.reshape(-1), b)

  weights = _probability_table(codes, s)
  enc = _RangeEncoder()
  if m == 0:
    enc.encode(x.reshape(-1), _Categorical(weights[0], perfect=False))
  else:
    table = np.ones((a**m, a), np.float32)
    table[present] = weights
    family = _Categorical(perfect=False)
    if m < top:
      ctx %= a**m
    step = max(1, _ENCODE_CHUNK // max(1, cols * a))
    for r0 in range(0, rows, step):
      c = ctx[r0 : r0 + step].reshape(-1)
      probs = np.take(table, c, axis=0, mode="clip")
      enc.encode(x[r0 : r0 + step].reshape(-1), family, probs)
  payload = _words_to_bytes(enc.get_compressed())
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
  count = present.size * a
  codes = unpack_bits(reader.take((count * b + 7) // 8, "context tables"), count, b)
  codes = codes.reshape(present.size, a)
  if codes.size and codes.max() > _max_j(s, b) + 1:
    reader.fail(f"probability code {int(codes.max())} out of range")
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
    dec = _RangeDecoder(_bytes_to_words(payload))
    if info.order == 0:
      return np.asarray(dec.decode(_Categorical(weights[0], perfect=False), rows * cols), np.int32)
    m = info.order
    nctx = a**m
    table = np.ones((nctx, a), np.float32)
    table[info.present] = weights
    family = _Categorical(perfect=False)
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

  out = _range_decoded(reader, a, run)
  return _from_coded(out.reshape(rows, cols), seg).reshape(shape)


def _range_decoded(reader: Reader, alphabet: int, run) -> np.ndarray:
  """``run()``, the range decoding of a coder section, with every failure of the decoder
  on malformed input turned into a :class:`FormatError` naming ``reader``'s record, and
  its symbols checked to lie in ``[0, alphabet)``."""
  try:
    out = run()
  except FormatError:
    raise
  except (KeyboardInterrupt, SystemExit, GeneratorExit):
    raise
  except BaseException as e:  # noqa: B036 - constriction raises ValueError, or a
    # pyo3 PanicException (a BaseException) on some malformed inputs.
    raise FormatError(f"{reader.what}: range decoder failed: {type(e).__name__}: {e}") from None
  if out.size and (out.min() < 0 or out.max() >= alphabet):
    raise FormatError(f"{reader.what}: decoded symbol out of range")
  return out
