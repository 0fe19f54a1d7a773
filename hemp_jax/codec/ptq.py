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
- ``dq``: dependent (trellis-coded) quantization (:mod:`hemp_jax.codec.trellis`): two
  quantizers on a grid of step ``delta`` chosen per weight by a state machine driven by
  the parities of the levels (2 ** ``trellis.DQ_STATE_BITS`` states), the levels chosen
  by a Viterbi search for the least squared error plus ``lam`` times their coded bits;
  the family runs over ``delta`` (each member fitted on the tensor itself, not on its
  sorted values). The leaf is stored as a dq record (step, levels), not with a codebook.
  Constant tensors get one exact level, as with the other methods.

Targets: ``step`` (uniform/ecsq/dq), ``num_levels`` (lloyd, the default with a level count:
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
import warnings
from typing import Any, Callable, NamedTuple

import numpy as np

from hemp_jax.codec import trellis
from hemp_jax.codec.inspection import table_lines
from hemp_jax.codec.records import WARN_REL_ERROR, QuantizationWarning
from hemp_jax.codec.scalar import (
  ECSQ_SLOPE,
  ECSQ_WINDOW,
  LEVELS_RATE_WEIGHT,
  Fit,
  SortedStats,
  estimate_bits,
  family,
  fit_cells,
  fit_ecsq,
  fit_lloyd,
  fit_uniform,
  fit_uniform_levels,
  refine,
  relative_error,
  round_levels,
  sorted_stats,
  step_at_error,
)
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

METHODS = ("uniform", "ecsq", "lloyd", "dq")
NORM_STATS_PATTERN = (
  r"(?i)(^|[/.])(batch_stats|running_mean|running_var|running_variance|moving_mean|"
  r"moving_var|moving_variance|num_batches_tracked|mean_ema|var_ema)([/.]|$)"
)
DEFAULT_MIN_SIZE = 256
DEFAULT_MAX_REL_ERROR = 0.05
NONFINITE = "non-finite values"  # the reason of a leaf kept in float for NaN/Inf


@dataclasses.dataclass
class TensorResult:
  """What happened to one leaf."""

  path: str
  shape: tuple
  dtype: str
  quantized: bool
  reason: str = ""  # why kept in float
  levels: int = 0  # levels in use (dq: distinct levels k)
  rel_error: float = 0.0
  est_bits: float = 0.0  # estimated coded bits (quantized leaves)
  param: float = 0.0  # step (dq: delta), or N for lloyd


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
    method: "uniform", "ecsq", "lloyd" or "dq"; default :func:`default_method`
      (``lloyd`` with ``num_levels``, else ``uniform``).
    step: uniform/ecsq step (dq: the grid step delta) for every tensor.
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
    codebook of the levels in use (dq: a :class:`hemp_jax.codec.trellis.DQ`), or None;
    one :class:`TensorResult` per leaf.
  """
  method = default_method(num_levels) if method is None else method
  _check_targets(method, step, num_levels, bits_per_param, max_rel_error)
  if method == "dq" and not zero_level:
    raise ValueError("the dq method always has a zero level (no --no-zero-level)")
  if selection is None:
    selection = select_leaves(flat)
  if method == "dq":
    return _quantize_dq(flat, selection, step, bits_per_param, max_rel_error, progress)

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
      lv = round_levels(st.w[:1], x.dtype)
      fits[p] = fit_cells(st, lv, np.zeros(0))
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
      fam = family(st, "uniform" if method == "ecsq" else method, x.dtype, zero_level)
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
      s_u = step_at_error(pts, target)
      fam = family(st, "ecsq", dtype, zero_level, s_u * ECSQ_WINDOW)
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


def _quantize_dq(flat, selection, step, bits_per_param, max_rel_error, progress):
  """:func:`quantize_tree` with ``method="dq"``: a :class:`trellis.DQFit` per selected
  leaf (a constant leaf: one exact level), at the step, the error bound, or the common
  relative error whose estimated bits meet ``bits_per_param``."""
  results, fits = {}, {}
  for p, x in flat.items():
    x = np.asarray(x)
    results[p] = TensorResult(p, tuple(x.shape), str(x.dtype), False, selection.get(p, ""))
  chosen = [p for p in flat if selection.get(p, "") == ""]
  varying = []
  for p in chosen:
    x = np.asarray(flat[p])
    if x.min() == x.max():  # one value (all zeros, a constant): one exact level
      st = sorted_stats(x)
      fits[p] = fit_cells(st, round_levels(st.w[:1], x.dtype), np.zeros(0))
      if progress is not None:
        progress(x.size)
    else:
      varying.append(p)
  targets = {p: max_rel_error for p in varying}
  if bits_per_param is not None and varying:
    target = _dq_error_target({p: flat[p] for p in varying}, bits_per_param)
    targets = {p: target if max_rel_error is None else min(target, max_rel_error) for p in varying}
  for p in varying:
    x = np.asarray(flat[p])
    layout, nu = trellis.chain_layout(x.shape), trellis.DQ_STATE_BITS
    if step is not None:
      fits[p] = trellis.fit_step(x, step, layout=layout, nu=nu)
    else:
      fits[p] = trellis.fit_error(x, targets[p], layout=layout, nu=nu)
    results[p].param = fits[p].step
    if progress is not None:
      progress(x.size)
  values, codebooks = {}, {}
  for p, x in flat.items():
    f = fits.get(p)
    if f is None:
      values[p], codebooks[p] = x, None
      continue
    x = np.asarray(x)
    if isinstance(f, trellis.DQFit):
      values[p], codebooks[p] = f.values, f.spec
      levels = np.unique(f.levels).size
    else:
      values[p], codebooks[p] = _apply(x, f)
      levels = f.levels.size
    r = results[p]
    r.quantized, r.levels = True, int(levels)
    r.rel_error = _exact_rel_error(x, values[p])
    r.est_bits = f.bits
  return values, codebooks, [results[p] for p in flat]


class _Bits(NamedTuple):
  bits: float


def _dq_error_target(flat: dict, bits_per_param: float) -> float:
  """The common relative error at which the tensors' estimated dq bits add up to the
  target: from the uniform families' common error, each tensor's dq curve over a window
  of steps (:func:`trellis.sample_curve`), then :func:`_equal_error_target` on them."""
  stats = {p: sorted_stats(x) for p, x in flat.items()}
  curves = {}
  for p, x in flat.items():
    fam = family(stats[p], "uniform", np.asarray(x).dtype)
    curves[p] = [(a, f, relative_error(f, stats[p])) for a, f in ((a, t()) for a, t in fam)]
  first = _equal_error_target(curves, stats, bits_per_param)
  for p, x in flat.items():
    s_u = step_at_error(curves[p], first)
    steps = s_u * trellis.DQ_STEP_RATIO * trellis.DQ_WINDOW
    layout = trellis.chain_layout(np.shape(x))
    pts = trellis.sample_curve(x, steps, layout=layout, nu=trellis.DQ_STATE_BITS)
    curves[p] = [(step, _Bits(bits), err) for step, err, bits in pts]
  return _equal_error_target(curves, stats, bits_per_param)


def _check_targets(method, step, num_levels, bits_per_param, max_rel_error) -> None:
  """ValueError unless the method and exactly one target (see :func:`quantize_tree`) fit."""
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
  if num_levels is not None and method in ("ecsq", "dq"):
    raise ValueError(f"the {method} method takes a step (or a rate/error target), not num_levels")
  if step is not None and not step > 0:
    raise ValueError(f"step must be positive, got {step}")
  if bits_per_param is not None and not bits_per_param > 0:
    raise ValueError(f"bits_per_param must be positive, got {bits_per_param}")
  if max_rel_error is not None and not max_rel_error > 0:
    raise ValueError(f"max_rel_error must be positive, got {max_rel_error}")


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
  best = refine(st, method, dtype, zero_level, pts[i][0], pts[i + 1][0], fn)
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

  for r in results:
    if r.quantized and r.rel_error > WARN_REL_ERROR:
      message = f"{r.path}: decodes with relative error {r.rel_error:.2f} ({r.levels} levels)"
      warnings.warn(message, QuantizationWarning, stacklevel=2)

  def put(table):
    return lambda path, _: table[path_name(path)]

  vtree = jax.tree_util.tree_map_with_path(put(values), tree)
  ctree = jax.tree_util.tree_map_with_path(put(codebooks), tree)
  blob = fmt.compress(vtree, ctree)
  return CompressResult(blob, results, kind, time.process_time() - t0)


def format_table(results: list, report) -> str:
  """Per-tensor table: kept/quantized/dq, levels, bits/param in the file, error, coder order."""
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
        (leaf.kind if leaf is not None else "quantized") if r.quantized else f"float ({r.reason})",
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
