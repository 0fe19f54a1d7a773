"""The context models of the version-3 coder: geometry, model sections, coding, decoding.

A quantized leaf's compact symbols are coded as a matrix of ``L`` rows and ``C`` columns
(its layout), with one of three model kinds: ``static`` tables per context (order 0..3,
optionally with the entry's phase inside the training tuples), ``unit`` tables per output
unit, or ``polya`` adaptive counts on a static prior. This module holds what both sides
share: the geometry (layouts, walked segments, phases), the model section, the exact
weights, and the coding of symbols with a given model; :mod:`hemp_jax.codec.model_selection`
chooses the model. Every rule that fixes the bytes is defined in ``FORMAT.md`` ("Coder of
version 3"); the decoder accepts exactly the models :func:`allowed` lists and bounds its
work and memory by the leaf's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hemp_jax.codec import kernel
from hemp_jax.codec.kernel import MAX_CONTEXT_ALPHABET, MAX_CONTEXTS, MAX_ORDER, S_VALUES
from hemp_jax.codec.wire import FormatError, Reader, pack_bits, varint_size, write_varint

__all__ = [
  "STATIC",
  "UNIT",
  "POLYA",
  "KIND_NAMES",
  "BETAS",
  "PRIOR_BITS",
  "MAX_PERIOD",
  "SEGMENT_FREE_ROWS",
  "SEGMENT_SYMBOLS",
  "SEGMENT_NARROW",
  "SEGMENT_MIN_ROWS",
  "MAX_POLYA_CELLS",
  "MAX_UNIT_CELLS",
  "CHUNK",
  "Coded",
  "Model",
  "layouts",
  "matrix",
  "unmatrix",
  "segment_rows",
  "walked",
  "unwalk",
  "valid_mask",
  "allowed",
  "places",
  "phase_base",
  "phases",
  "context_ids",
  "prior",
  "polya_blocks",
  "block_table",
  "refresh",
  "table_bytes",
  "write_model",
  "parse_model",
  "encode_model",
  "decode",
]

STATIC, UNIT, POLYA = 0, 1, 2
KIND_NAMES = {STATIC: "static", UNIT: "unit", POLYA: "polya"}
BETAS = (2, 4, 8, 16, 32, 64, 128, 1024)  # polya prior strengths, by beta index
PRIOR_BITS = 12
MAX_PERIOD = 8  # tuple phase contexts: periods 2..MAX_PERIOD
SEGMENT_FREE_ROWS = 1024  # walked rows allowed whatever the width, if the leaf is wide
SEGMENT_SYMBOLS = 2048  # beyond that, at least this many symbols per walked row
SEGMENT_NARROW = 16  # below it, at least this many per walked row (narrow leaves) ...
SEGMENT_MIN_ROWS = 64  # ... unless the leaf has at most this many rows
MAX_POLYA_CELLS = 1 << 20  # adaptive counts: present contexts x walked columns x A
MAX_UNIT_CELLS = 1 << 22  # unit tables: C x A codes
CHUNK = 1 << 20  # gathered probabilities per encode/decode call (floats)


@dataclass(frozen=True)
class Coded:
  """One coded leaf: model section + payload, and what the encoder chose."""

  kind: int
  order: int
  layout: int
  model: bytes
  payload: bytes
  estimated_bits: float
  period: int = 1


@dataclass(frozen=True)
class Model:
  """A parsed model section."""

  kind: int
  order: int
  layout: int
  beta: int
  pad: int
  s: int
  bits: int
  present: np.ndarray  # context ids with a table (static/polya), increasing
  codes: np.ndarray  # (P, A) or (C, A) log-codes
  model_bytes: int
  period: int = 1


# ------------------------------------------------------------------------- geometry


def layouts(shape: Sequence[int]) -> list[tuple[int, int]]:
  """``(L, C)`` of each layout the coder may use for ``shape`` (index = layout id)."""
  shape = tuple(int(d) for d in shape)
  n = math.prod(shape)
  dims = [d for d in shape if d != 1]
  if len(dims) < 2 or n == 0:
    return [(n, 1)]
  return [(n // dims[-1], dims[-1]), (n // dims[0], dims[0])]


def matrix(flat: np.ndarray, rows: int, cols: int, layout: int) -> np.ndarray:
  """The ``(rows, cols)`` matrix of a leaf's flat symbols in ``layout``."""
  if layout == 0:
    return flat.reshape(rows, cols)
  return flat.reshape(cols, rows).T


def unmatrix(x: np.ndarray, layout: int) -> np.ndarray:
  """Inverse of :func:`matrix`: the flat symbols."""
  return (x if layout == 0 else x.T).reshape(-1)


def segment_rows(rows: int, cols: int) -> tuple[int, int]:
  """``(T, S)``: rows walked and segments per column for a sequential model.

  ``T = min(rows, max(SEGMENT_MIN_ROWS, min(SEGMENT_FREE_ROWS, n // SEGMENT_NARROW),
  ceil(n / SEGMENT_SYMBOLS)))`` with ``n = rows * cols``, so that the rows walked are
  bounded by the leaf's size whatever its shape.
  """
  n = rows * cols
  t = max(SEGMENT_MIN_ROWS, min(SEGMENT_FREE_ROWS, n // SEGMENT_NARROW), -(-n // SEGMENT_SYMBOLS))
  t = min(t, rows)
  if t <= 0:
    return rows, 1
  return t, -(-rows // t)


def walked(x: np.ndarray) -> tuple[np.ndarray, int, int]:
  """The walked matrix ``(T, S*C)`` of ``x`` (padded with 0 beyond the last row)."""
  rows, cols = x.shape
  t, s = segment_rows(rows, cols)
  if s == 1:
    return np.ascontiguousarray(x), t, s
  y = np.zeros((s * t, cols), x.dtype)
  y[:rows] = x
  return y.reshape(s, t, cols).transpose(1, 0, 2).reshape(t, s * cols), t, s


def unwalk(y: np.ndarray, rows: int, cols: int, s: int) -> np.ndarray:
  """Inverse of :func:`walked`: the ``(rows, cols)`` matrix of a walked matrix ``y``."""
  if s == 1:
    return y
  t = y.shape[0]
  return y.reshape(t, s, cols).transpose(1, 0, 2).reshape(s * t, cols)[:rows]


def _valid_width(t: int, rows: int, cols: int, seg_t: int, s: int) -> int:
  """Columns of walked row ``t`` that hold real entries (a prefix)."""
  return s * cols if (s - 1) * seg_t + t < rows else (s - 1) * cols


def valid_mask(rows: int, cols: int, seg_t: int, s: int) -> np.ndarray:
  """Which entries of the walked matrix ``(T, S*C)`` hold real entries."""
  mask = np.ones((seg_t, s * cols), bool)
  if s > 1:
    last = rows - (s - 1) * seg_t  # rows of the last segment
    mask[last:, (s - 1) * cols :] = False
  return mask


def allowed(shape: Sequence[int], a: int, period: int = 1) -> dict:
  """What the decoder accepts for a leaf: ``{layout: [(kind, order), ...]}``; with a
  tuple ``period`` > 1 only context models (order >= 1) whose ``period * A**m`` contexts
  fit."""
  out = {}
  for lay, (rows, cols) in enumerate(layouts(shape)):
    ok = []
    if period == 1:
      ok.append((STATIC, 0))
      if cols > 1 and cols * a <= MAX_UNIT_CELLS:
        ok.append((UNIT, 0))
    seg_t, s = segment_rows(rows, cols)
    if period == 1 and s * cols * a <= MAX_POLYA_CELLS:
      ok.append((POLYA, 0))
    if a <= MAX_CONTEXT_ALPHABET and seg_t >= 2 and 1 <= period <= MAX_PERIOD:
      for m in range(1, MAX_ORDER + 1):
        if period * a**m > MAX_CONTEXTS:
          break
        ok.append((STATIC, m))
        if period * a**m * s * cols * a <= MAX_POLYA_CELLS:
          ok.append((POLYA, m))
    out[lay] = ok
  return out


def places(rows: int, cols: int, stride: int | None = None) -> np.ndarray:
  """Place in the column-major reading of ``X`` (see :func:`phase_base`) of the first
  walked row's entries, ``(S*C,)``: walked entry ``(t, u)`` is at ``places[u] + t``.
  ``stride``: the rows of the whole matrix when ``(rows, cols)`` are its leading rows."""
  seg_t, s = segment_rows(rows, cols)
  stride = rows if stride is None else stride
  return (np.arange(cols)[None, :] * stride + np.arange(s)[:, None] * seg_t).reshape(-1)


def phase_base(rows: int, cols: int, period: int, stride: int | None = None) -> np.ndarray:
  """Tuple phase of the first walked row, ``(S*C,)``: the phase of walked entry ``(t, u)``
  is ``(base[u] + t) mod period``.

  The phase of entry ``(r, c)`` of a ``(rows, cols)`` matrix is ``(c * rows + r) mod
  period``: ``c * rows + r`` is its place in the column-major reading of ``X``, which for
  layout 0 is the estimator's scan stream (:func:`hemp_jax.groups.scan_stream`), so with
  ``period`` = the training order it is the place inside the estimator's disjoint tuples
  (up to a relabelling of the phases when the stream does not start at the leaf).
  ``stride``: as for :func:`places`.
  """
  return places(rows, cols, stride) % period


def phases(rows: int, cols: int, period: int, stride: int | None = None) -> np.ndarray:
  """Tuple phase (uint8) of every entry of the walked matrix ``(T, S*C)`` (see
  :func:`phase_base`); no division per entry."""
  seg_t, _ = segment_rows(rows, cols)
  base = phase_base(rows, cols, period, stride).astype(np.uint8)
  out = base[None, :] + (np.arange(seg_t) % period).astype(np.uint8)[:, None]
  out -= np.uint8(period) * (out >= period)
  return out


def context_ids(y: np.ndarray, shape, a: int, m: int, pad: int, period: int, stride=None):
  """Context ids ``phase * A**m + history`` of ``y``, the walked matrix of a matrix of
  ``shape`` ``(rows, cols)`` (phases: :func:`phase_base`)."""
  ctx = kernel.contexts(y, a, m, pad)
  if period > 1:
    ctx += phases(*shape, period, stride).astype(np.int64) * a**m
  return ctx


# ------------------------------------------------------------------- polya weights


def prior(codes: np.ndarray, s: int, beta: int) -> np.ndarray:
  """int64 prior pseudo-counts (scaled by 2**PRIOR_BITS) of a (P, A) code table."""
  w = kernel.int_weights(codes, s)
  tot = w.sum(axis=1, keepdims=True)
  scaled = (w * (beta << PRIOR_BITS)) // np.maximum(tot, 1)
  return np.where(w > 0, np.maximum(scaled, 1), 0)


def polya_blocks(rows: int) -> np.ndarray:
  """Row boundaries of the blocks between which polya counts are refreshed: 0, 1, 2, ...
  growing by half each time (about ``3 + log(rows) / log(1.5)`` blocks)."""
  out = [0]
  t = 1
  while t < rows:
    out.append(t)
    t = max(t + 1, (t * 3) // 2)
  out.append(rows)
  return np.asarray(out, np.int64)


def block_table(counts: np.ndarray, prior: np.ndarray) -> np.ndarray:
  """float32 weights (P, U, A) from counts (P, U, A) and the prior (P, A), exactly
  reproducible: ``counts * 2**PRIOR_BITS + prior``, floored (:func:`kernel.floored`)."""
  return kernel.floored((counts << PRIOR_BITS) + prior[:, None, :]).astype(np.float32)


def refresh(table, counts, prior, pidx, cidx) -> None:
  """Recomputes the polya weights of the (context, unit) cells ``(pidx, cidx)``."""
  w = (counts[pidx, cidx] << PRIOR_BITS) + prior[pidx]
  table[pidx, cidx] = kernel.floored(w).astype(np.float32)


# -------------------------------------------------------------------- model section


def table_bytes(
  kind: int, order: int, a: int, pad: int, rows_in_table: int, b: int, period: int = 1
) -> int:
  """Size of a model section whose tables have ``rows_in_table`` rows of ``b``-bit codes."""
  size = 2 + (rows_in_table * a * b + 7) // 8 + (period > 1)
  if order:
    size += varint_size(pad) + (period * a**order + 7) // 8
  return size


def write_model(
  kind, order, layout, beta_index, pad, s_index, b, a, present, codes, period=1
) -> bytes:
  """The model section of a model (its tables: ``codes``)."""
  head2 = s_index | (b - 1) << 3 | int(period > 1) << 6
  out = bytearray([kind | (order << 2) | (layout << 4) | (beta_index << 5), head2])
  if period > 1:
    out.append(period)
  if order:
    write_varint(out, pad)
    out += kernel.presence_bitmap(present, period * a**order)
  out += pack_bits(codes.reshape(-1), b)
  return bytes(out)


def parse_model(reader: Reader, shape: Sequence[int], alphabet: int) -> Model:
  """Reads and validates a version-3 model section (leaves ``reader`` at the payload)."""
  start = reader.pos
  head = reader.u8("coder model header")
  kind, m, lay, bi = head & 3, (head >> 2) & 3, (head >> 4) & 1, head >> 5
  head2 = reader.u8("coder table header")
  si, b = head2 & 7, ((head2 >> 3) & 7) + 1
  if head2 >> 7:
    reader.fail(f"coder table header {head2:#04x} has unknown bits")
  period = 1
  if head2 >> 6:
    period = reader.u8("tuple period")
    if not 2 <= period <= MAX_PERIOD:
      reader.fail(f"tuple period {period} is not in 2..{MAX_PERIOD}")
  a = int(alphabet)
  allow = allowed(shape, a, period)
  if lay not in allow or (kind, m) not in allow[lay]:
    reader.fail(
      f"model {KIND_NAMES.get(kind, kind)} order {m} layout {lay}"
      + (f" period {period}" if period > 1 else "")
      + f" is not allowed for shape {tuple(shape)} with {a} symbols"
    )
  if kind != POLYA and bi:
    reader.fail("prior strength given for a model without a prior")
  s = S_VALUES[si]
  pad = 0
  if m:
    pad = reader.varint("pad symbol", max_value=a - 1)
    nctx = period * a**m
    mask = np.unpackbits(
      np.frombuffer(bytes(reader.take((nctx + 7) // 8, "context bitmap")), np.uint8),
      bitorder="little",
    )
    if mask[nctx:].any():
      reader.fail("context bitmap has bits beyond the contexts")
    present = np.flatnonzero(mask[:nctx])
    if present.size == 0:
      reader.fail("context model without any context")
  else:
    present = np.zeros(1, np.int64)
  rows_in_table = layouts(shape)[lay][1] if kind == UNIT else present.size
  codes = kernel.read_codes(reader, rows_in_table, a, s, b)
  if not np.all(codes.max(axis=1) > 0):
    reader.fail("a table has no symbol with nonzero probability")
  return Model(kind, m, lay, BETAS[bi], pad, s, b, present, codes, reader.pos - start, period)


# -------------------------------------------------------------------------- encoder


def encode_model(x: np.ndarray, a: int, layout: int, choice) -> tuple[bytes, bytes]:
  """``(model section, payload)`` of the matrix ``x`` of ``layout`` coded with the model
  ``choice`` (a :class:`hemp_jax.codec.model_selection.Candidate`: kind, order,
  beta_index, pad, s_index, bits, present (None: order 0, one table), codes, period)."""
  kind, m, beta_index, pad = choice.kind, choice.order, choice.beta_index, choice.pad
  s_index, b, present, codes, period = (
    choice.s_index,
    choice.bits,
    choice.present,
    choice.codes,
    choice.period,
  )
  rows, cols = x.shape
  if present is None:
    present = np.zeros(1, np.int64)
  s = S_VALUES[s_index]
  model = write_model(kind, m, layout, beta_index, pad, s_index, b, a, present, codes, period)
  weights = kernel.int_weights(codes, s)
  det = (weights > 0).sum(axis=1) == 1
  enc = kernel.RangeEncoder()
  if kind == STATIC and m == 0:
    if not det[0]:
      enc.encode(
        np.ascontiguousarray(x).reshape(-1),
        kernel.Categorical(weights[0].astype(np.float32), perfect=False),
      )
  elif kind == UNIT:
    _encode_gathered(enc, np.ascontiguousarray(x), weights.astype(np.float32), det, None)
  else:
    y, seg_t, s_ = walked(x)
    valid = valid_mask(rows, cols, seg_t, s_)
    ctx = context_ids(y, (rows, cols), a, m, pad, period)
    if kind == STATIC:
      table = np.zeros((period * a**m, a), np.float32)
      table[present] = weights
      dets = np.zeros(period * a**m, bool)
      dets[present] = det
      _encode_gathered(enc, y, table, dets, ctx, valid)
    elif m:
      _encode_polya_rows(enc, y, valid, a, ctx, present, prior(codes, s, BETAS[beta_index]))
    else:
      _encode_polya_blocks(enc, y, valid, a, present, prior(codes, s, BETAS[beta_index]))
  return model, kernel.words_to_bytes(enc.get_compressed())


def _encode_gathered(enc, y, table, det, ctx, valid=None) -> None:
  """Codes ``y`` row-major with probabilities ``table[ctx]`` (``ctx`` None: the column),
  skipping entries of deterministic contexts and invalid entries."""
  rows, cols = y.shape
  family = kernel.Categorical(perfect=False)
  step = max(1, CHUNK // max(1, cols * table.shape[1]))
  for r0 in range(0, rows, step):
    yy = y[r0 : r0 + step]
    c = ctx[r0 : r0 + step] if ctx is not None else np.broadcast_to(np.arange(cols), yy.shape)
    keep = ~det[c]
    if valid is not None:
      keep &= valid[r0 : r0 + step]
    if keep.any():
      enc.encode(yy[keep].astype(np.int32), family, np.take(table, c[keep], axis=0))


def _encode_polya_rows(enc, y, valid, a, ctx, present, prior) -> None:
  """Codes the walked matrix ``y`` with the polya model of order >= 1 (``ctx``: its
  context ids): the counts change after every row."""
  rows, units = y.shape
  pos = np.zeros(int(present.max()) + 1, np.int64)
  pos[present] = np.arange(present.size)
  p = pos[ctx]
  det = (prior > 0).sum(axis=1) == 1
  counts = np.zeros((present.size, units, a), np.int64)
  cols = np.broadcast_to(np.arange(units), y.shape)
  family = kernel.Categorical(perfect=False)
  table = block_table(counts, prior)
  buf_s, buf_p, held = [], [], 0
  for t in range(rows):
    v = valid[t]
    pt, ct, yt = p[t][v], cols[t][v], y[t][v]
    keep = ~det[pt]
    if keep.any():
      buf_s.append(yt[keep].astype(np.int32))
      buf_p.append(table[pt[keep], ct[keep]])
      held += buf_p[-1].size
    counts[pt, ct, yt] += 1
    refresh(table, counts, prior, pt, ct)
    if buf_s and (held >= CHUNK or t == rows - 1):
      enc.encode(np.concatenate(buf_s), family, np.concatenate(buf_p))
      buf_s, buf_p, held = [], [], 0


def _encode_polya_blocks(enc, y, valid, a, present, prior) -> None:
  """Codes the walked matrix ``y`` with the polya model of order 0: the counts change
  between the blocks of :func:`polya_blocks`."""
  rows, units = y.shape
  p = np.zeros(y.shape, np.int64)
  det = (prior > 0).sum(axis=1) == 1
  counts = np.zeros((present.size, units, a), np.int64)
  cols = np.broadcast_to(np.arange(units), y.shape)
  family = kernel.Categorical(perfect=False)
  bounds = polya_blocks(rows)
  for r0, r1 in zip(bounds[:-1], bounds[1:]):
    table = block_table(counts, prior)
    pb, yb, cb, vb = p[r0:r1], y[r0:r1], cols[r0:r1], valid[r0:r1]
    keep = vb & ~det[pb]
    step = max(1, CHUNK // max(1, units * a))
    for s0 in range(0, r1 - r0, step):
      k = keep[s0 : s0 + step]
      if k.any():
        probs = table[0].take(cb[s0 : s0 + step][k], axis=0)
        enc.encode(yb[s0 : s0 + step][k].astype(np.int32), family, probs)
    cell = (pb[vb] * units + cb[vb]) * a + yb[vb]
    counts += np.bincount(cell, minlength=counts.size).reshape(counts.shape)


# -------------------------------------------------------------------------- decoder


def decode(reader: Reader, shape: Sequence[int], alphabet: int) -> np.ndarray:
  """Decodes a version-3 coder section (model + payload, to ``reader.end``): int32 symbols."""
  shape = tuple(int(d) for d in shape)
  info = parse_model(reader, shape, alphabet)
  payload = reader.take(reader.remaining, "payload")
  a = int(alphabet)
  rows, cols = layouts(shape)[info.layout]
  weights = kernel.int_weights(info.codes, info.s)
  det = (weights > 0).sum(axis=1) == 1
  detsym = np.argmax(weights > 0, axis=1).astype(np.int32)

  def run():
    dec = kernel.RangeDecoder(kernel.bytes_to_words(payload))
    if info.kind == STATIC and info.order == 0:
      if det[0]:
        return np.full((rows, cols), detsym[0], np.int32)
      model = kernel.Categorical(weights[0].astype(np.float32), perfect=False)
      return np.asarray(dec.decode(model, rows * cols), np.int32).reshape(rows, cols)
    if info.kind == UNIT:
      return _decode_units(dec, rows, cols, weights.astype(np.float32), det, detsym)
    seg_t, s = segment_rows(rows, cols)
    if info.order == 0:  # polya of order 0
      y = _decode_polya_blocks(dec, info, rows, cols, a, detsym)
    else:
      y = _decode_rows(dec, info, rows, cols, a, weights, det, detsym)
    return unwalk(y, rows, cols, s)

  return unmatrix(kernel.range_decoded(reader, a, run), info.layout).reshape(shape)


def _decode_units(dec, rows, cols, table, det, detsym) -> np.ndarray:
  x = np.empty((rows, cols), np.int32)
  x[:] = detsym
  live = np.flatnonzero(~det)
  if live.size == 0:
    return x
  family = kernel.Categorical(perfect=False)
  step = max(1, CHUNK // max(1, live.size * table.shape[1]))
  probs_row = table[live]
  for r0 in range(0, rows, step):
    r1 = min(rows, r0 + step)
    probs = np.broadcast_to(probs_row, (r1 - r0,) + probs_row.shape).reshape(-1, table.shape[1])
    got = np.asarray(dec.decode(family, np.ascontiguousarray(probs)), np.int32)
    x[r0:r1, live] = got.reshape(r1 - r0, live.size)
  return x


def _decode_polya_blocks(dec, info: Model, rows, cols, a, detsym) -> np.ndarray:
  """The walked matrix of a polya model of order 0: one call per block (in chunks)."""
  seg_t, s = segment_rows(rows, cols)
  units = s * cols
  y = np.zeros((seg_t, units), np.int32)
  family = kernel.Categorical(perfect=False)
  cols_idx = np.arange(units)
  prior_w = prior(info.codes, info.s, info.beta)
  det = (prior_w > 0).sum(axis=1) == 1
  counts = np.zeros((info.present.size, units, a), np.int64)
  bounds = polya_blocks(seg_t)
  for r0, r1 in zip(bounds[:-1], bounds[1:]):
    table = block_table(counts, prior_w)
    live = np.flatnonzero(~det)
    valid = valid_mask(rows, cols, seg_t, s)[r0:r1]
    block = np.full((r1 - r0, units), detsym[0], np.int32)
    if live.size:
      step = max(1, CHUNK // max(1, units * a))
      for s0 in range(r0, r1, step):
        s1 = min(r1, s0 + step)
        v = valid[s0 - r0 : s1 - r0]
        probs = np.broadcast_to(table[0], (s1 - s0, units, a))[v]
        block[s0 - r0 : s1 - r0][v] = np.asarray(dec.decode(family, probs), np.int32)
    y[r0:r1] = block
    cell = np.broadcast_to(cols_idx, valid.shape)[valid] * a + y[r0:r1][valid]
    counts += np.bincount(cell, minlength=counts.size).reshape(counts.shape)
  return y


def _decode_rows(dec, info: Model, rows, cols, a, weights, det, detsym) -> np.ndarray:
  """The walked matrix of a sequential model (static or polya of order >= 1), row by
  row, every column of a row in one call."""
  m = info.order
  seg_t, s = segment_rows(rows, cols)
  units = s * cols
  hist = a**m  # history contexts; the context id is phase * hist + history
  period = info.period
  pos = np.full(period * hist, -1, np.int64)  # -1: a context without a table
  pos[info.present] = np.arange(info.present.size)
  y = np.zeros((seg_t, units), np.int32)
  ctx = np.full(units, sum(info.pad * a**j for j in range(m)), np.int64)
  offsets = None  # phase * hist of walked row t: offsets[t % period]
  if period > 1:
    base = phase_base(rows, cols, period)
    # int16 (ids < MAX_CONTEXTS): at most 2 bytes x period x units, <= 2x the output
    offsets = ((base[None, :] + np.arange(period)[:, None]) % period * hist).astype(np.int16)
  family = kernel.Categorical(perfect=False)
  cols_idx = np.arange(units)
  polya = info.kind == POLYA
  if polya:
    prior_w = prior(info.codes, info.s, info.beta)
    det = (prior_w > 0).sum(axis=1) == 1
    counts = np.zeros((info.present.size, units, a), np.int64)
    table = block_table(counts, prior_w)
  else:
    table = weights.astype(np.float32)
  for t in range(seg_t):
    w = _valid_width(t, rows, cols, seg_t, s)
    c = ctx[:w]
    p = pos[c if offsets is None else offsets[t % period, :w] + c]
    if p.min(initial=0) < 0:
      raise FormatError("context without a table")
    d = det[p]
    row = detsym[p]
    if not d.all():
      live = ~d
      probs = table[p[live], cols_idx[:w][live]] if polya else table[p[live]]
      row[live] = np.asarray(dec.decode(family, probs), np.int32)
    y[t, :w] = row
    ctx[:w] = (c * a + row) % hist
    if polya:  # sequential: counts change after every row
      counts[p, cols_idx[:w], row] += 1
      refresh(table, counts, prior_w, p, cols_idx[:w])
  return y
