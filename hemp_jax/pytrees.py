"""Names of pytree leaves: the one rule every module uses to turn a key path into a name.

A key path's entries (dict keys, attribute names, sequence indices) are joined with
``/``. A trailing ``value`` attribute (``GetAttrKey``, what an NNX ``Variable`` adds when
optax or ``jax.tree_util`` looks through it) is dropped, so ``params['conv1']['kernel']``
and the NNX variable at the same place have the same name. A dict key that happens to be
``"value"`` is a real part of the tree and is kept.
"""

from __future__ import annotations

import jax

__all__ = ["key_entry", "path_name", "path_entries"]


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
