"""Dependent (trellis-coded) quantization of one tensor, as in VVC and MPEG NNC.

Two scalar quantizers share a grid of step ``delta``: ``Q0`` reconstructs ``2k * delta``
and ``Q1`` reconstructs ``(2k - sgn(k)) * delta`` (``k`` the coded integer level; both
have a zero). A 4-state machine picks the quantizer of each entry: states 0 and 1 use
``Q0``, states 2 and 3 ``Q1``, and ``next = NEXT[state][k & 1]``, from state 0 at the
start of every chain. Together the two quantizers cover the grid ``j * delta`` twice as
finely as either alone, while each ``k`` is coded in the alphabet of one of them.

The chains are the columns of the coder's walked matrix (:func:`chains`: the geometry of
:func:`hemp_jax.codec.context_models.walked` and ``valid_mask``), read top to bottom, so
the decoder knows the state of walked row ``t`` from the rows above it. Entries outside
the mask are skipped (they do not advance the state).

The state machine is a shift register over two bits: with ``state = 2h + l``, the next
state has ``h' = l xor (k & 1)`` and ``l' = h``. So ``h`` (the quantizer) before an entry
is the xor of the parities one, three, five, ... entries back in its chain, and ``l`` that
of the parities two, four, ... back: two prefix xors (:func:`states`), no loop.

The encoder chooses the levels by a Viterbi search (:func:`quantize`) minimizing
``sum (w - recon)**2 + lam * R(k | quantizer)``, vectorized across the chains (a loop
over the walked rows). The rate model ``R`` is a table of bits per signed level and
quantizer (:func:`rate_table`), estimated from the previous assignment and iterated
(:func:`fit_step`), as :func:`hemp_jax.codec.scalar.fit_ecsq` does for one quantizer.
:func:`fit_error` finds the coarsest step that meets a relative-error target. The coder
section of a dq record (:func:`encode_levels`, :func:`decode_levels`) codes each level
with a static table of its quantizer (``FORMAT.md``, "Dependent quantization").
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from hemp_jax.codec import context_models, kernel
from hemp_jax.codec.kernel import S_VALUES
from hemp_jax.codec.wire import FormatError, Reader, pack_bits

__all__ = [
  "NEXT",
  "DQ_SLOPE",
  "DQ_STEP_RATIO",
  "MAX_LEVEL",
  "MAX_SPAN",
  "DQ",
  "DQFit",
  "chains",
  "unchain",
  "states",
  "reconstruct",
  "grid",
  "values",
  "rate_table",
  "quantize",
  "viterbi",
  "fit_step",
  "fit_error",
  "estimate_bits",
  "encode_levels",
  "parse_tables",
  "decode_levels",
]

# next state, by state and parity of k
NEXT = np.array([[0, 2], [2, 0], [1, 3], [3, 1]], np.uint8)
# The lagrangian weight of the rate: lam = DQ_SLOPE * delta**2. At high rate the operational
# distortion-rate curve has slope -2 ln 2 * D (D = mean squared error per weight, falling
# by 4x per bit), as for ECSQ (scalar.ECSQ_SLOPE = 2 ln 2 / 12 with D = step**2 / 12); the
# 4-state trellis reaches D ~ 0.8 * (2 delta)**2 / 12 (its granular gain over a scalar
# quantizer of step 2 delta, about 0.9 dB), hence 2 ln 2 * 0.8 / 3.
DQ_SLOPE = 2 * math.log(2) * 0.8 / 3
# delta / the uniform step of equal error, about (the first guess of fit_error)
DQ_STEP_RATIO = 0.55
MAX_LEVEL = 1 << 20  # |k| in a file
MAX_SPAN = 1 << 16  # kmax - kmin + 1 in a file
_ITERS = 3  # Viterbi passes of a fit (each re-estimates the rate model)
_WARM_ITERS = 2  # ... when the rate model comes from a fit at a nearby step
_RATE_PRIOR = 0.5  # pseudo-count of every level of the rate model
_LEVEL_TABLE_BITS = 12  # a probability code per used level and quantizer (about)
_LEAF_OVERHEAD_BITS = 80  # step, level range, coder header, payload's final word (about)
_BLOCK = 1 << 16  # entries of the walked matrix whose candidates are computed at once
_ERROR_ROUNDS = 6  # secant steps of fit_error
_ERROR_SLACK = 0.995  # fit_error stops at an error within this fraction of the target

# Into each state s, the two transitions A (row 0) and B (row 1): predecessor and parity.
_PRED = np.array([[0, 2, 0, 2], [1, 3, 1, 3]])
_PAR = np.array([[0, 0, 1, 1], [1, 1, 0, 0]])
# candidate index 2q + p (quantizer q = predecessor >> 1, parity p) of each transition
_CAND = 2 * (_PRED >> 1) + _PAR
_PRED_FLAT = _PRED.reshape(-1).astype(np.uint8)  # by choice * 4 + state
_PAR_FLAT = _PAR.reshape(-1).astype(np.uint8)


class DQ:
  """A dependent-quantized leaf for :func:`hemp_jax.codec.compress` (in place of a codebook).

  Attributes:
    step: the grid step ``delta`` (a positive float32 value).
    levels: the integer levels ``k``, the leaf's shape.
    layout: the coder layout whose walked columns are the chains (0 or 1).
  """

  __slots__ = ("step", "levels", "layout")

  def __init__(self, step: float, levels: np.ndarray, layout: int = 0):
    self.step = float(np.float32(step))
    self.levels = np.asarray(levels)
    self.layout = int(layout)
    if not (math.isfinite(self.step) and self.step > 0):
      raise ValueError(f"dq step must be a positive finite float32, got {step}")
    if self.levels.dtype.kind not in "iu":
      raise ValueError(f"dq levels must be integers, got {self.levels.dtype}")
    if self.layout not in (0, 1):
      raise ValueError(f"dq layout must be 0 or 1, got {layout}")

  def __repr__(self) -> str:
    return f"DQ(step={self.step!r}, levels={self.levels.shape}, layout={self.layout})"


class DQFit(NamedTuple):
  """A fitted dependent quantizer of one tensor."""

  step: float  # delta, a float32 value
  levels: np.ndarray  # k, int32, the tensor's shape
  values: np.ndarray  # the reconstruction in the tensor's dtype (what the file decodes)
  sqerr: float  # ||w - values||**2
  bits: float  # estimated coded size (payload + tables), bits
  lam: float  # the rate weight it was fitted with
  rate: np.ndarray  # the rate model of its last pass (warm start of a nearby fit)
  layout: int

  @property
  def spec(self) -> DQ:
    """What :func:`hemp_jax.codec.compress` takes for this leaf."""
    return DQ(self.step, self.levels, self.layout)


# ------------------------------------------------------------------------ geometry


def chains(x: np.ndarray, layout: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """``(walked, valid)``: the walked matrix ``(T, W)`` of a leaf in ``layout`` (its columns
  are the chains) and which of its entries are real."""
  x = np.asarray(x)
  rows, cols = context_models.layouts(x.shape)[layout]
  y, seg_t, s = context_models.walked(context_models.matrix(x.reshape(-1), rows, cols, layout))
  return y, context_models.valid_mask(rows, cols, seg_t, s)


def unchain(y: np.ndarray, shape, layout: int = 0) -> np.ndarray:
  """Inverse of :func:`chains`: the leaf (``shape``) of a walked matrix."""
  shape = tuple(int(d) for d in shape)
  rows, cols = context_models.layouts(shape)[layout]
  _, s = context_models.segment_rows(rows, cols)
  x = context_models.unwalk(y, rows, cols, s)
  return context_models.unmatrix(x, layout).reshape(shape)


# --------------------------------------------------------------------- state machine


def states(k: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
  """The state (uint8) before each entry of the chains (columns) of ``k`` ``(T, W)``.

  Entries where ``valid`` is False do not advance the state; their value is the state the
  next valid entry of the chain starts from.
  """
  k = np.asarray(k)
  par = (k & 1).astype(np.uint8)
  if valid is None:
    rank = np.broadcast_to((np.arange(k.shape[0]) & 1).astype(np.uint8)[:, None], k.shape)
  else:
    valid = np.asarray(valid, bool)
    par &= valid
    # rank of each entry among the valid entries of its chain (for an invalid entry: the
    # rank the next valid one has), mod 2
    rank = np.cumsum(valid, axis=0, dtype=np.uint8) - valid
    rank &= 1
  # prefix xors (sums mod 2, uint8 wrapping) of the parities at odd and even ranks,
  # exclusive of the entry itself
  odd = np.empty(k.shape, np.uint8)
  even = np.empty(k.shape, np.uint8)
  if k.shape[0]:
    odd[0] = even[0] = 0
    np.cumsum(par[:-1] & rank[:-1], axis=0, dtype=np.uint8, out=odd[1:])
    np.cumsum(par[:-1] & (rank[:-1] ^ 1), axis=0, dtype=np.uint8, out=even[1:])
  # h: parities 1, 3, ... ranks back (the other rank parity); l: 2, 4, ... (the same)
  h = np.where(rank == 1, even, odd) & 1
  low = np.where(rank == 1, odd, even) & 1
  return (h << 1) | low


def reconstruct(k: np.ndarray, st: np.ndarray) -> np.ndarray:
  """Grid index ``j = 2k - sgn(k) * (state >= 2)`` of each level (int64)."""
  k = np.asarray(k, np.int64)
  return 2 * k - np.sign(k) * (np.asarray(st) >> 1)


def grid(k: np.ndarray, layout: int = 0) -> np.ndarray:
  """Grid index ``j`` (int64) of every entry of a leaf's levels ``k`` (its chains: the
  walk of ``layout``)."""
  k = np.asarray(k)
  y, valid = chains(k, layout)
  return unchain(reconstruct(y, states(y, valid)), k.shape, layout)


def values(j: np.ndarray, step: float, dtype) -> np.ndarray:
  """The decoded values ``j * step`` (exact in float64), rounded to ``dtype``."""
  with np.errstate(over="ignore"):
    return (np.asarray(j, np.float64) * np.float64(np.float32(step))).astype(dtype)


# -------------------------------------------------------------------------- quantizer


def rate_table(k: np.ndarray, st: np.ndarray, valid: np.ndarray, cap: int) -> np.ndarray:
  """Bits ``(2, 2 cap + 1)`` of each signed level ``-cap .. cap`` by quantizer: minus the
  log2 of its frequency in the assignment ``k`` (states ``st``), each level given
  :data:`_RATE_PRIOR` more (so unused levels cost about ``log2`` of the count, not inf)."""
  size = 2 * cap + 1
  sel = np.asarray(valid, bool)
  q = (st[sel] >> 1).astype(np.int64)
  kc = np.clip(k[sel], -cap, cap).astype(np.int64) + cap
  counts = np.bincount(q * size + kc, minlength=2 * size).reshape(2, size).astype(np.float64)
  counts += _RATE_PRIOR
  return np.log2(counts.sum(axis=1, keepdims=True) / counts)


def _level_bits(rate: np.ndarray, k: np.ndarray, q: int) -> np.ndarray:
  """Bits of the signed levels ``k`` in quantizer ``q``; beyond the table's range, its
  edge plus an Exp-Golomb length of the excess."""
  cap = (rate.shape[1] - 1) // 2
  idx = np.clip(k, -cap, cap)
  bits = rate[q][idx + cap]
  over = np.abs(k) - cap
  if (over > 0).any():
    bits = bits + np.where(over > 0, 2 * np.floor(np.log2(np.maximum(over, 1))) + 1, 0)
  return bits


def _candidates(w: np.ndarray, delta: float, lam: float, rate: np.ndarray):
  """Cost and signed level ``(..., 4)`` of the best level of each quantizer ``q`` and
  parity ``p`` (index ``2q + p``) for the weights ``w``: of the two grid points of the
  quantizer around ``|w|`` (one of each parity) and zero (even)."""
  a = np.abs(w) / delta
  sign = np.where(w < 0, -1, 1)
  d2 = delta * delta
  cost = np.empty(w.shape + (4,))
  kk = np.empty(w.shape + (4,), np.int64)
  for q in (0, 1):
    m = np.floor(a / 2 if q == 0 else (a + 1) / 2).astype(np.int64)
    mo = m & 1
    odd, even = m + 1 - mo, m + mo  # the odd and the even one of m, m + 1
    r_odd = 2 * odd - q
    r_even = 2 * even - q * (even > 0)
    c_odd = (a - r_odd) ** 2 * d2 + lam * _level_bits(rate, sign * odd, q)
    c_even = (a - r_even) ** 2 * d2 + lam * _level_bits(rate, sign * even, q)
    c_zero = a * a * d2 + lam * rate[q][(rate.shape[1] - 1) // 2]
    zero = c_zero < c_even
    cost[..., 2 * q] = np.where(zero, c_zero, c_even)
    kk[..., 2 * q] = np.where(zero, 0, sign * even)
    cost[..., 2 * q + 1] = c_odd
    kk[..., 2 * q + 1] = sign * odd
  return cost, kk


def viterbi(w, valid, delta: float, lam: float, rate: np.ndarray):
  """``(k, states)``: the levels (int32) of least ``sum (w - recon)**2 + lam * bits``
  over the chains of ``w`` ``(T, W)`` (see :func:`quantize`) and the state before each."""
  w = np.asarray(w, np.float64)
  valid = np.asarray(valid, bool)
  rows, width = w.shape
  full = valid.all(axis=1)
  acc = np.full((4, width), np.inf)
  acc[0] = 0.0
  choice = np.empty((rows, 4, width), bool)
  block = max(1, _BLOCK // max(1, width))
  for b0 in range(0, rows, block):
    cost, _ = _candidates(w[b0 : b0 + block], delta, lam, rate)
    cost = np.ascontiguousarray(cost.transpose(0, 2, 1))  # (rows, 4, width)
    for i in range(cost.shape[0]):
      t = b0 + i
      c = cost[i]
      via_a = acc[_PRED[0]] + c[_CAND[0]]
      via_b = acc[_PRED[1]] + c[_CAND[1]]
      pick = via_b < via_a
      new = np.where(pick, via_b, via_a)
      if not full[t]:
        new = np.where(valid[t], new, acc)
      choice[t] = pick
      acc = new
  # backtrack from the best final state of each chain
  st = np.empty((rows, width), np.uint8)
  par = np.empty((rows, width), np.uint8)
  s = np.argmin(acc, axis=0).astype(np.uint8)
  cols = np.arange(width)
  for t in range(rows - 1, -1, -1):
    idx = choice[t, s, cols].astype(np.uint8) * 4 + s
    pred = _PRED_FLAT[idx]
    if not full[t]:
      pred = np.where(valid[t], pred, s)
    st[t] = pred
    par[t] = _PAR_FLAT[idx]
    s = pred
  k = np.zeros((rows, width), np.int32)
  cand = (2 * (st >> 1) + par).astype(np.int64)
  for b0 in range(0, rows, block):
    _, kk = _candidates(w[b0 : b0 + block], delta, lam, rate)
    k[b0 : b0 + block] = np.take_along_axis(kk, cand[b0 : b0 + block, :, None], axis=2)[..., 0]
  k[~valid] = 0
  return k, st


def quantize(w, valid, delta: float, lam: float, rate: np.ndarray) -> np.ndarray:
  """The levels ``k`` (int32, ``(T, W)``) of the chains (columns) of ``w``.

  The Viterbi search over the 4-state trellis of every chain at once (a loop over the
  rows), minimizing ``sum (w - j * delta)**2 + lam * rate[q, k]`` over the valid entries,
  ``j`` the reconstruction and ``q`` the quantizer of each entry; per state it considers
  the quantizer's two grid points around the weight and zero.

  Args:
    w: the weights, ``(T, W)`` (columns: chains).
    valid: which entries are real; others are skipped (level 0).
    delta: the grid step.
    lam: the rate weight (squared error per bit).
    rate: bits ``(2, 2 cap + 1)`` of levels ``-cap .. cap`` by quantizer
      (:func:`rate_table`); levels beyond cost the edge plus an Exp-Golomb length.
  """
  return viterbi(w, valid, delta, lam, rate)[0]


def _cap(w: np.ndarray, delta: float) -> int:
  """The largest ``|k|`` a candidate of weights ``w`` can have, plus one."""
  amax = float(np.abs(w).max(initial=0.0)) / delta
  return int(math.floor((amax + 1) / 2)) + 2


def _initial_rate(w, valid, delta: float, cap: int) -> np.ndarray:
  """A first rate model: each quantizer's levels nearest to the weights, as if every
  weight were in it."""
  a = w[valid] / delta
  k0 = np.rint(a / 2).astype(np.int64)
  k1 = (np.sign(a) * np.floor((np.abs(a) + 1) / 2 + 0.5)).astype(np.int64)
  size = 2 * cap + 1
  counts = np.stack(
    [np.bincount(np.clip(kq, -cap, cap) + cap, minlength=size) for kq in (k0, k1)]
  ).astype(np.float64)
  counts += _RATE_PRIOR
  return np.log2(counts.sum(axis=1, keepdims=True) / counts)


def _resized(rate: np.ndarray, cap: int) -> np.ndarray:
  """A rate model over ``-cap .. cap``: cropped, or widened with its edge levels' bits."""
  old = (rate.shape[1] - 1) // 2
  idx = np.clip(np.arange(-cap, cap + 1), -old, old) + old
  return rate[:, idx]


def estimate_bits(k: np.ndarray, st: np.ndarray, valid: np.ndarray) -> float:
  """Coded size (bits) of levels ``k`` with static tables per quantizer: their empirical
  conditional entropy, a table code per used level and quantizer, the level range."""
  sel = np.asarray(valid, bool)
  kv = k[sel].astype(np.int64)
  if kv.size == 0:
    return float(_LEAF_OVERHEAD_BITS)
  lo = int(kv.min())
  span = int(kv.max()) - lo + 1
  q = (st[sel] >> 1).astype(np.int64)
  counts = np.bincount(q * span + (kv - lo), minlength=2 * span).reshape(2, span)
  used = int((counts.sum(axis=0) > 0).sum())
  bitmap = span if used < span else 0
  return kernel.cond_bits(counts) + used * _LEVEL_TABLE_BITS + bitmap + _LEAF_OVERHEAD_BITS


def fit_step(
  x: np.ndarray,
  step: float,
  *,
  lam: float | None = None,
  layout: int = 0,
  iters: int | None = None,
  rate: np.ndarray | None = None,
) -> DQFit:
  """Dependent quantization of ``x`` with the grid step ``step`` (rounded to float32).

  Args:
    x: the tensor (a float dtype; its values must be finite).
    step: ``delta``.
    lam: the rate weight; default ``DQ_SLOPE * delta**2``.
    layout: the coder layout whose walked columns are the chains.
    iters: Viterbi passes, each with the rate model of the previous one's levels
      (default 3, or 2 with ``rate``).
    rate: a rate model to start from (e.g. that of a fit at a nearby step); default the
      levels nearest the weights in each quantizer.

  Returns:
    The :class:`DQFit` of the last pass.
  """
  x = np.asarray(x)
  delta = float(np.float32(step))
  if not (math.isfinite(delta) and delta > 0):
    raise ValueError(f"step must be a positive float32, got {step}")
  lam = DQ_SLOPE * delta * delta if lam is None else float(lam)
  y, valid = chains(x, layout)
  w = y.astype(np.float64)
  cap = _cap(w, delta)
  if 2 * cap > MAX_LEVEL:
    raise ValueError(
      f"step {delta:g} needs levels up to {cap} for values up to "
      f"{float(np.abs(w).max()):g} (at most {MAX_LEVEL}); use a larger step"
    )
  if iters is None:
    iters = _ITERS if rate is None else _WARM_ITERS
  rate = _initial_rate(w, valid, delta, cap) if rate is None else _resized(rate, cap)
  for i in range(max(1, int(iters))):
    k, st = viterbi(w, valid, delta, lam, rate)
    rate = rate_table(k, st, valid, cap)
  vals = values(reconstruct(k, st), delta, x.dtype)
  d = (w - vals.astype(np.float64))[valid]
  levels = unchain(k, x.shape, layout)
  out = unchain(vals, x.shape, layout)
  bits = estimate_bits(k, st, valid)
  return DQFit(delta, levels, out, float(d @ d), bits, lam, rate, layout)


def _rel(fit: DQFit, energy: float) -> float:
  return math.sqrt(fit.sqerr / energy) if energy > 0 else 0.0


def fit_error(
  x: np.ndarray,
  max_rel_error: float,
  *,
  step: float | None = None,
  layout: int = 0,
  rounds: int = _ERROR_ROUNDS,
) -> DQFit:
  """The coarsest step whose dependent quantization of ``x`` has a relative L2 error
  ``||x - q(x)|| / ||x||`` of at most ``max_rel_error`` (secant steps on log step against
  log error, which is close to linear; each fit starts from its predecessor's rate model).

  Args:
    x: the tensor.
    max_rel_error: the bound.
    step: a first guess (default :data:`DQ_STEP_RATIO` times the high-rate uniform step
      ``sqrt(12) * max_rel_error * rms(x)``).
    layout: the coder layout whose walked columns are the chains.
    rounds: fits after the first at most (then the step shrinks until the bound holds).
  """
  x = np.asarray(x)
  target = float(max_rel_error)
  if not target > 0:
    raise ValueError(f"max_rel_error must be positive, got {max_rel_error}")
  xf = x.astype(np.float64).reshape(-1)
  energy = float(xf @ xf)
  if step is None:
    rms = math.sqrt(energy / max(xf.size, 1)) or 1.0
    step = DQ_STEP_RATIO * math.sqrt(12) * target * rms
  fit = fit_step(x, step, layout=layout)
  tried = [(math.log(fit.step), math.log(max(_rel(fit, energy), 1e-300)), fit)]
  for _ in range(int(rounds)):
    good = [t for t in tried if t[1] <= math.log(target)]
    best = max(good, key=lambda t: t[0]) if good else None
    if best is not None and best[1] >= math.log(target * _ERROR_SLACK):
      break
    # secant through the two nearest tries (slope 1 when there is one)
    near = sorted(tried, key=lambda t: abs(t[1] - math.log(target)))[:2]
    slope = 1.0
    if len(near) == 2 and abs(near[0][1] - near[1][1]) > 1e-9:
      slope = (near[0][1] - near[1][1]) / (near[0][0] - near[1][0])
      slope = min(max(slope, 0.25), 4.0)
    ls = near[0][0] + (math.log(target * (1 + _ERROR_SLACK) / 2) - near[0][1]) / slope
    if best is not None:  # between the best good try and the nearest bad one above it
      above = [t[0] for t in tried if t[1] > math.log(target) and t[0] > best[0]]
      hi = min(above) if above else ls + 1.0
      if not best[0] < ls < hi:
        ls = (best[0] + hi) / 2
    fit = fit_step(x, math.exp(ls), layout=layout, rate=near[0][2].rate)
    tried.append((math.log(fit.step), math.log(max(_rel(fit, energy), 1e-300)), fit))
  good = [t for t in tried if t[1] <= math.log(target)]
  if good:
    return max(good, key=lambda t: t[0])[2]
  fit = min(tried, key=lambda t: t[1])[2]
  while _rel(fit, energy) > target:
    fit = fit_step(x, fit.step * 0.97 * target / max(_rel(fit, energy), target), layout=layout)
  return fit


# ---------------------------------------------------------------------------- coder


def _row_order(h: np.ndarray, valid: np.ndarray):
  """Coding order of the walked entries: row by row, in each row the valid entries of
  quantizer 0 (left to right), then those of quantizer 1. Returns the place of every
  valid entry (row-major) in that order, and the number of entries per row and quantizer
  ``(T, 2)``."""
  h = h.astype(bool) & valid
  q0 = valid & ~h
  n0 = q0.sum(axis=1)
  n1 = h.sum(axis=1)
  start = np.concatenate([[0], np.cumsum(n0 + n1)[:-1]])
  rank0 = np.cumsum(q0, axis=1) - 1
  rank1 = np.cumsum(h, axis=1) - 1
  pos = np.where(h, (start + n0)[:, None] + rank1, start[:, None] + rank0)
  return pos[valid], np.stack([n0, n1], axis=1)


def encode_levels(symbols: np.ndarray, levels: np.ndarray, layout: int) -> bytes:
  """The coder section of a dq record (``FORMAT.md``): a leaf's compact symbols (its
  shape; symbol ``s`` is the level ``levels[s]``) coded row by row over the walk of
  ``layout``, each with the static table of its quantizer."""
  from hemp_jax.codec import model_selection  # the table fit of the version-3 coder

  a = int(levels.size)
  y, valid = chains(np.asarray(symbols, np.int32), layout)
  st = states(levels[y], valid)
  h = (st >> 1).astype(np.int64)
  counts = np.bincount(h[valid] * a + y[valid], minlength=2 * a).reshape(2, a)
  _, s_index, b, codes = model_selection.best_codes(counts)
  weights = kernel.int_weights(codes, S_VALUES[s_index])
  models = [
    kernel.Categorical(weights[q].astype(np.float32), perfect=False)
    if (weights[q] > 0).sum() > 1
    else None
    for q in (0, 1)
  ]
  pos, per_row = _row_order(h, valid)
  seq = np.empty(pos.size, np.int32)
  seq[pos] = y[valid]
  enc = kernel.RangeEncoder()
  bounds = np.concatenate([[0], np.cumsum(per_row.reshape(-1))])
  for i in np.flatnonzero(per_row.reshape(-1)):
    model = models[i & 1]
    if model is not None:
      enc.encode(seq[bounds[i] : bounds[i + 1]], model)
  head = bytes([s_index | (b - 1) << 3])
  return head + pack_bits(codes.reshape(-1), b) + kernel.words_to_bytes(enc.get_compressed())


def parse_tables(reader: Reader, alphabet: int) -> tuple[int, np.ndarray]:
  """Reads the header and tables of a dq coder section: ``(s, codes (2, A))``."""
  head = reader.u8("dq coder header")
  if head >> 6:
    reader.fail(f"dq coder header {head:#04x} has unknown bits")
  s, b = S_VALUES[head & 7], ((head >> 3) & 7) + 1
  return s, kernel.read_codes(reader, 2, int(alphabet), s, b)


def decode_levels(reader: Reader, shape, levels: np.ndarray, layout: int) -> np.ndarray:
  """Decodes a dq coder section (to ``reader.end``): the level ``k`` of every entry (int64,
  ``shape``). ``levels``: the level of each compact symbol, increasing."""
  shape = tuple(int(d) for d in shape)
  a = int(levels.size)
  s, codes = parse_tables(reader, a)
  payload = reader.take(reader.remaining, "payload")
  weights = kernel.int_weights(codes, s)
  live = (weights > 0).sum(axis=1)
  detsym = np.argmax(weights > 0, axis=1).astype(np.int32)
  parity = (levels & 1).astype(np.uint8)

  rows, cols = context_models.layouts(shape)[layout]
  seg_t, seg = context_models.segment_rows(rows, cols)
  valid = context_models.valid_mask(rows, cols, seg_t, seg)
  widths = valid.sum(axis=1)

  def run():
    dec = kernel.RangeDecoder(kernel.bytes_to_words(payload))
    models = [
      kernel.Categorical(weights[q].astype(np.float32), perfect=False) if live[q] > 1 else None
      for q in (0, 1)
    ]
    y = np.zeros(valid.shape, np.int32)
    h = np.zeros(valid.shape[1], bool)  # state = 2h + l of each chain
    low = np.zeros(valid.shape[1], bool)
    for t in range(seg_t):
      w = int(widths[t])
      ht = h[:w].copy()
      row = y[t, :w]
      for q, idx in ((0, np.flatnonzero(~ht)), (1, np.flatnonzero(ht))):
        if not idx.size:
          continue
        if live[q] == 0:
          raise FormatError(f"{reader.what}: a level of quantizer {q}, which has no table")
        row[idx] = detsym[q] if models[q] is None else dec.decode(models[q], idx.size)
      h[:w], low[:w] = low[:w] ^ parity[row], ht
    return y

  return unchain(levels[kernel.range_decoded(reader, a, run)], shape, layout)
