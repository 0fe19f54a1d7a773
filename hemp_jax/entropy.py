"""The differentiable order-n entropy estimator (DESIGN.md §1) and the exact empirical one.

Soft assignment ("tent"): a weight w between levels ``c_k <= w < c_{k+1}`` belongs to
level k with weight ``1 - t`` and to level k+1 with weight ``t``,
``t = (w - c_k) / (c_{k+1} - c_k)`` clipped to [0, 1]; a weight on a level is one-hot.

Order-n histogram: the stream is cut into n-tuples (``"disjoint"``: windows at 0, n, 2n,
..., the last ``M mod n`` weights drop out; ``"sliding"``: windows at 0 .. M-n). A tuple
adds the product of its members' tent weights to each of its at most ``2^n`` cells, so
the work is ``O(M 2^n)`` plus the cells; the ``K^n`` outer product is never built.

* Dense path (``K^n <= DENSE_MAX_CELLS``): scatter-add into a ``K^n`` table, in chunks of
  ``CHUNK_ENTRIES`` (tuple, corner) entries taken straight from the weight stream (tent,
  corner weights and scatter per chunk), so memory stays bounded for layers of tens of
  millions of weights, gradients included. While the table is small each tuple adds one
  2^n-wide row at its base cell (one scatter index per tuple, not 2^n); the gradient is
  hand-written, chunk by chunk (see :func:`_soft_table`).
* Sparse path (more cells): the (tuple, corner) entries are sorted by their n-tuple of
  level indices and summed per run of equal keys; exact, memory ``O(M 2^n)``.

Rates, in bits per parameter: ``"block"`` is ``H_n / n``; ``"conditional"`` is
``H_n - H_{n-1}`` on sliding tuples, where ``H_{n-1}`` is the entropy of the first n-1
symbols of the same tuples (the marginal of the order-n histogram), i.e. the empirical
conditional entropy of a symbol given its n-1 predecessors: what an order-(n-1) context
coder pays per symbol. On weights that all sit on levels, the soft value equals the exact
empirical value of the index stream (:func:`empirical_entropy`).

Gradients: exact (the estimator is piecewise linear in w through the tent); the dense
path's hand-written gradient equals autodiff's, including ``jnp.clip``'s 1/2 for a weight
exactly on a level. At ``p = 0`` the term ``-p log p`` is given derivative 0 (its
one-sided derivative is infinite); this only matters for weights exactly on a level
boundary.
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
  "TUPLE_MODES",
  "RATES",
  "POOLS",
]

DENSE_MAX_CELLS = 1 << 22
CHUNK_ENTRIES = 1 << 20
# Row-scatter histogram (see _soft_table): used while its (K^n, 2^n) accumulator has at
# most this many entries and K^n <= _ROW_MAX_CELLS_PER_TUPLE * T.
_ROW_MAX_ENTRIES = 1 << 22
_ROW_MAX_CELLS_PER_TUPLE = 8
# Copies of the table per chunk, for float32 accuracy (see _soft_part_table).
_ACC_GROUPS = 64
# Orders up to this get the corner-weight gradient by unrolled column contractions.
_CORNER_GRAD_UNROLL = 6
# tent_assign picks levels by an unrolled compare/select chain up to this K.
_SELECT_MAX_LEVELS = 32
TUPLE_MODES = ("disjoint", "sliding")
RATES = ("block", "conditional")
POOLS = ("group", "global")


def check_options(order, tuples, rate):
  if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
    raise ValueError(f"order must be an int >= 1, got {order!r}")
  if tuples not in TUPLE_MODES:
    raise ValueError(f"tuples must be one of {TUPLE_MODES}, got {tuples!r}")
  if rate not in RATES:
    raise ValueError(f"rate must be one of {RATES}, got {rate!r}")
  if rate == "conditional" and tuples != "sliding":
    raise ValueError(
      "rate='conditional' (H_n - H_{n-1}) is defined on sliding tuples; pass tuples='sliding'"
    )


def _num_tuples(length: int, order: int, tuples: str) -> int:
  return length // order if tuples == "disjoint" else max(length - order + 1, 0)


def _check_group_length(length: int, order: int, tuples: str, what: str = "the input"):
  if _num_tuples(length, order, tuples) < 1:
    if tuples == "sliding":
      raise ValueError(f"sliding tuples of order {order} are longer than {what} ({length} weights)")
    raise ValueError(f"{what} has {length} weights: fewer than one disjoint tuple of order {order}")


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
  k, lo, hi = _tent_levels(w, c)
  t = jnp.clip((w - lo) / (hi - lo), 0.0, 1.0)
  return k, t


def _tent_levels(w, c):
  """``k = clip(searchsorted(c, w, "right") - 1, 0, K-2)``, ``c[k]`` and ``c[k+1]``."""
  num = c.shape[0]
  if num > _SELECT_MAX_LEVELS:
    k = jnp.searchsorted(c, w, side="right", method="scan_unrolled") - 1
    k = jnp.clip(k, 0, num - 2).astype(jnp.int32)
    return k, c[k], c[k + 1]
  # k = #{j in 1..K-2 : c_j <= w}, with c_k and c_{k+1} picked by the same comparisons:
  # one fused elementwise pass, no binary-search loop and no gathers (slow on CPU).
  k = jnp.zeros(w.shape, jnp.int32)
  lo = jnp.broadcast_to(c[0], w.shape)
  hi = jnp.broadcast_to(c[1], w.shape)
  for j in range(1, num - 1):
    above = w >= c[j]
    k = k + above.astype(jnp.int32)
    lo = jnp.where(above, c[j], lo)
    hi = jnp.where(above, c[j + 1], hi)
  return k, lo, hi


# ----------------------------------------------------------------------------- tuples


def _tuples(x, order: int, tuples: str):
  """(T, n) tuples of a 1-D stream, and each tuple's start position."""
  m = x.shape[0]
  if tuples == "disjoint":
    num = m // order
    return x[: num * order].reshape(num, order), jnp.arange(num) * order
  num = m - order + 1
  return jnp.stack([x[i : i + num] for i in range(order)], axis=-1), jnp.arange(num)


def _corner_bits(order: int) -> np.ndarray:
  """(2^n, n) 0/1 offsets of each corner, matching :func:`_corner_weights`."""
  c = np.arange(1 << order)[:, None]
  return ((c >> np.arange(order)[None, :]) & 1).astype(np.int32)


def _radix(num_levels: int, order: int) -> np.ndarray:
  return np.array([num_levels ** (order - 1 - m) for m in range(order)], np.int32)


def _cell_ids(k, num_levels: int):
  """(T, n) level indices -> (T,) dense cell ids (row-major over the n-tuple)."""
  radix = _radix(num_levels, k.shape[1]).tolist()
  ids = k[:, 0] * radix[0]
  for m in range(1, k.shape[1]):  # elementwise: an integer matmul is slow on CPU
    ids = ids + k[:, m] * radix[m]
  return ids


def _corner_offsets(num_levels: int, order: int) -> np.ndarray:
  """(2^n,) cell-id offset of each corner from the tuple's base cell."""
  return _corner_bits(order) @ _radix(num_levels, order)


def _corner_products(t, mask):
  """(T, n) tent weights, (T,) mask or None -> (T, 2^n) corner weights (a broadcast
  product, no concatenation: XLA CPU runs minor-axis concatenates slowly)."""
  order = t.shape[1]
  bits = _corner_bits(order).astype(bool)
  w = None if mask is None else mask[:, None]
  for m in range(order):
    tm = t[:, m : m + 1]
    f = jnp.where(jnp.asarray(bits[:, m])[None, :], tm, 1 - tm)
    w = f if w is None else w * f
  return w


def _corner_grad(g, t, mask):
  """Cotangent of :func:`_corner_products`: (T, 2^n) g -> (T, n) dt and (T,) dmask.

  ``dt_m = mask * sum_c g_c (+-1) prod_{m' != m} f_m'(c)``. Up to order
  ``_CORNER_GRAD_UNROLL`` the columns of g are contracted with the other members' (1 - t,
  t) factors one member at a time (O(n 2^n) flops per tuple, elementwise on (T,) columns,
  one fused loop); above it, by broadcast products and a reduction over corners.
  """
  order = t.shape[1]
  if order <= _CORNER_GRAD_UNROLL:
    cols = [g[:, c] for c in range(1 << order)]
    dt = []
    for m in range(order):
      lo, hi = _contract_columns(cols, t, keep=m)
      dt.append(hi - lo)
    dmask = _contract_columns(cols, t, keep=None)[0]
  else:
    bits = _corner_bits(order).astype(bool)
    fs = [
      jnp.where(jnp.asarray(bits[:, m])[None, :], t[:, m : m + 1], 1 - t[:, m : m + 1])
      for m in range(order)
    ]
    dt = []
    for m in range(order):
      rest = g * jnp.where(jnp.asarray(bits[:, m])[None, :], 1.0, -1.0).astype(g.dtype)
      for j in range(order):
        if j != m:
          rest = rest * fs[j]
      dt.append(rest.sum(axis=1))
    allf = g
    for f in fs:
      allf = allf * f
    dmask = allf.sum(axis=1)
  dt = jnp.stack(dt, axis=1)
  if mask is not None:
    dt = dt * mask[:, None]
  return dt, dmask


def _contract_columns(cols, t, keep):
  """Contracts ``cols`` (index c = sum_m bit_m 2^m) with (1 - t_m, t_m) for all m != keep.

  Returns ``[column for bit keep = 0, column for bit keep = 1]``, or ``[column]`` if
  ``keep`` is None.
  """
  members = list(range(t.shape[1]))  # members[i] is bit i of the current column index
  for m in reversed(range(t.shape[1])):
    if m == keep:
      continue
    i = members.index(m)
    stride = 1 << i
    tm = t[:, m]
    cols = [cols[c] * (1 - tm) + cols[c | stride] * tm for c in range(len(cols)) if not c & stride]
    members.pop(i)
  return cols


@jax.custom_vjp
def _corner_weights(t, mask):
  """(T, n) tent weights, (T,) mask -> (T, 2^n) products ``mask * prod_m f_m(c)``;
  corner c takes bit m of c for member m (f = t for bit 1, 1 - t for bit 0)."""
  return _corner_products(t, mask)


def _corner_weights_fwd(t, mask):
  return _corner_products(t, mask), (t, mask)


def _corner_weights_bwd(res, g):
  return _corner_grad(g, *res)


_corner_weights.defvjp(_corner_weights_fwd, _corner_weights_bwd)


def _use_rows(num_levels: int, order: int, num_tuples: int) -> bool:
  cells = num_levels**order
  return cells << order <= _ROW_MAX_ENTRIES and cells <= _ROW_MAX_CELLS_PER_TUPLE * max(
    num_tuples, 1
  )


def _windows(x, start, count: int, order: int, tuples: str):
  """(count, n) members of tuples ``start .. start + count - 1`` of stream ``x``.

  ``start`` may be traced (a loop index); only a slice of ``x`` is read.
  """
  if tuples == "disjoint":
    seg = jax.lax.dynamic_slice_in_dim(x, start * order, count * order)
    return seg.reshape(count, order)
  seg = jax.lax.dynamic_slice_in_dim(x, start, count + order - 1)
  return jnp.stack([seg[m : m + count] for m in range(order)], axis=1)


def _window_mask(start, count: int, valid_len, order: int, tuples: str, dtype):
  """(count,) 1/0: does the tuple end within ``valid_len``? None if all do."""
  if valid_len is None:
    return None
  pos = (start + jnp.arange(count)) * (order if tuples == "disjoint" else 1)
  return (pos + order <= valid_len).astype(dtype)


def _soft_part_table(w, c, valid_len, start, count, num_levels, order, tuples, rows, groups):
  """Table of tuples ``start .. start + count - 1``: (K^n, 2^n) rows or (K^n,) cells.

  The tuples are scatter-added into ``groups`` separate copies of the table (consecutive
  runs of tuples), which are then summed. Float32 scatter-adds are sequential sums, and
  once a cell's running sum is large the many tiny corner weights (products of n tent
  weights) round away: at M = 11.7M, K = 6, n = 3, one table per 2^17 tuples lost 7e-4
  of the histogram's mass and 4e-4 of the entropy; 64 copies leave 2e-7 and 2e-8.
  """
  ww = _windows(w, start, count, order, tuples)
  k, lo, hi = _tent_levels(ww, c)
  t = jnp.clip((ww - lo) / (hi - lo), 0.0, 1.0)
  wts = _corner_products(t, _window_mask(start, count, valid_len, order, tuples, w.dtype))
  cells = num_levels**order
  ids = _cell_ids(k, num_levels)
  groups = max(1, min(groups, count))
  if groups > 1:  # runs of 2^s tuples per copy: a shift, not a division
    shift = (-(-count // groups) - 1).bit_length()
    groups = -(-count // (1 << shift))
    ids = ids + (jnp.arange(count, dtype=ids.dtype) >> shift) * cells
  if rows:
    table = jnp.zeros((groups * cells, 1 << order), w.dtype).at[ids].add(wts, mode="drop")
    return table.reshape(groups, cells, 1 << order).sum(axis=0)
  ids = ids[:, None] + jnp.asarray(_corner_offsets(num_levels, order))[None, :]
  table = jnp.zeros(groups * cells, w.dtype).at[ids.reshape(-1)].add(wts.reshape(-1), mode="drop")
  return table.reshape(groups, cells).sum(axis=0)


def _accumulator_groups(num_levels: int, order: int, chunk: int, rows: bool) -> int:
  """Table copies per chunk: up to _ACC_GROUPS, while their size (zeroed and summed once
  per chunk) stays under a quarter of the chunk's (tuple, corner) entries."""
  size = num_levels**order << (order if rows else 0)
  return int(max(1, min(_ACC_GROUPS, (chunk << order) // (4 * size))))


def _part_grads(g, w, c, valid_len, start, count, num_levels, order, tuples, rows, want_c: bool):
  """Cotangents of one part of :func:`_soft_table` for its (count, n) tuple members.

  Returns ``(dw, dc)``: (count, n) w.r.t. the members' weights, and (K,) w.r.t. the
  codebook (None unless ``want_c``). The tent's derivative is the one autodiff gives
  :func:`tent_assign`: ``jnp.clip`` passes 1 inside (0, 1), 1/2 exactly at 0 or 1 (ties
  of max/min split evenly) and 0 outside.
  """
  ww = _windows(w, start, count, order, tuples)
  k, lo, hi = _tent_levels(ww, c)
  width = hi - lo
  raw = (ww - lo) / width
  t = jnp.clip(raw, 0.0, 1.0)
  base = _cell_ids(k, num_levels)
  if rows:
    gc = g[base]
  else:
    gc = g[base[:, None] + jnp.asarray(_corner_offsets(num_levels, order))[None, :]]
  mask = _window_mask(start, count, valid_len, order, tuples, w.dtype)
  dt, _ = _corner_grad(gc, t, mask)
  clip_d = jnp.where(
    (raw > 0) & (raw < 1), 1.0, jnp.where((raw == 0) | (raw == 1), 0.5, 0.0)
  ).astype(w.dtype)
  draw = dt * clip_d / width  # d/dw of (w - lo) / (hi - lo)
  if not want_c:
    return draw, None
  kk = k.reshape(-1)
  dc = jnp.zeros(c.shape, c.dtype)
  dc = dc.at[kk].add((draw * (raw - 1)).reshape(-1))  # d/dlo = (raw - 1) / width
  dc = dc.at[kk + 1].add((-draw * raw).reshape(-1))  # d/dhi = -raw / width
  return draw, dc


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _soft_table(w, c, valid_len, num_levels, order, tuples, chunk, rows):
  """Soft order-n table of the weight stream ``w`` under codebook ``c``.

  With ``rows``: the (K^n, 2^n) table ``A[b, c]`` = summed corner-c weights of the tuples
  whose base cell (lower levels) is b, one 2^n-wide scatter-add row per tuple, folded
  into the histogram by :func:`_rows_to_hist`; else the (K^n,) histogram, one scalar
  scatter-add per (tuple, corner). ``valid_len`` (None: all) masks tuples that reach
  past it.

  Tuples are taken ``chunk`` at a time straight from ``w``: tent, corner weights and
  scatter of a chunk happen together, so nothing of size M or T 2^n is ever built and
  the stream is read once. The gradient is written by hand, chunk by chunk the same way
  (it is exact, the same as autodiff's): gather each tuple's 2^n cotangents at its base
  cell, contract them with the other members' (1 - t, t) factors (:func:`_corner_grad`)
  and apply the tent's derivative. It needs no forward recomputation and none of the
  transposes of concatenations and rematerialized loops that make autodiff of this
  several times slower on CPU.
  """
  return _soft_table_impl(w, c, valid_len, num_levels, order, tuples, chunk, rows)


def _parts(num: int, chunk: int):
  """Static split of ``num`` tuples into ``steps`` full chunks and a remainder."""
  steps, rem = divmod(num, chunk)
  if steps <= 1 and (steps == 0 or rem == 0):
    return 0, num  # one part: no loop
  return steps, rem


def _soft_table_impl(w, c, valid_len, num_levels, order, tuples, chunk, rows):
  num = _num_tuples(w.shape[0], order, tuples)
  groups = _accumulator_groups(num_levels, order, chunk, rows)
  part = lambda start, count: _soft_part_table(
    w, c, valid_len, start, count, num_levels, order, tuples, rows, groups
  )
  steps, rem = _parts(num, chunk)
  if not steps:
    return part(0, rem)
  # Each chunk is summed into fresh tables, then added to the total (see
  # _soft_part_table): no float32 running sum over all M weights.
  cells = num_levels**order
  init = jnp.zeros((cells, 1 << order) if rows else (cells,), w.dtype)
  table = jax.lax.fori_loop(0, steps, lambda i, acc: acc + part(i * chunk, chunk), init)
  return table + part(steps * chunk, rem) if rem else table


def _soft_table_fwd(w, c, valid_len, num_levels, order, tuples, chunk, rows):
  table = _soft_table_impl(
    w.value, c.value, getattr(valid_len, "value", valid_len), num_levels, order, tuples, chunk, rows
  )
  # Whether the codebook is differentiated (its cotangent is a scatter over all M weights,
  # skipped when nobody asks for it) rides in the residuals' structure, which is static.
  res = (w.value, c.value, getattr(valid_len, "value", valid_len))
  return table, res + ((None,) if c.perturbed else ())


def _soft_table_bwd(num_levels, order, tuples, chunk, rows, res, g):
  w, c, valid_len = res[:3]
  want_c = len(res) > 3
  length = w.shape[0]
  if isinstance(g, jax.custom_derivatives.SymbolicZero):
    return (jnp.zeros_like(w), jnp.zeros_like(c) if want_c else None, None)
  # Write the table's cotangent to a buffer: XLA CPU would otherwise fuse its computation
  # (a log and a division per cell, from the entropy) into the gathers below and redo it
  # per gathered entry, T 2^n times instead of K^n; lax.optimization_barrier does not
  # prevent that on CPU, but a scatter is never fused into its consumer.
  g = (
    jnp.zeros_like(g)
    .at[jnp.arange(g.shape[0])]
    .set(g, indices_are_sorted=True, unique_indices=True)
  )
  num = _num_tuples(length, order, tuples)
  grads = lambda start, count: _part_grads(
    g, w, c, valid_len, start, count, num_levels, order, tuples, rows, want_c
  )

  def add_part(dw, dc, start, count):
    dmem, dcp = grads(start, count)
    if tuples == "disjoint":
      dw = jax.lax.dynamic_update_slice_in_dim(dw, dmem.reshape(-1), start * order, 0)
    else:  # windows overlap: weight start + j + m gets member m of tuple start + j
      span = count + order - 1
      add = sum(jnp.pad(dmem[:, m], (m, order - 1 - m)) for m in range(order))
      cur = jax.lax.dynamic_slice_in_dim(dw, start, span)
      dw = jax.lax.dynamic_update_slice_in_dim(dw, cur + add, start, 0)
    return dw, (dc + dcp if want_c else dc)

  dw = jnp.zeros_like(w)
  dc = jnp.zeros_like(c) if want_c else None
  steps, rem = _parts(num, chunk)
  if steps:
    dw, dc = jax.lax.fori_loop(
      0, steps, lambda i, a: add_part(a[0], a[1], i * chunk, chunk), (dw, dc)
    )
  if rem:
    dw, dc = add_part(dw, dc, steps * chunk, rem)
  return dw, dc, None


_soft_table.defvjp(_soft_table_fwd, _soft_table_bwd, symbolic_zeros=True)


def _rows_to_hist(table, num_levels: int, order: int):
  """(K^n, 2^n) per-base corner sums -> (K^n,) histogram: ``hist[b + off_c] += A[b, c]``.

  Every base cell has all level indices <= K-2, so ``b + off_c`` stays in the table and
  the entries shifted out at the top are zeros.
  """
  hist = None
  for c, off in enumerate(_corner_offsets(num_levels, order).tolist()):
    col = jax.lax.pad(table[:, c], jnp.zeros((), table.dtype), [(off, -off, 0)])
    hist = col if hist is None else hist + col
  return hist


def _soft_stream_hist(w, c, valid_len, num_levels, order, tuples, chunk_entries):
  """Dense soft order-n histogram (K^n,) of a weight stream; ``valid_len`` None: all."""
  num = _num_tuples(w.shape[0], order, tuples)
  rows = _use_rows(num_levels, order, num)
  table = _soft_table(
    w, c, valid_len, num_levels, order, tuples, max(1, chunk_entries >> order), rows
  )
  return _rows_to_hist(table, num_levels, order) if rows else table


def _sparse_entries(k, t, mask, hard: bool):
  """(T, n) tuples -> (E, n) cell keys and (E,) weights, E = T or T 2^n."""
  if hard:
    return k, mask
  bits = jnp.asarray(_corner_bits(k.shape[1]))
  keys = (k[:, None, :] + bits[None, :, :]).reshape(-1, k.shape[1])
  wts = _corner_weights(t, mask).reshape(-1)
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
  return num_levels**order <= (DENSE_MAX_CELLS if max_cells is None else max_cells)


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


def _stream_hist(x, codebook, valid_len, num_levels, order, tuples, chunk_entries):
  """Dense order-n histogram (K^n,) of a (possibly padded) stream: soft on weights ``x``
  under ``codebook``, or hard on level indices ``x`` (``codebook`` None)."""
  if codebook is not None:
    if isinstance(valid_len, (int, np.integer)) and valid_len >= x.shape[0]:
      valid_len = None
    return _soft_stream_hist(x, codebook, valid_len, num_levels, order, tuples, chunk_entries)
  kt, _, mask = _stream_tuples(x, None, valid_len, order, tuples)
  return (
    jnp.zeros(num_levels**order, mask.dtype).at[_cell_ids(kt, num_levels)].add(mask, mode="drop")
  )


def _stream_entries(x, codebook, valid_len, order, tuples):
  """Sparse (keys, weights) entries of a stream, soft or hard as in :func:`_stream_hist`."""
  k, t = (x, None) if codebook is None else tent_assign(x, codebook)
  kt, tt, mask = _stream_tuples(k, t, valid_len, order, tuples)
  return _sparse_entries(kt, tt, mask, t is None)


def _single_stream_rate(x, codebook, num_levels, order, tuples, rate, chunk_entries):
  return _single_stream_rate_jit(
    x, codebook, num_levels, order, tuples, rate, chunk_entries, _use_dense(num_levels, order)
  )


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7))
def _single_stream_rate_jit(x, codebook, num_levels, order, tuples, rate, chunk_entries, dense):
  length = x.shape[0]
  total = _num_tuples(length, order, tuples)
  if dense:
    hist = _stream_hist(x, codebook, length, num_levels, order, tuples, chunk_entries)
    return _rate_from_dense(hist, total, num_levels, order, rate)
  keys, wts = _stream_entries(x, codebook, length, order, tuples)
  return _rate_from_entries(keys, wts, total, order, rate)


def soft_entropy(
  w,
  codebook,
  order: int = 1,
  tuples: str = "disjoint",
  rate: str = "block",
  *,
  chunk_entries: int = CHUNK_ENTRIES,
) -> jax.Array:
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
  check_options(order, tuples, rate)
  q.validate_codebook(codebook)
  w = jnp.asarray(w)
  if not jnp.issubdtype(w.dtype, jnp.floating):
    raise ValueError(f"w must be floating point, got {w.dtype}")
  if not q.all_finite(w):
    raise ValueError("w contains NaN or Inf")
  c = jnp.asarray(codebook)
  flat = w.reshape(-1).astype(c.dtype)
  _check_group_length(flat.shape[0], order, tuples)
  return _single_stream_rate(flat, c, c.shape[0], order, tuples, rate, chunk_entries)


def empirical_entropy(
  indices, num_levels: int, order: int = 1, tuples: str = "disjoint", rate: str = "block"
) -> jax.Array:
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
  check_options(order, tuples, rate)
  if (
    isinstance(num_levels, bool) or not isinstance(num_levels, (int, np.integer)) or num_levels < 2
  ):
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
  """Stacked padded weight streams (G, L), codebooks (G, K) and valid lengths (G,)."""
  streams, cbs, lens = [], [], []
  for i in bucket.members:
    _, cb, x, size = groups[i]
    cb = jnp.asarray(cb)
    stream = grp.scan_stream(x).astype(cb.dtype)
    streams.append(jnp.pad(stream, (0, bucket.length - size), constant_values=cb[0]))
    cbs.append(cb)
    lens.append(size)
  dtype = jnp.result_type(*cbs)
  return (
    jnp.stack(streams).astype(dtype),
    jnp.stack(cbs).astype(dtype),
    jnp.asarray(lens, jnp.int32),
  )


def tree_group_rates(
  params,
  codebooks,
  *,
  order: int = 1,
  tuples: str = "disjoint",
  rate: str = "block",
  chunk_entries: int = CHUNK_ENTRIES,
):
  """Per-group soft rates (bits per parameter) for every quantized leaf.

  Groups are bucketed by (K, padded length) — padded lengths round a group's size up by
  at most 25% — and each bucket is stacked and ``vmap``-ped; padding positions never
  enter a tuple. Each leaf is read in scan order (:func:`hemp_jax.groups.scan_stream`).
  The computation is jit-compiled (one compilation per tree structure and options).

  Returns:
    ``(names, rates, sizes)``: path names, a (G,) array of rates and the group sizes.
  """
  check_options(order, tuples, rate)
  groups, _ = _plan(codebooks, params, order, tuples)
  rates = _tree_group_rates_jit(
    params, codebooks, order, tuples, rate, chunk_entries, DENSE_MAX_CELLS
  )
  return [g[0] for g in groups], rates, [g[3] for g in groups]


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _tree_group_rates_jit(params, codebooks, order, tuples, rate, chunk_entries, max_cells):
  groups, buckets = _plan(codebooks, params, order, tuples)
  rates = [None] * len(groups)
  for b in buckets:
    xs, cbs, lens = _bucket_inputs(groups, b)
    totals = jnp.asarray([_num_tuples(groups[i][3], order, tuples) for i in b.members])
    if _use_dense(b.num_levels, order, max_cells):
      fn = lambda x, cb, n, tot, b=b: _rate_from_dense(
        _stream_hist(x, cb, n, b.num_levels, order, tuples, chunk_entries),
        tot,
        b.num_levels,
        order,
        rate,
      )
    else:
      fn = lambda x, cb, n, tot: _rate_from_entries(
        *_stream_entries(x, cb, n, order, tuples), tot, order, rate
      )
    r = jax.vmap(fn)(xs, cbs, lens, totals.astype(xs.dtype))
    for j, i in enumerate(b.members):
      rates[i] = r[j]
  return jnp.stack(rates)


def tree_entropy(
  params,
  codebooks,
  *,
  order: int = 1,
  tuples: str = "disjoint",
  rate: str = "block",
  pool: str = "group",
  chunk_entries: int = CHUNK_ENTRIES,
) -> jax.Array:
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
  check_options(order, tuples, rate)
  if pool not in POOLS:
    raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
  _, buckets = _plan(codebooks, params, order, tuples)
  levels = {b.num_levels for b in buckets}
  if pool == "global" and len(levels) != 1:
    raise ValueError(
      f"pool='global' needs the same number of levels K in every codebook, "
      f"got K in {sorted(levels)}"
    )
  return _tree_entropy_jit(
    params, codebooks, order, tuples, rate, pool, chunk_entries, DENSE_MAX_CELLS
  )


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7))
def _tree_entropy_jit(params, codebooks, order, tuples, rate, pool, chunk_entries, max_cells):
  groups, buckets = _plan(codebooks, params, order, tuples)
  if pool == "group":
    rates = _tree_group_rates_jit(params, codebooks, order, tuples, rate, chunk_entries, max_cells)
    sizes = jnp.asarray([g[3] for g in groups], rates.dtype)
    return jnp.sum(rates * sizes) / jnp.sum(sizes)
  num_levels = buckets[0].num_levels
  total = float(sum(_num_tuples(g[3], order, tuples) for g in groups))
  if _use_dense(num_levels, order, max_cells):
    hist = 0.0
    for b in buckets:
      xs, cbs, lens = _bucket_inputs(groups, b)
      h = jax.vmap(
        lambda x, cb, n: _stream_hist(x, cb, n, num_levels, order, tuples, chunk_entries)
      )(xs, cbs, lens)
      hist = hist + h.sum(axis=0)
    return _rate_from_dense(hist, total, num_levels, order, rate)
  keys, wts = [], []
  for b in buckets:
    xs, cbs, lens = _bucket_inputs(groups, b)
    kk, ww = jax.vmap(lambda x, cb, n: _stream_entries(x, cb, n, order, tuples))(xs, cbs, lens)
    keys.append(kk.reshape(-1, order))
    wts.append(ww.reshape(-1))
  return _rate_from_entries(jnp.concatenate(keys), jnp.concatenate(wts), total, order, rate)
