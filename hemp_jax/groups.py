"""Parameter groups: which leaves of a params pytree are quantized, their scan order, codebooks.

A *group* is one quantized leaf. ``codebooks`` pytrees have the structure of ``params``
with a 1-D codebook for every quantized leaf and ``None`` for leaves kept in float.

Scan order (shared by the entropy estimator and the file coder, so that what training
minimizes is what the file pays): a leaf of rank >= 2 is read output-unit by output-unit,
i.e. ``moveaxis(x, -1, 0).reshape(-1)``. Flax stores kernels as ``(..., in, out)``
(dense ``(in, out)``, conv ``(kh, kw, in, out)``), so each output unit's fan-in weights are
consecutive in the stream, the same order as a flattened PyTorch ``(out, in, kh, kw)``
weight, which is what the paper's code scans. Leaves of rank 0 or 1 are read in C order.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from hemp_jax import quantization as q
from hemp_jax.pytrees import path_name

__all__ = [
  "path_name",
  "scan_stream",
  "unscan_stream",
  "select_groups",
  "fit_codebook",
  "fit_codebooks",
  "codebook_leaves",
  "CODEBOOK_METHODS",
  "quantized",
]

# Codebook fitters of fit_codebook / fit_codebooks.
CODEBOOK_METHODS = ("uniform", "lloyd_max")


def scan_stream(x) -> jax.Array:
  """The leaf as a 1-D stream in scan order (see the module docstring)."""
  x = jnp.asarray(x)
  if x.ndim >= 2:
    x = jnp.moveaxis(x, -1, 0)
  return x.reshape(-1)


def unscan_stream(stream, shape) -> jax.Array:
  """Inverse of :func:`scan_stream` for a leaf of the given shape."""
  stream = jnp.asarray(stream)
  shape = tuple(shape)
  if len(shape) >= 2:
    return jnp.moveaxis(stream.reshape((shape[-1],) + shape[:-1]), 0, -1)
  return stream.reshape(shape)


def _is_float_leaf(x) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def _leaf_selected(path, x, min_size, inc, exc) -> bool:
  if not _is_float_leaf(x) or np.size(x) < max(int(min_size), 1):
    return False
  name = path_name(path)
  if inc is not None and not inc.search(name):
    return False
  return not (exc is not None and exc.search(name))


def select_groups(
  params, *, min_size: int = 1, include: str | None = None, exclude: str | None = None
) -> Any:
  """Boolean pytree (like ``params``): True for leaves that are quantized.

  A leaf is selected when it is a floating array with at least ``min_size`` elements,
  its path name (``'/'``-joined keys, e.g. ``"conv1/kernel"``; a trailing NNX ``value``
  is dropped, so the same regex works on NNX states and plain dicts) matches the
  ``include`` regex (``re.search``; all leaves when None) and does not match ``exclude``.

  Args:
    params: a params pytree (Linen dict, NNX state, or any pytree of arrays).
    min_size: smallest number of elements a quantized leaf may have. The paper keeps
      tensors with at most ``10 * N`` elements in float, i.e. ``min_size = 10 * N + 1``.
    include: regex on path names of leaves to quantize.
    exclude: regex on path names of leaves to keep in float.

  Returns:
    A pytree of Python bools with the structure of ``params``.
  """
  inc = re.compile(include) if include else None
  exc = re.compile(exclude) if exclude else None
  return jax.tree_util.tree_map_with_path(
    lambda path, x: _leaf_selected(path, x, min_size, inc, exc), params
  )


def fit_codebook(
  x,
  num_levels: int,
  *,
  method: str = "uniform",
  guard_levels: bool = True,
  zero_level: bool = False,
  **fit_kwargs,
) -> jax.Array:
  """One codebook for one tensor (see :func:`fit_codebooks` for the arguments)."""
  if method == "uniform":
    return q.uniform_codebook(x, num_levels, zero_level=zero_level, guard_levels=guard_levels)
  if method == "lloyd_max":
    if zero_level:
      raise ValueError("zero_level is supported by the uniform quantizer only")
    lloyd_kw = dict(fit_kwargs)
    if "lloyd_method" in lloyd_kw:
      lloyd_kw["method"] = lloyd_kw.pop("lloyd_method")
    return q.lloyd_max_codebook(x, num_levels, guard_levels=guard_levels, **lloyd_kw)
  raise ValueError(f"method must be 'uniform' or 'lloyd_max', got {method!r}")


def fit_codebooks(
  params,
  num_levels: int,
  *,
  method: str = "uniform",
  guard_levels: bool = True,
  zero_level: bool = False,
  min_size: int | None = None,
  include: str | None = None,
  exclude: str | None = None,
  mask=None,
  **fit_kwargs,
) -> Any:
  """Fits one codebook per selected leaf; ``None`` for leaves kept in float.

  Args:
    params: params pytree.
    num_levels: N, the number of real levels per group.
    method: "uniform" (:func:`hemp_jax.uniform_codebook`) or "lloyd_max"
      (:func:`hemp_jax.lloyd_max_codebook`).
    guard_levels: add the paper's two guard levels (K = N + 2).
    zero_level: uniform codebooks with an exact 0 level (for pruning).
    min_size: smallest quantized tensor; default ``10 * num_levels + 1`` (the paper).
    include, exclude: regexes on leaf path names (see :func:`select_groups`).
    mask: optional boolean pytree (or callable ``params -> pytree``) overriding the
      selection.
    **fit_kwargs: passed to the Lloyd fitter (``num_iters``; ``lloyd_method`` for its
      ``method``).

  Returns:
    A pytree like ``params`` with a codebook or ``None`` at every leaf.
  """
  if method not in CODEBOOK_METHODS:
    raise ValueError(f"method must be 'uniform' or 'lloyd_max', got {method!r}")
  if min_size is None:
    min_size = 10 * int(num_levels) + 1
  if callable(mask):
    mask = mask(params)
  if mask is None:
    mask = select_groups(params, min_size=min_size, include=include, exclude=exclude)
  fit = lambda sel, x: (
    fit_codebook(
      x, num_levels, method=method, guard_levels=guard_levels, zero_level=zero_level, **fit_kwargs
    )
    if sel
    else None
  )
  return jax.tree.map(fit, mask, params)


def codebook_leaves(codebooks, params) -> tuple[list, list, list[str], Callable]:
  """Aligns a codebooks tree with params.

  Returns:
    ``(codebooks, params_leaves, names, unflatten)``: flat lists over the leaves of the
    ``codebooks`` structure (``None`` entries included), the matching params leaves, their
    path names, and a function rebuilding a tree of that structure from a flat list.
  """
  is_none = lambda x: x is None
  cb_with_path, treedef = jax.tree_util.tree_flatten_with_path(codebooks, is_leaf=is_none)
  try:
    leaves = treedef.flatten_up_to(params)
  except (ValueError, TypeError) as e:
    raise ValueError(f"codebooks and params have different structures: {e}") from None
  names = [path_name(p) for p, _ in cb_with_path]
  cbs = [c for _, c in cb_with_path]
  return cbs, leaves, names, treedef.unflatten


def quantized(params, codebooks, *, straight_through: bool = True) -> Any:
  """``params`` with every quantized leaf on its nearest level: the decoded model's values.

  For a loss on the quantized network (quantization-aware training): with
  ``straight_through`` the gradient with respect to ``params`` is the gradient at the
  quantized point, passed through as if the quantizer were the identity.

  Args:
    params: a params pytree.
    codebooks: a pytree like ``params`` (None for leaves kept in float), or the flat tuple
      a HEMP optimizer state holds (one entry per leaf of ``params``).
    straight_through: identity gradient (else the quantizer's zero gradient).

  Returns:
    A pytree like ``params``.
  """
  leaves, treedef = jax.tree.flatten(params)
  if isinstance(codebooks, tuple) and not hasattr(codebooks, "_fields"):
    if len(codebooks) != len(leaves):
      raise ValueError(f"{len(codebooks)} codebooks for {len(leaves)} params leaves")
    flat = list(codebooks)
  else:
    flat, leaves, _, _ = codebook_leaves(codebooks, params)
    treedef = jax.tree.structure(codebooks, is_leaf=lambda x: x is None)
  fn = q.quantize_ste if straight_through else q.quantize
  return treedef.unflatten([x if cb is None else fn(x, cb) for x, cb in zip(leaves, flat)])
