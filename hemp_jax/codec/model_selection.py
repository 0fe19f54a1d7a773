"""The version-3 encoder: scores the models of :mod:`hemp_jax.codec.context_models` per
tensor and codes the leaf with the smallest estimated size, tables counted.

A candidate's size is its estimated payload plus every byte of its model section (the
tables at the precision written). Every allowed static and unit model of every layout is
scored (layout 1 on large leaves only where the first axis may be the output units);
context models without a tuple phase and with the period :func:`best_period` finds; then
the polya model on top of the best static ones. Leaves of more than :data:`EST_SYMBOLS`
symbols are scored on a block of leading rows (scaled to the leaf) and the chosen
model's tables are then computed from the whole leaf. A phase model must save
:data:`PHASE_MIN_BYTES` and :data:`PHASE_MIN_GAIN` over the best model without phase
when that one decodes without walking the rows. What is written is defined in
``FORMAT.md``; the choice is the encoder's alone (DESIGN.md §5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy.special import gammaln

from hemp_jax.codec import kernel
from hemp_jax.codec.context_models import (
  BETAS,
  MAX_PERIOD,
  POLYA,
  PRIOR_BITS,
  STATIC,
  UNIT,
  Coded,
  allowed,
  context_ids,
  encode_model,
  layouts,
  matrix,
  phases,
  places,
  polya_blocks,
  prior,
  table_bytes,
  valid_mask,
  walked,
)
from hemp_jax.codec.kernel import MAX_CONTEXTS, MAX_ORDER, S_VALUES

__all__ = [
  "PERIOD_SAMPLE",
  "PERIOD_SKIP",
  "PERIOD_MARGIN",
  "PHASE_MIN_BYTES",
  "PHASE_MIN_GAIN",
  "MAX_POLYA_SYMBOLS",
  "MAX_POLYA_ESTIMATE",
  "LAYOUT_FREE_SYMBOLS",
  "EST_SYMBOLS",
  "ADAPTIVE_MIN_GAIN",
  "Candidate",
  "scored_layouts",
  "best_codes",
  "candidates",
  "best_period",
  "polya_candidate",
  "encode",
]

PERIOD_SAMPLE = 1 << 13  # symbols on which the period is chosen
PERIOD_SKIP = 0.98  # no period search where H(x | previous) > PERIOD_SKIP * H(x)
PERIOD_MARGIN = 0.01  # a period replaces a shorter one if it saves this fraction more
PHASE_MIN_BYTES = 16  # a model with a tuple phase must save this many bytes ...
PHASE_MIN_GAIN = 0.01  # ... and this fraction over the best model without phase, when
# that model decodes without a walk (unit, or static of order 0)
MAX_POLYA_SYMBOLS = 1 << 19  # the encoder only scores polya up to this size
MAX_POLYA_ESTIMATE = 1 << 22  # blocks x cells scored
LAYOUT_FREE_SYMBOLS = 1 << 16  # smaller leaves: both layouts scored whatever the shape
EST_SYMBOLS = 1 << 18  # larger leaves: models are scored on a block of leading rows
ADAPTIVE_MIN_GAIN = 0.0  # polya must save this fraction of the best static model


class Candidate(NamedTuple):
  """A scored model: its estimated size (bits, tables counted) and what it writes."""

  total: float
  kind: int
  order: int
  beta_index: int
  pad: int
  s_index: int
  bits: int  # b, the bits of each log-code
  present: np.ndarray | None  # context ids with a table; None: one table (order 0)
  codes: np.ndarray
  period: int


# ------------------------------------------------------------------------- estimates


def _score_codes(n, occ, codes, s):
  """Bits of counts ``n`` (float, (P, A)) coded with the log-code table ``codes``."""
  w = kernel.int_weights(codes, s).astype(np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    logq = np.log2(w) - np.log2(w.sum(axis=1, keepdims=True))
    return -float(np.where(occ, logq * n, 0.0).sum())


def best_codes(counts: np.ndarray):
  """(bits, s index, b, codes) of the cheapest log-code table (table bits counted) for a
  (P, A) count table: every ``s`` at the width that holds all its codes, then narrower
  widths for the best ``s`` only."""
  n = counts.astype(np.float64)
  occ = counts > 0
  nmax = n.max(axis=1, keepdims=True)
  with np.errstate(divide="ignore", invalid="ignore"):
    lr = np.where(occ, np.log2(nmax / np.where(occ, n, 1.0)), 0.0)
  cells = counts.size

  def cand(si, b=None):
    sv = S_VALUES[si]
    j0 = np.rint(sv * lr).astype(np.int64)
    if b is None:
      need = min(int(j0[occ].max(initial=0)), (kernel.MAX_SHIFT + 1) * sv - 1) + 1
      b = min(max(need.bit_length(), 1), kernel.MAX_CODE_BITS)
    codes = np.where(occ, np.minimum(j0, kernel.max_j(sv, b)) + 1, 0)
    bits = _score_codes(n, occ, codes, sv)
    return bits + b * cells, bits, si, b, codes

  best = min((cand(si) for si in range(len(S_VALUES))), key=lambda c: c[0])
  for b in (best[3] - 1, best[3] - 2):
    if b >= 1:
      c = cand(best[2], b)
      if c[0] < best[0]:
        best = c
  return best[1:]


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
    w = before * (1 << PRIOR_BITS) + prior(codes, s, beta).astype(np.float64)[pidx]
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
    alpha = prior(codes, s, beta).astype(np.float64)[pidx] / (1 << PRIOR_BITS)
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


# ------------------------------------------------------------------------ candidates


def candidates(
  x: np.ndarray,
  a: int,
  max_order: int,
  allow: list,
  bound=math.inf,
  prune: bool = True,
  periods=None,
  stride: int | None = None,
) -> list[Candidate]:
  """Scored candidates of one layout's matrix ``x`` (static order 0, static context
  models and unit tables among ``allow``); candidates that cannot beat ``bound`` bits may
  be left out. Context models are scored with the tuple ``periods`` given, or (None)
  without a phase and with the period that :func:`best_period` finds, if any. ``stride``:
  the rows of the whole matrix when ``x`` is its leading rows (it sets the phases)."""
  rows, cols = x.shape
  counts0 = np.bincount(x.reshape(-1), minlength=a)
  pad = int(np.argmax(counts0))
  seq_orders = [m for k, m in allow if k == STATIC and 1 <= m <= max_order]
  bits, si, b, codes = best_codes(counts0[None])
  total = bits + 8 * table_bytes(STATIC, 0, a, 0, 1, b)
  out = [Candidate(total, STATIC, 0, 0, 0, si, b, None, codes, 1)]
  if seq_orders:
    out += _context_candidates(
      x, a, seq_orders, pad, min(out[0].total, bound), prune, periods, stride
    )
  if (UNIT, 0) in allow and (not prune or cols * a < min(bound, min(c.total for c in out))):
    per_unit = (
      np.bincount((x.astype(np.int64) * cols + np.arange(cols)).reshape(-1), minlength=a * cols)
      .reshape(a, cols)
      .T
    )
    h = kernel.cond_bits(per_unit)
    if prune and h + cols * a >= min(bound, min(c.total for c in out)):
      return out
    bits, si, b, codes = best_codes(per_unit)
    table = table_bytes(UNIT, 0, a, 0, cols, b)
    out.append(Candidate(bits + 8 * table, UNIT, 0, 0, 0, si, b, None, codes, 1))
  return out


def _context_candidates(x, a, seq_orders, pad, best_total, prune, periods, stride) -> list:
  """The static context models (orders ``seq_orders``) of :func:`candidates`."""
  rows, cols = x.shape
  out = []
  y, seg_t, s = walked(x)
  valid = valid_mask(rows, cols, seg_t, s)
  ctx = kernel.contexts(y, a, seq_orders[-1], pad)
  if periods is None:
    p = best_period(y, ctx, valid, rows, cols, a, pad, stride)
    periods = [1] + [p] * (p > 1)
  whole = bool(valid.all())  # a boolean mask copy costs more than the counting
  yv, ctx = (y.reshape(-1), ctx.reshape(-1)) if whole else (y[valid], ctx[valid])
  for period in periods:
    orders = [m for m in seq_orders if period * a**m <= MAX_CONTEXTS]
    if not orders:
      continue
    top = orders[-1]
    full = ctx % a**top
    if period > 1:
      ph = phases(rows, cols, period, stride)
      full = full + (ph.reshape(-1) if whole else ph[valid]).astype(np.int64) * a**top
    joint = np.bincount(full * a + yv, minlength=period * a ** (top + 1))
    all_counts = {top: joint.reshape(period, -1, a)}
    for m in range(top - 1, 0, -1):
      all_counts[m] = all_counts[m + 1].reshape(period, a, -1, a).sum(axis=1)
    for m in orders:
      counts = all_counts[m].reshape(-1, a)
      present = np.flatnonzero(counts.sum(axis=1))
      counts = counts[present]
      h = kernel.cond_bits(counts)
      table = table_bytes(STATIC, m, a, pad, present.size, 1, period)
      if prune and h + 8 * table >= best_total:
        continue
      bits, si, b, codes = best_codes(counts)
      total = bits + 8 * table_bytes(STATIC, m, a, pad, present.size, b, period)
      best_total = min(best_total, total)
      out.append(Candidate(total, STATIC, m, 0, pad, si, b, present, codes, period))
  return out


def best_period(y, ctx, valid, rows, cols, a, pad, stride=None) -> int:
  """The tuple period (1..:data:`MAX_PERIOD`) whose phase, with the previous symbol, gives
  the order-1 model of least conditional entropy plus smallest possible tables (1 if
  none beats no phase), measured on walked rows spread evenly over the matrix that hold
  at most :data:`PERIOD_SAMPLE` symbols (leading rows can be all alike: the first inputs
  of an MNIST ``fc1`` are border pixels). ``y``: the walked matrix, ``ctx``: its context
  ids of some order >= 1 (the predecessor is ``ctx % A``), ``valid`` its mask.

  HEMP trains on disjoint n-tuples of the scan stream, so the place inside the tuple (its
  phase) can tell much about a weight. Tuples shape the joint distribution of their
  weights only where neighbours depend on each other, so the search is skipped where the
  previous symbol tells almost nothing (order-1 conditional entropy above
  :data:`PERIOD_SKIP` times the order-0 entropy: e.g. i.i.d. weights)."""
  t = max(2, PERIOD_SAMPLE // max(1, y.shape[1]))
  pick = np.unique(np.linspace(0, y.shape[0] - 1, min(t, y.shape[0])).round().astype(np.int64))
  keep = valid[pick]
  yv, prev = y[pick][keep], ctx[pick][keep] % a

  def bits(ctx, n_ctx):
    counts = np.bincount(ctx * a + yv, minlength=n_ctx * a).reshape(-1, a)
    return kernel.cond_bits(counts), int((counts.sum(axis=1) > 0).sum())

  h1, present = bits(prev, a)
  if h1 > PERIOD_SKIP * bits(np.zeros_like(prev), 1)[0]:
    return 1
  best, best_p = h1 + 8 * table_bytes(STATIC, 1, a, pad, present, 1), 1
  place = (places(rows, cols, stride)[None, :] + pick[:, None])[keep]
  for period in range(2, MAX_PERIOD + 1):
    if period * a > MAX_CONTEXTS:
      break
    h, present = bits((place % period) * a + prev, period * a)
    h += 8 * table_bytes(STATIC, 1, a, pad, present, 1, period)
    if h < (1 - PERIOD_MARGIN) * best:  # a longer period must tell clearly more
      best, best_p = h, period
  return best_p


def polya_candidate(x: np.ndarray, a: int, static_cand: Candidate, stride: int | None = None):
  """The polya candidate on top of a static candidate of the same matrix, or None."""
  _, _, m, _, pad, si, b, present, codes, period = static_cand
  rows, cols = x.shape
  yy, seg_t, s = walked(x)
  valid = valid_mask(rows, cols, seg_t, s)
  if m == 0:
    present = np.zeros(1, np.int64)
    pc = np.zeros(yy.shape, np.int64)
  else:
    pos = np.full(period * a**m, -1, np.int64)
    pos[present] = np.arange(present.size)
    pc = pos[context_ids(yy, x.shape, a, m, pad, period, stride)]
  bits, bi = _polya_bits(yy, valid, pc, present.size, a, codes, S_VALUES[si], m)
  if not math.isfinite(bits):
    return None
  table = table_bytes(POLYA, m, a, pad, present.size, b, period)
  return Candidate(bits + 8 * table, POLYA, m, bi, pad if m else 0, si, b, present, codes, period)


def _to_leaf(cand: Candidate, scale: float) -> Candidate:
  """A candidate scored on a block of leading rows, scaled to the whole leaf (``scale`` =
  leaf symbols / block symbols). Tables included: this over-counts the tables of large
  leaves, which steers them to the models that decode fastest (one table, no walk)."""
  return cand._replace(total=cand.total * scale)


def _payload_scaled(cand: Candidate, scale: float, a: int, cols: int) -> float:
  """The estimate of a candidate scaled by :func:`_to_leaf` with its tables counted once."""
  total, kind, m, _, pad, _, b, present, _, period = cand
  rows_in_table = cols if kind == UNIT else (1 if present is None else present.size)
  return total - 8 * table_bytes(kind, m, a, pad, rows_in_table, b, period) * (scale - 1)


# --------------------------------------------------------------------------- choice


@dataclass
class _Scores:
  """The candidates of a leaf so far, each as ``(Candidate, layout)``."""

  samples: dict = field(default_factory=dict)  # layout -> (scored matrix, scale)
  best: tuple | None = None
  best_flat: tuple | None = None  # the best without a tuple phase
  best_static: tuple | None = None
  statics: list = field(default_factory=list)

  def offer(self, cand: Candidate, lay: int) -> None:
    if self.best is None or cand.total < self.best[0].total:
      self.best = (cand, lay)
    if cand.period == 1 and (self.best_flat is None or cand.total < self.best_flat[0].total):
      self.best_flat = (cand, lay)


def scored_layouts(shape) -> list[int]:
  """The layouts the encoder scores for a leaf of ``shape``: every one, except layout 1
  of a leaf of more than :data:`LAYOUT_FREE_SYMBOLS` values shaped like ``(kh, kw, in,
  out)`` (three or more axes of size > 1, the first not larger than the last: it is
  not the output units)."""
  dims = [int(d) for d in shape if d != 1]
  out = list(range(len(layouts(shape))))
  if len(dims) > 2 and dims[0] <= dims[-1] and math.prod(dims) > LAYOUT_FREE_SYMBOLS:
    out = out[:1]
  return out


def _score_layouts(flat, shape, a, max_order, allow, force, fperiod) -> _Scores:
  """Static and unit candidates of every layout (or of the model ``force`` names)."""
  scores = _Scores()
  scored = [force[0]] if force is not None else scored_layouts(shape)
  for lay, (rows, cols) in enumerate(layouts(shape)):
    if lay not in scored:
      continue
    x = matrix(flat, rows, cols, lay)
    sample = x
    if x.size > EST_SYMBOLS:  # score on a block of leading rows, scaled to the leaf
      sample = np.ascontiguousarray(x[: max(2, -(-EST_SYMBOLS // cols))])
    scale = x.size / sample.size
    scores.samples[lay] = (sample, scale)
    if force is None:
      bound = scores.best[0].total / scale if scores.best else math.inf
      cands = candidates(sample, a, max_order, allow[lay], bound, stride=rows)
    else:
      m = force[2]
      only = [(STATIC, 0), (STATIC if force[1] == POLYA else force[1], m)]
      if force[1] != POLYA and tuple(force[1:3]) not in allow[lay]:
        raise ValueError(f"model {force} is not allowed for shape {shape}")
      scored = candidates(sample, a, m, only, prune=False, periods=[fperiod], stride=rows)
      cands = [c for c in scored if c.order == m and c.kind == only[1][0] and c.period == fperiod]
    for cand in cands:
      if force is None and lay and cand.kind == STATIC and cand.order == 0:
        continue  # the same for every layout
      cand = _to_leaf(cand, scale)
      scores.offer(cand, lay)
      if cand.kind == STATIC:
        scores.statics.append((cand, lay))
        if scores.best_static is None or cand.total < scores.best_static[0].total:
          scores.best_static = (cand, lay)
  return scores


def _polya_bases(scores: _Scores, size: int) -> list:
  """The static candidates polya is scored on: every one for small leaves; else each
  layout's best and those of order 0 (adaptive counts per unit: estimates on a block of
  rows are too coarse to leave it out when a context model looks as good)."""
  statics = scores.statics
  if size <= LAYOUT_FREE_SYMBOLS:
    return statics
  picked = {}
  for cand, lay in statics:
    if lay not in picked or cand.total < picked[lay][0].total:
      picked[lay] = (cand, lay)
  bases = list(picked.values())
  bases += [c for c in statics if c[0].order == 0 and all(c[0] is not b[0] for b in bases)]
  return bases


def _score_polya(scores: _Scores, shape, a, size: int, static_total: float) -> None:
  """Offers the polya candidate on top of each of :func:`_polya_bases`."""
  for base, lay in _polya_bases(scores, size):
    m = base.order
    if layouts(shape)[lay][0] < 8 or (POLYA, m) not in allowed(shape, a, base.period)[lay]:
      continue
    sample, scale = scores.samples[lay]
    cand = polya_candidate(sample, a, base, layouts(shape)[lay][0])
    if cand is not None:
      cand = _to_leaf(cand, scale)
    if cand is not None and cand.total < (1 - ADAPTIVE_MIN_GAIN) * static_total:
      scores.offer(cand, lay)


def _forced_polya(scores: _Scores, shape, a, allow, force) -> tuple:
  """``(Candidate, layout)`` of the polya model ``force`` names, on the best static one."""
  base, lay = scores.best_static
  sample, scale = scores.samples[lay]
  if (POLYA, base.order) not in allow[lay]:
    raise ValueError(f"model {force} is not allowed for shape {shape}")
  cand = polya_candidate(sample, a, base, layouts(shape)[lay][0])
  if cand is None:
    raise ValueError(f"model {force} is too large to score for shape {shape}")
  return _to_leaf(cand, scale), lay


def _phase_pays(scores: _Scores, shape, a) -> bool:
  """Whether the best model, with a tuple phase, saves enough over the best without,
  where that one (a unit table, or a static table of order 0) decodes without a walk."""
  flat_best, best = scores.best_flat, scores.best
  if best[0].period <= 1 or not (flat_best[0].kind == UNIT or flat_best[0].order == 0):
    return True
  without, phased = (
    _payload_scaled(c, scores.samples[ly][1], a, layouts(shape)[ly][1])
    for c, ly in (flat_best, best)
  )
  return without - phased >= max(8 * PHASE_MIN_BYTES, PHASE_MIN_GAIN * without)


def _whole_leaf_tables(x: np.ndarray, a: int, cand: Candidate) -> Candidate:
  """The chosen model with its tables counted on the whole matrix ``x`` (for leaves
  scored on a block of leading rows); a polya model keeps its estimate."""
  kind, m, period = cand.kind, cand.order, cand.period
  base = STATIC if kind == POLYA else kind
  only = [(STATIC, 0), (base, m)]
  for c in candidates(x, a, m, only, prune=False, periods=[period]):
    if c.kind == base and c.order == m and c.period == period:
      total = cand.total if kind == POLYA else c.total
      cand = cand._replace(
        total=total, pad=c.pad, s_index=c.s_index, bits=c.bits, present=c.present, codes=c.codes
      )
  return cand


def encode(
  symbols: np.ndarray,
  alphabet: int,
  *,
  max_order: int = MAX_ORDER,
  adaptive: bool = True,
  force: tuple[int, ...] | None = None,
) -> Coded:
  """Codes a leaf's compact symbols (shape of the leaf, ints in ``[0, alphabet)``).

  Requires at least one symbol and ``alphabet >= 2``. Every allowed static and unit model
  of every layout is scored (on a block of leading rows for leaves of more than
  :data:`EST_SYMBOLS` symbols), then the polya model on top of the best static ones (when
  ``adaptive``, for leaves of at most :data:`MAX_POLYA_SYMBOLS` symbols, where it saves at
  least :data:`ADAPTIVE_MIN_GAIN`); the smallest estimated total (payload + model section)
  wins (ties: layout 0, static, lower order). Context models are scored without a tuple
  phase and with the period :func:`best_period` finds. ``force=(layout, kind, order)`` or
  ``(layout, kind, order, period)`` codes with that model instead (it must be allowed).
  """
  symbols = np.asarray(symbols)
  shape = symbols.shape
  a = int(alphabet)
  flat = symbols.reshape(-1).astype(np.int32, copy=False)
  fperiod = int(force[3]) if force is not None and len(force) > 3 else 1
  allow = allowed(shape, a, fperiod)
  scores = _score_layouts(flat, shape, a, int(max_order), allow, force, fperiod)
  if scores.best is None or (scores.best_static is None and force[1] == POLYA):
    raise ValueError(f"model {force} is not allowed for shape {shape}")
  if force is not None and force[1] == POLYA:
    scores.best = _forced_polya(scores, shape, a, allow, force)
  elif force is None and adaptive and symbols.size <= MAX_POLYA_SYMBOLS:
    static_total = (scores.best_static or scores.best)[0].total
    _score_polya(scores, shape, a, symbols.size, static_total)
  cand, lay = scores.best
  if force is None and not _phase_pays(scores, shape, a):
    cand, lay = scores.best_flat
  rows, cols = layouts(shape)[lay]
  x = matrix(flat, rows, cols, lay)
  if x.size > EST_SYMBOLS:  # the chosen model's tables from the whole leaf
    cand = _whole_leaf_tables(x, a, cand)
  model, payload = encode_model(x, a, lay, cand)
  return Coded(cand.kind, cand.order, lay, model, payload, cand.total - 8 * len(model), cand.period)
