"""Scalar quantizers of one tensor, fitted on its sorted values (see ``ptq`` for the methods).

Once a tensor is sorted (``n log n``), the squared error, the level counts and the order-0
entropy of any codebook with any decision thresholds cost ``O(K log n)`` (``K`` levels),
whatever ``n``: numpy only, no jit, no per-element Python loop. Each method is a
one-parameter family from fine to coarse (:func:`family`): uniform grids and ECSQ by step,
Lloyd-Max by level count.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = [
  "ECSQ_SLOPE",
  "ECSQ_WINDOW",
  "LEVELS_RATE_WEIGHT",
  "SortedStats",
  "Fit",
  "sorted_stats",
  "estimate_bits",
  "fit_cells",
  "round_levels",
  "fit_uniform",
  "fit_uniform_levels",
  "fit_ecsq",
  "fit_lloyd",
  "relative_error",
  "family",
  "step_at_error",
  "refine",
]

ECSQ_SLOPE = 2 * math.log(2) / 12
# rate weight of the entropy-constrained refinement of N-level (``num_levels``) fits
LEVELS_RATE_WEIGHT = 0.5
_LEVEL_TABLE_BITS = 6  # a probability code per used level, about (the coder picks 1..8)
_LEAF_OVERHEAD_BITS = 40  # K header, coder model header, payload's final word (about)
_ECSQ_ITERS = 8
_LLOYD_ITERS = 25
_LLOYD_LEVELS = (2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256)
_STEP_GRID = 2.0 ** np.arange(-8.0, 2.01, 1 / 3)  # step / robust scale
ECSQ_WINDOW = 2.0 ** np.arange(-1.0, 1.34, 1 / 3)  # ECSQ steps / the uniform step


class SortedStats(NamedTuple):
  """A tensor's values sorted (float64) with prefix sums of values and squares."""

  w: np.ndarray  # sorted values
  s1: np.ndarray  # s1[i] = sum of w[:i]  (length n + 1)
  s2: np.ndarray  # s2[i] = sum of w[:i]**2
  scale: float  # robust scale: RMS of the central 99.8%, or the RMS, or 1
  itemsize: int  # bytes per stored level (the leaf dtype)

  @property
  def n(self) -> int:
    return self.w.size

  @property
  def energy(self) -> float:
    return float(self.s2[-1])


class Fit(NamedTuple):
  """A fitted scalar quantizer: levels in use and the decision thresholds between them."""

  levels: np.ndarray  # (A,) increasing float64, every one used (A >= 1)
  thresholds: np.ndarray  # (A - 1,) increasing: w <= t[k] goes to a level <= k
  counts: np.ndarray  # (A,) weights per level
  sqerr: float  # total squared error
  bits: float  # estimated coded size (payload + levels + tables), bits


def sorted_stats(x, itemsize: int | None = None) -> SortedStats:
  """Sorts a tensor once; every fit below works on the result."""
  a = np.asarray(x)
  w = np.sort(a.astype(np.float64).reshape(-1))
  s1 = np.concatenate([[0.0], np.cumsum(w)])
  s2 = np.concatenate([[0.0], np.cumsum(w * w)])
  n = w.size
  cut = int(n * 0.001)
  core = w[cut : n - cut] if n - 2 * cut >= 8 else w
  scale = float(np.sqrt(np.mean(core * core))) if core.size else 0.0
  if not scale > 0:
    scale = float(np.sqrt(s2[-1] / max(n, 1))) or 1.0
  return SortedStats(w, s1, s2, scale, int(itemsize or a.dtype.itemsize))


def _cells(st: SortedStats, thresholds: np.ndarray):
  """Counts, sums and sums of squares of the cells cut by ``thresholds``."""
  b = np.concatenate([[0], np.searchsorted(st.w, thresholds, side="right"), [st.n]])
  cnt = np.diff(b)
  return cnt, np.diff(st.s1[b]), np.diff(st.s2[b])


def estimate_bits(counts: np.ndarray, itemsize: int) -> float:
  """Order-0 coded size of a level assignment plus its level values and tables, bits."""
  c = counts[counts > 0].astype(np.float64)
  n = c.sum()
  payload = float((c * np.log2(n / c)).sum()) if c.size > 1 else 0.0
  return payload + c.size * (8 * itemsize + _LEVEL_TABLE_BITS) + _LEAF_OVERHEAD_BITS


def fit_cells(st: SortedStats, levels: np.ndarray, thresholds: np.ndarray) -> Fit:
  cnt, s1, s2 = _cells(st, thresholds)
  used = cnt > 0
  levels, cnt, s1, s2 = levels[used], cnt[used], s1[used], s2[used]
  sqerr = float(np.maximum((s2 - 2 * levels * s1 + levels * levels * cnt).sum(), 0.0))
  if levels.size < used.size:  # unused levels: nearest-level thresholds of the rest
    thresholds = (levels[1:] + levels[:-1]) / 2
  return Fit(levels, thresholds, cnt, sqerr, estimate_bits(cnt, st.itemsize))


def _distinct(levels: np.ndarray) -> np.ndarray:
  """A sorted array without repeats (levels that rounding made equal)."""
  if levels.size < 2:
    return levels
  keep = np.empty(levels.size, bool)
  keep[0] = True
  np.greater(levels[1:], levels[:-1], out=keep[1:])
  return levels if keep.all() else levels[keep]


def round_levels(levels: np.ndarray, dtype) -> np.ndarray:
  """Levels as the file stores them (leaf dtype, then float32 codebooks), float64."""
  r = np.asarray(levels, np.float64).astype(dtype).astype(np.float32).astype(np.float64)
  return r


def fit_uniform(st: SortedStats, step: float, dtype=np.float32, zero_level: bool = True) -> Fit:
  """Nearest level on the grid ``k * step`` over the whole range (an exact zero level).

  With ``zero_level=False`` the grid is ``(k + 1/2) * step`` (mid-rise: no level at 0,
  every weight keeps its sign).
  """
  if not step > 0:
    raise ValueError(f"step must be positive, got {step}")
  off = 0.0 if zero_level else 0.5
  lo, hi = int(np.rint(st.w[0] / step - off)), int(np.rint(st.w[-1] / step - off))
  if hi - lo + 1 > 1 << 16:
    raise ValueError(
      f"step {step:g} needs {hi - lo + 1} levels for the range [{st.w[0]:g}, {st.w[-1]:g}] "
      f"(at most {1 << 16}); use a larger step"
    )
  levels = round_levels((np.arange(lo, hi + 1) + off) * step, dtype)
  return _nearest(st, _distinct(levels))


def _nearest(st: SortedStats, levels: np.ndarray) -> Fit:
  if levels.size == 1:
    return fit_cells(st, levels, np.zeros(0))
  mids = (levels[1:] + levels[:-1]) / 2
  cnt, s1, s2 = _cells(st, mids)
  used = cnt > 0
  lv = levels[used]
  if lv.size < levels.size:
    mids = (lv[1:] + lv[:-1]) / 2
  cnt = cnt[used]
  sqerr = float(np.maximum((s2[used] - 2 * lv * s1[used] + lv * lv * cnt).sum(), 0.0))
  return Fit(lv, mids, cnt, sqerr, estimate_bits(cnt, st.itemsize))


def fit_uniform_levels(
  st: SortedStats, num_levels: int, dtype=np.float32, zero_level: bool = True
) -> Fit:
  """``num_levels`` levels ``k * step`` with 0 among them; step and offset of least MSE.

  The tails beyond the outermost levels are clipped: the step is searched (a geometric
  grid, then refined) for the smallest squared error, outliers included.
  """
  n_lv = int(num_levels)
  if n_lv < 2:
    raise ValueError(f"num_levels must be >= 2, got {num_levels}")
  lo, hi = min(st.w[0], 0.0), max(st.w[-1], 0.0)  # the grid reaches 0 and the values
  span = max(hi - lo, 1e-30)
  # the zero level's position: as many levels below 0 as the range suggests
  below = int(np.clip(np.rint((n_lv - 1) * max(-lo, 0.0) / span), 0, n_lv - 1))
  ks = np.arange(-below, n_lv - below) + (0.0 if zero_level else 0.5)
  if not zero_level and below == n_lv - 1:
    ks = ks - 1.0

  def at(step):
    return _nearest(st, np.unique(round_levels(ks * step, dtype)))

  full = span / (n_lv - 1)
  grid = full * 2.0 ** np.arange(-10.0, 0.01, 0.25)
  errs = [at(s).sqerr for s in grid]
  j = int(np.argmin(errs))
  best, best_step = errs[j], grid[j]
  for s in grid[j] * 2.0 ** np.linspace(-0.25, 0.25, 9):
    e = at(s).sqerr
    if e < best:
      best, best_step = e, s
  return at(best_step)


def _envelope(levels: np.ndarray, cost: np.ndarray):
  """Levels on the lower envelope of ``(w - c)**2 + cost`` and the thresholds between them.

  Removes, round after round, every level that is beaten on both sides by its current
  neighbours (such a level is off the envelope of any superset too).
  """
  c, b = levels, cost
  while True:
    if c.size == 1:
      return c, np.zeros(0)
    t = (c[1:] + c[:-1]) / 2 + (b[1:] - b[:-1]) / (2 * (c[1:] - c[:-1]))
    bad = np.zeros(c.size, bool)
    bad[1:-1] = t[:-1] >= t[1:]
    if not bad.any():
      return c, t
    keep = ~bad
    c, b = c[keep], b[keep]


def fit_ecsq(
  st: SortedStats,
  step: float,
  *,
  lam: float | None = None,
  iters: int = _ECSQ_ITERS,
  zero_level: bool = True,
  level_cost: bool = False,
  dtype=np.float32,
) -> Fit:
  """Entropy-constrained quantization (see the module docstring).

  Args:
    st: :func:`sorted_stats` of the tensor.
    step: the starting uniform grid's step.
    lam: the rate weight (squared error per bit); default ``ECSQ_SLOPE * step**2``.
    iters: iterations of (assign, re-estimate the model, move levels to centroids).
    zero_level: keep a level at exactly 0 (when the tensor reaches it).
    level_cost: count each level's fixed cost in the file (its value and probability
      code, about ``8 * itemsize + 6`` bits), spread over the weights assigned to it, so
      rarely used levels are merged away where they do not pay for themselves.
    dtype: the leaf dtype (levels are rounded to what the file stores).

  Returns:
    The fit after the last iteration.
  """
  lam = ECSQ_SLOPE * step * step if lam is None else float(lam)
  fit = fit_uniform(st, step, dtype, zero_level)
  bits_per_level = (8 * st.itemsize + _LEVEL_TABLE_BITS) if level_cost else 0.0
  return _entropy_constrained(st, fit, lam, iters, zero_level, bits_per_level, dtype)


def _entropy_constrained(st, fit, lam, iters, zero_level, bits_per_level, dtype) -> Fit:
  """Entropy-constrained Lloyd iterations from ``fit`` (never more levels than it has)."""
  n = st.n
  cost_of = lambda c: lam * (np.log2(n / c) + bits_per_level / c)
  for _ in range(iters):
    levels, thr = _envelope(fit.levels, cost_of(fit.counts))
    cnt, s1, _ = _cells(st, thr)
    used = cnt > 0
    centroids = np.where(used, s1 / np.maximum(cnt, 1), levels)
    if zero_level:
      centroids = np.where(levels == 0.0, 0.0, centroids)
    # the moved levels, assigned under the same model (the counts of this assignment)
    new = _assign(st, round_levels(centroids[used], dtype), cost_of(cnt[used]))
    if new.levels.size == fit.levels.size and np.array_equal(new.counts, fit.counts):
      fit = new
      break
    fit = new
  return fit


def _assign(st: SortedStats, levels: np.ndarray, cost: np.ndarray) -> Fit:
  """Assignment by the lower envelope; levels merged by rounding are merged first."""
  if levels.size > 1 and not (np.diff(levels) > 0).all():
    levels, idx = np.unique(levels, return_index=True)
    cost = cost[idx]
  lv, thr = _envelope(levels, cost)
  cnt, s1, s2 = _cells(st, thr)
  used = cnt > 0
  if not used.all():
    lv, cnt, s1, s2 = lv[used], cnt[used], s1[used], s2[used]
    keep_b = np.flatnonzero(used)
    # thresholds between consecutive used levels: the upper edge of each used cell
    b_hi = np.concatenate([thr, [np.inf]])[keep_b][:-1]
    thr = b_hi
  sqerr = float(np.maximum((s2 - 2 * lv * s1 + lv * lv * cnt).sum(), 0.0))
  return Fit(lv, thr, cnt, sqerr, estimate_bits(cnt, st.itemsize))


def fit_lloyd(
  st: SortedStats,
  num_levels: int,
  *,
  iters: int = _LLOYD_ITERS,
  zero_level: bool = True,
  dtype=np.float32,
  rate_weight: float = 0.0,
) -> Fit:
  """``num_levels`` levels of least squared error (empirical Lloyd-Max), one at 0.

  Args:
    st: :func:`sorted_stats` of the tensor.
    num_levels: N.
    iters: Lloyd iterations (at most; stops when the levels stop moving).
    zero_level: keep the level nearest 0 at exactly 0.
    dtype: the leaf dtype (levels are rounded to what the file stores).
    rate_weight: when > 0, the Lloyd-Max levels are then refined by entropy-constrained
      iterations (as :func:`fit_ecsq`) with ``lam = rate_weight * ECSQ_SLOPE * d**2``,
      ``d**2`` the mean squared width of the weights' Lloyd cells: more squared error for
      a lower coded rate, with never more than N levels (:data:`LEVELS_RATE_WEIGHT`).
  """
  fit = fit_uniform_levels(st, num_levels, dtype, zero_level)
  lv = fit.levels
  for _ in range(iters):
    lv = _split_worst(st, lv, int(num_levels), dtype, zero_level)
    if lv.size < 2:
      break
    mids = (lv[1:] + lv[:-1]) / 2
    cnt, s1, _ = _cells(st, mids)
    used = cnt > 0
    new = np.where(used, s1 / np.maximum(cnt, 1), lv)[used]
    if zero_level and (lv == 0).any():
      new[np.argmin(np.abs(new))] = 0.0
    new = np.unique(round_levels(new, dtype))
    if new.size == lv.size and np.allclose(new, lv, rtol=0, atol=1e-12 * st.scale):
      lv = new
      break
    lv = new
  fit = _nearest(st, lv)
  if rate_weight > 0 and fit.levels.size > 1:
    lam = rate_weight * ECSQ_SLOPE * _mean_square_cell(fit)
    fit = _entropy_constrained(st, fit, lam, _ECSQ_ITERS, zero_level, 0.0, dtype)
  return fit


def _split_worst(st: SortedStats, lv: np.ndarray, n_levels: int, dtype, zero_level: bool):
  """Up to ``n_levels`` levels: the cell of largest squared error split at its median.

  Lloyd iterations drop levels whose cells are empty (a clipped grid's outer levels on a
  tensor with outliers); splitting the worst cells puts them back where they pay most.
  """
  while lv.size < n_levels:
    mids = (lv[1:] + lv[:-1]) / 2
    b = np.concatenate([[0], np.searchsorted(st.w, mids, side="right"), [st.n]])
    cnt = np.diff(b)
    s1, s2 = np.diff(st.s1[b]), np.diff(st.s2[b])
    sse = s2 - s1 * s1 / np.maximum(cnt, 1)
    k = int(np.argmax(sse))
    if not sse[k] > 1e-12 * st.energy or cnt[k] < 2:
      break
    m = b[k] + cnt[k] // 2
    halves = [(st.s1[m] - st.s1[b[k]]) / (m - b[k]), (st.s1[b[k + 1]] - st.s1[m]) / (b[k + 1] - m)]
    if zero_level and lv[k] == 0.0:  # the zero level stays; the half farther from 0 joins
      keep, halves = lv, halves[:1] if -halves[0] > halves[1] else halves[1:]
    else:
      keep = np.delete(lv, k)
    new = np.unique(round_levels(np.concatenate([keep, halves]), dtype))
    if new.size <= lv.size:
      break
    lv = new
  return lv


def _mean_square_cell(fit: Fit) -> float:
  """Mean over the weights of their cell's squared width (edge cells: the nearest gap).

  The step a weight sees where the weights are, unmoved by far-out levels of outliers.
  """
  lv, t = fit.levels, fit.thresholds
  width = np.empty(lv.size)
  width[1:-1] = t[1:] - t[:-1]
  width[0], width[-1] = lv[1] - lv[0], lv[-1] - lv[-2]
  return float((fit.counts * width * width).sum() / fit.counts.sum())


def relative_error(fit: Fit, st: SortedStats) -> float:
  """``||w - q(w)|| / ||w||`` of a fit (0 for an all-zero tensor)."""
  e = st.energy
  return math.sqrt(fit.sqerr / e) if e > 0 else 0.0


# ------------------------------------------------------------------------ families


def family(st: SortedStats, method: str, dtype, zero_level: bool = True, steps=None) -> list:
  """(parameter, fit thunk) from the finest to the coarsest member of a method's family.

  ``steps``: the steps to try (uniform/ecsq); default a geometric grid (ratio 2^(1/3))
  from 2^-8 to 4 times the tensor's robust scale.
  """
  if method == "lloyd":
    return [
      (float(k), (lambda k=k: fit_lloyd(st, k, dtype=dtype, zero_level=zero_level)))
      for k in _LLOYD_LEVELS[::-1]
    ]
  steps = st.scale * _STEP_GRID if steps is None else np.asarray(steps, np.float64)
  span = st.w[-1] - st.w[0]
  steps = steps[span / steps < (1 << 16) - 2]
  fn = fit_uniform if method == "uniform" else fit_ecsq
  return [(float(s), (lambda s=s: fn(st, s, dtype=dtype, zero_level=zero_level))) for s in steps]


def step_at_error(pts, target: float) -> float:
  """The step of a (uniform) family at which its relative error reaches ``target``."""
  errs = np.array([max(e, 1e-300) for _, _, e in pts])
  steps = np.array([a for a, _, _ in pts])
  order = np.argsort(errs)
  return float(np.exp(np.interp(math.log(target), np.log(errs[order]), np.log(steps[order]))))


def refine(st, method, dtype, zero_level, lo_param, hi_param, ok, rounds=6):
  """Bisects (geometrically) between a good and a bad step; returns the coarsest good fit."""
  f0 = fit_uniform if method == "uniform" else fit_ecsq
  fn = lambda s, dtype: f0(st, s, dtype=dtype, zero_level=zero_level)
  good, bad = lo_param, hi_param
  best = fn(good, dtype)
  for _ in range(rounds):
    mid = math.sqrt(good * bad)
    f = fn(mid, dtype)
    if ok(f):
      good, best = mid, f
    else:
      bad = mid
  return best
