"""Probability models of the ``.hemp`` coder, format version 3.

A quantized leaf's compact symbols (ints in ``[0, A)``) are coded as a matrix ``X`` of
``L`` rows and ``C`` columns: column ``c`` is output unit ``c`` (its fan-in read in scan
order), so the row above an entry is its predecessor in the estimator's scan stream.

Layouts (:func:`layouts`). Size-1 axes are dropped first (an ``(out, in, 1, 1)`` kernel is
an ``(out, in)`` matrix, a ``(1, 1, in, out)`` one an ``(in, out)`` matrix). Layout 0
takes the last remaining axis as the output units (Flax ``(..., in, out)``):
``X = flat.reshape(L, C)``; layout 1 the first (PyTorch ``(out, in, ...)``):
``X = flat.reshape(C, L).T`` (on a Flax kernel this puts the previous *output unit* of
the same input above each entry). Leaves with fewer than two axes of size > 1 are one
column (layout 0 only). The encoder scores both layouts (layout 1 on leaves of more than
:data:`LAYOUT_FREE_SYMBOLS` only where the first axis is longer than the last, i.e. may
be the output units) and stores the one it used.

Model kinds, chosen per tensor by the smallest estimated size, tables counted:

* ``static`` (order ``m`` = 0..3): one table per context, the context being the ``m``
  entries above in the same column (the *pad* symbol above the first rows). Order 0 is
  one table for the whole leaf.
* ``unit`` (order 0): one table per output unit (per column of ``X``).
* ``polya`` (order ``m`` = 0..3): a static table of order ``m`` is the prior of
  adaptive counts kept per (output unit, context): a symbol of a unit in a context is
  coded with the weights ``n_a * 2**PRIOR_BITS + prior_a``, ``n_a`` the times symbol
  ``a`` occurred before in that unit and context -- in the rows above (order >= 1: the
  counts change after every walked row, a Polya urn whose code length the encoder
  computes in closed form) or in the blocks above (order 0: the walked rows are cut into
  blocks, :func:`polya_blocks`: 0, 1, 2, 3, 4, 6, 9, ... growing by half, the counts
  change between blocks and a block is decoded in one call) -- and ``prior_a = max(1, w_a * beta * 2**PRIOR_BITS // sum(w))`` for
  ``w_a > 0`` (else 0), ``w`` the table's integer weights and ``beta`` (the prior's
  strength, in symbols) one of :data:`BETAS`; the weights are exact integers on both
  sides. Scored for leaves of at most :data:`MAX_POLYA_SYMBOLS` symbols, on top of the
  best static model (its layout, order and table), or of every static model scored for
  leaves of at most :data:`LAYOUT_FREE_SYMBOLS`.

Tuple phase (static and polya, order >= 1): the context may also hold the *phase* of the
entry, ``(c * L + r) mod period`` for entry ``(r, c)``, ``period`` in 2..:data:`MAX_PERIOD`:
``c * L + r`` is the entry's place in the column-major reading of ``X``, i.e. (layout 0)
in the estimator's scan stream, so with ``period`` = the training order the phase is the
place inside HEMP's disjoint tuples (:func:`_phase_base`). Training on disjoint n-tuples
makes the weights of a tuple depend on each other much more than on the tuple before: the
LeNet-5 main job (order 3) codes its ``fc1`` kernel in 7.2 kB with phases against 9.3 kB
without. The context id is ``phase * A**m + history``. The encoder picks the period of
the order-1 model with the least conditional entropy plus smallest tables on up to
:data:`PERIOD_SAMPLE` symbols of rows spread over the matrix (no phase when none beats it,
no search on weights whose previous symbol tells almost nothing; :func:`_best_period`) and
scores every order with that period beside the models without phase. A phase model must
save :data:`PHASE_MIN_BYTES` and :data:`PHASE_MIN_GAIN` when the best model without phase
decodes without walking the rows.

Tables are the log-codes of :mod:`hemp_jax.codec.coder` (``s`` codes per octave, ``b``
bits each, chosen per tensor). "Tables counted": a candidate's size is its estimated
payload plus every byte of its model section (these tables at the precision written).
A context (or unit) whose table has a single nonzero symbol is *deterministic*: its
symbols are not coded at all (zero bits, no coder call). Leaves of more than
:data:`EST_SYMBOLS` symbols are scored on a block of leading rows (scaled to the leaf);
the tables of the chosen model are then computed from the whole leaf.

Sequential models (static order >= 1, polya) are decoded row by row, every column of a
row in one ``constriction`` call (polya of order 0: one call per block). A tall matrix
is cut into ``S`` row segments of ``T`` rows laid side by side (:func:`segment_rows`), so
that the number of rows walked is bounded by the leaf's size (see :func:`segment_rows`):
the per-row cost (~10 us) never dominates, whatever the shape. Each segment starts from
the pad context (and its own polya counts). Static order 0 and unit models have no
sequential dependency: one call (in chunks) for the whole leaf. Symbols are coded in
row-major order of the walked matrix (``X`` itself for static order 0 and unit models),
skipping deterministic ones.

Model section byte layout::

    u8      kind (bits 0-1: 0 static, 1 unit, 2 polya) | order << 2 | layout << 4
            | beta index << 5
    u8      s index (bits 0-2) | (b - 1) << 3 | phase << 6 (bit 7: 0)
    u8      period, 2..MAX_PERIOD                          (phase only)
    varint  pad symbol                                     (order >= 1)
    bytes   presence bitmap of the period * A**m contexts (LSB first; period 1
            without phase)                                 (order >= 1)
    bytes   codes, b bits each, LSB first: P x A (static/polya: the P present contexts
            in id order; order 0: P = 1) or C x A (unit)
    bytes   payload: range coder words (u32 LE), trailing zero bytes dropped

Files written before tuple phases existed have the phase bit clear and decode unchanged.
The decoder accepts exactly the models the encoder may write (:func:`allowed`), and
bounds the work and memory of every one of them by the leaf's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.special import gammaln

from hemp_jax.codec import coder
from hemp_jax.codec._wire import FormatError, Reader, pack_bits, unpack_bits, write_varint

__all__ = [
  "STATIC",
  "UNIT",
  "POLYA",
  "KIND_NAMES",
  "BETAS",
  "Coded",
  "Model",
  "layouts",
  "segment_rows",
  "allowed",
  "encode",
  "decode",
  "parse_model",
]

STATIC, UNIT, POLYA = 0, 1, 2
KIND_NAMES = {STATIC: "static", UNIT: "unit", POLYA: "polya"}
BETAS = (2, 4, 8, 16, 32, 64, 128, 1024)
PRIOR_BITS = 12
MAX_PERIOD = 8  # tuple phase contexts: periods 2..MAX_PERIOD
PERIOD_SAMPLE = 1 << 13  # symbols on which the period is chosen
PERIOD_SKIP = 0.98  # no period search where H(x | previous) > PERIOD_SKIP * H(x)
PERIOD_MARGIN = 0.01  # a period replaces a shorter one if it saves this fraction more
PHASE_MIN_BYTES = 16  # a model with a tuple phase must save this many bytes ...
PHASE_MIN_GAIN = 0.01  # ... and this fraction over the best model without phase, when
# that model decodes without a walk (unit, or static of order 0)
SEGMENT_FREE_ROWS = 1024  # walked rows allowed whatever the width, if the leaf is wide
SEGMENT_SYMBOLS = 2048  # beyond that, at least this many symbols per walked row
SEGMENT_NARROW = 16  # below it, at least this many per walked row (narrow leaves) ...
SEGMENT_MIN_ROWS = 64  # ... unless the leaf has at most this many rows
MAX_POLYA_CELLS = 1 << 20  # adaptive counts: present contexts x walked columns x A
MAX_POLYA_SYMBOLS = 1 << 19  # the encoder only scores polya up to this size
MAX_POLYA_ESTIMATE = 1 << 22  # blocks x cells scored
MAX_UNIT_CELLS = 1 << 22  # unit tables: C x A codes
_CHUNK = 1 << 20  # gathered probabilities per encode/decode call (floats)
LAYOUT_FREE_SYMBOLS = 1 << 16  # smaller leaves: both layouts scored whatever the shape
EST_SYMBOLS = 1 << 18  # larger leaves: models are scored on a block of leading rows
ADAPTIVE_MIN_GAIN = 0.0  # polya must save this fraction of the best static model

_Categorical = coder._Categorical
_RangeEncoder = coder._RangeEncoder
_RangeDecoder = coder._RangeDecoder


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


def _matrix(flat: np.ndarray, rows: int, cols: int, layout: int) -> np.ndarray:
  if layout == 0:
    return flat.reshape(rows, cols)
  return flat.reshape(cols, rows).T


def _unmatrix(x: np.ndarray, layout: int) -> np.ndarray:
  return (x if layout == 0 else x.T).reshape(-1)


def segment_rows(rows: int, cols: int) -> tuple[int, int]:
  """``(T, S)``: rows walked and segments per column for a sequential model.

  ``T = min(rows, max(SEGMENT_MIN_ROWS, min(SEGMENT_FREE_ROWS, n // SEGMENT_NARROW),
  ceil(n / SEGMENT_SYMBOLS)))`` with ``n = rows * cols``: the walk costs at most ~10 us
  per 16 symbols on narrow leaves and per 2,048 on large ones, plus ~0.6 ms per leaf.
  """
  n = rows * cols
  t = max(SEGMENT_MIN_ROWS, min(SEGMENT_FREE_ROWS, n // SEGMENT_NARROW), -(-n // SEGMENT_SYMBOLS))
  t = min(t, rows)
  if t <= 0:
    return rows, 1
  return t, -(-rows // t)


def _walked(x: np.ndarray) -> tuple[np.ndarray, int, int]:
  """The walked matrix ``(T, S*C)`` of ``x`` (padded with 0 beyond the last row)."""
  rows, cols = x.shape
  t, s = segment_rows(rows, cols)
  if s == 1:
    return np.ascontiguousarray(x), t, s
  y = np.zeros((s * t, cols), x.dtype)
  y[:rows] = x
  return y.reshape(s, t, cols).transpose(1, 0, 2).reshape(t, s * cols), t, s


def _unwalk(y: np.ndarray, rows: int, cols: int, s: int) -> np.ndarray:
  if s == 1:
    return y
  t = y.shape[0]
  return y.reshape(t, s, cols).transpose(1, 0, 2).reshape(s * t, cols)[:rows]


def _valid_width(t: int, rows: int, cols: int, seg_t: int, s: int) -> int:
  """Columns of walked row ``t`` that hold real entries (a prefix)."""
  return s * cols if (s - 1) * seg_t + t < rows else (s - 1) * cols


def _valid_mask(rows: int, cols: int, seg_t: int, s: int) -> np.ndarray:
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
    if a <= coder.MAX_CONTEXT_ALPHABET and seg_t >= 2 and 1 <= period <= MAX_PERIOD:
      for m in range(1, coder.MAX_ORDER + 1):
        if period * a**m > coder.MAX_CONTEXTS:
          break
        ok.append((STATIC, m))
        if period * a**m * s * cols * a <= MAX_POLYA_CELLS:
          ok.append((POLYA, m))
    out[lay] = ok
  return out


def _places(rows: int, cols: int, stride: int | None = None) -> np.ndarray:
  """Place in the column-major reading of ``X`` (see :func:`_phase_base`) of the first
  walked row's entries, ``(S*C,)``: walked entry ``(t, u)`` is at ``places[u] + t``.
  ``stride``: the rows of the whole matrix when ``(rows, cols)`` are its leading rows."""
  seg_t, s = segment_rows(rows, cols)
  stride = rows if stride is None else stride
  return (np.arange(cols)[None, :] * stride + np.arange(s)[:, None] * seg_t).reshape(-1)


def _phase_base(rows: int, cols: int, period: int, stride: int | None = None) -> np.ndarray:
  """Tuple phase of the first walked row, ``(S*C,)``: the phase of walked entry ``(t, u)``
  is ``(base[u] + t) mod period``.

  The phase of entry ``(r, c)`` of a ``(rows, cols)`` matrix is ``(c * rows + r) mod
  period``: ``c * rows + r`` is its place in the column-major reading of ``X``, which for
  layout 0 is the estimator's scan stream (:func:`hemp_jax.groups.scan_stream`), so with
  ``period`` = the training order it is the place inside the estimator's disjoint tuples
  (up to a relabelling of the phases when the stream does not start at the leaf).
  ``stride``: as for :func:`_places`.
  """
  return _places(rows, cols, stride) % period


def _phases(rows: int, cols: int, period: int, stride: int | None = None) -> np.ndarray:
  """Tuple phase (uint8) of every entry of the walked matrix ``(T, S*C)`` (see
  :func:`_phase_base`); no division per entry."""
  seg_t, _ = segment_rows(rows, cols)
  base = _phase_base(rows, cols, period, stride).astype(np.uint8)
  out = base[None, :] + (np.arange(seg_t) % period).astype(np.uint8)[:, None]
  out -= np.uint8(period) * (out >= period)
  return out


# ------------------------------------------------------------------------- estimates


def _table_bytes(
  kind: int, order: int, a: int, pad: int, rows_in_table: int, b: int, period: int = 1
) -> int:
  size = 2 + (rows_in_table * a * b + 7) // 8 + (period > 1)
  if order:
    size += coder.varint_size(pad) + (period * a**order + 7) // 8
  return size


def _score_codes(n, occ, codes, s):
  """Bits of counts ``n`` (float, (P, A)) coded with the log-code table ``codes``."""
  w = coder._int_weights(codes, s).astype(np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    logq = np.log2(w) - np.log2(w.sum(axis=1, keepdims=True))
    return -float(np.where(occ, logq * n, 0.0).sum())


def _best_codes(counts: np.ndarray):
  """(bits, s index, b, codes) of the cheapest log-code table (table bits counted) for a
  (P, A) count table: like :func:`hemp_jax.codec.coder._best_codes`, searching fewer
  candidates: every ``s`` at the width that holds all its codes, then narrower widths
  for the best ``s`` only."""
  n = counts.astype(np.float64)
  occ = counts > 0
  nmax = n.max(axis=1, keepdims=True)
  with np.errstate(divide="ignore", invalid="ignore"):
    lr = np.where(occ, np.log2(nmax / np.where(occ, n, 1.0)), 0.0)
  cells = counts.size

  def cand(si, b=None):
    sv = coder.S_VALUES[si]
    j0 = np.rint(sv * lr).astype(np.int64)
    if b is None:
      need = min(int(j0[occ].max(initial=0)), (coder._MAX_SHIFT + 1) * sv - 1) + 1
      b = min(max(need.bit_length(), 1), coder.MAX_CODE_BITS)
    codes = np.where(occ, np.minimum(j0, coder._max_j(sv, b)) + 1, 0)
    bits = _score_codes(n, occ, codes, sv)
    return bits + b * cells, bits, si, b, codes

  best = min((cand(si) for si in range(len(coder.S_VALUES))), key=lambda c: c[0])
  for b in (best[3] - 1, best[3] - 2):
    if b >= 1:
      c = cand(best[2], b)
      if c[0] < best[0]:
        best = c
  return best[1:]


def _prior(codes: np.ndarray, s: int, beta: int) -> np.ndarray:
  """int64 prior pseudo-counts (scaled by 2**PRIOR_BITS) of a (P, A) code table."""
  w = coder._int_weights(codes, s)
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


def _block_table(counts: np.ndarray, prior: np.ndarray) -> np.ndarray:
  """float32 weights (P, U, A) from counts (P, U, A) and the prior (P, A), exactly
  reproducible: ``counts * 2**PRIOR_BITS + prior``, nonzero ones floored at sum >> 20."""
  return coder._floored((counts << PRIOR_BITS) + prior[:, None, :]).astype(np.float32)


def _polya_bits(y, valid, p, n_present, a, codes, s, order) -> tuple[float, int]:
  """Code length (bits, up to fixed-point rounding) of the polya model over BETAS: the
  smallest and its beta index. ``p``: present-context index of each entry."""
  rows, units = y.shape
  if order:
    return _polya_bits_sequential(y, valid, p, n_present, a, codes, s)
  bounds = polya_blocks(rows)
  nb = bounds.size - 1
  if nb * n_present * units * a > MAX_POLYA_ESTIMATE:
    return math.inf, 0
  block = np.repeat(np.arange(nb), np.diff(bounds))[:, None]
  cell = ((block * n_present + p) * units + np.arange(units)) * a + y
  counts = np.bincount(cell[valid], minlength=nb * n_present * units * a)
  counts = counts.reshape(nb, n_present * units, a).astype(np.float64)
  occupied = counts.sum(axis=2) > 0  # (block, cell) pairs that code something
  before = (np.cumsum(counts, axis=0) - counts)[occupied]
  counts = counts[occupied]
  pidx = np.nonzero(occupied)[1] // units

  def bits(beta):
    w = before * (1 << PRIOR_BITS) + _prior(codes, s, beta).astype(np.float64)[pidx]
    with np.errstate(divide="ignore", invalid="ignore"):
      logq = np.log2(w) - np.log2(w.sum(axis=1, keepdims=True))
      return -float(np.where(counts > 0, counts * logq, 0.0).sum())

  return _best_beta(bits)


def _polya_bits_sequential(y, valid, p, n_present, a, codes, s) -> tuple[float, int]:
  """Orders >= 1: counts change after every symbol of a (unit, context) cell, so the code
  length is the Polya urn's closed form (it does not depend on the order of the symbols)."""
  units = y.shape[1]
  cell = (p * units + np.arange(units)) * a + y
  counts = np.bincount(cell[valid], minlength=n_present * units * a).reshape(-1, a)
  occupied = counts.sum(axis=1) > 0
  c = counts[occupied].astype(np.float64)
  pidx = np.nonzero(occupied)[0] // units
  n = c.sum(axis=1)

  def bits(beta):
    alpha = _prior(codes, s, beta).astype(np.float64)[pidx] / (1 << PRIOR_BITS)
    live = alpha > 0
    al = np.where(live, alpha, 1.0)
    tot = alpha.sum(axis=1)
    nats = (gammaln(n + tot) - gammaln(tot)).sum()
    nats -= np.where(live, gammaln(c + al) - gammaln(al), 0.0).sum()
    return float(nats / math.log(2))

  return _best_beta(bits)


def _best_beta(bits) -> tuple[float, int]:
  """``(bits, index in BETAS)`` of the best prior strength, ``bits(beta)`` the code length
  with it: tried at BETAS[2] and BETAS[5], then at the neighbours of the better one."""
  scores = {bi: bits(BETAS[bi]) for bi in (2, 5)}
  first = min(scores, key=scores.get)
  for bi in (first - 1, first + 1):
    if 0 <= bi < len(BETAS) and bi not in scores:
      scores[bi] = bits(BETAS[bi])
  bi = min(scores, key=scores.get)
  return scores[bi], bi


def _refresh(table, counts, prior, pidx, cidx) -> None:
  """Recomputes the polya weights of the (context, unit) cells ``(pidx, cidx)``."""
  w = (counts[pidx, cidx] << PRIOR_BITS) + prior[pidx]
  table[pidx, cidx] = coder._floored(w).astype(np.float32)


# -------------------------------------------------------------------------- encoder


def _write_model(
  kind, order, layout, beta_index, pad, s_index, b, a, present, codes, period=1
) -> bytes:
  head2 = s_index | (b - 1) << 3 | int(period > 1) << 6
  out = bytearray([kind | (order << 2) | (layout << 4) | (beta_index << 5), head2])
  if period > 1:
    out.append(period)
  if order:
    write_varint(out, pad)
    mask = np.zeros(period * a**order, np.uint8)
    mask[present] = 1
    out += np.packbits(mask, bitorder="little").tobytes()
  out += pack_bits(codes.reshape(-1), b)
  return bytes(out)


def _candidates(
  x: np.ndarray,
  a: int,
  layout: int,
  max_order: int,
  allow: list,
  polya: bool,
  bound=math.inf,
  prune: bool = True,
  periods=None,
  stride: int | None = None,
):
  """Scored candidates ``(total_bits, kind, order, beta index, pad, s index, b, present,
  codes, period)`` of one layout's matrix ``x``; candidates that cannot beat ``bound`` bits
  may be left out. Context models are scored with the tuple ``periods`` given, or (None)
  without a phase and with the period that :func:`_best_period` finds, if any. ``stride``:
  the rows of the whole matrix when ``x`` is its leading rows (it sets the phases)."""
  rows, cols = x.shape
  out = []
  counts0 = np.bincount(x.reshape(-1), minlength=a)
  pad = int(np.argmax(counts0))
  seq_orders = [m for k, m in allow if k == STATIC and 1 <= m <= max_order]
  bits, si, b, codes = _best_codes(counts0[None])
  out.append(
    (bits + 8 * _table_bytes(STATIC, 0, a, 0, 1, b), STATIC, 0, 0, 0, si, b, None, codes, 1)
  )
  if seq_orders:
    y, seg_t, s = _walked(x)
    valid = _valid_mask(rows, cols, seg_t, s)
    ctx = coder._contexts(y, a, seq_orders[-1], pad)
    if periods is None:
      p = _best_period(y, ctx, valid, rows, cols, a, pad, stride)
      periods = [1] + [p] * (p > 1)
    whole = bool(valid.all())  # a boolean mask copy costs more than the counting
    yv, ctx = (y.reshape(-1), ctx.reshape(-1)) if whole else (y[valid], ctx[valid])
    best_total = min(out[0][0], bound)
    for period in periods:
      orders = [m for m in seq_orders if period * a**m <= coder.MAX_CONTEXTS]
      if not orders:
        continue
      top = orders[-1]
      full = ctx % a**top
      if period > 1:
        phases = _phases(rows, cols, period, stride)
        full = full + (phases.reshape(-1) if whole else phases[valid]).astype(np.int64) * a**top
      joint = np.bincount(full * a + yv, minlength=period * a ** (top + 1))
      all_counts = {top: joint.reshape(period, -1, a)}
      for m in range(top - 1, 0, -1):
        all_counts[m] = all_counts[m + 1].reshape(period, a, -1, a).sum(axis=1)
      for m in orders:
        counts = all_counts[m].reshape(-1, a)
        present = np.flatnonzero(counts.sum(axis=1))
        counts = counts[present]
        h = coder._cond_bits(counts)
        table = _table_bytes(STATIC, m, a, pad, present.size, 1, period)
        if prune and h + 8 * table >= best_total:
          continue
        bits, si, b, codes = _best_codes(counts)
        total = bits + 8 * _table_bytes(STATIC, m, a, pad, present.size, b, period)
        best_total = min(best_total, total)
        out.append((total, STATIC, m, 0, pad, si, b, present, codes, period))
  if (UNIT, 0) in allow and (not prune or cols * a < min(bound, min(c[0] for c in out))):
    per_unit = (
      np.bincount((x.astype(np.int64) * cols + np.arange(cols)).reshape(-1), minlength=a * cols)
      .reshape(a, cols)
      .T
    )
    h = coder._cond_bits(per_unit)
    if prune and h + cols * a >= min(bound, min(c[0] for c in out)):
      return out
    bits, si, b, codes = _best_codes(per_unit)
    table = _table_bytes(UNIT, 0, a, 0, cols, b)
    out.append((bits + 8 * table, UNIT, 0, 0, 0, si, b, None, codes, 1))
  return out


def _best_period(y, ctx, valid, rows, cols, a, pad, stride=None) -> int:
  """The tuple period (1..:data:`MAX_PERIOD`) whose phase, with the previous symbol, gives
  the order-1 model of least conditional entropy plus smallest possible tables (1 if
  none beats no phase), measured on walked rows spread evenly over the matrix that hold
  at most :data:`PERIOD_SAMPLE` symbols (leading rows can be all alike: the first inputs
  of an MNIST ``fc1`` are border pixels). ``y``: the walked matrix, ``ctx``: its context
  ids of some order >= 1 (the predecessor is ``ctx % A``), ``valid`` its mask.

  HEMP trains on disjoint n-tuples of the scan stream, so the weights of a tuple are
  coded together and the place inside the tuple (its phase) tells much: on the LeNet-5
  fixture trained at order 3, the order-1 model with phase takes 7.3 kB for ``fc1``
  against 12.5 kB without (and 9.4 kB for order 3 without). Tuples that shape the joint
  distribution of their weights make neighbours depend on each other, so the search is
  skipped where the previous symbol tells almost nothing (order-1 conditional entropy
  above :data:`PERIOD_SKIP` times the order-0 entropy: e.g. i.i.d. weights)."""
  t = max(2, PERIOD_SAMPLE // max(1, y.shape[1]))
  pick = np.unique(np.linspace(0, y.shape[0] - 1, min(t, y.shape[0])).round().astype(np.int64))
  keep = valid[pick]
  yv, prev = y[pick][keep], ctx[pick][keep] % a

  def bits(ctx, n_ctx):
    counts = np.bincount(ctx * a + yv, minlength=n_ctx * a).reshape(-1, a)
    return coder._cond_bits(counts), int((counts.sum(axis=1) > 0).sum())

  h1, present = bits(prev, a)
  if h1 > PERIOD_SKIP * bits(np.zeros_like(prev), 1)[0]:
    return 1
  best, best_p = h1 + 8 * _table_bytes(STATIC, 1, a, pad, present, 1), 1
  place = (_places(rows, cols, stride)[None, :] + pick[:, None])[keep]
  for period in range(2, MAX_PERIOD + 1):
    if period * a > coder.MAX_CONTEXTS:
      break
    h, present = bits((place % period) * a + prev, period * a)
    h += 8 * _table_bytes(STATIC, 1, a, pad, present, 1, period)
    if h < (1 - PERIOD_MARGIN) * best:  # a longer period must tell clearly more
      best, best_p = h, period
  return best_p


def _polya_candidate(x: np.ndarray, a: int, static_cand: tuple, stride: int | None = None):
  """The polya candidate on top of a static candidate of the same matrix, or None."""
  _, _, m, _, pad, si, b, present, codes, period = static_cand
  rows, cols = x.shape
  yy, seg_t, s = _walked(x)
  valid = _valid_mask(rows, cols, seg_t, s)
  if m == 0:
    present = np.zeros(1, np.int64)
    pc = np.zeros(yy.shape, np.int64)
  else:
    pos = np.full(period * a**m, -1, np.int64)
    pos[present] = np.arange(present.size)
    pc = pos[_context_ids(yy, x.shape, a, m, pad, period, stride)]
  bits, bi = _polya_bits(yy, valid, pc, present.size, a, codes, coder.S_VALUES[si], m)
  if not math.isfinite(bits):
    return None
  table = _table_bytes(POLYA, m, a, pad, present.size, b, period)
  return (bits + 8 * table, POLYA, m, bi, pad if m else 0, si, b, present, codes, period)


def _context_ids(y: np.ndarray, shape, a: int, m: int, pad: int, period: int, stride=None):
  """Context ids ``phase * A**m + history`` of ``y``, the walked matrix of a matrix of
  ``shape`` ``(rows, cols)`` (phases: :func:`_phase_base`)."""
  ctx = coder._contexts(y, a, m, pad)
  if period > 1:
    ctx += _phases(*shape, period, stride).astype(np.int64) * a**m
  return ctx


def encode(
  symbols: np.ndarray,
  alphabet: int,
  *,
  max_order: int = coder.MAX_ORDER,
  adaptive: bool = True,
  force: tuple[int, ...] | None = None,
) -> Coded:
  """Codes a leaf's compact symbols (shape of the leaf, ints in ``[0, alphabet)``).

  Requires at least one symbol and ``alphabet >= 2``. Every allowed static and unit model
  of every layout is scored (on a block of leading rows for leaves of more than
  :data:`EST_SYMBOLS` symbols), then the polya model on top of the best static one (when
  ``adaptive``, for leaves of at most :data:`MAX_POLYA_SYMBOLS` symbols, where it saves at
  least :data:`ADAPTIVE_MIN_GAIN`); the smallest estimated total (payload + model section)
  wins (ties: layout 0, static, lower order). Context models are scored without a tuple
  phase and with the period :func:`_best_period` finds. ``force=(layout, kind, order)`` or
  ``(layout, kind, order, period)`` codes with that model instead (it must be allowed).
  """
  symbols = np.asarray(symbols)
  shape = symbols.shape
  a = int(alphabet)
  flat = symbols.reshape(-1).astype(np.int32, copy=False)
  fperiod = int(force[3]) if force is not None and len(force) > 3 else 1
  allow = allowed(shape, a, fperiod)
  best = best_static = best_flat = None
  statics = []
  samples = {}
  dims = [d for d in shape if d != 1]
  for lay, (rows, cols) in enumerate(layouts(shape)):
    if force is not None and lay != force[0]:
      continue
    if force is None and lay == 1 and len(dims) > 2 and dims[0] <= dims[-1]:
      if symbols.size > LAYOUT_FREE_SYMBOLS:
        continue  # (kh, kw, in, out)-like: the first axis is not the output units
    x = _matrix(flat, rows, cols, lay)
    sample = x
    if x.size > EST_SYMBOLS:  # score on a block of leading rows, scaled to the leaf
      sample = np.ascontiguousarray(x[: max(2, -(-EST_SYMBOLS // cols))])
    scale = x.size / sample.size
    samples[lay] = (sample, scale)
    if force is None:
      bound = best[0][0] / scale if best else math.inf
      cands = _candidates(sample, a, lay, int(max_order), allow[lay], False, bound, stride=rows)
    else:
      m = force[2]
      only = [(STATIC, 0), (STATIC if force[1] == POLYA else force[1], m)]
      if force[1] != POLYA and tuple(force[1:3]) not in allow[lay]:
        raise ValueError(f"model {force} is not allowed for shape {shape}")
      cands = [
        c
        for c in _candidates(
          sample, a, lay, m, only, False, prune=False, periods=[fperiod], stride=rows
        )
        if c[2] == m and c[1] == only[1][0] and c[9] == fperiod
      ]
    for cand in cands:
      if force is None and lay and cand[1] == STATIC and cand[2] == 0:
        continue  # the same for every layout
      cand = _to_leaf(cand, scale)
      if best is None or cand[0] < best[0][0]:
        best = (cand, lay)
      if cand[9] == 1 and (best_flat is None or cand[0] < best_flat[0][0]):
        best_flat = (cand, lay)
      if cand[1] == STATIC:
        statics.append((cand, lay))
        if best_static is None or cand[0] < best_static[0][0]:
          best_static = (cand, lay)
  if best is None or (best_static is None and force[1] == POLYA):
    raise ValueError(f"model {force} is not allowed for shape {shape}")
  # adaptive counts on top of the best static model
  (static_total, _, m, *_), lay = best_static or best
  sample, scale = samples[lay]
  if force is not None and force[1] == POLYA:
    if (POLYA, m) not in allow[lay]:
      raise ValueError(f"model {force} is not allowed for shape {shape}")
    cand = _polya_candidate(sample, a, best_static[0], layouts(shape)[lay][0])
    if cand is None:
      raise ValueError(f"model {force} is too large to score for shape {shape}")
    best = (_to_leaf(cand, scale), lay)
  elif force is None and adaptive and symbols.size <= MAX_POLYA_SYMBOLS:
    # on top of every static model scored for small leaves; else of each layout's best
    # and of order 0 (adaptive counts per unit: estimates on a block of rows are too
    # coarse to leave it out when a context model looks as good)
    bases = statics
    if symbols.size > LAYOUT_FREE_SYMBOLS:
      picked = {}
      for cand, lay in statics:
        if lay not in picked or cand[0] < picked[lay][0][0]:
          picked[lay] = (cand, lay)
      bases = list(picked.values())
      bases += [c for c in statics if c[0][2] == 0 and all(c[0] is not b[0] for b in bases)]
    for base, lay in bases:
      m = base[2]
      if layouts(shape)[lay][0] < 8 or (POLYA, m) not in allowed(shape, a, base[9])[lay]:
        continue
      sample, scale = samples[lay]
      cand = _polya_candidate(sample, a, base, layouts(shape)[lay][0])
      if cand is not None:
        cand = _to_leaf(cand, scale)
      if cand is not None and cand[0] < (1 - ADAPTIVE_MIN_GAIN) * static_total:
        if cand[0] < best[0][0]:
          best = (cand, lay)
        if cand[9] == 1 and cand[0] < best_flat[0][0]:
          best_flat = (cand, lay)
  if force is None and best[0][9] > 1 and (best_flat[0][1] == UNIT or best_flat[0][2] == 0):
    # walking the rows costs decoding time that the best model without phase does not
    # spend (a unit table, or a static table of order 0): it must save bytes worth having
    without, phased = (
      _payload_scaled(c, samples[ly][1], a, layouts(shape)[ly][1]) for c, ly in (best_flat, best)
    )
    if without - phased < max(8 * PHASE_MIN_BYTES, PHASE_MIN_GAIN * without):
      best = best_flat
  (total, kind, m, bi, pad, si, b, present, codes, period), lay = best
  rows, cols = layouts(shape)[lay]
  x = _matrix(flat, rows, cols, lay)
  if x.size > EST_SYMBOLS:  # the chosen model's tables from the whole leaf
    base = STATIC if kind == POLYA else kind
    only = [(STATIC, 0), (base, m)]
    for cand in _candidates(x, a, lay, m, only, False, prune=False, periods=[period]):
      if cand[1] == base and cand[2] == m and cand[9] == period:
        _, _, _, _, pad, si, b, present, codes, _ = cand
        total = total if kind == POLYA else cand[0]
  if present is None:
    present = np.zeros(1, np.int64)
  s = coder.S_VALUES[si]
  model = _write_model(kind, m, lay, bi, pad, si, b, a, present, codes, period)
  weights = coder._int_weights(codes, s)
  det = (weights > 0).sum(axis=1) == 1
  enc = _RangeEncoder()
  if kind == STATIC and m == 0:
    if not det[0]:
      enc.encode(
        np.ascontiguousarray(x).reshape(-1),
        _Categorical(weights[0].astype(np.float32), perfect=False),
      )
  elif kind == UNIT:
    _encode_gathered(enc, np.ascontiguousarray(x), weights.astype(np.float32), det, None)
  else:
    y, seg_t, s_ = _walked(x)
    valid = _valid_mask(rows, cols, seg_t, s_)
    ctx = _context_ids(y, (rows, cols), a, m, pad, period)
    if kind == STATIC:
      table = np.zeros((period * a**m, a), np.float32)
      table[present] = weights
      dets = np.zeros(period * a**m, bool)
      dets[present] = det
      _encode_gathered(enc, y, table, dets, ctx, valid)
    else:
      _encode_polya(enc, y, valid, a, m, ctx, present, _prior(codes, s, BETAS[bi]))
  payload = coder._words_to_bytes(enc.get_compressed())
  return Coded(kind, m, lay, model, payload, total - 8 * len(model), period)


def _to_leaf(cand: tuple, scale: float) -> tuple:
  """A candidate scored on a block of leading rows, scaled to the whole leaf (``scale`` =
  leaf symbols / block symbols). Tables included: this over-counts the tables of large
  leaves, which steers them to the models that decode fastest (one table, no walk):
  measured on the ResNet-50-shaped tree, scaling the payload alone gives a 0.6% smaller
  file but encodes at 15 M params/s instead of 21 and decodes at 19 instead of 30."""
  return (cand[0] * scale,) + cand[1:]


def _payload_scaled(cand: tuple, scale: float, a: int, cols: int) -> float:
  """The estimate of a candidate scaled by :func:`_to_leaf` with its tables counted once."""
  total, kind, m, _, pad, _, b, present, _, period = cand
  rows_in_table = cols if kind == UNIT else (1 if present is None else present.size)
  return total - 8 * _table_bytes(kind, m, a, pad, rows_in_table, b, period) * (scale - 1)


def _encode_gathered(enc, y, table, det, ctx, valid=None) -> None:
  """Codes ``y`` row-major with probabilities ``table[ctx]`` (``ctx`` None: the column),
  skipping entries of deterministic contexts and invalid entries."""
  rows, cols = y.shape
  family = _Categorical(perfect=False)
  step = max(1, _CHUNK // max(1, cols * table.shape[1]))
  for r0 in range(0, rows, step):
    yy = y[r0 : r0 + step]
    c = ctx[r0 : r0 + step] if ctx is not None else np.broadcast_to(np.arange(cols), yy.shape)
    keep = ~det[c]
    if valid is not None:
      keep &= valid[r0 : r0 + step]
    if keep.any():
      enc.encode(yy[keep].astype(np.int32), family, np.take(table, c[keep], axis=0))


def _encode_polya(enc, y, valid, a, m, ctx, present, prior) -> None:
  """Codes the walked matrix ``y`` with the polya model (``ctx``: its context ids)."""
  rows, units = y.shape
  pos = np.zeros(int(present.max()) + 1, np.int64)
  pos[present] = np.arange(present.size)
  p = pos[ctx] if m else np.zeros(y.shape, np.int64)
  det = (prior > 0).sum(axis=1) == 1
  counts = np.zeros((present.size, units, a), np.int64)
  cols = np.broadcast_to(np.arange(units), y.shape)
  family = _Categorical(perfect=False)
  if m:  # sequential: counts change after every row
    table = _block_table(counts, prior)
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
      _refresh(table, counts, prior, pt, ct)
      if buf_s and (held >= _CHUNK or t == rows - 1):
        enc.encode(np.concatenate(buf_s), family, np.concatenate(buf_p))
        buf_s, buf_p, held = [], [], 0
    return
  bounds = polya_blocks(rows)
  for r0, r1 in zip(bounds[:-1], bounds[1:]):
    table = _block_table(counts, prior)
    pb, yb, cb, vb = p[r0:r1], y[r0:r1], cols[r0:r1], valid[r0:r1]
    keep = vb & ~det[pb]
    step = max(1, _CHUNK // max(1, units * a))
    for s0 in range(0, r1 - r0, step):
      k = keep[s0 : s0 + step]
      if k.any():
        if m:
          probs = table[pb[s0 : s0 + step][k], cb[s0 : s0 + step][k]]
        else:
          probs = table[0].take(cb[s0 : s0 + step][k], axis=0)
        enc.encode(yb[s0 : s0 + step][k].astype(np.int32), family, probs)
    cell = (pb[vb] * units + cb[vb]) * a + yb[vb]
    counts += np.bincount(cell, minlength=counts.size).reshape(counts.shape)


# -------------------------------------------------------------------------- decoder


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
  s = coder.S_VALUES[si]
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
  count = rows_in_table * a
  codes = unpack_bits(reader.take((count * b + 7) // 8, "context tables"), count, b)
  codes = codes.reshape(rows_in_table, a)
  if codes.size and codes.max() > coder._max_j(s, b) + 1:
    reader.fail(f"probability code {int(codes.max())} out of range")
  if not np.all(codes.max(axis=1) > 0):
    reader.fail("a table has no symbol with nonzero probability")
  return Model(kind, m, lay, BETAS[bi], pad, s, b, present, codes, reader.pos - start, period)


def decode(reader: Reader, shape: Sequence[int], alphabet: int) -> np.ndarray:
  """Decodes a version-3 coder section (model + payload, to ``reader.end``): int32 symbols."""
  shape = tuple(int(d) for d in shape)
  info = parse_model(reader, shape, alphabet)
  payload = reader.take(reader.remaining, "payload")
  a = int(alphabet)
  rows, cols = layouts(shape)[info.layout]
  weights = coder._int_weights(info.codes, info.s)
  det = (weights > 0).sum(axis=1) == 1
  detsym = np.argmax(weights > 0, axis=1).astype(np.int32)

  def run():
    dec = _RangeDecoder(coder._bytes_to_words(payload))
    if info.kind == STATIC and info.order == 0:
      if det[0]:
        return np.full((rows, cols), detsym[0], np.int32)
      model = _Categorical(weights[0].astype(np.float32), perfect=False)
      return np.asarray(dec.decode(model, rows * cols), np.int32).reshape(rows, cols)
    if info.kind == UNIT:
      return _decode_units(dec, rows, cols, weights.astype(np.float32), det, detsym)
    return _decode_walk(dec, info, rows, cols, a, weights, det, detsym)

  return _unmatrix(coder._range_decoded(reader, a, run), info.layout).reshape(shape)


def _decode_units(dec, rows, cols, table, det, detsym) -> np.ndarray:
  x = np.empty((rows, cols), np.int32)
  x[:] = detsym
  live = np.flatnonzero(~det)
  if live.size == 0:
    return x
  family = _Categorical(perfect=False)
  step = max(1, _CHUNK // max(1, live.size * table.shape[1]))
  probs_row = table[live]
  for r0 in range(0, rows, step):
    r1 = min(rows, r0 + step)
    probs = np.broadcast_to(probs_row, (r1 - r0,) + probs_row.shape).reshape(-1, table.shape[1])
    got = np.asarray(dec.decode(family, np.ascontiguousarray(probs)), np.int32)
    x[r0:r1, live] = got.reshape(r1 - r0, live.size)
  return x


def _decode_walk(dec, info: Model, rows, cols, a, weights, det, detsym) -> np.ndarray:
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
    base = _phase_base(rows, cols, period)
    # int16 (ids < MAX_CONTEXTS): at most 2 bytes x period x units, <= 2x the output
    offsets = ((base[None, :] + np.arange(period)[:, None]) % period * hist).astype(np.int16)
  family = _Categorical(perfect=False)
  cols_idx = np.arange(units)
  polya = info.kind == POLYA
  if polya:
    prior = _prior(info.codes, info.s, info.beta)
    det = (prior > 0).sum(axis=1) == 1
    counts = np.zeros((info.present.size, units, a), np.int64)
    bounds = polya_blocks(seg_t) if m == 0 else np.array([0, seg_t])
    table = _block_table(counts, prior)
  else:
    table = weights.astype(np.float32)
    bounds = np.array([0, seg_t])
  for r0, r1 in zip(bounds[:-1], bounds[1:]):
    if polya and m == 0:
      table = _block_table(counts, prior)
    if m == 0:  # polya of order 0: no dependency inside a block, one call per chunk
      live = np.flatnonzero(~det)
      valid = _valid_mask(rows, cols, seg_t, s)[r0:r1]
      block = np.full((r1 - r0, units), detsym[0], np.int32)
      if live.size:
        step = max(1, _CHUNK // max(1, units * a))
        for s0 in range(r0, r1, step):
          s1 = min(r1, s0 + step)
          v = valid[s0 - r0 : s1 - r0]
          probs = np.broadcast_to(table[0], (s1 - s0, units, a))[v]
          block[s0 - r0 : s1 - r0][v] = np.asarray(dec.decode(family, probs), np.int32)
      y[r0:r1] = block
    else:
      for t in range(r0, r1):
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
          _refresh(table, counts, prior, p, cols_idx[:w])
    if polya and m == 0:
      valid = _valid_mask(rows, cols, seg_t, s)[r0:r1]
      cell = np.broadcast_to(cols_idx, valid.shape)[valid] * a + y[r0:r1][valid]
      counts += np.bincount(cell, minlength=counts.size).reshape(counts.shape)
  return _unwalk(y, rows, cols, s)
