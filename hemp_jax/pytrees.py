"""Pytree helpers below everything: leaf names, and plain arrays out of Flax containers.

Names: the one rule every module uses to turn a key path into a name.

A key path's entries (dict keys, attribute names, sequence indices) are joined with
``/``. A trailing ``value`` attribute (``GetAttrKey``, what an NNX ``Variable`` adds when
optax or ``jax.tree_util`` looks through it) is dropped, so ``params['conv1']['kernel']``
and the NNX variable at the same place have the same name. A dict key that happens to be
``"value"`` is a real part of the tree and is kept. :func:`fill_tree` fills a tree from
``{name: array}`` by that rule (or another).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["key_entry", "path_name", "path_entries", "fill_tree", "plain_params"]


def key_entry(k):
  """The dict key, attribute name or sequence index of one key-path entry."""
  if isinstance(k, jax.tree_util.DictKey):
    return k.key
  if isinstance(k, jax.tree_util.GetAttrKey):
    return k.name
  if isinstance(k, jax.tree_util.SequenceKey):
    return k.idx
  if isinstance(k, jax.tree_util.FlattenedIndexKey):
    return k.key
  return getattr(k, "key", k)


def path_entries(path) -> tuple:
  """The entries of a key path, less a trailing NNX ``value`` attribute."""
  entries = tuple(key_entry(k) for k in path)
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    entries = entries[:-1]
  return entries


def path_name(path, sep: str = "/") -> str:
  """``sep``-joined name of a key path (see the module docstring for the rule)."""
  return sep.join(str(e) for e in path_entries(path))


def fill_tree(template, arrays, *, name=path_name) -> tuple:
  """A tree like ``template`` whose leaves are taken from ``arrays`` by name.

  Args:
    template: the pytree to fill (structure, shapes and dtypes).
    arrays: ``{name: array}``.
    name: a leaf's name from its key path (default :func:`path_name`).

  Returns:
    ``(tree, used, missing)``: the filled tree (values cast to the template's dtypes;
    a leaf missing from ``arrays`` keeps the template's value), the names taken from
    ``arrays`` and the names of the template's leaves that were missing.

  Raises:
    ValueError: a leaf of another shape (the message names it).
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(template)
  values, used, missing = [], [], []
  for p, x in flat:
    key = name(p)
    if key not in arrays:
      missing.append(key)
      values.append(x)
      continue
    v = np.asarray(arrays[key])
    if v.shape != np.shape(x):
      raise ValueError(f"{key} has shape {v.shape}, expected {np.shape(x)}")
    values.append(jnp.asarray(v, dtype=jnp.asarray(x).dtype))
    used.append(key)
  return treedef.unflatten(values), used, missing


def plain_params(params) -> Any:
  """``params`` as plain arrays: an ``nnx.Module`` gives its ``nnx.Param`` values, an
  ``nnx.State`` or a tree with ``nnx.Variable`` leaves (what ``nnx.Optimizer`` holds)
  its values; anything else is returned as it is."""
  from flax import nnx

  if isinstance(params, nnx.Module):
    params = nnx.state(params, nnx.Param)
  if isinstance(params, nnx.State):
    return nnx.to_pure_dict(params)
  is_variable = lambda x: isinstance(x, nnx.Variable)
  unwrap = lambda x: x.get_value() if is_variable(x) else x
  return jax.tree.map(unwrap, params, is_leaf=is_variable)
