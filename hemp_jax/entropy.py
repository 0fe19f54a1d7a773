"""The differentiable order-n entropy estimator (DESIGN §2) and the exact empirical one.

Soft assignment ("tent"): a weight w between levels ``c_k <= w < c_{k+1}`` belongs to
level k with weight ``1 - t`` and to level k+1 with weight ``t``,
``t = (w - c_k) / (c_{k+1} - c_k)`` clipped to [0, 1]; a weight on a level is one-hot.

Order-n histogram: the stream is cut into n-tuples (``"disjoint"``: windows at 0, n, 2n,
..., the last ``M mod n`` weights drop out; ``"sliding"``: windows at 0 .. M-n). A tuple
adds the product of its members' tent weights to each of its at most ``2^n`` cells, so
the work is ``O(M 2^n)`` plus the cells; the ``K^n`` outer product is never built.

* Dense path (``K^n <= DENSE_MAX_CELLS``): scatter-add into a ``K^n`` table, in chunks of
  ``CHUNK_ENTRIES`` (tuple, corner) entries under ``lax.scan`` with rematerialization, so
  memory stays bounded for layers of tens of millions of weights, gradients included.
* Sparse path (more cells): the (tuple, corner) entries are sorted by their n-tuple of
  level indices and summed per run of equal keys; exact, memory ``O(M 2^n)``.

Rates, in bits per parameter: ``"block"`` is ``H_n / n``; ``"conditional"`` is
``H_n - H_{n-1}`` on sliding tuples, where ``H_{n-1}`` is the entropy of the first n-1
symbols of the same tuples (the marginal of the order-n histogram), i.e. the empirical
conditional entropy of a symbol given its n-1 predecessors: what an order-(n-1) context
coder pays per symbol. On weights that all sit on levels, the soft value equals the exact
empirical value of the index stream (:func:`empirical_entropy`).

Gradients: autodiff through the tent is exact (piecewise linear in w). At ``p = 0`` the
term ``-p log p`` is given derivative 0 (its one-sided derivative is infinite); this only
matters for weights exactly on a level boundary.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hemp_jax import groups as grp
from hemp_jax import quantization as q

__all__ = [
    "tent_assign",
    "soft_entropy",
    "empirical_entropy",
    "tree_entropy",
    "tree_group_rates",
    "DENSE_MAX_CELLS",
    "CHUNK_ENTRIES",
]

DENSE_MAX_CELLS = 1 << 22
CHUNK_ENTRIES = 1 << 21
_TUPLE_MODES = ("disjoint", "sliding")
_RATES = ("block", "conditional")
_POOLS = ("group", "global")


def _check_options(order, tuples, rate):
  if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
    raise ValueError(f"order must be an int >= 1, got {order!r}")
  if tuples not in _TUPLE_MODES:
    raise ValueError(f"tuples must be one of {_TUPLE_MODES}, got {tuples!r}")
  if rate not in _RATES:
    raise ValueError(f"rate must be one of {_RATES}, got {rate!r}")
  if rate == "conditional" and tuples != "sliding":
    raise ValueError("rate='conditional' (H_n - H_{n-1}) is defined on sliding tuples; "
                     "pass tuples='sliding'")


def _num_tuples(length: int, order: int, tuples: str) -> int:
  return length // order if tuples == "disjoint" else max(length - order + 1, 0)


def _check_group_length(length: int, order: int, tuples: str, what: str = "the input"):
  if _num_tuples(length, order, tuples) < 1:
    if tuples == "sliding":
      raise ValueError(f"sliding tuples of order {order} are longer than {what} "
                       f"({length} weights)")
    raise ValueError(f"{what} has {length} weights: fewer than one disjoint tuple of "
                     f"order {order}")


def tent_assign(w, codebook):
  """Tent soft assignment of every weight.

  Args:
    w: weights, any shape.
    codebook: sorted codebook of K >= 2 levels.

  Returns:
    ``(k, t)``: int32 lower level index in ``[0, K-2]`` and float weight ``t`` in [0, 1]
    of level ``k+1`` (level ``k`` gets ``1 - t``), both shaped like ``w``.
  """
  c = jnp.asarray(codebook)
  w = jnp.asarray(w).astype(c.dtype)
  num = c.shape[0]
  k = jnp.clip(jnp.searchsorted(c, w, side="right") - 1, 0, num - 2).astype(jnp.int32)
  lo = c[k]
  t = jnp.clip((w - lo) / (c[k + 1] - lo), 0.0, 1.0)
  return k, t


# ----------------------------------------------------------------------------- tuples


def _tuples(x, order: int, tuples: str):
  """(T, n) tuples of a 1-D stream, and each tuple's start position."""
  m = x.shape[0]
  if tuples == "disjoint":
    num = m // order
    return x[:num * order].reshape(num, order), jnp.arange(num) * order
  num = m - order + 1
  return jnp.stack([x[i:i + num] for i in range(order)], axis=-1), jnp.arange(num)


def _corner_weights(t):
  """(T, n) tent weights -> (T, 2^n) products; corner c takes bit m of c for member m."""
  w = jnp.ones(t.shape[:1] + (1,), t.dtype)
  for m in range(t.shape[1]):
    tm = t[:, m:m + 1]
    w = jnp.concatenate([w * (1 - tm), w * tm], axis=1)
  return w


def _corner_bits(order: int) -> np.ndarray:
  """(2^n, n) 0/1 offsets of each corner, matching :func:`_corner_weights`."""
  c = np.arange(1 << order)[:, None]
  return ((c >> np.arange(order)[None, :]) & 1).astype(np.int32)


def _cell_ids(k, num_levels: int):
  """(T, n) level indices -> (T,) dense cell ids (row-major over the n-tuple)."""
  order = k.shape[1]
  radix = np.array([num_levels ** (order - 1 - m) for m in range(order)], np.int32)
  return k @ radix


def _dense_hist_chunk(k, t, mask, num_levels: int, hard: bool):
  """Histogram of one chunk of tuples. ``t is None`` (hard) means one-hot at ``k``."""
  cells = num_levels ** k.shape[1]
  base = _cell_ids(k, num_levels)
  if hard:
    return jnp.zeros(cells, mask.dtype).at[base].add(mask, mode="drop")
  radix = np.array([num_levels ** (k.shape[1] - 1 - m) for m in range(k.shape[1])], np.int32)
  offsets = jnp.asarray(_corner_bits(k.shape[1]) @ radix)
  ids = base[:, None] + offsets[None, :]
  wts = _corner_weights(t) * mask[:, None]
  return jnp.zeros(cells, wts.dtype).at[ids.reshape(-1)].add(wts.reshape(-1), mode="drop")


def _dense_hist(k, t, mask, num_levels: int, hard: bool, chunk_entries: int):
  """Dense order-n histogram of (T, n) tuples, chunked to bound memory."""
  num, order = k.shape
  per = 1 if hard else 1 << order
  chunk = max(1, chunk_entries // per)
  if num <= chunk:
    return _dense_hist_chunk(k, t, mask, num_levels, hard)
  steps = -(-num // chunk)
  pad = steps * chunk - num
  k = jnp.pad(k, ((0, pad), (0, 0))).reshape(steps, chunk, order)
  mask = jnp.pad(mask, (0, pad)).reshape(steps, chunk)
  cells = num_levels ** order
  if hard:
    xs = (k, mask)
    body = lambda h, x: (h + _dense_hist_chunk(x[0], None, x[1], num_levels, True), None)
  else:
    t = jnp.pad(t, ((0, pad), (0, 0))).reshape(steps, chunk, order)
    xs = (k, t, mask)
    body = lambda h, x: (h + _dense_hist_chunk(x[0], x[1], x[2], num_levels, False), None)
  hist, _ = jax.lax.scan(jax.checkpoint(body), jnp.zeros(cells, mask.dtype), xs)
  return hist


def _sparse_entries(k, t, mask, hard: bool):
  """(T, n) tuples -> (E, n) cell keys and (E,) weights, E = T or T 2^n."""
  if hard:
    return k, mask
  bits = jnp.asarray(_corner_bits(k.shape[1]))
  keys = (k[:, None, :] + bits[None, :, :]).reshape(-1, k.shape[1])
  wts = (_corner_weights(t) * mask[:, None]).reshape(-1)
  return keys, wts


def _xlog2x_sum(p):
  """-sum p log2 p, with 0 log 0 = 0 and derivative 0 at p = 0."""
  safe = jnp.where(p > 0, p, 1.0)
  return -jnp.sum(p * jnp.log2(safe))


def _sparse_cell_masses(keys, wts):
  """Sums ``wts`` over runs of equal key rows; returns one mass per entry slot."""
  num, order = keys.shape
  perm = jnp.lexsort(tuple(keys[:, m] for m in reversed(range(order))))
  ks = keys[perm]
  new = jnp.concatenate([jnp.ones(1, bool), jnp.any(ks[1:] != ks[:-1], axis=1)])
  seg = jnp.cumsum(new) - 1
  return jax.ops.segment_sum(wts[perm], seg, num_segments=num)


def _rate_from_entries(keys, wts, total, order: int, rate: str):
  h_n = _xlog2x_sum(_sparse_cell_masses(keys, wts) / total)
  if rate == "block":
    return h_n / order
  if order == 1:
    return h_n
  return h_n - _xlog2x_sum(_sparse_cell_masses(keys[:, :-1], wts) / total)


def _use_dense(num_levels: int, order: int, max_cells: int | None = None) -> bool:
  return num_levels ** order <= (DENSE_MAX_CELLS if max_cells is None else max_cells)


def _rate_from_dense(hist, total, num_levels: int, order: int, rate: str):
  """Rate (bits/parameter) from a dense order-n histogram with ``total`` tuples."""
  p = hist / total
  h_n = _xlog2x_sum(p)
  if rate == "block":
    return h_n / order
  if order == 1:
    return h_n
  return h_n - _xlog2x_sum(p.reshape(-1, num_levels).sum(axis=1))


# ------------------------------------------------------------------ one group (stream)


def _stream_tuples(k, t, valid_len, order: int, tuples: str):
  """Tuples of a (possibly padded) stream; tuples reaching past ``valid_len`` get mask 0."""
  kt, start = _tuples(k, order, tuples)
  tt = None if t is None else _tuples(t, order, tuples)[0]
  mask = (start + order <= valid_len).astype(jnp.float32 if t is None else t.dtype)
  return kt, tt, mask


def _stream_hist(k, t, valid_len, num_levels, order, tuples, chunk_entries):
  kt, tt, mask = _stream_tuples(k, t, valid_len, order, tuples)
  return _dense_hist(kt, tt, mask, num_levels, t is None, chunk_entries)


def _stream_entries(k, t, valid_len, order, tuples):
  kt, tt, mask = _stream_tuples(k, t, valid_len, order, tuples)
  return _sparse_entries(kt, tt, mask, t is None)


def _single_stream_rate(k, t, num_levels, order, tuples, rate, chunk_entries):
  return _single_stream_rate_jit(k, t, num_levels, order, tuples, rate, chunk_entries,
                                 _use_dense(num_levels, order))


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7))
def _single_stream_rate_jit(k, t, num_levels, order, tuples, rate, chunk_entries, dense):
  length = k.shape[0]
  total = _num_tuples(length, order, tuples)
  if dense:
    hist = _stream_hist(k, t, length, num_levels, order, tuples, chunk_entries)
    return _rate_from_dense(hist, total, num_levels, order, rate)
  keys, wts = _stream_entries(k, t, length, order, tuples)
  return _rate_from_entries(keys, wts, total, order, rate)


def soft_entropy(w, codebook, order: int = 1, tuples: str = "disjoint", rate: str = "block",
                 *, chunk_entries: int = CHUNK_ENTRIES) -> jax.Array:
  """Soft (tent) order-n entropy rate of ``w`` under ``codebook``, in bits per parameter.

  ``w`` is flattened in C order (the tree estimator first puts each leaf in scan order,
  see :mod:`hemp_jax.groups`). Differentiable in ``w`` by ``jax.grad``; jit-able with
  ``order``, ``tuples``, ``rate`` static.

  Args:
    w: weights, any shape, float.
    codebook: sorted codebook of K >= 2 levels.
    order: tuple length n >= 1.
    tuples: "disjoint" (the paper) or "sliding".
    rate: "block" (H_n / n) or "conditional" (H_n - H_{n-1}; sliding tuples).
    chunk_entries: (tuple, corner) entries per chunk of the dense histogram.

  Returns:
    Scalar rate in bits per parameter.
  """
  _check_options(order, tuples, rate)
  q.validate_codebook(codebook)
  w = jnp.asarray(w)
  if not jnp.issubdtype(w.dtype, jnp.floating):
    raise ValueError(f"w must be floating point, got {w.dtype}")
  if not q.all_finite(w):
    raise ValueError("w contains NaN or Inf")
  flat = w.reshape(-1)
  _check_group_length(flat.shape[0], order, tuples)
  k, t = tent_assign(flat, codebook)
  num_levels = np.shape(codebook)[0]
  return _single_stream_rate(k, t, num_levels, order, tuples, rate, chunk_entries)


def empirical_entropy(indices, num_levels: int, order: int = 1, tuples: str = "disjoint",
                      rate: str = "block") -> jax.Array:
  """Exact empirical order-n entropy rate of an index stream, bits per symbol.

  The same quantity as :func:`soft_entropy` on hard indices (C-order flattened):
  n-gram counts of the tuples, ``H_n / n`` or ``H_n - H_{n-1}``.

  Args:
    indices: integer level indices in ``[0, num_levels)``, any shape.
    num_levels: K.
    order, tuples, rate: as in :func:`soft_entropy`.

  Returns:
    Scalar rate in bits per symbol.
  """
  _check_options(order, tuples, rate)
  if isinstance(num_levels, bool) or not isinstance(num_levels, (int, np.integer)) \
      or num_levels < 2:
    raise ValueError(f"num_levels must be an int >= 2, got {num_levels!r}")
  idx = jnp.asarray(indices)
  if not jnp.issubdtype(idx.dtype, jnp.integer):
    raise ValueError(f"indices must be integers, got {idx.dtype}")
  flat = idx.reshape(-1).astype(jnp.int32)
  _check_group_length(flat.shape[0], order, tuples)
  rng = q.index_range(idx)
  if rng is not None:
    lo, hi = rng
    if lo < 0 or hi >= num_levels:
      raise ValueError(f"indices out of range [0, {num_levels}): min {lo}, max {hi}")
  return _single_stream_rate(flat, None, int(num_levels), order, tuples, rate, CHUNK_ENTRIES)


# ------------------------------------------------------------------------ pytree level


def _bucket_length(m: int) -> int:
  """Padded stream length of a group: at most 25% padding, few distinct lengths."""
  if m <= 1024:
    return max(16, 1 << (m - 1).bit_length())
  quantum = 1 << (m.bit_length() - 3)
  return -(-m // quantum) * quantum


class _Bucket:
  """Groups with the same K and padded length: stacked and vmapped together."""

  def __init__(self, num_levels, length):
    self.num_levels, self.length = num_levels, length
    self.members: list[int] = []


def _plan(codebooks, params, order, tuples):
  cbs, leaves, names, _ = grp.codebook_leaves(codebooks, params)
  groups = []
  for cb, x, name in zip(cbs, leaves, names):
    if cb is None:
      continue
    q.validate_codebook(cb)
    size = int(np.size(x))
    _check_group_length(size, order, tuples, what=f"group {name!r}")
    groups.append((name, cb, x, size))
  if not groups:
    raise ValueError("no quantized groups: every codebook is None")
  buckets: dict[tuple[int, int], _Bucket] = {}
  for i, (_, cb, _, size) in enumerate(groups):
    key = (int(np.shape(cb)[0]), _bucket_length(size))
    buckets.setdefault(key, _Bucket(*key)).members.append(i)
  return groups, list(buckets.values())


def _bucket_inputs(groups, bucket):
  """Stacked padded streams (G, L) of tent (k, t) and valid lengths (G,)."""
  ks, ts, lens = [], [], []
  for i in bucket.members:
    _, cb, x, size = groups[i]
    stream = grp.scan_stream(x).astype(jnp.asarray(cb).dtype)
    stream = jnp.pad(stream, (0, bucket.length - size), constant_values=jnp.asarray(cb)[0])
    k, t = tent_assign(stream, cb)
    ks.append(k)
    ts.append(t)
    lens.append(size)
  return jnp.stack(ks), jnp.stack(ts), jnp.asarray(lens, jnp.int32)


def tree_group_rates(params, codebooks, *, order: int = 1, tuples: str = "disjoint",
                     rate: str = "block", chunk_entries: int = CHUNK_ENTRIES):
  """Per-group soft rates (bits per parameter) for every quantized leaf.

  Groups are bucketed by (K, padded length) — padded lengths round a group's size up by
  at most 25% — and each bucket is stacked and ``vmap``-ped; padding positions never
  enter a tuple. Each leaf is read in scan order (:func:`hemp_jax.groups.scan_stream`).
  The computation is jit-compiled (one compilation per tree structure and options).

  Returns:
    ``(names, rates, sizes)``: path names, a (G,) array of rates and the group sizes.
  """
  _check_options(order, tuples, rate)
  groups, _ = _plan(codebooks, params, order, tuples)
  rates = _tree_group_rates_jit(params, codebooks, order, tuples, rate, chunk_entries,
                                DENSE_MAX_CELLS)
  return [g[0] for g in groups], rates, [g[3] for g in groups]


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _tree_group_rates_jit(params, codebooks, order, tuples, rate, chunk_entries, max_cells):
  groups, buckets = _plan(codebooks, params, order, tuples)
  rates = [None] * len(groups)
  for b in buckets:
    ks, ts, lens = _bucket_inputs(groups, b)
    totals = jnp.asarray([_num_tuples(groups[i][3], order, tuples) for i in b.members])
    if _use_dense(b.num_levels, order, max_cells):
      fn = lambda k, t, n, tot, b=b: _rate_from_dense(
          _stream_hist(k, t, n, b.num_levels, order, tuples, chunk_entries), tot,
          b.num_levels, order, rate)
    else:
      fn = lambda k, t, n, tot: _rate_from_entries(
          *_stream_entries(k, t, n, order, tuples), tot, order, rate)
    r = jax.vmap(fn)(ks, ts, lens, totals.astype(ts.dtype))
    for j, i in enumerate(b.members):
      rates[i] = r[j]
  return jnp.stack(rates)


def tree_entropy(params, codebooks, *, order: int = 1, tuples: str = "disjoint",
                 rate: str = "block", pool: str = "group",
                 chunk_entries: int = CHUNK_ENTRIES) -> jax.Array:
  """Soft order-n entropy of all quantized leaves of a params pytree, bits per parameter.

  Args:
    params: params pytree.
    codebooks: pytree like ``params``: a codebook per quantized leaf, ``None`` elsewhere
      (see :func:`hemp_jax.fit_codebooks`).
    order, tuples, rate: as in :func:`soft_entropy`.
    pool: "group" — one histogram per group, total bits ``sum_g M_g r_g``, returned per
      quantized parameter (matches per-tensor coding); "global" — the paper's single
      histogram pooling the tuples of all groups (all codebooks must have the same K).
    chunk_entries: entries per chunk of the dense histogram (memory bound).

  Returns:
    Scalar bits per quantized parameter. Differentiable in ``params``; jit-able
    (codebooks may be traced; the tree structure and shapes are static).
  """
  _check_options(order, tuples, rate)
  if pool not in _POOLS:
    raise ValueError(f"pool must be one of {_POOLS}, got {pool!r}")
  _, buckets = _plan(codebooks, params, order, tuples)
  levels = {b.num_levels for b in buckets}
  if pool == "global" and len(levels) != 1:
    raise ValueError(f"pool='global' needs the same number of levels K in every codebook, "
                     f"got K in {sorted(levels)}")
  return _tree_entropy_jit(params, codebooks, order, tuples, rate, pool, chunk_entries,
                           DENSE_MAX_CELLS)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7))
def _tree_entropy_jit(params, codebooks, order, tuples, rate, pool, chunk_entries, max_cells):
  groups, buckets = _plan(codebooks, params, order, tuples)
  if pool == "group":
    rates = _tree_group_rates_jit(params, codebooks, order, tuples, rate, chunk_entries,
                                  max_cells)
    sizes = jnp.asarray([g[3] for g in groups], rates.dtype)
    return jnp.sum(rates * sizes) / jnp.sum(sizes)
  num_levels = buckets[0].num_levels
  total = float(sum(_num_tuples(g[3], order, tuples) for g in groups))
  if _use_dense(num_levels, order, max_cells):
    hist = 0.0
    for b in buckets:
      ks, ts, lens = _bucket_inputs(groups, b)
      h = jax.vmap(lambda k, t, n: _stream_hist(k, t, n, num_levels, order, tuples,
                                                chunk_entries))(ks, ts, lens)
      hist = hist + h.sum(axis=0)
    return _rate_from_dense(hist, total, num_levels, order, rate)
  keys, wts = [], []
  for b in buckets:
    ks, ts, lens = _bucket_inputs(groups, b)
    kk, ww = jax.vmap(lambda k, t, n: _stream_entries(k, t, n, order, tuples))(ks, ts, lens)
    keys.append(kk.reshape(-1, order))
    wts.append(ww.reshape(-1))
  return _rate_from_entries(jnp.concatenate(keys), jnp.concatenate(wts), total, order, rate)
