"""The magnitude coder: a large-alphabet adaptive model of signed integer levels,
conditioned on stored row and column scales (and, for dq leaves, the trellis state).

The version-3 context models stop at alphabets of ``MAX_CONTEXT_ALPHABET`` symbols and
store static tables; this coder codes the signed levels ``k`` of a matrix directly,
whatever their range, as

* a *magnitude symbol*: ``|k|`` itself below ``D`` (the direct symbols), else an escape
  class ``D + j`` with ``j = floor(log2(|k| - D + 1))`` (Exp-Golomb of order 0), coded
  with adaptive counts per context;
* ``j`` raw *remainder bits* for an escape of class ``j`` (uniform);
* a *sign* for ``k != 0``, coded with one adaptive table.

The context of an entry is the sum of a stored log-scale of its matrix row and of its
matrix column (a rank-1 model of the local magnitude: weight tensors change scale from
output unit to output unit and from input to input), clipped to ``C`` contexts; with
dependent quantization (``dq``) it also holds the quantizer of the trellis state of its
chain. The scales are chosen by the encoder (an order-0 adaptive code puts them in
the payload) and cost a few bits per row or column; the encoder leaves either out where it
does not pay. Contexts taken from the magnitudes of already coded neighbours were measured
and left out (``experiments/COMPRESS.md``).

The bytes (model section, coding order, adaptive tables) are defined in ``FORMAT.md``
("Magnitude coder"); this module writes and reads them. In a ``.hemp`` file the coder
codes a quantized leaf's symbols as offsets from the level nearest zero (coder-section
kind 3) or a dq leaf's levels (dq coder header bit 6); :func:`encode_leaf` and
:func:`decode_leaf` are the leaf-level entry points, and the encoder takes this coder
only where it saves :data:`LEAF_MIN_GAIN` (:mod:`hemp_jax.codec.records`).

Geometry. The levels are a *walked* matrix ``y`` of shape ``(T, W)``
(:func:`hemp_jax.codec.context_models.walked`): its columns are chains read top to
bottom, and only the entries of a validity mask hold levels. With ``geometry = (rows,
cols)``, ``y`` is the walk of a ``(rows, cols)`` matrix ``x`` in ``S`` segments
(:func:`~hemp_jax.codec.context_models.segment_rows`): walked entry ``(t, u)`` is
``x[(u // cols) * T + t, u % cols]`` and the mask is
:func:`~hemp_jax.codec.context_models.valid_mask`; without, ``x`` is ``y`` itself
(``rows, cols = T, W``) and any mask may be given.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple, Sequence

import constriction
import numpy as np

from hemp_jax.codec import kernel, trellis
from hemp_jax.codec.context_models import (
  CHUNK,
  layouts,
  matrix,
  segment_rows,
  unmatrix,
  unwalk,
  valid_mask,
  walked,
)
from hemp_jax.codec.wire import FormatError, Reader, unzigzag, write_varint, zigzag

__all__ = [
  "MAX_DIRECT",
  "MAX_ESCAPES",
  "MAX_MAGNITUDE",
  "MAX_SCALE_CONTEXTS",
  "MAX_SCALE_SPAN",
  "MAX_OFFSET",
  "BETAS",
  "PRIOR_BITS",
  "SIGN_BETA",
  "SCALE_BETA",
  "MIN_BLOCK",
  "SCALE_MIN_BLOCK",
  "SCALE_STEP",
  "EST_ENTRIES",
  "LEAF_MIN_GAIN",
  "Encoded",
  "Model",
  "schedule",
  "weights",
  "write_model",
  "parse_model",
  "encode",
  "decode",
  "encode_matrix",
  "decode_matrix",
  "scale_contexts",
  "encode_leaf",
  "decode_leaf",
]

MAX_DIRECT = 64  # direct magnitude symbols
MAX_ESCAPES = 24  # escape classes: remainders of up to 23 bits (Uniform: < 2**24)
MAX_MAGNITUDE = (1 << 23) - 1  # the largest |k| the encoder takes
MAX_SCALE_CONTEXTS = 64
MAX_SCALE_SPAN = 64  # scale symbols per set
MAX_OFFSET = 1 << 12
BETAS = (2, 4, 8, 16, 32, 64, 128, 256)  # prior strength of the magnitude tables
PRIOR_BITS = 16
SIGN_BETA = 2
SCALE_BETA = 4
MIN_BLOCK = 256  # entries of the first group of rows
SCALE_MIN_BLOCK = 16  # scale symbols of the first group
SCALE_STEP = 1 / 3  # the encoder's scale quantum, in octaves
DEFAULT_CONTEXTS = 16
DEFAULT_DIRECT = 8
DIRECT_CHOICES = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # the encoder's search of D
DEFAULT_BETA_INDEX = 3
# Leaves of more entries are scored on leading rows of about this many entries, and coded
# only where that estimate promises the gain below.
EST_ENTRIES = 1 << 16
# The magnitude coder decodes 2-5x slower than the static tables it replaces (a table
# refresh per group of rows, and with dq a decoder call per walked row): a leaf takes it
# only where it is at least this fraction smaller (experiments/COMPRESS.md).
LEAF_MIN_GAIN = 0.02

_ROWS, _COLS, _DQ = 1, 2, 4
_UNIFORM = constriction.stream.model.Uniform()  # the remainders' model (size per symbol)


class Encoded(NamedTuple):
  """An encoded matrix: model section, payload, and the payload's estimated bits."""

  model: bytes
  payload: bytes
  estimated_bits: float


@dataclass(frozen=True)
class Model:
  """A parsed model section."""

  direct: int  # D
  escapes: int  # E
  contexts: int  # C, scale contexts
  offset: int
  beta_index: int
  dq: bool
  row_scales: tuple[int, int] | None  # (low, span)
  col_scales: tuple[int, int] | None
  model_bytes: int

  @property
  def alphabet(self) -> int:
    return self.direct + self.escapes

  @property
  def table_contexts(self) -> int:
    return self.contexts * (2 if self.dq else 1)


# ------------------------------------------------------------------------- shared rules


def schedule(rows: int, width: int, min_block: int) -> np.ndarray:
  """Row bounds of the groups between which adaptive counts are refreshed: the first
  group holds at least ``min_block`` entries (``width`` per row), then each ends at the
  larger of one more row and 1.5 times the rows before it (``O(log rows)`` groups)."""
  first = max(1, -(-min_block // max(width, 1)))
  out = [0]
  t = 0
  while t < rows:
    t = min(rows, max(t + 1, first, (t * 3) // 2))
    out.append(t)
  return np.asarray(out, np.int64)


def weights(counts: np.ndarray, beta: int) -> np.ndarray:
  """float32 weights ``(..., K, A)`` of the adaptive tables with counts ``(..., K, A)``
  (int64): each context's counts plus ``beta`` times the prior shared by its ``K``
  contexts (leading axes: independent stacks of tables)."""
  glob = counts.sum(axis=-2, keepdims=True)
  a = counts.shape[-1]
  g = ((glob << 1) + 1) << PRIOR_BITS
  g = np.maximum(g // ((glob.sum(axis=-1, keepdims=True) << 1) + a), 1)
  return kernel.floored((counts << PRIOR_BITS) + beta * g).astype(np.float32)


def _state_bits(dq) -> int:
  """The state bits of a ``dq`` argument: True for the 4-state machine, else the bits
  themselves (0 or False: no dq)."""
  return 2 if dq is True else int(dq)


def _symbols(mag: np.ndarray, direct: int, mmax: int | None = None):
  """Magnitude symbols and escape classes (-1: not an escape) of magnitudes (int64);
  through a lookup table where the largest magnitude ``mmax`` is small."""
  if mmax is not None and mmax < 1 << 16:
    sym, esc = _symbols(np.arange(mmax + 1), direct)
    return sym[mag], esc[mag]
  r = np.maximum(mag.astype(np.int64) - direct, 0) + 1
  j = _log2(r)
  esc = mag >= direct
  return np.where(esc, direct + j, mag), np.where(esc, j, -1)


def _log2(v: np.ndarray) -> np.ndarray:
  """floor(log2(v)) of positive ints (exact: frexp of exact float64 values < 2**53)."""
  return (np.frexp(v.astype(np.float64))[1] - 1).astype(np.int64)


class _Walk(NamedTuple):
  """Where the entries of a walked matrix ``(T, W)`` come from: walked column ``u`` holds
  rows ``seg[u] * T + t`` (``t`` its walked row) of column ``col[u]`` of the matrix."""

  rows: int
  cols: int
  seg_t: int
  seg: np.ndarray  # (W,)
  col: np.ndarray  # (W,)
  valid: np.ndarray  # (T, W) bool

  def row_index(self) -> np.ndarray:
    """The matrix row of every walked entry (int64 ``(T, W)``; clipped to the last row)."""
    t = np.arange(self.seg_t)[:, None]
    return np.minimum(self.seg[None, :] * self.seg_t + t, self.rows - 1)

  def by_row(self, values: np.ndarray) -> np.ndarray:
    """``values[row]`` (a vector per matrix row) at every walked entry, ``(T, W)``."""
    s = int(self.seg.max(initial=0)) + 1
    pad = np.empty(s * self.seg_t, values.dtype)
    pad[: self.rows] = values
    pad[self.rows :] = values[-1] if self.rows else 0
    per = pad.reshape(s, self.seg_t).T  # (T, S)
    return per if s == 1 else per[:, self.seg]


def _geometry(shape, geometry, valid) -> _Walk:
  """The :class:`_Walk` of a walked matrix of ``shape`` (module docstring)."""
  t_rows, width = (int(d) for d in shape)
  u = np.arange(width)
  if geometry is None:
    walk = _Walk(t_rows, width, t_rows, np.zeros(width, np.int64), u, valid)
    if valid is None:
      walk = walk._replace(valid=np.ones((t_rows, width), bool))
  else:
    rows, cols = (int(d) for d in geometry)
    seg_t, s = _segments(rows, cols)
    if (seg_t, s * cols) != (t_rows, width):
      raise ValueError(f"walked shape {(t_rows, width)} does not match geometry {geometry}")
    cols1 = max(cols, 1)
    walk = _Walk(rows, cols, seg_t, u // cols1, u % cols1, valid)
    if valid is None:
      walk = walk._replace(valid=valid_mask(rows, cols, seg_t, s))
  walk = walk._replace(valid=np.asarray(walk.valid, bool))
  if walk.valid.shape != (t_rows, width):
    raise ValueError(
      f"valid mask of shape {walk.valid.shape} for a walked matrix {(t_rows, width)}"
    )
  return walk


def _segments(rows: int, cols: int) -> tuple[int, int]:
  """:func:`segment_rows`, with ``(rows, 1)`` for an empty matrix."""
  return (rows, 1) if rows * cols == 0 else segment_rows(rows, cols)


def _scale_contexts(model: Model, row_s, col_s, walk: _Walk, raw=False) -> np.ndarray:
  """Scale context (uint8, ``(T, W)``) of every entry from the row and column scales
  (ints of at most ``MAX_OFFSET + MAX_SCALE_SPAN`` in size); ``raw``: the sum less the
  offset, unclipped (int16)."""
  lv = np.full(walk.valid.shape, -model.offset, np.int16)
  if row_s is not None:
    lv += walk.by_row(row_s.astype(np.int16))
  if col_s is not None:
    lv += col_s.astype(np.int16)[walk.col][None, :]
  if raw:
    return lv
  return np.clip(lv, 0, model.contexts - 1).astype(np.uint8)


# ------------------------------------------------------------------------ model section


def write_model(model: Model) -> bytes:
  """The model section of ``model``."""
  flags = (
    (_ROWS if model.row_scales else 0)
    | (_COLS if model.col_scales else 0)
    | (_DQ if model.dq else 0)
    | model.beta_index << 3
  )
  out = bytearray([flags])
  for v in (model.direct, model.escapes, model.contexts, zigzag(model.offset)):
    write_varint(out, v)
  for sc in (model.row_scales, model.col_scales):
    if sc is not None:
      write_varint(out, zigzag(sc[0]))
      write_varint(out, sc[1] - 1)
  return bytes(out)


def parse_model(reader: Reader) -> Model:
  """Reads and validates a model section (leaves ``reader`` at the payload)."""
  start = reader.pos
  flags = reader.u8("magnitude model flags")
  if flags >> 6:
    reader.fail(f"magnitude model flags {flags:#04x} have unknown bits")
  direct = reader.varint("direct symbols", max_value=MAX_DIRECT, min_value=1)
  escapes = reader.varint("escape classes", max_value=MAX_ESCAPES)
  if direct + escapes < 2:
    reader.fail("magnitude alphabet of fewer than 2 symbols")
  contexts = reader.varint("scale contexts", max_value=MAX_SCALE_CONTEXTS, min_value=1)
  offset = unzigzag(reader.varint("context offset", max_value=2 * MAX_OFFSET))
  scales = []
  for bit in (_ROWS, _COLS):
    if flags & bit:
      low = unzigzag(reader.varint("scale low", max_value=2 * MAX_OFFSET))
      span = reader.varint("scale span", max_value=MAX_SCALE_SPAN - 1) + 1
      scales.append((low, span))
    else:
      scales.append(None)
  return Model(
    direct,
    escapes,
    contexts,
    offset,
    (flags >> 3) & 7,
    bool(flags & _DQ),
    scales[0],
    scales[1],
    reader.pos - start,
  )


# -------------------------------------------------------------------------- estimates


def _adaptive_bits(ctx, sym, sel, bounds, k, a, beta) -> float:
  """Exact code length (bits, under the float32 weights) of ``sym`` with contexts ``ctx``
  (both ``(T, W)``, entries ``sel``) and adaptive tables refreshed at the row ``bounds``."""
  groups = bounds.size - 1
  if groups <= 0 or not sel.any():
    return 0.0
  block = np.repeat(np.arange(groups), np.diff(bounds))
  total = 0.0
  counts = np.zeros((k, a), np.int64)
  step = max(1, (1 << 21) // (k * a))  # groups per chunk: bounded memory
  for g0 in range(0, groups, step):
    g1 = min(groups, g0 + step)
    r0, r1 = bounds[g0], bounds[g1]
    s = sel[r0:r1]
    cell = ((block[r0:r1, None] - g0) * k + ctx[r0:r1]) * a + sym[r0:r1]
    per = np.bincount(cell[s], minlength=(g1 - g0) * k * a).reshape(g1 - g0, k, a)
    before = np.cumsum(per, axis=0) - per + counts
    w = weights(before, beta).astype(np.float64)
    with np.errstate(divide="ignore"):
      logp = np.log2(w) - np.log2(w.sum(axis=2, keepdims=True))
    total -= float((per * logp).sum())
    counts = before[-1] + per[-1]
  return total


def _scale_bits(values: np.ndarray, span: int) -> float:
  if span <= 1 or values.size == 0:
    return 0.0
  v = values[:, None]
  bounds = schedule(values.size, 1, SCALE_MIN_BLOCK)
  return _adaptive_bits(np.zeros_like(v), v, np.ones_like(v, bool), bounds, 1, span, SCALE_BETA)


def _level_bits(model: Model, ctx, sym, esc, valid, bounds) -> float:
  """Bits of the magnitude symbols (contexts ``ctx``) and the remainders of the levels."""
  k, a, beta = model.table_contexts, model.alphabet, BETAS[model.beta_index]
  bits = _adaptive_bits(ctx, sym, valid, bounds, k, a, beta)
  return bits + float(np.maximum(esc[valid], 0).sum())


def _sign_bits(sym, nz, bounds, negative) -> float:
  """Bits of the signs ``negative`` of the entries ``nz`` (the same for every model)."""
  return _adaptive_bits(np.zeros_like(sym), negative, nz, bounds, 1, 2, SIGN_BETA)


# -------------------------------------------------------------------------- encoder


def _fit_scales(mag, walk: _Walk, use_rows, use_cols, iters=3):
  """log2 scales ``(a (rows,), b (cols,))`` with ``mean |k| ~ 2**(a[r] + b[c])``."""
  valid, rows, cols = walk.valid, walk.rows, walk.cols
  ri, ci = walk.row_index()[valid], np.broadcast_to(walk.col, valid.shape)[valid]
  mv = mag[valid].astype(np.float64)
  n_r = np.maximum(np.bincount(ri, minlength=rows), 1)
  n_c = np.maximum(np.bincount(ci, minlength=cols), 1)
  a, b = np.zeros(rows), np.zeros(cols)
  for _ in range(iters if use_rows and use_cols else 1):
    if use_rows:
      a = np.log2(np.bincount(ri, mv * np.exp2(-b)[ci], minlength=rows) / n_r + 0.25)
    if use_cols:
      b = np.log2(np.bincount(ci, mv * np.exp2(-a)[ri], minlength=cols) / n_c + 0.25)
  return a, b


def _quantized(logs: np.ndarray) -> tuple[np.ndarray, int, int]:
  """Scale symbols of log2 scales: ``(values, low, span)``."""
  q = np.rint((logs - np.median(logs)) / SCALE_STEP).astype(np.int64)
  half = MAX_SCALE_SPAN // 2
  q = np.clip(q, -half, half - 1)
  low = int(q.min())
  return q, low, int(q.max()) - low + 1


def _escapes(mmax: int, direct: int) -> int:
  """Escape classes needed for magnitudes up to ``mmax`` with ``direct`` symbols."""
  return 0 if mmax < direct else int(_log2(np.array([mmax - direct + 1]))[0]) + 1


def _with_direct(model: Model, direct: int, mmax: int) -> Model:
  escapes = _escapes(mmax, direct)
  return replace(model, direct=max(direct, 2 - escapes), escapes=escapes)


def _offset(row_s, col_s, walk: _Walk, n_ctx: int) -> int:
  """The context offset that centres the scale sums of the valid entries on the middle
  of ``n_ctx`` contexts (their lower median, from a histogram)."""
  if not walk.valid.any():
    return 0
  lv = _scale_contexts(Model(0, 0, 1, 0, 0, False, None, None, 0), row_s, col_s, walk, raw=True)
  lv = lv[walk.valid] if not walk.valid.all() else lv.reshape(-1)
  low = int(lv.min())
  cum = np.cumsum(np.bincount((lv - low).astype(np.intp)))
  median = low + int(np.searchsorted(cum, (lv.size + 1) // 2))
  return int(np.clip(median - n_ctx // 2, -MAX_OFFSET, MAX_OFFSET))


def scale_contexts(mag: np.ndarray, geometry, contexts: int = DEFAULT_CONTEXTS) -> np.ndarray:
  """The scale contexts (uint8 ``(T, W)``) the encoder gives, with both scale sets, to a
  walked matrix of magnitudes ``mag`` (any non-negative numbers: e.g. weights over the
  step) of a ``geometry = (rows, cols)`` matrix."""
  mag = np.asarray(mag, np.float64)
  walk = _geometry(mag.shape, geometry, None)
  a, b = _fit_scales(mag, walk, True, True)
  row_s, col_s = _quantized(a)[0], _quantized(b)[0]
  model = Model(0, 0, contexts, _offset(row_s, col_s, walk, contexts), 0, False, None, None, 0)
  return _scale_contexts(model, row_s, col_s, walk)


def _choose(mag, walk: _Walk, states, options):
  """The model of smallest estimated size among a few: ``(model, row scales, column
  scales, estimated bits without the signs, contexts)``. ``states``: the dq state bit
  (uint8 ``(T, W)``) of every entry, or None. The scale sets are chosen with
  ``DEFAULT_DIRECT`` direct symbols, then D by a local search over ``DIRECT_CHOICES``."""
  valid, rows, cols = walk.valid, walk.rows, walk.cols
  dq = states is not None
  mmax = int(mag[valid].max(initial=0))
  contexts = int(options.get("contexts", DEFAULT_CONTEXTS))
  beta_index = int(options.get("beta_index", DEFAULT_BETA_INDEX))
  if not (1 <= contexts <= MAX_SCALE_CONTEXTS and 0 <= beta_index < len(BETAS)):
    raise ValueError(f"contexts {contexts} or beta index {beta_index} out of range")
  direct = options.get("direct")
  if direct is not None and not 1 <= direct <= MAX_DIRECT:
    raise ValueError(f"direct symbols {direct} not in 1..{MAX_DIRECT}")
  bounds = schedule(*mag.shape, MIN_BLOCK)

  def level_bits(model, ctx):
    sym, esc = _symbols(mag, model.direct, mmax)
    return _level_bits(model, ctx, sym, esc, valid, bounds)

  scales = options.get("scales")
  tried = [(False, False), (True, False), (False, True), (True, True)]
  if scales is not None:
    tried = [tuple(bool(f) for f in scales)]
  elif rows < 2 or cols < 2:  # a scale per entry of a vector pays nothing
    tried = [f for f in tried if not (f[0] and rows < 2) and not (f[1] and cols < 2)]
  first = min(DEFAULT_DIRECT, max(mmax, 1)) if direct is None else direct
  best = None
  for use_rows, use_cols in tried:
    a, b = _fit_scales(mag, walk, use_rows, use_cols)
    side = 0.0
    sets = []
    for use, logs in ((use_rows, a), (use_cols, b)):
      values, sc = None, None
      if use:
        values, low, span = _quantized(logs)
        sc = (low, span)
        side += _scale_bits(values - low, span)
      sets += [values, sc]
    row_s, row_sc, col_s, col_sc = sets
    n_ctx = contexts if (use_rows or use_cols) else 1
    offset = _offset(row_s, col_s, walk, n_ctx)
    model = Model(0, 0, n_ctx, offset, beta_index, dq, row_sc, col_sc, 0)
    model = _with_direct(model, first, mmax)
    ctx = _scale_contexts(model, row_s, col_s, walk)
    if dq:
      ctx = 2 * ctx + states
    bits = side + level_bits(model, ctx)
    if best is None or bits < best[3]:
      best = [model, row_s, col_s, bits, ctx, side]
  if direct is None:  # local search of D from DEFAULT_DIRECT, while it pays
    model, ctx, side = best[0], best[4], best[5]
    choices = [d for d in DIRECT_CHOICES if d <= max(mmax + 1, 2)]
    i = choices.index(min(choices, key=lambda d: abs(d - model.direct)))
    for step in (1, -1):
      j = i + step
      while 0 <= j < len(choices):
        cand = _with_direct(model, choices[j], mmax)
        bits = side + level_bits(cand, ctx)
        if bits >= best[3]:
          break
        best[0], best[3] = cand, bits
        j += step
      if best[0] is not model:
        break
  return tuple(best[:5])


def _prepared(y, valid, geometry, dq, states=None):
  """``(walk, magnitudes, dq quantizer bits or None)`` of a walked matrix of levels; the
  quantizer of each entry's state computed here with ``dq`` (:func:`_state_bits`), or
  given (``states``, uint8 ``(T, W)``)."""
  y = np.asarray(y)
  if y.ndim != 2 or not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
    raise ValueError(f"expected a 2-D walked matrix of ints, got {y.dtype} {y.shape}")
  walk = _geometry(y.shape, geometry, valid)
  mag = np.abs(y.astype(np.int64))
  mag = np.where(walk.valid, mag, 0)
  if mag.max(initial=0) > MAX_MAGNITUDE:
    raise ValueError(f"levels beyond +-{MAX_MAGNITUDE} cannot be coded")
  nu = _state_bits(dq)
  if nu and states is None:
    states = (trellis.states(mag, walk.valid, nu) >> (nu - 1)).astype(np.uint8)
  return walk, mag, states


def encode(
  y: np.ndarray,
  valid: np.ndarray | None = None,
  *,
  geometry: Sequence[int] | None = None,
  dq: bool | int = False,
  **options,
) -> Encoded:
  """Encodes a walked matrix ``y`` ``(T, W)`` of signed integer levels.

  Args:
    y: the levels, ``|k| <= MAX_MAGNITUDE``; entries outside ``valid`` are ignored.
    valid: which entries hold levels; None: all of them, or those of ``geometry``.
    geometry: ``(rows, cols)`` of the matrix ``y`` is the walk of (module docstring);
      None: ``y`` itself.
    dq: adds the quantizer of each entry's trellis state to the contexts: True for the
      4-state machine, or its state bits (:data:`hemp_jax.codec.trellis.STATE_BITS`).
    **options: the encoder's choices, to force them: ``direct`` (D), ``contexts`` (C),
      ``beta_index``, ``scales`` (``(rows?, cols?)`` booleans).

  Returns:
    ``(model section, payload, estimated payload bits)``.
  """
  walk, mag, states = _prepared(y, valid, geometry, dq)
  valid = walk.valid
  model, row_s, col_s, bits, ctx = _choose(mag, walk, states, options)
  sym, esc = _symbols(mag, model.direct, int(mag.max(initial=0)))
  negative = (np.asarray(y) < 0).astype(np.int64)
  bounds = schedule(*mag.shape, MIN_BLOCK)
  bits += _sign_bits(sym, valid & (sym > 0), bounds, negative)
  enc = kernel.RangeEncoder()
  for sc, values in ((model.row_scales, row_s), (model.col_scales, col_s)):
    if sc is not None:
      _encode_scales(enc, values - sc[0], sc[1])
  _encode_levels(enc, model, ctx, sym, esc, mag, negative, valid, bounds)
  return Encoded(write_model(model), kernel.words_to_bytes(enc.get_compressed()), bits)


def _estimate(x, states, options) -> tuple[float, dict]:
  """``(estimated bits of model section and payload, the options chosen)`` of a matrix of
  levels ``x`` coded as it is (its rows and columns get the scales; ``states``: the dq
  state bit of each entry, or None without dq)."""
  walk, mag, states = _prepared(x, None, None, False, states)
  model, _, _, bits, _ = _choose(mag, walk, states, options)
  sym, _ = _symbols(mag, model.direct, int(mag.max(initial=0)))
  neg = (np.asarray(x) < 0).astype(np.int64)
  bits += _sign_bits(sym, walk.valid & (sym > 0), schedule(*mag.shape, MIN_BLOCK), neg)
  chosen = dict(options, direct=model.direct)
  chosen["scales"] = (model.row_scales is not None, model.col_scales is not None)
  return bits + 8 * len(write_model(model)), chosen


def _screen(x, states) -> float:
  """A quick estimate (bits) of the matrix ``x`` (``states`` as for :func:`_estimate``):
  with both scale sets (their symbols' adaptive code counted) and ``D = MAX_DIRECT``,
  the conditional entropy of the magnitude symbols given their contexts plus half the
  cost of learning them (``(a - 1) / 2 * log2(n)`` bits for a context of ``n`` entries
  and ``a`` symbols seen: the shared prior learns faster), the remainders and the
  entropy of the signs. Within a few percent of :func:`_estimate` on pretrained
  weights, at a fraction of its cost."""
  walk, mag, states = _prepared(x, None, None, False, states)
  valid = walk.valid
  model = Model(0, 0, DEFAULT_CONTEXTS, 0, 0, states is not None, None, None, 0)
  a, b = _fit_scales(mag, walk, walk.rows > 1, walk.cols > 1)
  side, scales = 0.0, []
  for use, logs in ((walk.rows > 1, a), (walk.cols > 1, b)):
    values, low, span = _quantized(logs)
    side += _scale_bits(values - low, span) if use else 0.0
    scales.append(values if use else None)
  model = replace(model, offset=_offset(*scales, walk, DEFAULT_CONTEXTS))
  ctx = _scale_contexts(model, *scales, walk).astype(np.int64)
  if states is not None:
    ctx = 2 * ctx + states
  sym, esc = _symbols(mag, MAX_DIRECT, int(mag.max(initial=0)))
  alphabet = MAX_DIRECT + MAX_ESCAPES
  cell = (ctx * alphabet + sym)[valid]
  counts = np.bincount(cell, minlength=2 * DEFAULT_CONTEXTS * alphabet).reshape(-1, alphabet)
  seen, n = (counts > 0).sum(axis=1), counts.sum(axis=1)
  learn = float((np.maximum(seen - 1, 0) * np.log2(np.maximum(n, 2))).sum()) / 4
  neg = np.count_nonzero(np.asarray(x)[valid] < 0)
  signs = kernel.cond_bits(np.array([[int(np.count_nonzero(mag[valid])) - neg, neg]]))
  rem = float(np.maximum(esc[valid], 0).sum())
  return kernel.cond_bits(counts) + learn + rem + signs + side


def _runs(ctx: np.ndarray):
  """``(order, contexts present, run starts, run ends)`` of a context array (uint8): the
  stable order that groups its entries by context."""
  order = np.argsort(ctx, kind="stable")
  n = np.bincount(ctx, minlength=1)
  ids = np.flatnonzero(n)
  ends = np.cumsum(n)[ids]
  return order, ids, ends - n[ids], ends


def _encode_scales(enc, values: np.ndarray, span: int) -> None:
  if span <= 1 or values.size == 0:
    return
  counts = np.zeros((1, span), np.int64)
  bounds = schedule(values.size, 1, SCALE_MIN_BLOCK)
  for r0, r1 in zip(bounds[:-1], bounds[1:]):
    w = weights(counts, SCALE_BETA)[0]
    v = values[r0:r1]
    enc.encode(v.astype(np.int32), kernel.Categorical(w, perfect=False))
    counts[0] += np.bincount(v, minlength=span)


def _remainders(mag: np.ndarray, j: np.ndarray, d: int):
  """``(remainders, sizes)`` (int32) of escapes of classes ``j >= 1`` with magnitudes
  ``mag`` (``|k| = D + 2**j - 1 + remainder``)."""
  size = np.int64(1) << j
  return (mag - d + 1 - size).astype(np.int32), size.astype(np.int32)


def _encode_levels(enc, model, ctx, sym, esc, mag, negative, valid, bounds) -> None:
  k, a, d = model.table_contexts, model.alphabet, model.direct
  beta = BETAS[model.beta_index]
  counts = np.zeros((k, a), np.int64)
  scounts = np.zeros((1, 2), np.int64)
  uniform = _UNIFORM
  family = kernel.Categorical(perfect=False)
  for r0, r1 in zip(bounds[:-1], bounds[1:]):
    sel = valid[r0:r1]
    c = ctx[r0:r1][sel]
    s = sym[r0:r1][sel]
    table = weights(counts, beta)
    if model.dq:  # row by row, each row's symbols row-major, then its remainders
      _encode_dq_rows(enc, family, uniform, table, d, ctx, sym, esc, mag, valid, r0, r1)
    else:  # the group's symbols by context, then its remainders
      order, ids, starts, ends = _runs(c)
      so = s[order].astype(np.int32)
      for i, lo, hi in zip(ids, starts, ends):
        enc.encode(so[lo:hi], kernel.Categorical(table[i], perfect=False))
      j = esc[r0:r1][sel]
      big = j >= 1
      if big.any():
        rem, size = _remainders(mag[r0:r1][sel][big], j[big], d)
        enc.encode(rem, uniform, size)
    neg = negative[r0:r1][sel][s > 0]
    if neg.size:
      enc.encode(
        neg.astype(np.int32), kernel.Categorical(weights(scounts, SIGN_BETA)[0], perfect=False)
      )
    counts += np.bincount(c.astype(np.int64) * a + s, minlength=k * a).reshape(k, a)
    scounts[0] += np.bincount(neg, minlength=2)


def _encode_dq_rows(enc, family, uniform, table, d, ctx, sym, esc, mag, valid, r0, r1):
  """The symbols and remainders of the walked rows ``r0 .. r1-1`` in the order the dq
  decoder reads them: each row's symbols (row-major, the table of each one's context),
  then that row's remainders. Rows without remainders run together in one call."""
  big = (esc[r0:r1] >= 1) & valid[r0:r1]
  cuts = list(np.flatnonzero(big.any(axis=1)) + r0) + [r1 - 1]
  start = r0
  for t in cuts:
    if t < start:
      continue
    sel = valid[start : t + 1]
    s = sym[start : t + 1][sel].astype(np.int32)
    c = ctx[start : t + 1][sel]
    step = max(1, CHUNK // table.shape[1])
    for i in range(0, s.size, step):
      enc.encode(s[i : i + step], family, table[c[i : i + step]])
    row_big = big[t - r0]
    if row_big.any():
      rem, size = _remainders(mag[t][row_big], esc[t][row_big], d)
      enc.encode(rem, uniform, size)
    start = t + 1


# -------------------------------------------------------------------------- decoder


def decode(
  model,
  payload,
  shape: Sequence[int],
  valid: np.ndarray | None = None,
  *,
  geometry: Sequence[int] | None = None,
  nu: int = 2,
) -> np.ndarray:
  """Decodes a walked matrix of levels (int32 ``shape`` ``(T, W)``, 0 outside ``valid``).

  Args:
    model: the model section (bytes), or a :class:`~hemp_jax.codec.wire.Reader` at it.
    payload: the payload (bytes); None with a reader: the rest of the reader.
    shape: ``(T, W)``.
    valid, geometry: as given to :func:`encode`.
    nu: the state bits of the trellis of a model with the dq flag.

  Raises:
    FormatError: malformed model section or payload (nothing else, for any bytes).
  """
  if isinstance(model, Reader):
    reader = model
  else:
    reader = Reader(model, what="magnitude model")
  info = parse_model(reader)
  if payload is None:
    payload = reader.take(reader.remaining, "payload")
  elif not isinstance(model, Reader):
    reader.expect_end("magnitude model")
  return _decoded(reader, info, payload, _geometry(shape, geometry, valid), nu)


def _decoded(reader: Reader, info: Model, payload, walk: _Walk, nu: int) -> np.ndarray:
  """The levels of a parsed model section and its payload (FormatError on failure)."""

  def run():
    dec = kernel.RangeDecoder(kernel.bytes_to_words(payload))
    scales = []
    for sc, n in ((info.row_scales, walk.rows), (info.col_scales, walk.cols)):
      scales.append(None if sc is None else sc[0] + _decode_scales(dec, n, sc[1]))
    ctx = _scale_contexts(info, scales[0], scales[1], walk)
    if info.dq:
      return _decode_dq_levels(dec, info, ctx, walk.valid, nu)
    return _decode_levels(dec, info, ctx, walk.valid)

  try:
    return run()
  except FormatError:
    raise
  except (KeyboardInterrupt, SystemExit, GeneratorExit):
    raise
  except BaseException as e:  # noqa: B036 - constriction raises ValueError, or a pyo3
    # PanicException (a BaseException), on some malformed payloads.
    raise FormatError(f"{reader.what}: range decoder failed: {type(e).__name__}: {e}") from None


def _decode_scales(dec, n: int, span: int) -> np.ndarray:
  out = np.zeros(n, np.int64)
  if span <= 1 or n == 0:
    return out
  counts = np.zeros((1, span), np.int64)
  bounds = schedule(n, 1, SCALE_MIN_BLOCK)
  for r0, r1 in zip(bounds[:-1], bounds[1:]):
    w = weights(counts, SCALE_BETA)[0]
    v = np.asarray(dec.decode(kernel.Categorical(w, perfect=False), int(r1 - r0)), np.int64)
    out[r0:r1] = v
    counts[0] += np.bincount(v, minlength=span)
  return out


def _magnitudes(dec, uniform, s: np.ndarray, d: int) -> np.ndarray:
  """The magnitudes of decoded symbols ``s`` (int32), escape remainders decoded."""
  esc = s >= d
  if not esc.any():
    return s
  m = s.copy()
  j = s[esc] - d
  val = d + (np.int32(1) << j) - 1
  big = j >= 1
  if big.any():
    val[big] += np.asarray(dec.decode(uniform, (np.int32(1) << j[big])), np.int32)
  m[esc] = val
  return m


def _decode_signs(dec, scounts, m: np.ndarray) -> np.ndarray:
  """``m`` with the decoded signs of its nonzero entries applied (row-major)."""
  nz = m > 0
  n_nz = int(np.count_nonzero(nz))
  if not n_nz:
    return m
  model = kernel.Categorical(weights(scounts, SIGN_BETA)[0], perfect=False)
  neg = np.asarray(dec.decode(model, n_nz), np.int32)
  scounts[0] += np.bincount(neg, minlength=2)
  flip = np.zeros(m.shape, bool)
  flip[nz] = neg.astype(bool)
  return np.where(flip, -m, m)


def _decoder(info: Model, shape):
  """What a level decoder starts from: ``(levels (int32, 0), magnitude counts, sign
  counts, beta)``."""
  counts = np.zeros((info.table_contexts, info.alphabet), np.int64)
  return np.zeros(shape, np.int32), counts, np.zeros((1, 2), np.int64), BETAS[info.beta_index]


def _decode_levels(dec, info: Model, ctx: np.ndarray, valid: np.ndarray) -> np.ndarray:
  t_rows, width = ctx.shape
  k, a, d = info.table_contexts, info.alphabet, info.direct
  y, counts, scounts, beta = _decoder(info, ctx.shape)
  uniform = _UNIFORM
  bounds = schedule(t_rows, width, MIN_BLOCK)
  for r0, r1 in zip(bounds[:-1], bounds[1:]):
    sel = valid[r0:r1]
    full = bool(sel.all())  # the common case: no boolean indexing
    c = ctx[r0:r1].reshape(-1) if full else ctx[r0:r1][sel]
    table = weights(counts, beta)
    order, ids, starts, ends = _runs(c)
    so = np.empty(c.size, np.int32)
    for i, lo, hi in zip(ids, starts, ends):
      so[lo:hi] = dec.decode(kernel.Categorical(table[i], perfect=False), int(hi - lo))
    s = np.empty(c.size, np.int32)
    s[order] = so
    vals = _decode_signs(dec, scounts, _magnitudes(dec, uniform, s, d))
    if full:
      y[r0:r1] = vals.reshape(r1 - r0, width)
    else:
      y[r0:r1][sel] = vals
    counts += np.bincount(c.astype(np.int64) * a + s, minlength=k * a).reshape(k, a)
  return y


def _decode_dq_levels(dec, info: Model, base: np.ndarray, valid: np.ndarray, nu: int):
  """The levels of a dq model: row by row (the states of a row follow from the rows
  above), each row's symbols in one call with the table of each one's context."""
  t_rows, width = base.shape
  k, a, d = info.table_contexts, info.alphabet, info.direct
  y, counts, scounts, beta = _decoder(info, base.shape)
  uniform = _UNIFORM
  family = kernel.Categorical(perfect=False)
  base = base << 1  # 2 * scale context; + the quantizer
  step = trellis.MACHINES[nu].next.reshape(-1)  # next state by state * 2 + parity
  shift = nu - 1  # the quantizer of a state
  state = np.zeros(width, np.uint8)
  full = valid.all(axis=1)
  bounds = schedule(t_rows, width, MIN_BLOCK)
  for r0, r1 in zip(bounds[:-1], bounds[1:]):
    table = weights(counts, beta)
    sym = np.zeros((r1 - r0, width), np.int32)
    ctx = np.zeros((r1 - r0, width), np.uint8)
    for t in range(r0, r1):
      if full[t]:
        c = ctx[t - r0]
        np.add(base[t], state >> shift, out=c)
        s = sym[t - r0]
        s[:] = dec.decode(family, table[c])
        m = y[t]
        m[:] = _magnitudes(dec, uniform, s, d)
        state = step.take((state << 1) | (m & 1).astype(np.uint8))
      else:
        sel = valid[t]
        c = base[t][sel] + (state[sel] >> shift)
        ctx[t - r0][sel] = c
        s = np.asarray(dec.decode(family, table[c]), np.int32)
        sym[t - r0][sel] = s
        m = _magnitudes(dec, uniform, s, d)
        y[t][sel] = m
        state[sel] = step.take((state[sel] << 1) | (m & 1).astype(np.uint8))
    sel = valid[r0:r1]
    y[r0:r1][sel] = _decode_signs(dec, scounts, y[r0:r1][sel])
    cell = ctx[sel].astype(np.int64) * a + sym[sel]
    counts += np.bincount(cell, minlength=k * a).reshape(k, a)
  return y


# ------------------------------------------------------------------ matrix helpers


def encode_matrix(x: np.ndarray, *, dq: bool | int = False, **options) -> Encoded:
  """Encodes a ``(rows, cols)`` matrix of levels in the coder's walk (segments of
  :func:`~hemp_jax.codec.context_models.segment_rows`); see :func:`encode`."""
  x = np.asarray(x)
  y, _, _ = walked(x)
  return encode(y, geometry=x.shape, dq=dq, **options)


def decode_matrix(model, payload, rows: int, cols: int, nu: int = 2) -> np.ndarray:
  """Inverse of :func:`encode_matrix`: the ``(rows, cols)`` int32 matrix."""
  seg_t, s = _segments(rows, cols)
  y = decode(model, payload, (seg_t, s * cols), geometry=(rows, cols), nu=nu)
  return unwalk(y, rows, cols, s)


# -------------------------------------------------------------------- leaf coder


def _sample(x: np.ndarray, dq: int, st=None):
  """Rows of a leaf's matrix ``x`` spread evenly over it, holding about
  :data:`EST_ENTRIES` entries (every row of a smaller leaf), with their dq quantizer
  bits (None without ``dq``: from the states ``st`` of the whole walk, computed if not
  given) and the factor from their size to the leaf's."""
  rows, cols = x.shape
  count = min(rows, max(2, -(-EST_ENTRIES // max(cols, 1))))
  pick = np.unique(np.linspace(0, rows - 1, count).round().astype(np.int64))
  states = None
  if dq:
    y, seg_t, s = walked(x)
    if st is None:
      st = trellis.states(y, valid_mask(rows, cols, seg_t, s), dq)
    states = unwalk(st >> (dq - 1), rows, cols, s)[pick].astype(np.uint8)
  return x[pick], states, x.size / (pick.size * cols)


def encode_leaf(
  levels: np.ndarray, candidates: Sequence[int], *, dq: int, limit_bits: float, states=None
) -> tuple[int, bytes] | None:
  """Codes a leaf's signed levels with the magnitude coder, if that fits a budget.

  Args:
    levels: the levels (ints, the leaf's shape; a dq leaf's ``k``).
    candidates: the layouts (:func:`~hemp_jax.codec.context_models.layouts`) to try;
      with ``dq`` one, the layout of the chains.
    dq: the state bits of a dq leaf's trellis (its contexts take the quantizer of each
      entry's state), or 0.
    limit_bits: the largest size (bits, model section + payload) worth coding.
    states: with ``dq``, the trellis states of the walk of its layout, if known.

  Returns:
    ``(layout, model section + payload)``, or None where it does not fit
    ``limit_bits``. Each layout (one for a matrix: the other is its transpose) is scored
    by the estimate of its matrix coded as it is (rows and columns scaled, without the
    walk), on rows spread over the leaf where it has more than :data:`EST_ENTRIES`
    entries (:func:`_sample`, scaled to the leaf), unless the quicker :func:`_screen`
    already exceeds the budget in every layout; the best is coded, with the options
    chosen there, if its estimate fits.
  """
  levels = np.asarray(levels)
  flat = levels.reshape(-1)
  shape = levels.shape
  dq = _state_bits(dq)
  if len([d for d in shape if d != 1]) <= 2:
    candidates = list(candidates)[:1]  # the other layout is the transpose: the same scales
  samples = {}
  for lay in candidates:
    rows, cols = layouts(shape)[lay]
    samples[lay] = _sample(matrix(flat, rows, cols, lay), dq, states)
  if not samples or min(_screen(x, st) * f for x, st, f in samples.values()) > limit_bits:
    return None  # not worth scoring
  scored = []
  for lay, (sample, states, scale) in samples.items():
    bits, chosen = _estimate(sample, states, {})
    scored.append((bits * scale, lay, chosen))
  bits, lay, chosen = min(scored, key=lambda c: c[0])
  if bits > limit_bits:
    return None
  rows, cols = layouts(shape)[lay]
  enc = encode_matrix(matrix(flat, rows, cols, lay), dq=dq, **chosen)
  section = enc.model + enc.payload
  return (lay, section) if 8 * len(section) <= limit_bits else None


def decode_leaf(reader: Reader, shape: Sequence[int], layout: int, dq: int) -> np.ndarray:
  """The signed levels (int32, ``shape``) of a magnitude coder section (model section and
  payload, to ``reader.end``) over ``layout``; ``dq``: the state bits of a dq leaf's
  trellis, or 0. FormatError where the model's dq flag disagrees, or on any malformed
  byte."""
  shape = tuple(int(d) for d in shape)
  info = parse_model(reader)
  if info.dq != bool(dq):
    reader.fail(
      f"magnitude model with dq flag {int(info.dq)} in a {'dq' if dq else 'quantized'} record"
    )
  payload = reader.take(reader.remaining, "payload")
  rows, cols = layouts(shape)[layout]
  seg_t, s = _segments(rows, cols)
  y = _decoded(reader, info, payload, _geometry((seg_t, s * cols), (rows, cols), None), dq)
  return unmatrix(unwalk(y, rows, cols, s), layout).reshape(shape)
