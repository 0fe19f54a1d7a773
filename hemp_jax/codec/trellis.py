"""Dependent (trellis-coded) quantization of one tensor, as in VVC and MPEG NNC.

Two scalar quantizers share a grid of step ``delta``: ``Q0`` reconstructs ``2k * delta``
and ``Q1`` reconstructs ``(2k - sgn(k)) * delta`` (``k`` the coded integer level; both
have a zero). A state machine picks the quantizer of each entry: in VVC's 4 states,
states 0 and 1 use ``Q0``, states 2 and 3 ``Q1``, and ``next = NEXT[state][k & 1]``, from
state 0 at the start of every chain. Together the two quantizers cover the grid
``j * delta`` twice as finely as either alone, while each ``k`` is coded in the alphabet
of one of them. Larger machines (:data:`MACHINES`, ``2**nu`` states from Ungerboeck's
one-dimensional trellis codes, as in trellis-coded quantization) get closer to the
granular gain of a lattice at the same rate; the 4-state one is ``nu = 2``.

The chains are the columns of the coder's walked matrix (:func:`chains`: the geometry of
:func:`hemp_jax.codec.context_models.walked` and ``valid_mask``), read top to bottom, so
the decoder knows the state of walked row ``t`` from the rows above it. Entries outside
the mask are skipped (they do not advance the state).

The 4-state machine is a shift register over two bits: with ``state = 2h + l``, the next
state has ``h' = l xor (k & 1)`` and ``l' = h``, so the quantizer ``h`` of an entry is the
xor of the parities one, three, five, ... entries back in its chain; the larger ones are
the feedback shift registers of their parity-check polynomials (:func:`_machine`).

The encoder chooses the levels by a Viterbi search (:func:`quantize`) minimizing
``sum (w - recon)**2 + lam * R(k | quantizer)``, vectorized across the chains (a loop
over the walked rows). The rate model ``R`` is a table of bits per signed level and
quantizer, and per scale context of the magnitude coder where the fit has the leaf's
geometry (:func:`rate_table`, :func:`weight_contexts`), estimated from the previous
assignment and iterated
(:func:`fit_step`), as :func:`hemp_jax.codec.scalar.fit_ecsq` does for one quantizer.
:func:`fit_error` finds the coarsest step that meets a relative-error target. The coder
section of a dq record (:func:`encode_levels`, :func:`decode_levels`) codes each level
with a static table of its quantizer (``FORMAT.md``, "Dq record", "Coder of dq records"),
or the magnitude coder does (:mod:`hemp_jax.codec.magnitude`).
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
  "POLYNOMIALS",
  "STATE_BITS",
  "MACHINES",
  "DQ_STATE_BITS",
  "Machine",
  "DQ_SLOPE",
  "DQ_STEP_RATIO",
  "DQ_WINDOW",
  "MAX_LEVEL",
  "MAX_SPAN",
  "DQ",
  "DQFit",
  "chain_layout",
  "chains",
  "unchain",
  "states",
  "reconstruct",
  "grid",
  "values",
  "level_counts",
  "rate_table",
  "weight_contexts",
  "quantize",
  "viterbi",
  "fit_step",
  "fit_error",
  "sample_curve",
  "estimate_bits",
  "encode_levels",
  "parse_tables",
  "decode_levels",
  "level_values",
]

# Parity-check polynomials (h0, h1) of Ungerboeck's one-dimensional trellis codes by
# state bits nu (octal, as tabulated): nu = 2 is the 4-state machine of VVC and NNC.
POLYNOMIALS = {2: (0o5, 0o2), 3: (0o13, 0o04), 4: (0o23, 0o04), 5: (0o45, 0o10), 6: (0o103, 0o024)}
STATE_BITS = tuple(POLYNOMIALS)


class Machine(NamedTuple):
  """The state machine of ``2**nu`` states (FORMAT.md, "Dq record")."""

  nu: int
  next: np.ndarray  # (S, 2) uint8: next state by state and parity of k
  pred: np.ndarray  # (S, 2) intp: the state before n, by the parity of the level between
  step: np.ndarray  # (4 S,) uint8: next state by state * 4 + valid * 2 + parity

  @property
  def shift(self) -> int:
    """The quantizer of state ``s`` is ``s >> shift``."""
    return self.nu - 1


def _machine(nu: int) -> Machine:
  """The machine of ``nu`` state bits ``(s_1 .. s_nu)``, state ``sum s_i 2**(nu - i)``:
  the quantizer is ``s_1``, and a level of parity ``p`` leads to ``s'_i = s_(i+1) xor
  (h0_i and s_1) xor (h1_i and p)`` (``s_(nu+1) = 0``, ``h_i`` bit ``i`` of ``h``)."""
  h0, h1 = POLYNOMIALS[nu]
  size = 1 << nu
  nxt = np.zeros((size, 2), np.uint8)
  for s in range(size):
    for p in (0, 1):
      bits = [(s >> (nu - i)) & 1 for i in range(1, nu + 1)] + [0]  # s_1 .. s_(nu+1)
      new = [bits[i] ^ ((h0 >> i) & bits[0]) ^ ((h1 >> i) & p) for i in range(1, nu + 1)]
      nxt[s, p] = sum(b << (nu - i) for i, b in enumerate(new, 1))
  pred = np.zeros((size, 2), np.intp)
  pred[nxt, np.arange(2)] = np.arange(size)[:, None]
  keep = np.repeat(np.arange(size, dtype=np.uint8), 2).reshape(size, 2)
  return Machine(nu, nxt, pred, np.concatenate([keep, nxt], axis=1).reshape(-1))


MACHINES = {nu: _machine(nu) for nu in STATE_BITS}
# The trellis of hemp_jax.codec.ptq's dq method: 32 states (granular gain grows with the
# states, the Viterbi's work with them; experiments/COMPRESS.md).
DQ_STATE_BITS = 5
NEXT = MACHINES[2].next  # the 4-state machine: next state by state and parity of k
# The lagrangian weight of the rate: lam = DQ_SLOPE * delta**2. At high rate the operational
# distortion-rate curve has slope -2 ln 2 * D (D = mean squared error per weight, falling
# by 4x per bit), as for ECSQ (scalar.ECSQ_SLOPE = 2 ln 2 / 12 with D = step**2 / 12); the
# 4-state trellis reaches D ~ 0.8 * (2 delta)**2 / 12 at lam = 0 (about 1 dB below a scalar
# quantizer of step 2 delta, whose levels it codes), hence 2 ln 2 * 0.8 / 3; with the
# magnitude coder's contexts in the rate model, 0.75 times that made the smallest files
# of a sweep (experiments/COMPRESS.md).
DQ_SLOPE = 0.75 * 2 * math.log(2) * 0.8 / 3
# delta / the uniform step of equal error, about (the first guess of fit_error)
DQ_STEP_RATIO = 0.55
# steps / (DQ_STEP_RATIO * the uniform step) of the curves of a bits-per-param search
DQ_WINDOW = 2.0 ** np.arange(-2 / 3, 0.7, 1 / 3)
MAX_LEVEL = 1 << 20  # |k| in a file
MAX_SPAN = 1 << 16  # kmax - kmin + 1 in a file
_ITERS = 3  # Viterbi passes of a fit (each re-estimates the rate model)
_WARM_ITERS = 1  # ... when the rate model comes from a fit at a nearby step
_RATE_PRIOR = 0.5  # pseudo-count of every level of the rate model
_CONTEXTS = 16  # scale contexts of the rate model (the magnitude coder's default)
_CONTEXT_PRIOR = 16.0  # weight of the pooled frequencies in each context's rate model
_LEVEL_TABLE_BITS = 12  # a probability code per used level and quantizer (about)
_LEAF_OVERHEAD_BITS = 80  # step, level range, coder header, payload's final word (about)
_BLOCK = 1 << 16  # entries of the walked matrix whose candidates are computed at once
_SAMPLE = 1 << 16  # weights of the step search of fit_error, and of the first rate model
_SEARCH_ROWS = 64  # length of the chains of the step search
_ERROR_ROUNDS = 6  # secant steps of fit_error
_ERROR_SLACK = 0.995  # fit_error stops at an error within this fraction of the target
_FINAL_FITS = 3  # secant fits of the whole tensor in fit_error
_BRACKET_FITS = 4  # then bisection fits, while the best is under _BRACKET_SLACK x the bound
_BRACKET_SLACK = 0.98
_BOUND_MARGIN = 1 - 1e-9  # the bound fit_error meets: sums in another order stay within it


class DQ:
  """A dependent-quantized leaf for :func:`hemp_jax.codec.compress` (in place of a codebook).

  Attributes:
    step: the grid step ``delta`` (a positive float32 value).
    levels: the integer levels ``k``, the leaf's shape.
    layout: the coder layout whose walked columns are the chains (0 or 1).
    nu: the state bits of the trellis (:data:`STATE_BITS`; 2: the 4 states of VVC).
  """

  __slots__ = ("step", "levels", "layout", "nu")

  def __init__(self, step: float, levels: np.ndarray, layout: int = 0, nu: int = 2):
    self.step = float(np.float32(step))
    self.levels = np.asarray(levels)
    self.layout = int(layout)
    self.nu = int(nu)
    if self.nu not in MACHINES:
      raise ValueError(f"dq state bits must be one of {STATE_BITS}, got {nu}")
    if not (math.isfinite(self.step) and self.step > 0):
      raise ValueError(f"dq step must be a positive finite float32, got {step}")
    if self.levels.dtype.kind not in "iu":
      raise ValueError(f"dq levels must be integers, got {self.levels.dtype}")
    if self.layout not in (0, 1):
      raise ValueError(f"dq layout must be 0 or 1, got {layout}")

  def __repr__(self) -> str:
    return f"DQ(step={self.step!r}, levels={self.levels.shape}, layout={self.layout}, nu={self.nu})"


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
  nu: int = 2

  @property
  def spec(self) -> DQ:
    """What :func:`hemp_jax.codec.compress` takes for this leaf."""
    return DQ(self.step, self.levels, self.layout, self.nu)


# ------------------------------------------------------------------------ geometry


def chain_layout(shape) -> int:
  """The layout whose walk gives a leaf of ``shape`` its chains: for a kernel of three or
  more axes, layout 1 where the first axis is longer than the last (PyTorch/ONNX ``(out,
  in, kh, kw)``: the output units first, so that a matrix row of the layout is one input
  position across the output units), else layout 0 (Flax ``(kh, kw, in, out)``); for a
  matrix, the layout of fewer walked columns (longer chains: each starts in state 0)."""
  shape = tuple(int(d) for d in shape)
  lays = context_models.layouts(shape)
  if len(lays) < 2:
    return 0
  if len(shape) >= 3:
    return int(shape[0] > shape[-1])
  width = [context_models.segment_rows(rows, cols)[1] * cols for rows, cols in lays]
  return int(width[1] < width[0])


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


def states(k: np.ndarray, valid: np.ndarray | None = None, nu: int = 2) -> np.ndarray:
  """The state (uint8) before each entry of the chains (columns) of ``k`` ``(T, W)``.

  Entries where ``valid`` is False do not advance the state; their value is the state the
  next valid entry of the chain starts from. A loop over the rows with numpy across the
  chains: each row is one lookup in a table of (state, valid, parity), much faster than
  the prefix sums of the closed form along the rows, which numpy does not vectorize
  across columns.
  """
  k = np.asarray(k)
  code = (k & 1).astype(np.uint8)
  if valid is not None:
    code &= np.asarray(valid, np.uint8)
    code |= np.asarray(valid, np.uint8) << 1
  else:
    code |= 2
  step = MACHINES[nu].step
  out = np.empty(k.shape, np.uint8)
  s = np.zeros(k.shape[1:], np.uint8)
  for t in range(k.shape[0]):
    out[t] = s
    s = step.take((s << 2) | code[t])
  return out


def reconstruct(k: np.ndarray, st: np.ndarray, nu: int = 2) -> np.ndarray:
  """Grid index ``j = 2k - sgn(k) * q`` of each level (int64), ``q`` the quantizer of its
  state ``st``."""
  k = np.asarray(k, np.int64)
  return 2 * k - np.sign(k) * (np.asarray(st) >> (nu - 1))


def grid(k: np.ndarray, layout: int = 0, nu: int = 2) -> np.ndarray:
  """Grid index ``j`` (int64) of every entry of a leaf's levels ``k`` (its chains: the
  walk of ``layout``; the machine of ``nu`` state bits)."""
  k = np.asarray(k)
  y, valid = chains(k, layout)
  return unchain(reconstruct(y, states(y, valid, nu), nu), k.shape, layout)


def values(j: np.ndarray, step: float, dtype) -> np.ndarray:
  """The decoded values ``j * step`` (exact in float64), rounded to ``dtype``."""
  with np.errstate(over="ignore"):
    return (np.asarray(j, np.float64) * np.float64(np.float32(step))).astype(dtype)


# -------------------------------------------------------------------------- quantizer


def level_counts(
  k: np.ndarray, st: np.ndarray, valid: np.ndarray, cap: int, ctx=None, groups: int = 1, nu=2
) -> np.ndarray:
  """Counts ``(2, 2 cap + 1)`` of the signed levels ``-cap .. cap`` (clipped) by quantizer
  over the valid entries of ``k`` (states ``st`` of the machine of ``nu`` bits); with
  ``ctx`` (a context ``< groups`` of each entry), ``(groups, 2, 2 cap + 1)`` by context
  and quantizer."""
  size = 2 * cap + 1
  valid = np.asarray(valid, bool)
  if not valid.all():
    k, st = k[valid], st[valid]
    ctx = None if ctx is None else ctx[valid]
  idx = np.clip(k, -cap, cap).astype(np.int64).reshape(-1)
  idx += (st.reshape(-1) >> (nu - 1)).astype(np.int64) * size + cap
  if ctx is None:
    return np.bincount(idx, minlength=2 * size).reshape(2, size)
  idx += ctx.reshape(-1).astype(np.int64) * (2 * size)
  return np.bincount(idx, minlength=groups * 2 * size).reshape(groups, 2, size)


def rate_table(counts: np.ndarray) -> np.ndarray:
  """Bits (float32, the shape of ``counts``) of each level by quantizer: minus the log2 of
  its frequency in :func:`level_counts`, each level given :data:`_RATE_PRIOR` more (so an
  unused level costs about ``log2`` of the count, not inf). Counts by context
  ``(G, 2, size)``: each context's counts plus :data:`_CONTEXT_PRIOR` times the
  frequencies of all contexts together (as the magnitude coder's adaptive tables)."""
  c = counts.astype(np.float64)
  if c.ndim == 3:
    pooled = c.sum(axis=0) + _RATE_PRIOR
    c = c + _CONTEXT_PRIOR * pooled / pooled.sum(axis=-1, keepdims=True)
  else:
    c = c + _RATE_PRIOR
  return np.log2(c.sum(axis=-1, keepdims=True) / c).astype(np.float32)


def _level_bits(flat: np.ndarray, k: np.ndarray, off, cap: int, inside: bool) -> np.ndarray:
  """Bits (float32) of the signed levels ``k`` in a quantizer's table ``flat`` (its rows
  by context, flattened), ``off`` the row offset of each entry plus ``cap`` (or ``cap``
  alone); beyond the table's range (unless ``inside`` says there is none), its edge plus
  an Exp-Golomb length of the excess."""
  if inside or int(np.abs(k).max(initial=0)) <= cap:
    return flat.take(k + off)
  over = np.abs(k) - cap
  extra = np.where(over > 0, 2 * np.floor(np.log2(np.maximum(over, 1))) + 1, 0)
  return flat.take(np.clip(k, -cap, cap) + off) + extra.astype(np.float32)


def _candidates(w: np.ndarray, delta: float, mu: float, tables, off, cap, kdtype, inside: bool):
  """Cost and signed level ``(rows, 2, 2, W)`` of the best level of each quantizer ``q``
  and parity ``p`` (axes 1 and 2) for the weights ``w`` ``(rows, W)``: of the quantizer's
  two grid points around ``|w|`` (one of each parity) and zero. Costs (float32) are in
  units of ``delta**2``: ``(|w| / delta - j)**2 + mu * bits``.

  Selections are arithmetic blends with 0/1 masks rather than ``np.where``, whose
  branches mispredict on random masks (several times slower here).
  """
  w = np.asarray(w, np.float32)
  a = np.abs(w) * np.float32(1 / delta)
  sign = np.int32(1) - np.int32(2) * np.signbit(w)
  floor = np.floor(a)
  g = floor.astype(np.int32)  # the grid point at or below |w|
  frac = a - floor
  odd_g = g & 1
  # squared distances to the grid points g - 1 (0 where g = 0: the zero), g, g + 1, g + 2
  d_below = np.square(frac + (g > 0))
  d_at, d_next, d_far = np.square(frac), np.square(1 - frac), np.square(2 - frac)
  d_zero = np.square(a)
  shape = (w.shape[0], 2, 2, w.shape[1])
  cost = np.empty(shape, np.float32)
  lev = np.empty(shape, kdtype)
  mu = np.float32(mu)
  for q in (0, 1):
    # quantizer q's grid points around |w|: g and g + 2 where g has its parity (q = 1:
    # odd), else g - 1 and g + 1; the level of point j is j // 2 (q = 0), (j + 1) // 2
    own = odd_g if q else 1 - odd_g
    k_lo = (g + (q - 1) + own) >> 1
    sk_lo = sign * k_lo
    sk_hi = sk_lo + sign
    flat = tables[q]
    c_lo = d_below + own * (d_at - d_below) + mu * _level_bits(flat, sk_lo, off, cap, inside)
    c_hi = d_next + own * (d_far - d_next) + mu * _level_bits(flat, sk_hi, off, cap, inside)
    lo_odd = k_lo & 1
    c_even = c_lo + lo_odd * (c_hi - c_lo)
    c_zero = d_zero + mu * (flat.take(off) if np.ndim(off) else flat[cap])
    cost[:, q, 0] = np.minimum(c_zero, c_even)
    lev[:, q, 0] = (sk_lo + lo_odd * sign) * (c_zero >= c_even)
    cost[:, q, 1] = c_hi + lo_odd * (c_lo - c_hi)
    lev[:, q, 1] = sk_hi - lo_odd * sign
  return cost, lev


def viterbi(w, valid, delta: float, lam: float, rate: np.ndarray, ctx=None, nu: int = 2):
  """``(k, states)``: the levels (int32) of least ``sum (w - recon)**2 + lam * bits``
  over the chains of ``w`` ``(T, W)`` (see :func:`quantize`) and the state before each,
  for the machine of ``nu`` state bits. ``rate``: bits by quantizer ``(2, size)``, or by
  context and quantizer ``(G, 2, size)`` with ``ctx`` the context of every entry (uint8
  ``(T, W)``).

  Each state ``n`` has two predecessors, one per parity ``p`` of the level between
  (:class:`Machine`), both of the quantizer ``q(n)``, so a row is two gathers of the path
  costs and of the candidates ``cost[q(n), p]``, two additions and a minimum over
  ``(S, W)`` arrays.
  """
  w = np.asarray(w)
  valid = np.asarray(valid, bool)
  rows, width = w.shape
  full = valid.all(axis=1)
  rate = np.asarray(rate, np.float32)
  rate = rate[None] if rate.ndim == 2 else rate
  size = rate.shape[-1]
  cap = (size - 1) // 2
  if rate.shape[0] == 1:
    ctx = None
  tables = [np.ascontiguousarray(rate[:, q]).reshape(-1) for q in (0, 1)]
  kmax = int(np.abs(w).max(initial=0.0) / delta) // 2 + 2
  kdtype = np.int16 if max(cap, kmax) < (1 << 15) - 2 else np.int32
  inside = kmax <= cap
  mu = lam / (delta * delta)
  m = MACHINES[nu]
  n_states = 1 << nu
  quant = np.arange(n_states) >> m.shift
  q_in = quant[m.pred[:, 0]]  # the quantizer of the branches into each state
  cells = [q_in * 2 + p for p in (0, 1)]  # their (quantizer, parity) cells
  acc = np.full((n_states, width), np.inf)
  acc[0] = 0.0  # state 0
  pick = np.empty((rows, (n_states + 7) // 8, width), np.uint8)  # bit s: state s's branch
  lev = np.empty((rows, 4, width), kdtype)
  block = max(1, _BLOCK // max(1, width))
  for b0 in range(0, rows, block):
    off = cap if ctx is None else ctx[b0 : b0 + block].astype(np.int32) * size + cap
    cost, lv = _candidates(w[b0 : b0 + block], delta, mu, tables, off, cap, kdtype, inside)
    lev[b0 : b0 + block] = lv.reshape(lv.shape[0], 4, width)
    cost = cost.reshape(cost.shape[0], 4, width)
    for i in range(cost.shape[0]):
      t = b0 + i
      c = cost[i]
      a0 = acc.take(m.pred[:, 0], axis=0) + c.take(cells[0], axis=0)
      a1 = acc.take(m.pred[:, 1], axis=0) + c.take(cells[1], axis=0)
      pick[t] = np.packbits(a1 < a0, axis=0, bitorder="little")
      new = np.minimum(a0, a1)
      if not full[t]:
        new = np.where(valid[t], new, acc)
      acc = new
  st = np.empty((rows, width), np.uint8)
  k = np.empty((rows, width), np.int32)
  s = np.argmin(acc, axis=0)
  cols = np.arange(width)
  for t in range(rows - 1, -1, -1):  # back from each chain's best final state
    p = ((pick[t][s >> 3, cols] >> (s & 7).astype(np.uint8)) & 1).astype(np.intp)
    prev = m.pred[s, p]
    lv = lev[t][q_in[s] * 2 + p, cols]
    if not full[t]:  # an invalid entry: the same state, level 0
      prev = np.where(valid[t], prev, s)
      lv = np.where(valid[t], lv, 0)
    st[t], k[t] = prev, lv
    s = prev
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


def _initial_rate(w: np.ndarray, valid: np.ndarray, delta: float, cap: int) -> np.ndarray:
  """A first rate model: each quantizer's levels nearest to the weights (a sample of at
  most :data:`_SAMPLE` of them), as if every weight were in it, except that in ``Q1`` the
  weights below ``delta / 2`` count at ``+-1`` rather than 0: a first model in which
  ``Q1``'s smallest nonzero levels are cheap ends in smaller files after the few passes
  of a fit than the nearest levels do (experiments/COMPRESS.md)."""
  a = w[valid][:: max(1, int(valid.sum()) // _SAMPLE)] / delta
  k0 = np.rint(a / 2)
  k1 = np.sign(a) * np.floor((np.abs(a) + 1) / 2 + 0.5)
  counts = np.stack(
    [
      np.bincount((np.clip(kq, -cap, cap) + cap).astype(np.int64), minlength=2 * cap + 1)
      for kq in (k0, k1)
    ]
  )
  return rate_table(counts)


def _resized(rate: np.ndarray, cap: int) -> np.ndarray:
  """A rate model over ``-cap .. cap``: cropped, or widened with its edge levels' bits."""
  old = (rate.shape[-1] - 1) // 2
  idx = np.clip(np.arange(-cap, cap + 1), -old, old) + old
  return rate[..., idx]


def estimate_bits(counts: np.ndarray, scale: float = 1.0) -> float:
  """Coded size (bits) of levels with the :func:`level_counts` ``counts`` (of a sample:
  ``scale`` times as many levels in the leaf), with static tables per quantizer: their
  empirical conditional entropy, a table code per used level and quantizer, the level
  range. Counts by context are summed first."""
  counts = counts.sum(axis=0) if counts.ndim == 3 else counts
  used = counts.sum(axis=0) > 0
  if not used.any():
    return float(_LEAF_OVERHEAD_BITS)
  idx = np.flatnonzero(used)
  span = int(idx[-1] - idx[0] + 1)
  bitmap = span if idx.size < span else 0
  tables = idx.size * _LEVEL_TABLE_BITS + bitmap + _LEAF_OVERHEAD_BITS
  return scale * kernel.cond_bits(counts) + tables


class _Pass(NamedTuple):
  """The levels of a fit on a walked matrix, their states, counts and rate model."""

  k: np.ndarray
  st: np.ndarray
  counts: np.ndarray
  rate: np.ndarray
  sqerr: float  # of j * delta in float64


def _fit_walked(w, valid, delta: float, lam: float, iters: int, rate, ctx=None, nu=2) -> _Pass:
  """Viterbi passes over the walked matrix ``w``, each with the rate model of the previous
  one's levels (the first with ``rate``, or :func:`_initial_rate`); by context where
  ``ctx`` gives one (uint8 ``(T, W)``, below :data:`_CONTEXTS`) to every entry."""
  cap = _cap(w, delta)
  if 2 * cap > MAX_SPAN:
    raise ValueError(
      f"step {delta:g} needs levels up to {cap} for values up to "
      f"{float(np.abs(w).max()):g} (a file holds {MAX_SPAN} consecutive levels); use a "
      "larger step"
    )
  rate = _initial_rate(w, valid, delta, cap) if rate is None else _resized(rate, cap)
  for _ in range(max(1, int(iters))):
    k, st = viterbi(w, valid, delta, lam, rate, ctx, nu)
    counts = level_counts(k, st, valid, cap, ctx, _CONTEXTS, nu)
    rate = rate_table(counts)
  d = (w - reconstruct(k, st, nu) * delta)[valid]
  return _Pass(k, st, counts, rate, float(d @ d))


def fit_step(
  x: np.ndarray,
  step: float,
  *,
  lam: float | None = None,
  layout: int = 0,
  iters: int | None = None,
  rate: np.ndarray | None = None,
  contexts: bool | np.ndarray = True,
  nu: int = 2,
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
    contexts: rate models by the magnitude coder's scale context of each weight
      (:func:`weight_contexts`), or one for all (False); or the contexts themselves.
    nu: the state bits of the trellis (:data:`STATE_BITS`).

  Returns:
    The :class:`DQFit` of the last pass.
  """
  x = np.asarray(x)
  delta = float(np.float32(step))
  if not (math.isfinite(delta) and delta > 0):
    raise ValueError(f"step must be a positive float32, got {step}")
  lam = DQ_SLOPE * delta * delta if lam is None else float(lam)
  if iters is None:
    iters = _ITERS if rate is None else _WARM_ITERS
  y, valid = chains(x, layout)
  w = y.astype(np.float64)
  ctx = contexts if isinstance(contexts, np.ndarray) else None
  if contexts is True:
    ctx = weight_contexts(w, x.shape, layout, delta)
  fit = _fit_walked(w, valid, delta, lam, iters, rate, ctx, nu)
  vals = values(reconstruct(fit.k, fit.st, nu), delta, x.dtype)
  d = (w - vals)[valid]
  return DQFit(
    delta,
    unchain(fit.k, x.shape, layout),
    unchain(vals, x.shape, layout),
    float(d @ d),
    estimate_bits(fit.counts),
    lam,
    fit.rate,
    layout,
    nu,
  )


def weight_contexts(w: np.ndarray, shape, layout: int, delta: float) -> np.ndarray:
  """The scale context (uint8, below :data:`_CONTEXTS`) of every entry of the walked
  matrix ``w`` of a leaf of ``shape`` in ``layout``, as the magnitude coder would give
  its levels, from the weights (``|w| / 2 delta`` stand for ``|k|``): a rank-1 model of
  the local magnitude from row and column scales, relative to its median, so nearly the
  same at every step."""
  from hemp_jax.codec import magnitude  # it imports this module

  geometry = context_models.layouts(shape)[layout]
  return magnitude.scale_contexts(np.abs(w) / (2 * delta), geometry, _CONTEXTS)


def _search_sample(w: np.ndarray, valid: np.ndarray):
  """The weights of the step search: about :data:`_SAMPLE` of them (every m-th valid
  one) as chains of :data:`_SEARCH_ROWS` (the chains' geometry hardly changes the error
  or the rate, and fewer rows loop less), with the factor from their squared error to
  the whole matrix's; small matrices as they are."""
  wv = w[valid]
  if wv.size <= _SEARCH_ROWS * _SEARCH_ROWS:
    return w, valid, 1.0
  sub = wv[:: max(1, wv.size // _SAMPLE)]
  sub = sub[: sub.size - sub.size % _SEARCH_ROWS].reshape(_SEARCH_ROWS, -1)
  return sub, np.ones(sub.shape, bool), wv.size / sub.size


def fit_error(
  x: np.ndarray,
  max_rel_error: float,
  *,
  step: float | None = None,
  layout: int = 0,
  rounds: int = _ERROR_ROUNDS,
  slope: float = DQ_SLOPE,
  contexts: bool = True,
  nu: int = 2,
) -> DQFit:
  """The coarsest step whose dependent quantization of ``x`` has a relative L2 error
  ``||x - q(x)|| / ||x||`` of at most ``max_rel_error``.

  The step is searched on about :data:`_SAMPLE` of the weights (their squared error
  scaled to the tensor's): secant steps on log step against log error, which is
  close to linear, each fit starting from its predecessor's rate model. Then the tensor
  is fitted at that step (with the sample's rate model), and at a smaller one while the
  bound does not hold.

  Args:
    x: the tensor.
    max_rel_error: the bound.
    step: a first guess (default :data:`DQ_STEP_RATIO` times the high-rate uniform step
      ``sqrt(12) * max_rel_error * rms(x)``).
    layout: the coder layout whose walked columns are the chains.
    rounds: secant steps at most.
    slope: the rate weight of every fit is ``slope * delta**2``.
    contexts: the fits of the whole tensor with rate models by scale context
      (:func:`fit_step`; the step search on the sample has one).
    nu: the state bits of the trellis (:data:`STATE_BITS`).
  """
  x = np.asarray(x)
  target = float(max_rel_error)
  if not target > 0:
    raise ValueError(f"max_rel_error must be positive, got {max_rel_error}")
  y, valid = chains(x, layout)
  w = y.astype(np.float64)
  wv = w[valid]
  energy = float(wv @ wv)
  if step is None:
    rms = math.sqrt(energy / max(wv.size, 1)) or 1.0
    step = DQ_STEP_RATIO * math.sqrt(12) * target * rms
  sw, sv, scale = _search_sample(w, valid)
  goal = math.log(target)
  ctx = weight_contexts(w, x.shape, layout, step) if contexts else False

  def tried_at(ls, rate):
    delta = float(np.float32(math.exp(ls)))
    iters = _ITERS if rate is None else _WARM_ITERS
    f = _fit_walked(sw, sv, delta, slope * delta * delta, iters, rate, nu=nu)
    err = math.sqrt(f.sqerr * scale / energy) if energy > 0 else 0.0
    return math.log(delta), math.log(max(err, 1e-300)), f.rate

  tried = [tried_at(math.log(step), None)]
  for _ in range(int(rounds)):
    good = [t for t in tried if t[1] <= goal]
    best = max(good, key=lambda t: t[0]) if good else None
    if best is not None and best[1] >= goal + math.log(_ERROR_SLACK):
      break
    near = sorted(tried, key=lambda t: abs(t[1] - goal))[:2]
    ls = _secant(near, goal + math.log((1 + _ERROR_SLACK) / 2))
    if best is not None:  # between the best good try and the nearest bad one above it
      above = [t[0] for t in tried if t[1] > goal and t[0] > best[0]]
      hi = min(above) if above else best[0] + 1.0
      if not best[0] < ls < hi:
        ls = (best[0] + hi) / 2
    tried.append(tried_at(ls, near[0][2]))
  good = [t for t in tried if t[1] <= goal]
  ls, _, rate = max(good, key=lambda t: t[0]) if good else min(tried, key=lambda t: t[1])
  # the whole tensor: secant steps from the sample's step, the best fit within the bound
  best, full = None, []
  bound = target * _BOUND_MARGIN
  for i in range(_FINAL_FITS + _BRACKET_FITS):
    delta = float(np.float32(math.exp(ls)))
    iters = _ITERS - 1 if i == 0 else None
    fit = fit_step(
      x,
      delta,
      lam=slope * delta * delta,
      layout=layout,
      rate=rate,
      iters=iters,
      contexts=ctx,
      nu=nu,
    )
    err = _rel(fit, energy)
    full.append((math.log(fit.step), math.log(max(err, 1e-300)), fit.rate))
    if err <= bound and (best is None or fit.step > best.step):
      best = fit
    if best is not None and _rel(best, energy) >= target * _ERROR_SLACK:
      break
    if i + 1 < _FINAL_FITS:
      near = sorted(full, key=lambda t: abs(t[1] - goal))[:2]
      ls, rate = _secant(near, goal + math.log((1 + _ERROR_SLACK) / 2)), near[0][2]
      continue
    # the secant steps did not land near the bound (the error of small tensors moves in
    # jumps): bisect between the best fit within it and the nearest step above
    if best is not None and _rel(best, energy) >= target * _BRACKET_SLACK:
      break
    aim = goal + math.log((1 + _ERROR_SLACK) / 2)
    if best is None:  # every step tried is above the bound: down from the smallest, by
      # the slope 1 of high rate, aiming a little lower each time
      low = min(full, key=lambda t: t[0])
      ls = low[0] + aim - low[1] - 0.01 * (i + 2 - _FINAL_FITS)
    else:
      lo = math.log(best.step)
      above = [t[0] for t in full if t[1] > math.log(bound) and t[0] > lo]
      # between the best and the nearest step above, or up from the best (slope 1)
      ls = (lo + min(above)) / 2 if above else lo + aim - math.log(_rel(best, energy))
    rate = min(full, key=lambda t: abs(t[0] - ls))[2]
  while best is None:  # halve the step until the bound holds
    delta = fit.step / 2
    lam = slope * delta * delta
    fit = fit_step(x, delta, lam=lam, layout=layout, rate=fit.rate, contexts=ctx, nu=nu)
    best = fit if _rel(fit, energy) <= bound else None
  return best


def sample_curve(
  x: np.ndarray, steps, *, layout: int = 0, nu: int = 2
) -> list[tuple[float, float, float]]:
  """``(step, relative error, bits)`` of dependent quantization of ``x`` at each of
  ``steps`` (increasing), estimated on the sample of :func:`fit_error`'s step search,
  each fit from the rate model of the previous one."""
  y, valid = chains(np.asarray(x), layout)
  w = y.astype(np.float64)
  wv = w[valid]
  energy = float(wv @ wv)
  sw, sv, scale = _search_sample(w, valid)
  out, rate = [], None
  for step in steps:
    delta = float(np.float32(step))
    iters = _ITERS if rate is None else _WARM_ITERS
    f = _fit_walked(sw, sv, delta, DQ_SLOPE * delta * delta, iters, rate, nu=nu)
    rate = f.rate
    err = math.sqrt(f.sqerr * scale / energy) if energy > 0 else 0.0
    out.append((delta, err, estimate_bits(f.counts, scale)))
  return out


def _secant(near, goal: float) -> float:
  """The log step at which the line through the two tries ``near`` (log step, log error)
  reaches ``goal`` (slope 1 through one try), its slope kept within 1/4 .. 4."""
  slope = 1.0
  if len(near) == 2 and abs(near[0][0] - near[1][0]) > 1e-12:
    slope = (near[0][1] - near[1][1]) / (near[0][0] - near[1][0])
    slope = min(max(slope, 0.25), 4.0)
  return near[0][0] + (goal - near[0][1]) / slope


def _rel(fit: DQFit, energy: float) -> float:
  return math.sqrt(fit.sqerr / energy) if energy > 0 else 0.0


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


def encode_levels(
  symbols: np.ndarray, levels: np.ndarray, layout: int, nu: int = 2, st=None
) -> bytes:
  """The coder section of a dq record (``FORMAT.md``): a leaf's compact symbols (its
  shape; symbol ``s`` is the level ``levels[s]``) coded row by row over the walk of
  ``layout``, each with the static table of its quantizer (machine of ``nu`` bits;
  ``st``: the states of the walk, if known)."""
  from hemp_jax.codec import model_selection  # the table fit of the version-3 coder

  a = int(levels.size)
  y, valid = chains(np.asarray(symbols, np.int32), layout)
  st = states(levels[y], valid, nu) if st is None else st
  h = (st >> (nu - 1)).astype(np.int64)
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


def decode_levels(reader: Reader, shape, levels: np.ndarray, layout: int, nu: int = 2):
  """Decodes a dq coder section (to ``reader.end``): the compact symbol (int32) and the
  quantizer (bool: ``Q1``) of every entry, each of ``shape``. ``levels``: the level of
  each compact symbol, increasing; ``nu``: the state bits of the machine."""
  shape = tuple(int(d) for d in shape)
  a = int(levels.size)
  s, codes = parse_tables(reader, a)
  payload = reader.take(reader.remaining, "payload")
  weights = kernel.int_weights(codes, s)
  live = (weights > 0).sum(axis=1)
  detsym = np.argmax(weights > 0, axis=1).astype(np.int32)
  parity = (levels & 1).astype(np.uint8)
  next_state = MACHINES[nu].next.reshape(-1)  # by state * 2 + parity

  rows, cols = context_models.layouts(shape)[layout]
  seg_t, seg = context_models.segment_rows(rows, cols)
  valid = context_models.valid_mask(rows, cols, seg_t, seg)
  widths = valid.sum(axis=1)
  quant = np.zeros(valid.shape, bool)  # the quantizer of every entry

  def run():
    dec = kernel.RangeDecoder(kernel.bytes_to_words(payload))
    models = [
      kernel.Categorical(weights[q].astype(np.float32), perfect=False) if live[q] > 1 else None
      for q in (0, 1)
    ]
    y = np.zeros(valid.shape, np.int32)
    state = np.zeros(valid.shape[1], np.uint8)  # of each chain
    for t in range(seg_t):
      w = int(widths[t])
      in_q1 = quant[t, :w]
      np.right_shift(state[:w], nu - 1, out=in_q1, casting="unsafe")
      row = y[t, :w]
      for q, idx in ((0, (~in_q1).nonzero()[0]), (1, in_q1.nonzero()[0])):
        if not idx.size:
          continue
        if live[q] == 0:
          raise FormatError(f"{reader.what}: a level of quantizer {q}, which has no table")
        row[idx] = detsym[q] if models[q] is None else dec.decode(models[q], idx.size)
      state[:w] = next_state.take((state[:w] << 1) | parity.take(row))
    return y

  y = kernel.range_decoded(reader, a, run)
  return unchain(y, shape, layout), unchain(quant, shape, layout)


def level_values(levels: np.ndarray, step: float, dtype) -> np.ndarray:
  """The decoded value ``(2, A)`` of each level in each quantizer (:func:`values`)."""
  return values(reconstruct(levels, np.array([[0], [2]])), step, dtype)
