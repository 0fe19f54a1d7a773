"""Post-training quantization of any params tree into a ``.hemp`` file, without retraining.

:func:`quantize_tree` picks the leaves to quantize, fits a codebook per leaf and returns
the quantized values with their codebooks (what :func:`hemp_jax.codec.compress` takes);
:func:`compress_checkpoint` does that and writes the file.

Fitting is numpy on each tensor's *sorted* values and their prefix sums: once a tensor is
sorted (``n log n``), the squared error, the level counts and the order-0 entropy of any
codebook with any decision thresholds cost ``O(K log n)`` (``K`` levels), whatever ``n``.
No jit, no per-shape compilation, no per-element Python loop.

Methods (each a one-parameter family per tensor, from fine to coarse):

- ``uniform``: levels ``k * step`` for every integer ``k`` the tensor reaches, including 0
  (an exact zero level), each weight to its nearest level. The grid spans the whole
  range, so outliers keep their value to within ``step / 2``; only the levels in use are
  stored (and each costs its float value plus a probability code in the file).
- ``ecsq``: entropy-constrained scalar quantization: starting from the uniform grid, each
  weight goes to the level minimizing ``(w - c)**2 + lam * (-log2 p(c))`` under the
  coder's order-0 model ``p`` of the current assignment; the levels move to the centroids
  of their cells (the zero level stays at 0), ``p`` is re-estimated, and so on
  (entropy-constrained Lloyd). The decision regions are intervals (the lower envelope of
  the per-level costs, which are parabolas of equal curvature), so each iteration works
  on the sorted values. ``lam = ECSQ_SLOPE * step**2 = 2 ln 2 * step**2 / 12``: minus the
  slope of the high-rate distortion-rate curve at that step. The saving over nearest-level
  at equal squared error is large at low rates and vanishes at high rates, where a uniform
  grid with entropy coding is already the best scalar quantizer.
- ``lloyd``: ``N`` levels of minimum squared error (Lloyd-Max on the empirical
  distribution), the level nearest 0 pinned at 0; the family runs over ``N``. With a
  level count (``num_levels``) the Lloyd-Max levels are refined by a few
  entropy-constrained iterations at a small rate weight (:data:`LEVELS_RATE_WEIGHT`):
  slightly more error than Lloyd-Max, a lower coded rate, never more than N levels.

Targets: ``step`` (uniform/ecsq), ``num_levels`` (lloyd, the default with a level count:
the N levels of least squared error; uniform: N grid levels with the step and clipping
range of least squared error), ``max_rel_error`` (per tensor: the coarsest member of
the family whose relative L2 error ``||w - q(w)|| / ||w||`` is at most the bound) or
``bits_per_param`` (the whole tree: one relative error for every tensor, the largest that
fits the rate; for sums of per-tensor relative squared errors this is the equal-slope
allocation at high rate). ``bits_per_param`` counts the estimated coded bits of the
quantized leaves (payload, level values, tables) per quantized parameter.

Kept in float by default (``select_leaves``): non-float leaves (integers, bools), leaves
with fewer than ``min_size`` values, 1-D leaves (biases, norm scales and offsets; they
are a small fraction of the parameters and numerically sensitive), and normalization
statistics by path (:data:`NORM_STATS_PATTERN`: ``batch_stats``, ``running_mean``,
``running_var``, ``moving_mean``, ``moving_variance``, ``num_batches_tracked``, ...),
whatever their rank.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, NamedTuple

import numpy as np

from hemp_jax.codec.inspection import table_lines
from hemp_jax.pytrees import path_name

__all__ = [
  "METHODS",
  "NORM_STATS_PATTERN",
  "ECSQ_SLOPE",
  "DEFAULT_MIN_SIZE",
  "DEFAULT_MAX_REL_ERROR",
  "CompressResult",
  "compress_checkpoint",
  "format_table",
  "SortedStats",
  "Fit",
  "sorted_stats",
  "fit_uniform",
  "fit_uniform_levels",
  "fit_ecsq",
  "fit_lloyd",
  "estimate_bits",
  "select_leaves",
  "TensorResult",
  "quantize_tree",
  "relative_error",
  "default_method",
  "LEVELS_RATE_WEIGHT",
  "nonfinite_notices",
]

METHODS = ("uniform", "ecsq", "lloyd")
NORM_STATS_PATTERN = (
  r"(?i)(^|[/.])(batch_stats|running_mean|running_var|running_variance|moving_mean|"
  r"moving_var|moving_variance|num_batches_tracked|mean_ema|var_ema)([/.]|$)"
)
ECSQ_SLOPE = 2 * math.log(2) / 12
DEFAULT_MIN_SIZE = 256
DEFAULT_MAX_REL_ERROR = 0.05
# rate weight of the entropy-constrained refinement of N-level (``num_levels``) fits
LEVELS_RATE_WEIGHT = 0.5
NONFINITE = "non-finite values"  # the reason of a leaf kept in float for NaN/Inf
_LEVEL_TABLE_BITS = 6  # a probability code per used level, about (the coder picks 1..8)
_LEAF_OVERHEAD_BITS = 40  # K header, coder model header, payload's final word (about)
_ECSQ_ITERS = 8
_LLOYD_ITERS = 25
_LLOYD_LEVELS = (2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256)
_STEP_GRID = 2.0 ** np.arange(-8.0, 2.01, 1 / 3)  # step / robust scale
_ECSQ_WINDOW = 2.0 ** np.arange(-1.0, 1.34, 1 / 3)  # ECSQ steps / the uniform step


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


def _fit(st: SortedStats, levels: np.ndarray, thresholds: np.ndarray) -> Fit:
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


def _round_levels(levels: np.ndarray, dtype) -> np.ndarray:
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
  levels = _round_levels((np.arange(lo, hi + 1) + off) * step, dtype)
  return _nearest(st, _distinct(levels))


def _nearest(st: SortedStats, levels: np.ndarray) -> Fit:
  if levels.size == 1:
    return _fit(st, levels, np.zeros(0))
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
    return _nearest(st, np.unique(_round_levels(ks * step, dtype)))

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
    new = _assign(st, _round_levels(centroids[used], dtype), cost_of(cnt[used]))
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
    new = np.unique(_round_levels(new, dtype))
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
    new = np.unique(_round_levels(np.concatenate([keep, halves]), dtype))
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


def _family(st: SortedStats, method: str, dtype, zero_level: bool = True, steps=None) -> list:
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


def _step_at_error(pts, target: float) -> float:
  """The step of a (uniform) family at which its relative error reaches ``target``."""
  errs = np.array([max(e, 1e-300) for _, _, e in pts])
  steps = np.array([a for a, _, _ in pts])
  order = np.argsort(errs)
  return float(np.exp(np.interp(math.log(target), np.log(errs[order]), np.log(steps[order]))))


def _refine(st, method, dtype, zero_level, lo_param, hi_param, ok, rounds=6):
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


@dataclasses.dataclass
class TensorResult:
  """What happened to one leaf."""

  path: str
  shape: tuple
  dtype: str
  quantized: bool
  reason: str = ""  # why kept in float
  levels: int = 0  # levels in use
  rel_error: float = 0.0
  est_bits: float = 0.0  # estimated coded bits (quantized leaves)
  param: float = 0.0  # step, or N for lloyd


def select_leaves(
  flat: dict,
  *,
  min_size: int = DEFAULT_MIN_SIZE,
  include: str | None = None,
  exclude: str | None = None,
  quantize_vectors: bool = False,
  quantize_norm_stats: bool = False,
) -> dict:
  """``{path: reason}``: "" for leaves to quantize, else why the leaf stays in float."""
  inc, exc = _regex("include", include), _regex("exclude", exclude)
  if int(min_size) < 0:
    raise ValueError(f"min_size must be >= 0, got {min_size}")
  norm = re.compile(NORM_STATS_PATTERN)
  out = {}
  for path, x in flat.items():
    x = np.asarray(x)
    if x.dtype.kind != "f" and x.dtype.name != "bfloat16":
      out[path] = f"{x.dtype} values"
    elif not quantize_norm_stats and norm.search(path):
      out[path] = "normalization statistics"
    elif inc is not None and not inc.search(path):
      out[path] = "not matched by --include"
    elif exc is not None and exc.search(path):
      out[path] = "matched by --exclude"
    elif x.size < max(int(min_size), 2):
      out[path] = f"fewer than {min_size} values"
    elif x.ndim < 2 and not quantize_vectors:
      out[path] = "1-D (vectors stay float)"
    elif (bad := int(np.size(x) - np.isfinite(x.astype(np.float32)).sum())) > 0:
      out[path] = f"{NONFINITE}: {bad} of {np.size(x)}"
    else:
      out[path] = ""
  return out


def _regex(option: str, pattern: str | None):
  """The compiled ``--include``/``--exclude`` pattern; ValueError naming it if invalid."""
  if not pattern:
    return None
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ValueError(f"--{option} {pattern!r} is not a valid regular expression: {e}") from None


def default_method(num_levels: int | None) -> str:
  """The method used when none is given: ``lloyd`` for a level count, else ``uniform``.

  N levels of least distortion are Lloyd-Max levels; a uniform grid with N levels (step
  and clipping range of least squared error) stays available as ``method="uniform"``.
  """
  return "lloyd" if num_levels is not None else "uniform"


def nonfinite_notices(results: list) -> list[str]:
  """One line per leaf kept in float because it holds NaN/Inf values (not asked for)."""
  return [
    f"{r.path} kept in float: {r.reason.split(': ', 1)[1]} values are NaN or Inf"
    for r in results
    if r.reason.startswith(NONFINITE)
  ]


def quantize_tree(
  flat: dict,
  *,
  method: str | None = None,
  step: float | None = None,
  num_levels: int | None = None,
  bits_per_param: float | None = None,
  max_rel_error: float | None = None,
  zero_level: bool = True,
  selection: dict | None = None,
  progress: Callable[[int], Any] | None = None,
) -> tuple[dict, dict, list[TensorResult]]:
  """Quantizes the selected leaves of a flat ``{path: array}`` dict.

  Exactly one of ``step``, ``num_levels``, ``bits_per_param`` and ``max_rel_error`` sets
  the target, except that ``max_rel_error`` may also bound a ``bits_per_param`` run (the
  tensors above the bound get more bits).

  Args:
    flat: ``{path: numpy array}``.
    method: "uniform", "ecsq" or "lloyd"; default :func:`default_method` (``lloyd`` with
      ``num_levels``, else ``uniform``).
    step: uniform/ecsq step for every tensor.
    num_levels: N levels per tensor (uniform: MSE-optimal step with clipping; lloyd).
    bits_per_param: target estimated coded bits per quantized parameter.
    max_rel_error: per-tensor bound on the relative L2 error.
    zero_level: keep an exact zero level (False: mid-rise grids, every weight keeps its
      sign; lloyd: no level pinned at 0).
    selection: ``{path: reason}`` from :func:`select_leaves` (default: its defaults).
    progress: called with the number of values of each finished tensor.

  Returns:
    ``(values, codebooks, results)``: ``values`` maps every path to its quantized values
    (leaf dtype) or its original array; ``codebooks`` maps every path to a float32
    codebook of the levels in use, or None; one :class:`TensorResult` per leaf.
  """
  method = default_method(num_levels) if method is None else method
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  given = [
    k
    for k, v in (("step", step), ("num_levels", num_levels), ("bits_per_param", bits_per_param))
    if v is not None
  ]
  if len(given) > 1:
    raise ValueError(f"give one of step, num_levels, bits_per_param (got {', '.join(given)})")
  if given and given[0] == "step" and max_rel_error is not None:
    raise ValueError("step and max_rel_error cannot be combined")
  if given and given[0] == "num_levels" and max_rel_error is not None:
    raise ValueError("num_levels and max_rel_error cannot be combined")
  if not given and max_rel_error is None:
    raise ValueError("give a target: step, num_levels, bits_per_param or max_rel_error")
  if step is not None and method == "lloyd":
    raise ValueError("the lloyd method takes num_levels (or a rate/error target), not a step")
  if num_levels is not None and method == "ecsq":
    raise ValueError("the ecsq method takes a step (or a rate/error target), not num_levels")
  if step is not None and not step > 0:
    raise ValueError(f"step must be positive, got {step}")
  if bits_per_param is not None and not bits_per_param > 0:
    raise ValueError(f"bits_per_param must be positive, got {bits_per_param}")
  if max_rel_error is not None and not max_rel_error > 0:
    raise ValueError(f"max_rel_error must be positive, got {max_rel_error}")
  if selection is None:
    selection = select_leaves(flat)

  results, fits, stats = {}, {}, {}
  chosen = [p for p in flat if selection.get(p, "") == ""]
  for p, x in flat.items():
    x = np.asarray(x)
    results[p] = TensorResult(p, tuple(x.shape), str(x.dtype), False, selection.get(p, ""))

  curves = {}
  for p in chosen:
    x = np.asarray(flat[p])
    st = stats[p] = sorted_stats(x)
    if st.w[0] == st.w[-1]:  # one value (all zeros, a constant): one exact level
      lv = _round_levels(st.w[:1], x.dtype)
      fits[p] = _fit(st, lv, np.zeros(0))
    elif step is not None:
      fn = fit_uniform if method == "uniform" else fit_ecsq
      fits[p] = fn(st, step, dtype=x.dtype, zero_level=zero_level)
      results[p].param = step
    elif num_levels is not None and method == "uniform":
      fits[p] = fit_uniform_levels(st, num_levels, dtype=x.dtype, zero_level=zero_level)
      results[p].param = num_levels
    elif num_levels is not None:
      fits[p] = fit_lloyd(
        st, num_levels, dtype=x.dtype, zero_level=zero_level, rate_weight=LEVELS_RATE_WEIGHT
      )
      results[p].param = num_levels
    else:
      # ECSQ is ~10x the work of a uniform fit: its family is only tried over a window
      # of steps around the uniform step that meets the target (found first)
      fam = _family(st, "uniform" if method == "ecsq" else method, x.dtype, zero_level)
      curves[p] = [(param, f, relative_error(f, st)) for param, f in ((a, t()) for a, t in fam)]
    if progress is not None and method != "ecsq":
      progress(x.size)
  if curves and method == "ecsq":
    if bits_per_param is not None:
      target = _equal_error_target(curves, stats, bits_per_param)
    else:
      target = max_rel_error
    for p, pts in curves.items():
      st, dtype = stats[p], np.asarray(flat[p]).dtype
      s_u = _step_at_error(pts, target)
      fam = _family(st, "ecsq", dtype, zero_level, s_u * _ECSQ_WINDOW)
      curves[p] = [(param, f, relative_error(f, st)) for param, f in ((a, t()) for a, t in fam)]
      if progress is not None:
        progress(st.n)

  if curves:
    if bits_per_param is not None:
      target = _equal_error_target(curves, stats, bits_per_param)
      for p, pts in curves.items():
        fits[p] = _pick(pts, target, method, stats[p], flat[p].dtype, zero_level)
    if max_rel_error is not None:
      for p, pts in curves.items():
        if p not in fits or relative_error(fits[p], stats[p]) > max_rel_error:
          fits[p] = _pick(pts, max_rel_error, method, stats[p], flat[p].dtype, zero_level)

  values, codebooks = {}, {}
  for p, x in flat.items():
    if p not in fits:
      values[p], codebooks[p] = x, None
      continue
    x = np.asarray(x)
    f = fits[p]
    values[p], codebooks[p] = _apply(x, f)
    r = results[p]
    r.quantized, r.levels = True, int(f.levels.size)
    r.rel_error = _exact_rel_error(x, values[p])
    r.est_bits = f.bits
  return values, codebooks, [results[p] for p in flat]


def _pick(pts, target, method, st, dtype, zero_level) -> Fit:
  """The coarsest family member with relative error <= target (refined between steps)."""
  ok = [i for i, (_, _, e) in enumerate(pts) if e <= target]
  if not ok:
    return pts[0][1]  # the finest member: nothing finer in the family
  i = ok[-1]
  # coarser members further on may also be ok (error is not exactly monotone): take the
  # cheapest ok member, then refine towards its coarser neighbour
  i = min(ok, key=lambda j: pts[j][1].bits)
  if method == "lloyd" or i + 1 >= len(pts):
    return pts[i][1]
  fn = lambda f: relative_error(f, st) <= target
  best = _refine(st, method, dtype, zero_level, pts[i][0], pts[i + 1][0], fn)
  return best if best.bits < pts[i][1].bits else pts[i][1]  # ties: the smaller error


def _rate_curve(pts) -> tuple[np.ndarray, np.ndarray]:
  """Breakpoints (log error, bits) of the cheapest family member within each error."""
  order = sorted(pts, key=lambda t: (t[2], t[1].bits))
  le, bits = [], []
  for _, f, e in order:
    if not bits or f.bits < bits[-1]:
      le.append(math.log(max(e, 1e-300)))
      bits.append(f.bits)
  return np.array(le), np.array(bits)


def _equal_error_target(curves, stats, bits_per_param) -> float:
  """The common relative error at which the tensors' rates add up to the target.

  Each tensor's rate as a function of its error is interpolated (linearly in log error)
  between the members of its family, so the target falls between grid points.
  """
  budget = bits_per_param * sum(stats[p].n for p in curves)
  rc = [_rate_curve(pts) for pts in curves.values()]

  def bits_at(log_e):
    return sum(float(np.interp(log_e, le, b)) for le, b in rc)

  lo = min(le[0] for le, _ in rc)
  hi = max(le[-1] for le, _ in rc)
  if bits_at(lo) <= budget:
    return math.exp(lo)
  if bits_at(hi) > budget:
    return math.exp(hi)
  for _ in range(50):
    mid = (lo + hi) / 2
    if bits_at(mid) <= budget:
      hi = mid
    else:
      lo = mid
  return math.exp(hi)


def _apply(x: np.ndarray, f: Fit) -> tuple[np.ndarray, np.ndarray]:
  """Quantized values (leaf dtype) and the float32 codebook of the levels in use."""
  flat = x.reshape(-1).astype(np.float64)
  idx = np.searchsorted(f.thresholds, flat, side="left")
  levels = f.levels.astype(np.float32)
  if levels.size == 1:
    spare = np.float32(levels[0] + max(1.0, abs(float(levels[0]))))
    levels = np.array([levels[0], spare], np.float32)
  out = levels[idx].astype(x.dtype).reshape(x.shape)
  return out, levels


def _exact_rel_error(x, q) -> float:
  a = np.asarray(x, np.float64)
  d = a - np.asarray(q, np.float64)
  e = float(np.square(a).sum())  # not BLAS vdot: its threads spin on a busy machine
  return math.sqrt(float(np.square(d).sum()) / e) if e > 0 else 0.0


# ------------------------------------------------------------------- checkpoints


class CompressResult(NamedTuple):
  """What :func:`compress_checkpoint` wrote."""

  blob: bytes
  results: list  # TensorResult per leaf (empty for a re-encoded .hemp input)
  source_format: str
  seconds: float


def compress_checkpoint(
  src,
  *,
  method: str | None = None,
  step: float | None = None,
  num_levels: int | None = None,
  bits_per_param: float | None = None,
  max_rel_error: float | None = None,
  min_size: int = DEFAULT_MIN_SIZE,
  include: str | None = None,
  exclude: str | None = None,
  quantize_vectors: bool = False,
  quantize_norm_stats: bool = False,
  zero_level: bool = True,
  progress: bool | None = None,
) -> CompressResult:
  """Reads a checkpoint, quantizes it and returns the ``.hemp`` bytes.

  A ``.hemp`` input is re-encoded losslessly with the current coder
  (:func:`hemp_jax.codec.reencode`); the quantization options must then
  be left at their defaults.

  Args:
    src: a checkpoint path (see :func:`hemp_jax.codec.checkpoints.read_checkpoint`).
    method, step, num_levels, bits_per_param, max_rel_error, zero_level: see
      :func:`quantize_tree`.
    min_size, include, exclude, quantize_vectors, quantize_norm_stats: see
      :func:`select_leaves`.
    progress: show a progress bar (None: on a terminal, for models of >= 2M values).

  Returns:
    A :class:`CompressResult`.
  """
  import time

  import jax

  from hemp_jax.codec import checkpoints
  from hemp_jax.codec import container as fmt

  t0 = time.process_time()
  _regex("include", include), _regex("exclude", exclude)  # bad patterns before reading
  kind = checkpoints.checkpoint_format(src)
  if kind == "hemp":
    with open(src, "rb") as f:
      blob = fmt.reencode(f.read())
    return CompressResult(blob, [], kind, time.process_time() - t0)
  tree = checkpoints.read_checkpoint(src, kind)
  flat = checkpoints.flatten_tree(tree)
  selection = select_leaves(
    flat,
    min_size=min_size,
    include=include,
    exclude=exclude,
    quantize_vectors=quantize_vectors,
    quantize_norm_stats=quantize_norm_stats,
  )
  total = sum(np.size(x) for p, x in flat.items() if selection[p] == "")
  bar = None
  if progress or (progress is None and total >= 2_000_000):
    from tqdm.auto import tqdm

    bar = tqdm(
      total=total,
      unit="param",
      unit_scale=True,
      desc="fitting",
      leave=False,
      disable=None if progress is None else False,  # None: only on a terminal
    )
  try:
    values, codebooks, results = quantize_tree(
      flat,
      method=method,
      step=step,
      num_levels=num_levels,
      bits_per_param=bits_per_param,
      max_rel_error=max_rel_error,
      zero_level=zero_level,
      selection=selection,
      progress=bar.update if bar is not None else None,
    )
  finally:
    if bar is not None:
      bar.close()

  def put(table):
    return lambda path, _: table[path_name(path)]

  vtree = jax.tree_util.tree_map_with_path(put(values), tree)
  ctree = jax.tree_util.tree_map_with_path(put(codebooks), tree)
  blob = fmt.compress(vtree, ctree)
  return CompressResult(blob, results, kind, time.process_time() - t0)


def format_table(results: list, report) -> str:
  """Per-tensor table: kept/quantized, levels, bits/param in the file, error, coder order."""
  by_path = {leaf.path: leaf for leaf in report.leaves}
  rows = [("path", "shape", "dtype", "stored", "levels", "bits/param", "rel.err", "order")]
  for r in results:
    leaf = by_path.get(r.path)
    bpp = f"{leaf.bits_per_param:.3f}" if leaf is not None else "?"
    rows.append(
      (
        r.path,
        "x".join(map(str, r.shape)) or "()",
        r.dtype,
        "quantized" if r.quantized else f"float ({r.reason})",
        str(r.levels) if r.quantized else "-",
        bpp,
        f"{r.rel_error:.4f}" if r.quantized else "0",
        str(leaf.order) if leaf is not None and leaf.order is not None else "-",
      )
    )
  lines = table_lines(rows)
  q = [r for r in results if r.quantized]
  t = report.totals()
  nq = sum(math.prod(r.shape) for r in q)
  lines.append("")
  lines.append(
    f"{len(q)} of {len(results)} leaves quantized ({nq} of {report.num_params} values); "
    f"max relative error {max((r.rel_error for r in q), default=0):.4f}"
  )
  lines.append(
    f".hemp: {report.file_bytes} bytes ({report.bits_per_param:.3f} bits/param overall); "
    f"header {t['header']} B ({100 * t['header'] / report.file_bytes:.2f}%), payload "
    f"{t['payload']} B, tables {t['tables']} B, codebooks {t['codebooks']} B, float values "
    f"{t['float']} B"
  )
  return "\n".join(lines)
