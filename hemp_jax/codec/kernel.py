"""The coding kernel shared by the ``.hemp`` coders: range coder, log-code tables, contexts.

Both coders (:mod:`hemp_jax.codec.legacy`, versions 1-2, and
:mod:`hemp_jax.codec.context_models`, version 3) code symbols with ``constriction``'s
queue range coder and per-context categorical models whose weights are exact integers
built from stored log-codes, so that encoder and decoder feed bit-identical float32
weights to the range coder. The rules (log-code weights ``W_s``, the floor, context ids,
the payload's words) are defined in ``FORMAT.md`` ("Probability tables", "Payload").
"""

from __future__ import annotations

import constriction
import numpy as np

from hemp_jax.codec.wire import FormatError, Reader, unpack_bits

__all__ = [
  "Categorical",
  "RangeEncoder",
  "RangeDecoder",
  "MAX_ORDER",
  "MAX_CONTEXTS",
  "MAX_CONTEXT_ALPHABET",
  "S_VALUES",
  "MAX_CODE_BITS",
  "WEIGHT_BITS",
  "MAX_SHIFT",
  "FLOOR_SHIFT",
  "CODE_WEIGHTS",
  "ALL_CODE_WEIGHTS",
  "CODE_OFFSET",
  "max_j",
  "contexts",
  "context_counts",
  "floored",
  "cond_bits",
  "int_weights",
  "presence_bitmap",
  "read_codes",
  "words_to_bytes",
  "bytes_to_words",
  "range_decoded",
]

MAX_ORDER = 3  # the highest context order of either coder
MAX_CONTEXTS = 4096  # contexts of one table set (version 3: period * A**m)
MAX_CONTEXT_ALPHABET = 64  # context models only for alphabets up to this size
S_VALUES = (1, 2, 3, 4, 6, 8, 12, 16)  # codes per octave, by s index
MAX_CODE_BITS = 8
WEIGHT_BITS = 40
MAX_SHIFT = 30  # j // s <= MAX_SHIFT: weights stay >= 2**9
FLOOR_SHIFT = 20  # nonzero weights >= (row sum) >> FLOOR_SHIFT

Categorical = constriction.stream.model.Categorical
RangeEncoder = constriction.stream.queue.RangeEncoder
RangeDecoder = constriction.stream.queue.RangeDecoder


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
  """``W_s(j)`` for ``j = 0 .. (MAX_SHIFT + 1) * s - 1``, exact integers."""
  base = [_iroot(1 << (WEIGHT_BITS * s - f), s) for f in range(s)]
  j = np.arange((MAX_SHIFT + 1) * s)
  return np.array([base[int(t) % s] >> (int(t) // s) for t in j], np.int64)


# Indexed by code: code 0 -> weight 0, code c -> W_s(c - 1).
CODE_WEIGHTS = {s: np.concatenate([np.zeros(1, np.int64), _weight_table(s)]) for s in S_VALUES}
ALL_CODE_WEIGHTS = np.concatenate([CODE_WEIGHTS[s] for s in S_VALUES])
CODE_OFFSET = dict(
  zip(S_VALUES, np.cumsum([0] + [CODE_WEIGHTS[s].size for s in S_VALUES[:-1]]).tolist())
)


def max_j(s: int, b: int) -> int:
  """The largest ``j`` a code of ``b`` bits may stand for with ``s`` codes per octave."""
  return min((1 << b) - 2, (MAX_SHIFT + 1) * s - 1)


def contexts(x: np.ndarray, alphabet: int, order: int, pad: int) -> np.ndarray:
  """History context ids ``(L, C)`` of the matrix ``x`` for an order-m model: the id of
  ``(x[r-1], ..., x[r-m])`` is ``sum_j x[r-j] * A**(j-1)``, ``pad`` above the first row."""
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
  ctx = contexts(x, alphabet, order, pad)
  joint = ctx.reshape(-1) * alphabet + x.reshape(-1)
  return np.bincount(joint, minlength=alphabet**order * alphabet).reshape(-1, alphabet)


def floored(w: np.ndarray) -> np.ndarray:
  """Integer weights (last axis: the symbols) with every nonzero one raised to at least
  the sum of its row ``>> FLOOR_SHIFT``: the one rule both sides apply, so encoder and
  decoder build bit-identical tables."""
  floor = w.sum(axis=-1, keepdims=True) >> FLOOR_SHIFT
  return np.where(w > 0, np.maximum(w, floor), 0)


def cond_bits(counts: np.ndarray) -> float:
  """Exact code length (bits) of a ``(contexts, A)`` count table under each context's own
  frequencies: the empirical conditional entropy, a lower bound of any table's cost."""
  occ = counts > 0
  tot = np.broadcast_to(counts.sum(axis=1, keepdims=True), counts.shape)
  return float((counts[occ] * np.log2(tot[occ] / counts[occ])).sum())


def int_weights(codes: np.ndarray, s: int) -> np.ndarray:
  """Exact int64 weights of a (P, A) code table (codes validated ``<= max_j + 1``)."""
  return floored(CODE_WEIGHTS[s][codes])


def presence_bitmap(present: np.ndarray, count: int) -> bytes:
  """The bitmap (LSB first) of ``count`` ids with the ids ``present`` set."""
  mask = np.zeros(count, np.uint8)
  mask[present] = 1
  return np.packbits(mask, bitorder="little").tobytes()


def read_codes(reader: Reader, rows: int, alphabet: int, s: int, b: int) -> np.ndarray:
  """Reads a ``(rows, A)`` table of ``b``-bit log-codes and checks their range."""
  count = rows * alphabet
  codes = unpack_bits(reader.take((count * b + 7) // 8, "context tables"), count, b)
  codes = codes.reshape(rows, alphabet)
  if codes.size and codes.max() > max_j(s, b) + 1:
    reader.fail(f"probability code {int(codes.max())} out of range")
  return codes


def words_to_bytes(words: np.ndarray) -> bytes:
  """Range coder words as a payload: u32 little-endian, trailing zero bytes dropped."""
  return np.asarray(words, np.uint32).astype("<u4").tobytes().rstrip(b"\x00")


def bytes_to_words(data) -> np.ndarray:
  """Inverse of :func:`words_to_bytes` (zero bytes restored up to a whole word)."""
  data = bytes(data)
  pad = (-len(data)) % 4
  return np.frombuffer(data + b"\x00" * pad, "<u4").astype(np.uint32)


def range_decoded(reader: Reader, alphabet: int, run) -> np.ndarray:
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
