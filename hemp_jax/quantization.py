"""Codebooks and scalar quantization.

A *codebook* is a sorted 1-D float array ``c_0 < c_1 < ... < c_{K-1}`` of K >= 2 levels.
Every function here is pure and works on arrays of any shape; the fitters are jit-able
(except ``uniform_codebook(step=...)``, whose number of levels depends on the data).

Guard levels (DESIGN.md §1): the paper's code uses N real levels plus one extra level just
outside each end of the weight range (K = N + 2), so that the soft assignment of a weight
near the range ends still has a neighbour on both sides. Here a guard level sits one
outermost spacing beyond the first/last real level.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

__all__ = [
  "uniform_codebook",
  "lloyd_max_codebook",
  "add_guard_levels",
  "validate_codebook",
  "quantize_indices",
  "dequantize",
  "quantize",
  "quantize_ste",
  "quantization_mse",
  "LLOYD_METHODS",
]

# Fitters of lloyd_max_codebook: Lloyd on the weights, or the levels of a Gaussian fit.
LLOYD_METHODS = ("empirical", "gaussian")


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def all_finite(x) -> bool:
  """True unless a concrete array holds NaN/Inf (tracers pass: checked eagerly only).

  Computed with numpy so that it also works on concrete arrays captured inside a trace.
  """
  return not _is_concrete(x) or bool(np.all(np.isfinite(np.asarray(x))))


def index_range(x):
  """(min, max) of a concrete non-empty integer array, or None (tracer / empty)."""
  if not _is_concrete(x) or np.size(x) == 0:
    return None
  a = np.asarray(x)
  return int(a.min()), int(a.max())


def validate_codebook(codebook) -> None:
  """Raises ``ValueError`` unless ``codebook`` is a valid codebook.

  Shape checks always run; value checks (finite, strictly increasing) run when the
  codebook is concrete (not a tracer inside ``jit``).

  Args:
    codebook: candidate codebook.

  Raises:
    ValueError: not 1-D, fewer than 2 levels, non-finite, unsorted or duplicate levels.
  """
  shape = np.shape(codebook)
  if len(shape) != 1:
    raise ValueError(f"codebook must be a 1-D array of levels, got shape {shape}")
  if shape[0] < 2:
    raise ValueError(f"codebook needs at least 2 levels (K >= 2), got K={shape[0]}")
  if not jnp.issubdtype(jnp.result_type(codebook), jnp.floating):
    raise ValueError(f"codebook must be floating point, got {jnp.result_type(codebook)}")
  if _is_concrete(codebook):
    c = np.asarray(codebook, dtype=np.float64)
    if not np.all(np.isfinite(c)):
      raise ValueError("codebook contains NaN or Inf levels")
    d = np.diff(c)
    if np.any(d == 0):
      i = int(np.argmax(d == 0))
      raise ValueError(f"codebook has duplicate levels: c[{i}] == c[{i + 1}] == {c[i]}")
    if np.any(d < 0):
      i = int(np.argmax(d < 0))
      raise ValueError(
        f"codebook levels must be sorted increasing: c[{i}]={c[i]} > c[{i + 1}]={c[i + 1]}"
      )


def _check_num_levels(num_levels) -> int:
  if isinstance(num_levels, bool) or not isinstance(num_levels, (int, np.integer)):
    raise ValueError(f"num_levels must be an int, got {num_levels!r}")
  if num_levels < 2:
    raise ValueError(f"num_levels must be >= 2, got {num_levels}")
  return int(num_levels)


def _check_weights(w, what: str = "weights") -> jax.Array:
  if not all_finite(w):
    raise ValueError(f"{what} contain NaN or Inf")
  w = jnp.asarray(w)
  if not jnp.issubdtype(w.dtype, jnp.floating):
    w = w.astype(jnp.float32)
  if w.size == 0:
    raise ValueError(f"{what} are empty: cannot fit a codebook to zero values")
  return w


def _spread_if_degenerate(lo, hi):
  """Gives a positive span around a constant tensor (lo == hi)."""
  span = hi - lo
  scale = jnp.maximum(jnp.abs(lo), 1.0) * 1e-3
  return jnp.where(span > 0, span, scale)


def add_guard_levels(codebook) -> jax.Array:
  """Adds one guard level below and above: K -> K + 2.

  The guards sit one outermost spacing beyond the first and last levels.
  """
  c = jnp.asarray(codebook)
  lo = c[0] - (c[1] - c[0])
  hi = c[-1] + (c[-1] - c[-2])
  return jnp.concatenate([lo[None], c, hi[None]])


def uniform_codebook(
  w,
  num_levels: int | None = None,
  *,
  step=None,
  zero_level: bool = False,
  guard_levels: bool = False,
) -> jax.Array:
  """Evenly spaced levels covering the range of ``w``.

  Modes:
    * default: ``num_levels`` levels from ``min(w)`` to ``max(w)`` inclusive;
    * ``zero_level=True``: ``num_levels`` evenly spaced levels, one of them exactly 0,
      with the smallest step that still covers ``[min(w), max(w)]`` (jit-able; with
      ``num_levels=2`` and weights of both signs only the larger side is covered);
    * ``step=s``: levels at the multiples of ``s`` from ``floor(min/s)`` to
      ``ceil(max/s)`` (so 0 is a level); ``num_levels`` must be None or equal to the count.
      Eager only, since the count depends on the data.

  A constant tensor gets levels centred on its value (the value is a level), so its
  entropy is 0 bits.

  Args:
    w: weights (any shape).
    num_levels: N, the number of real levels (>= 2).
    step: optional fixed spacing.
    zero_level: put an exact 0 among the levels.
    guard_levels: add one guard level beyond each end (K = N + 2).

  Returns:
    The codebook, float32 (or the dtype of ``w`` if wider), sorted increasing.
  """
  w = _check_weights(w)
  dtype = jnp.promote_types(w.dtype, jnp.float32)
  w = w.astype(dtype)
  lo, hi = jnp.min(w), jnp.max(w)
  if step is not None:
    if not _is_concrete(w):
      raise ValueError("uniform_codebook(step=...) is eager only (the level count depends on w)")
    step = float(step)
    if not np.isfinite(step) or step <= 0:
      raise ValueError(f"step must be a positive finite number, got {step}")
    first = int(np.floor(float(lo) / step))
    last = int(np.ceil(float(hi) / step))
    if last == first:
      last = first + 1
    count = last - first + 1
    if num_levels is not None and _check_num_levels(num_levels) != count:
      raise ValueError(
        f"step={step} over [{float(lo)}, {float(hi)}] gives {count} levels, "
        f"but num_levels={num_levels} was asked for; pass only one of them"
      )
    c = step * jnp.arange(first, last + 1, dtype=dtype)
  else:
    if num_levels is None:
      raise ValueError("pass num_levels (or step)")
    n = _check_num_levels(num_levels)
    if zero_level:
      # With j levels below zero and n-1-j above, the step must cover both ends.
      j = jnp.arange(n, dtype=dtype)
      below = jnp.where(lo < 0, jnp.where(j > 0, -lo / jnp.maximum(j, 1), jnp.inf), 0.0)
      above = jnp.where(hi > 0, jnp.where(j < n - 1, hi / jnp.maximum(n - 1 - j, 1), jnp.inf), 0.0)
      delta = jnp.maximum(below, above)
      best = jnp.argmin(delta)
      d = delta[best]
      # N = 2 with weights of both signs cannot cover both ends: cover the larger side.
      covered = jnp.isfinite(d)
      best = jnp.where(covered, best, jnp.where(-lo > hi, 1, 0))
      d = jnp.where(covered, d, jnp.maximum(-lo, hi))
      d = jnp.where(d > 0, d, _spread_if_degenerate(lo, hi) / (n - 1))
      c = d * (jnp.arange(n, dtype=dtype) - best.astype(dtype))
    else:
      i = jnp.arange(n, dtype=dtype)
      spread = _spread_if_degenerate(lo, hi)
      # A constant tensor: levels around its value, which is level floor((n-1)/2).
      c = jnp.where(
        hi > lo, lo + (hi - lo) * i / (n - 1), lo + spread * (i - (n - 1) // 2) / (n - 1)
      )
  if guard_levels:
    c = add_guard_levels(c)
  return c


def _lloyd_empirical(w_sorted, prefix, init, num_iters):
  """Lloyd iterations on sorted weights using prefix sums: O(K log M) per iteration."""
  m = w_sorted.shape[0]

  def cell_stats(c):
    mids = (c[1:] + c[:-1]) / 2
    # cell i holds w in (mids[i-1], mids[i]]: ties go to the lower level, as in
    # quantize_indices.
    edges = jnp.concatenate(
      [
        jnp.zeros(1, jnp.int32),
        jnp.searchsorted(w_sorted, mids, side="right").astype(jnp.int32),
        jnp.full(1, m, jnp.int32),
      ]
    )
    counts = edges[1:] - edges[:-1]
    sums = prefix[edges[1:]] - prefix[edges[:-1]]
    return counts, sums

  def body(_, c):
    counts, sums = cell_stats(c)
    means = sums / jnp.maximum(counts, 1)
    return jnp.where(counts > 0, means, c)

  return jax.lax.fori_loop(0, num_iters, body, init)


def _lloyd_gaussian(mu, sigma, init, num_iters):
  """Lloyd-Max levels of N(mu, sigma^2): levels are the conditional means of the cells."""
  z0 = (init - mu) / sigma

  def body(_, z):
    mids = (z[1:] + z[:-1]) / 2
    a = jnp.concatenate([jnp.array([-jnp.inf], z.dtype), mids])
    b = jnp.concatenate([mids, jnp.array([jnp.inf], z.dtype)])
    pdf = lambda x: jnp.where(jnp.isfinite(x), jnp.exp(-0.5 * x * x) / jnp.sqrt(2 * jnp.pi), 0.0)
    mass = ndtr(b) - ndtr(a)
    cond = (pdf(a) - pdf(b)) / jnp.maximum(mass, 1e-30)
    return jnp.where(mass > 1e-30, cond, z)

  z = jax.lax.fori_loop(0, num_iters, body, z0)
  return mu + sigma * z


def lloyd_max_codebook(
  w, num_levels: int, *, method: str = "empirical", num_iters: int = 50, guard_levels: bool = False
) -> jax.Array:
  """Minimum-MSE (Lloyd-Max) levels for ``w``.

  ``method="empirical"`` runs Lloyd's algorithm on the actual weights (the default; the
  MSE never increases between iterations). It sorts once and then costs O(K log M) per
  iteration using prefix sums, so it is cheap for tensors of tens of millions of weights.
  ``method="gaussian"`` fits N(mean, std) to ``w`` and returns the Lloyd-Max levels of
  that Gaussian (conditional means), as the paper's code does.

  Both start from the uniform codebook over the range and run a fixed number of
  iterations, so the result is deterministic and jit-able. A level whose cell is empty
  keeps its value.

  Args:
    w: weights (any shape).
    num_levels: N >= 2.
    method: "empirical" or "gaussian".
    num_iters: Lloyd iterations (>= 0).
    guard_levels: add one guard level beyond each end (K = N + 2).

  Returns:
    The sorted codebook.
  """
  n = _check_num_levels(num_levels)
  if method not in LLOYD_METHODS:
    raise ValueError(f"method must be 'empirical' or 'gaussian', got {method!r}")
  if num_iters < 0:
    raise ValueError(f"num_iters must be >= 0, got {num_iters}")
  w = _check_weights(w)
  dtype = jnp.promote_types(w.dtype, jnp.float32)
  flat = w.reshape(-1).astype(dtype)
  init = uniform_codebook(flat, n)
  if method == "empirical":
    # Centre before the prefix sums to keep float32 sums accurate.
    centre = jnp.mean(flat)
    s = jnp.sort(flat - centre)
    acc = jnp.float64 if jax.config.jax_enable_x64 else dtype
    prefix = jnp.concatenate([jnp.zeros(1, acc), jnp.cumsum(s.astype(acc))])
    c = _lloyd_empirical(s.astype(acc), prefix, (init - centre).astype(acc), num_iters)
    c = c.astype(dtype) + centre
  else:
    mu = jnp.mean(flat)
    sigma = jnp.std(flat)
    sigma = jnp.where(sigma > 0, sigma, _spread_if_degenerate(mu, mu))
    c = _lloyd_gaussian(mu, sigma, init, num_iters).astype(dtype)
    c = jnp.where(jnp.std(flat) > 0, c, init)
  if guard_levels:
    c = add_guard_levels(c)
  return c


def quantize_indices(w, codebook) -> jax.Array:
  """Index of the nearest level for every weight (int32, same shape as ``w``).

  A weight exactly halfway between two levels goes to the lower one.
  """
  validate_codebook(codebook)
  c = jnp.asarray(codebook)
  w = jnp.asarray(w)
  mids = (c[1:] + c[:-1]) / 2
  return jnp.searchsorted(mids, w.astype(c.dtype), side="left").astype(jnp.int32)


def dequantize(indices, codebook) -> jax.Array:
  """Level values for an index array: ``codebook[indices]``."""
  validate_codebook(codebook)
  indices = jnp.asarray(indices)
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise ValueError(f"indices must be integers, got {indices.dtype}")
  rng = index_range(indices)
  if rng is not None:
    lo, hi = rng
    if lo < 0 or hi >= np.shape(codebook)[0]:
      raise ValueError(f"indices out of range [0, {np.shape(codebook)[0]}): min {lo}, max {hi}")
  return jnp.asarray(codebook)[indices]


def quantize(w, codebook) -> jax.Array:
  """Nearest-level quantization: ``dequantize(quantize_indices(w, c), c)`` in w's dtype."""
  w = jnp.asarray(w)
  return dequantize(quantize_indices(w, codebook), codebook).astype(w.dtype)


def quantize_ste(w, codebook) -> jax.Array:
  """Straight-through quantization: forward value Q(w), gradient of the identity."""
  w = jnp.asarray(w)
  return w + jax.lax.stop_gradient(quantize(w, codebook) - w)


def quantization_mse(w, codebook) -> jax.Array:
  """Mean squared error of nearest-level quantization."""
  w = jnp.asarray(w)
  return jnp.mean((w - quantize(w, codebook)) ** 2)
