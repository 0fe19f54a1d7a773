"""Readers and writers of the checkpoint formats people already have.

:func:`read_checkpoint` turns a checkpoint into nested dicts of numpy arrays (the shape
:func:`hemp_jax.codec.compress` takes and :func:`hemp_jax.codec.decompress` returns):

=================  ======================================================================
``.npz``           ``numpy.savez`` archive; keys are split on ``/`` into nested dicts
``.safetensors``   read with the ``safetensors`` numpy API; keys are split on ``.``
                   (the PyTorch ``state_dict`` convention: ``layer1.0.conv1.weight``)
orbax directory    a PyTree checkpoint (a directory holding ``_METADATA``), a step
                   directory of a ``CheckpointManager`` (its items, as a dict by item name;
                   a single item named ``default`` is returned as is), or a manager
                   root (its latest step); restored without a target, as numpy arrays
``.msgpack``       ``flax.serialization.msgpack_restore`` of the file bytes
``.hemp``          :func:`hemp_jax.codec.decompress`
=================  ======================================================================

The format is chosen by the file's first bytes where they tell (``.hemp`` magic, zip
archive, safetensors header), else by the suffix (``.msgpack``/``.mpk``) or a directory.

Names: splitting keys into components lets the ``.hemp`` header share path prefixes
between leaves; :func:`write_checkpoint` joins them back with the separator of the output
format (``/`` for ``.npz``, ``.`` for ``.safetensors``), so a round trip through the same
format gives the original keys. A key that would be both a leaf and the prefix of another
key is kept whole. :func:`hemp_codebooks` gives the decoded values and codebooks of a
``.hemp`` file, to compress it again with other options.
"""

from __future__ import annotations

import math
import os
import struct
from typing import Any

import numpy as np

from hemp_jax import fileio, pytrees

__all__ = [
  "CHECKPOINT_FORMATS",
  "checkpoint_format",
  "read_checkpoint",
  "write_checkpoint",
  "flatten_tree",
  "unflatten_names",
  "hemp_codebooks",
  "reencode_hemp",
]

CHECKPOINT_FORMATS = ("npz", "safetensors", "orbax", "msgpack", "hemp")
_SEPARATORS = {"npz": "/", "safetensors": ".", "msgpack": "/", "orbax": "/", "hemp": "/"}


def _fail(path, reason: str):
  raise ValueError(f"{os.fspath(path)}: {reason}")


def checkpoint_format(path) -> str:
  """The format of the checkpoint at ``path`` (one of :data:`CHECKPOINT_FORMATS`).

  Raises:
    FileNotFoundError: nothing at ``path``.
    ValueError: a file or directory of no supported format (the message says why).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file or directory")
  if os.path.isdir(path):
    if _orbax_item_dirs(path) or _orbax_steps(path):
      return "orbax"
    _fail(path, "a directory, but not an orbax checkpoint (no _METADATA file, no step dirs)")
  with open(path, "rb") as f:
    head = f.read(16)
  if head[:4] == b"HEMP":
    return "hemp"
  if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
    return "npz"
  if len(head) >= 9 and head[8:9] == b"{":
    (n,) = struct.unpack("<Q", head[:8])
    if 2 <= n <= os.path.getsize(path) - 8:
      return "safetensors"
  ext = os.path.splitext(path)[1].lower()
  if ext in (".msgpack", ".mpk", ".flax"):
    return "msgpack"
  known = {".npz": "npz", ".safetensors": "safetensors", ".hemp": "hemp"}
  if ext in known:
    _fail(path, f"named {ext} but its first bytes are not a {known[ext]} file")
  _fail(
    path,
    "unsupported checkpoint format (expected .npz, .safetensors, .msgpack, .hemp or an "
    "orbax checkpoint directory)",
  )


def _split(key: str, sep: str) -> tuple:
  parts = tuple(key.split(sep)) if sep else (key,)
  return parts if all(parts) else (key,)


def unflatten_names(flat: dict, sep: str) -> dict:
  """Nested dicts from ``{"a/b": x}`` (split on ``sep``); conflicting keys stay whole."""
  split = {k: _split(k, sep) for k in flat}
  leaves = set(split.values())
  tree: dict = {}
  for key, comps in split.items():
    prefixes = {comps[:i] for i in range(1, len(comps))}
    if prefixes & leaves:
      comps = (key,)
    node = tree
    for c in comps[:-1]:
      node = node.setdefault(c, {})
    if comps[-1] in node:
      raise ValueError(f"key {key!r} collides with another key once split on {sep!r}")
    node[comps[-1]] = flat[key]
  return tree


def flatten_tree(tree, sep: str = "/") -> dict:
  """``{joined path: numpy array}`` of a pytree (names: :func:`hemp_jax.pytrees.path_name`)."""
  import jax

  flat = {}
  for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = pytrees.path_name(p, sep)
    if name in flat:
      raise ValueError(f"two leaves share the name {name!r}")
    flat[name] = np.asarray(x)
  return flat


# ------------------------------------------------------------------------ readers


def _read_npz(path: str) -> dict:
  with np.load(path, allow_pickle=False) as z:
    flat = {k: z[k] for k in z.files}
  return unflatten_names(flat, "/")


def _read_safetensors(path: str) -> dict:
  from safetensors.numpy import load_file

  return unflatten_names(load_file(path), ".")


def _read_msgpack(path: str) -> Any:
  from flax import serialization

  with open(path, "rb") as f:
    data = f.read()
  tree = serialization.msgpack_restore(data)
  if not isinstance(tree, dict):
    tree = {"params": tree}
  return tree


def _orbax_item_dirs(path: str) -> list[str]:
  """Item directories under a step directory, or [path] when path is one."""
  if os.path.isfile(os.path.join(path, "_METADATA")):
    return [path]
  return sorted(
    os.path.join(path, d)
    for d in os.listdir(path)
    if os.path.isfile(os.path.join(path, d, "_METADATA"))
  )


def _orbax_steps(path: str) -> list[int]:
  steps = []
  for d in os.listdir(path):
    if (
      d.isdigit()
      and os.path.isdir(os.path.join(path, d))
      and _orbax_item_dirs(os.path.join(path, d))
    ):
      steps.append(int(d))
  return sorted(steps)


def _to_numpy_tree(tree):
  if isinstance(tree, dict):
    return {str(k): _to_numpy_tree(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return {str(i): _to_numpy_tree(v) for i, v in enumerate(tree)}
  if tree is None:
    return {}
  return np.asarray(tree)


def _read_orbax(path: str) -> dict:
  import orbax.checkpoint as ocp

  items = _orbax_item_dirs(path)
  if not items:
    steps = _orbax_steps(path)
    path = os.path.join(path, str(steps[-1]))
    items = _orbax_item_dirs(path)
  ckpt = ocp.PyTreeCheckpointer()
  if items == [path]:
    return _to_numpy_tree(ckpt.restore(path))
  if len(items) == 1 and os.path.basename(items[0]) == "default":  # a manager's one item
    return _to_numpy_tree(ckpt.restore(items[0]))
  return {os.path.basename(d): _to_numpy_tree(ckpt.restore(d)) for d in items}


def read_checkpoint(path, fmt: str | None = None) -> Any:
  """Reads a checkpoint into nested dicts of numpy arrays.

  Args:
    path: a ``.npz``, ``.safetensors``, ``.msgpack`` or ``.hemp`` file, or an orbax
      checkpoint directory (see the module docstring).
    fmt: the format; detected with :func:`checkpoint_format` when None.

  Returns:
    Nested dicts (str keys) of numpy arrays.

  Raises:
    FileNotFoundError: nothing at ``path``.
    ValueError: unsupported or unreadable input; the message starts with the path.
  """
  path = os.fspath(path)
  fmt = fmt or checkpoint_format(path)
  readers = {
    "npz": _read_npz,
    "safetensors": _read_safetensors,
    "orbax": _read_orbax,
    "msgpack": _read_msgpack,
    "hemp": _read_hemp,
  }
  if fmt not in readers:
    raise ValueError(f"unknown checkpoint format {fmt!r}; one of {CHECKPOINT_FORMATS}")
  try:
    tree = readers[fmt](path)
  except FileNotFoundError:
    raise
  except Exception as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"{path}: cannot read as {fmt}: {msg}") from None
  if not _leaf_count(tree):
    raise ValueError(f"{path}: the {fmt} checkpoint holds no arrays")
  return tree


def _leaf_count(tree) -> int:
  if isinstance(tree, dict):
    return sum(_leaf_count(v) for v in tree.values())
  return 1


def _read_hemp(path: str) -> Any:
  from hemp_jax.codec import container

  tree = container.decompress_file(path)
  return tree if isinstance(tree, dict) else {"params": tree}


# ------------------------------------------------------------------------ writers


def write_checkpoint(tree, path, fmt: str | None = None) -> int:
  """Writes a pytree of arrays as ``.npz`` or ``.safetensors`` (chosen by suffix).

  Keys are the leaf paths joined with ``/`` (npz) or ``.`` (safetensors).

  Returns:
    The number of arrays written.
  """
  path = os.fspath(path)
  if fmt is None:
    ext = os.path.splitext(path)[1].lower()
    fmt = {".npz": "npz", ".safetensors": "safetensors"}.get(ext)
    if fmt is None:
      raise ValueError(f"{path}: output must end in .npz or .safetensors")
  flat = flatten_tree(tree, _SEPARATORS[fmt])
  if fmt not in ("npz", "safetensors"):
    raise ValueError(f"cannot write {fmt!r} checkpoints (npz or safetensors)")
  with fileio.atomic_output(path) as tmp:
    if fmt == "npz":
      with open(tmp, "wb") as f:
        np.savez(f, **flat)
    else:
      from safetensors.numpy import save_file

      save_file({k: np.require(v, requirements="C") for k, v in flat.items()}, tmp)
  return len(flat)


# ------------------------------------------------------------------- .hemp re-encode


def hemp_codebooks(blob) -> tuple[Any, Any]:
  """Decoded values and codebooks that re-encode a ``.hemp`` file losslessly.

  A quantized leaf's codebook is the sorted set of its decoded values (its used levels;
  unused levels of the original codebook are dropped, they decode nowhere), as float32
  (the coder's level precision), plus one spare level when only one value is used
  (codebooks need two); a dq leaf gets its :class:`~hemp_jax.codec.trellis.DQ` (step,
  levels, layout and trellis). Float leaves get ``None``.

  Returns:
    ``(tree, codebooks)`` ready for :func:`hemp_jax.codec.compress` (a bare array and its
    codebook for a single-leaf file without a path).
  """
  import jax

  from hemp_jax.codec import container, inspection, records

  kinds = {leaf.path: leaf.kind for leaf in inspection.inspect(blob).leaves}
  tree = container.decompress(blob)
  buf = container.as_buffer(blob)
  dq = {}
  for e in container.parse_header(buf, container.DEFAULT_MAX_ELEMENTS)[0]:
    if e.kind in records.DQ_KINDS:
      r = container.record_reader(buf, e)
      spec = records.decode_dq_parts(r, e.shape, math.prod(e.shape), e.kind)
      dq[container.leaf_name(e.comps)] = spec

  def codebook(path, x):
    name = pytrees.path_name(path)
    if name in dq:
      return dq[name]
    if kinds.get(name) != "quantized" or x.size == 0:
      return None
    levels = np.unique(np.asarray(x, np.float32))
    if levels.size == 1:
      spare = np.float32(levels[0] + max(1.0, abs(float(levels[0]))))
      levels = np.array([levels[0], spare], np.float32)
    return levels

  return tree, jax.tree_util.tree_map_with_path(codebook, tree)


def reencode_hemp(blob, **options) -> bytes:
  """Deprecated: use :func:`hemp_jax.codec.reencode`, which this calls.

  ``options`` are those of ``reencode`` (``max_order``, ``max_elements``, ``max_bytes``).
  To re-encode with other codebooks, pass :func:`hemp_codebooks` to
  :func:`hemp_jax.codec.compress`.
  """
  from hemp_jax.codec import container

  return container.reencode(blob, **options)
