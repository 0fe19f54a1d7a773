"""The ``.hemp`` container: header, leaf table, records and one checksum; the public codec.

A file holds every leaf of a params pytree: its path, shape and dtype, and either the
codebook plus the entropy-coded level indices (a *quantized* leaf) or the exact values (a
*float* leaf: biases, norms, small tensors, integer leaves; lossless, bitwise). Everything
needed to decode is in the file and counted in its size. The byte layout, the versions
this reader accepts (1-3; 3 is written) and the limits it enforces are in ``FORMAT.md``.

Leaves are named by their pytree key path (:mod:`hemp_jax.pytrees`): dict keys and
sequence indices, a trailing NNX ``value`` attribute dropped. :func:`decompress` returns
nested dicts keyed by those components (str keys stay str, int keys stay int;
:func:`compress` refuses other key types, e.g. bool, rather than change them), and
:func:`load_into` maps them back onto a template pytree (Linen dicts, NNX ``State``, ...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import zlib
from typing import Any, Iterator

import jax
import numpy as np

from hemp_jax import fileio, pytrees
from hemp_jax.codec import records, trellis
from hemp_jax.codec.kernel import MAX_ORDER
from hemp_jax.codec.records import DQ_KINDS, KIND_FLOAT, KIND_TRELLIS
from hemp_jax.codec.wire import FormatError, Reader, unzigzag, write_varint, zigzag

__all__ = [
  "MAGIC",
  "FORMAT_VERSION",
  "READABLE_VERSIONS",
  "DEFAULT_MAX_ELEMENTS",
  "DEFAULT_MAX_BYTES",
  "MAX_TABLE_BYTES",
  "MAX_RANK",
  "MAX_PATH_DEPTH",
  "NAME_DICT",
  "LeafEntry",
  "path_components",
  "leaf_name",
  "write_component",
  "read_component",
  "leaf_table",
  "deflate_table",
  "as_buffer",
  "malformed_input",
  "parse_header",
  "record_reader",
  "compress",
  "decompress",
  "reencode",
  "load_into",
  "compress_file",
  "decompress_file",
  "write_bytes_atomic",
]

MAGIC = b"HEMP"
FORMAT_VERSION = 3  # the version written
READABLE_VERSIONS = (1, 2, 3)
DEFAULT_MAX_ELEMENTS = 1 << 31
DEFAULT_MAX_BYTES = 4 << 30
MAX_TABLE_BYTES = 1 << 28
MAX_RANK = 32
MAX_PATH_DEPTH = 64
# Preset dictionary of the leaf table's DEFLATE stream (fixed forever for version 3):
# parameter names common in Flax, NNX, PyTorch and Keras checkpoints, written as they
# appear in the table (length tag + UTF-8), the commonest last, then typical leaf entries.
_NAME_WORDS = (
  "running_mean running_var num_batches_tracked moving_mean moving_variance gamma beta "
  "downsample shortcut projection layer blocks block stage stem head classifier features "
  "encoder decoder attention attn query key value out mlp ffn Mlp Dense_0 Dense_1 Conv_0 "
  "Conv_1 BatchNorm_0 BatchNorm_1 LayerNorm_0 GroupNorm_0 Embed_0 embedding norm norm1 "
  "norm2 bn1 bn2 bn3 conv3 weight batch_stats mean var fc2 fc1 conv2 conv1 scale params "
  "bias kernel"
).split()


def _tagged(word: str) -> bytes:
  return bytes([len(word) << 1]) + word.encode()


NAME_DICT = (
  b"".join(_tagged(w) for w in _NAME_WORDS)
  + b"\x00\x03"
  + _tagged("params")
  + b"\x02\x01"
  + _tagged("kernel")
  + b"\x10\x04\x03\x03"
  + _tagged("bias")
  + b"\x00\x01"
)

# The one atomic writer (kept under this name for callers of the codec).
write_bytes_atomic = fileio.write_atomic


# ------------------------------------------------------------------------ leaf paths


def _component(key):
  """A key-path entry as a path component (str or int); other key types are refused."""
  if isinstance(key, (bool, np.bool_)):
    raise ValueError(
      f"dict key {key!r} is a bool, which a .hemp file cannot store (it would come back "
      f"as an int or a str); use str keys such as {str(key)!r}"
    )
  if isinstance(key, (int, np.integer)):
    return int(key)
  if isinstance(key, str):
    return str(key)
  raise ValueError(
    f"pytree key {key!r} of type {type(key).__name__} cannot be stored in a .hemp file "
    "(only str and int keys come back unchanged); convert it to a str"
  )


def path_components(path) -> tuple:
  """The components a file stores for a key path (:func:`hemp_jax.pytrees.path_entries`)."""
  return tuple(_component(e) for e in pytrees.path_entries(path))


def leaf_name(comps) -> str:
  """``/``-joined name of a leaf's path components."""
  return "/".join(str(c) for c in comps)


def write_component(out: bytearray, c) -> None:
  """Appends a path component (str or int) to a leaf table."""
  if isinstance(c, int):
    write_varint(out, (zigzag(c) << 1) | 1)
  else:
    b = c.encode("utf-8")
    write_varint(out, len(b) << 1)
    out += b


def read_component(r: Reader):
  """Reads a path component written by :func:`write_component`."""
  t = r.varint("path component tag", max_value=1 << 62)
  if t & 1:
    return unzigzag(t >> 1)
  raw = r.take(t >> 1, "path component")
  try:
    return bytes(raw).decode("utf-8")
  except UnicodeDecodeError:
    r.fail("path component is not valid UTF-8")


@dataclasses.dataclass
class LeafEntry:
  """One leaf of the leaf table, with its record's place in the file."""

  comps: tuple
  kind: int
  dtype: np.dtype
  shape: tuple
  length: int = 0
  offset: int = 0
  version: int = FORMAT_VERSION


def _flatten(params, codebooks):
  """``(components, array, codebook or None)`` of every leaf, checked."""
  is_none = lambda v: v is None
  if codebooks is None:
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    pairs = [(p, x, None) for p, x in flat]
  else:
    cb_flat, treedef = jax.tree_util.tree_flatten_with_path(codebooks, is_leaf=is_none)
    try:
      leaves = treedef.flatten_up_to(params)
    except (ValueError, TypeError) as e:
      raise ValueError(f"codebooks and params have different structures: {e}") from None
    pairs = []
    for (p, cb), x in zip(cb_flat, leaves):
      if x is None:
        continue
      if cb is None:
        sub, _ = jax.tree_util.tree_flatten_with_path(x)
        pairs.extend((tuple(p) + tuple(sp), sx, None) for sp, sx in sub)
      else:
        pairs.append((p, x, cb))
  out, seen = [], set()
  for p, x, cb in pairs:
    comps = path_components(p)
    out.append((comps, _checked_leaf(comps, x, cb, seen), cb))
  if len(out) > 1 and any(len(c) == 0 for c, _, _ in out):
    raise ValueError("a params tree with several leaves needs a path for each")
  return out


def _checked_leaf(comps: tuple, x, cb, seen: set) -> np.ndarray:
  """``x`` as an array, after checking that a file can hold it under ``comps``."""
  name = leaf_name(comps)
  if comps in seen:
    raise ValueError(f"two leaves share the path {name!r}")
  if len(comps) > MAX_PATH_DEPTH:
    raise ValueError(
      f"leaf {name!r} is {len(comps)} keys deep; a .hemp file holds paths of at "
      f"most {MAX_PATH_DEPTH} keys"
    )
  seen.add(comps)
  arr = np.asarray(x)
  if arr.ndim > MAX_RANK:
    raise ValueError(
      f"leaf {name!r} has rank {arr.ndim}; a .hemp file holds arrays of rank at "
      f"most {MAX_RANK} (reshape it)"
    )
  records.dtype_code(arr.dtype)
  if cb is not None and not records.is_floating(arr.dtype):
    raise ValueError(
      f"leaf {name!r} has a codebook but dtype {arr.dtype}; only float leaves can be quantized"
    )
  return arr


# ---------------------------------------------------------------------------- writer


def compress(params, codebooks=None, *, max_order: int = MAX_ORDER, **quantizer_options) -> bytes:
  """Encodes a params pytree into ``.hemp`` bytes.

  Args:
    params: a pytree of arrays (Linen dict, nested dicts/lists...), an NNX ``State`` or
      ``Module`` (its ``nnx.Param`` values) or a tree of ``nnx.Variable`` leaves. Float
      leaves are float32, float16, bfloat16 or float64; integer and bool leaves are kept
      losslessly.
    codebooks: a pytree like ``params`` with a 1-D codebook per quantized leaf, a
      :class:`hemp_jax.codec.trellis.DQ` (step and levels) per dependent-quantized leaf
      and ``None`` for leaves stored exactly. When None, codebooks are fitted with
      :func:`hemp_jax.groups.fit_codebooks` with ``quantizer_options``.
    max_order: the highest context order the coder may try (0..3).
    **quantizer_options: passed to ``fit_codebooks`` (``num_levels`` is required),
      e.g. ``num_levels=4, method="lloyd_max", guard_levels=True, min_size=41``.

  Returns:
    The file contents. A quantized leaf decodes to exactly
    ``dequantize(quantize_indices(x, cb), cb).astype(x.dtype)``; a dq leaf to
    ``trellis.values(trellis.grid(levels, layout), step, x.dtype)`` (its values ``x``
    give only the dtype and shape); a float leaf decodes bitwise equal to ``x``.
  """
  # An nnx.Module, nnx.State or Variable leaves (nnx.Optimizer's) stand for their arrays.
  params = pytrees.plain_params(params)
  codebooks = None if codebooks is None else pytrees.plain_params(codebooks)
  if codebooks is None:
    if "num_levels" not in quantizer_options:
      raise ValueError(
        "compress needs codebooks, or quantizer options with num_levels to "
        "fit them (e.g. num_levels=4)"
      )
    from hemp_jax import groups

    codebooks = groups.fit_codebooks(params, **quantizer_options)
  elif quantizer_options:
    raise ValueError(
      f"quantizer options {sorted(quantizer_options)} only apply when codebooks is None"
    )
  _check_max_order(max_order)
  entries = []
  for comps, arr, cb in _flatten(params, codebooks):
    if cb is None:
      kind, body = KIND_FLOAT, records.float_body(arr)
    elif isinstance(cb, trellis.DQ):
      kind, body = records.dq_kind(cb), records.dq_body(arr.shape, cb, leaf_name(comps))
    else:
      name = leaf_name(comps)
      kind, body = records.KIND_QUANTIZED, records.quantized_body(arr, cb, int(max_order), name)
    entries.append((comps, records.dtype_code(arr.dtype) | (kind << 4), arr.shape, body))
  return _write_file(entries)


def _check_max_order(max_order) -> None:
  if not 0 <= int(max_order) <= MAX_ORDER:
    raise ValueError(f"max_order must be in 0..{MAX_ORDER}, got {max_order}")


def leaf_table(entries) -> bytes:
  """The leaf table of ``(comps, type byte, shape, body)`` entries (as stored)."""
  table = bytearray()
  write_varint(table, len(entries))
  prev: tuple = ()
  for comps, typ, shape, body in entries:
    keep = 0
    while (
      keep < min(len(prev), len(comps))
      and prev[keep] == comps[keep]
      and type(prev[keep]) is type(comps[keep])
    ):
      keep += 1
    write_varint(table, keep)
    write_varint(table, len(comps) - keep)
    for c in comps[keep:]:
      write_component(table, c)
    table.append(typ)
    write_varint(table, len(shape))
    for d in shape:
      write_varint(table, d)
    write_varint(table, len(body))
    prev = comps
  return bytes(table)


def deflate_table(table: bytes) -> bytes:
  """A leaf table as raw DEFLATE with :data:`NAME_DICT` (leaf table codec 1)."""
  z = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, NAME_DICT)
  return z.compress(table) + z.flush()


def _write_file(entries) -> bytes:
  """A version-3 file from ``(comps, type byte, shape, body)`` entries."""
  table = leaf_table(entries)
  out = bytearray(MAGIC)
  out.append(FORMAT_VERSION)
  packed = deflate_table(table)
  if len(packed) + 1 < len(table):
    out.append(1)
    write_varint(out, len(table))
    write_varint(out, len(packed))
    out += packed
  else:
    out.append(0)
    write_varint(out, len(table))
    out += table
  for entry in entries:
    out += entry[3]
  out += zlib.crc32(out).to_bytes(4, "little")
  return bytes(out)


# ---------------------------------------------------------------------------- reader


def as_buffer(blob) -> bytes:
  """``blob`` as bytes; FormatError for anything that is not bytes-like."""
  if isinstance(blob, (bytes, bytearray, memoryview)):
    return bytes(blob)
  raise FormatError(f"expected bytes, got {type(blob).__name__}")


@contextlib.contextmanager
def malformed_input() -> Iterator[None]:
  """Turns any failure other than a :class:`FormatError` while reading a file into one
  (a safety net: every known kind of bad input raises FormatError itself)."""
  try:
    yield
  except FormatError:
    raise
  except (KeyboardInterrupt, SystemExit):
    raise
  except Exception as ex:
    raise FormatError(f"malformed .hemp file ({type(ex).__name__}: {ex})") from None


def parse_header(
  buf: bytes, max_elements: int, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[list[LeafEntry], int]:
  """Entries (with record offsets) and the end of the header, for every version."""
  r = Reader(buf, what="hemp header")
  if len(buf) < len(MAGIC) or buf[: len(MAGIC)] != MAGIC:
    raise FormatError("not a .hemp file (bad magic)")
  r.pos = len(MAGIC)
  version = r.u8("format version")
  if version not in READABLE_VERSIONS:
    raise FormatError(
      f"unsupported .hemp format version {version} (this reader supports "
      f"{', '.join(map(str, READABLE_VERSIONS))})"
    )
  if version >= 3:
    return _parse_header_v3(buf, r, max_elements, max_bytes)
  count = r.varint("number of leaves", max_value=len(buf))
  entries = _parse_leaves(r, count, max_elements, max_bytes, version)
  end = r.pos
  crc = int.from_bytes(r.take(4, "header checksum"), "little")
  if zlib.crc32(buf[:end]) != crc:
    raise FormatError("hemp header: checksum mismatch (file damaged)")
  pos = r.pos
  for e in entries:
    e.offset = pos
    pos += e.length + 4
  _check_layout(entries, pos, len(buf))
  return entries, r.pos


def _parse_header_v3(buf: bytes, r: Reader, max_elements: int, max_bytes: int):
  if len(buf) < r.pos + 4:
    raise FormatError("truncated file: no room for the checksum")
  crc = int.from_bytes(buf[-4:], "little")
  if zlib.crc32(memoryview(buf)[:-4]) != crc:
    raise FormatError("file checksum mismatch (file damaged, truncated or rearranged)")
  r.end = len(buf) - 4
  table = _read_table(r)
  header_end = r.pos
  t = Reader(table, what="hemp leaf table")
  count = t.varint("number of leaves", max_value=len(table))
  entries = _parse_leaves(t, count, max_elements, max_bytes, 3, file_size=len(buf))
  t.expect_end("leaf table")
  pos = header_end
  for e in entries:
    e.offset = pos
    pos += e.length
  _check_layout(entries, pos, len(buf) - 4)
  return entries, header_end


def _read_table(r: Reader) -> bytes:
  """The leaf table of a version-3 header, inflated where it is stored deflated."""
  codec = r.u8("leaf table codec")
  length = r.varint("leaf table length", max_value=MAX_TABLE_BYTES)
  if codec == 0:
    return bytes(r.take(length, "leaf table"))
  if codec != 1:
    r.fail(f"unknown leaf table codec {codec}")
  stored = r.varint("stored leaf table length", max_value=r.remaining)
  z = zlib.decompressobj(-15, zdict=NAME_DICT)
  try:
    table = z.decompress(bytes(r.take(stored, "leaf table")), length + 1)
  except zlib.error as e:
    r.fail(f"leaf table corrupt: {e}")
  if len(table) != length or not z.eof or z.unused_data:
    r.fail("leaf table does not match its length")
  return table


def _check_layout(entries, pos: int, size: int) -> None:
  if pos > size:
    raise FormatError(f"truncated file: records need {pos} bytes, file has {size}")
  if pos < size:
    raise FormatError(f"{size - pos} unexpected trailing bytes after the last record")
  names = set()
  for e in entries:
    if e.comps in names:
      raise FormatError(f"duplicate leaf path {leaf_name(e.comps)!r}")
    names.add(e.comps)
  if len(entries) > 1 and any(len(e.comps) == 0 for e in entries):
    raise FormatError("a leaf without a path in a multi-leaf file")


def _parse_leaves(r: Reader, count, max_elements, max_bytes, version, file_size=None):
  file_size = len(r.buf) if file_size is None else file_size
  entries: list[LeafEntry] = []
  prev: tuple = ()
  total = 0
  total_bytes = 0
  for i in range(count):
    keep = r.varint(f"leaf {i} path prefix", max_value=len(prev))
    new = r.varint(f"leaf {i} path length", max_value=MAX_PATH_DEPTH - keep)
    comps = prev[:keep] + tuple(read_component(r) for _ in range(new))
    typ = r.u8(f"leaf {i} type")
    code, kind = typ & 15, typ >> 4
    if code >= len(records.DTYPES) or kind > KIND_TRELLIS or (kind in DQ_KINDS and version < 3):
      r.fail(f"leaf {leaf_name(comps)!r}: unknown type byte {typ:#04x}")
    dtype = records.DTYPES[code]
    if kind != KIND_FLOAT and not records.is_floating(dtype):
      r.fail(f"leaf {leaf_name(comps)!r}: quantized leaf with non-float dtype {dtype}")
    rank = r.varint(f"leaf {i} rank", max_value=MAX_RANK)
    shape = tuple(r.varint(f"leaf {i} dimension", max_value=max_elements) for _ in range(rank))
    n = math.prod(shape)
    total += n
    total_bytes += n * dtype.itemsize
    if n > max_elements or total > max_elements:
      r.fail(f"more than max_elements={max_elements} values (leaf {leaf_name(comps)!r})")
    if total_bytes > max_bytes:
      r.fail(
        f"decodes to more than max_bytes={max_bytes} bytes (leaf {leaf_name(comps)!r}); "
        "pass a larger max_bytes to decompress if the file is trusted"
      )
    length = r.varint(f"leaf {i} record length", max_value=file_size)
    entries.append(LeafEntry(comps, kind, dtype, shape, length, version=version))
    prev = comps
  return entries


def record_reader(buf: bytes, e: LeafEntry) -> Reader:
  """A reader over the record of ``e`` (its checksum verified in versions 1-2)."""
  what = f"record {leaf_name(e.comps)!r}"
  end = e.offset + e.length
  if e.version >= 3:  # checked with the whole file
    return Reader(buf, e.offset, end, what=what)
  crc = int.from_bytes(buf[end : end + 4], "little")
  if zlib.crc32(buf[e.offset : end]) != crc:
    raise FormatError(f"{what}: checksum mismatch (file damaged)")
  return Reader(buf, e.offset, end, what=what)


def _insert(tree: dict, comps: tuple, value) -> None:
  node = tree
  for c in comps[:-1]:
    child = node.setdefault(c, {})
    if not isinstance(child, dict):
      raise FormatError(f"leaf path {leaf_name(comps)!r} runs through another leaf")
    node = child
  if comps[-1] in node:
    raise FormatError(f"leaf path {leaf_name(comps)!r} collides with another leaf's path")
  node[comps[-1]] = value


def decompress(
  blob, *, max_elements: int = DEFAULT_MAX_ELEMENTS, max_bytes: int = DEFAULT_MAX_BYTES
) -> Any:
  """Decodes ``.hemp`` bytes into nested dicts of numpy arrays.

  Args:
    blob: the file contents.
    max_elements: refuse files with more values than this in total.
    max_bytes: refuse files whose decoded arrays take more than this many bytes in total
      (default 4 GiB), checked from the leaf table before anything is allocated. Decoding
      needs about this much memory plus the file and a few working arrays.

  Returns:
    Nested dicts keyed by the path components of the compressed pytree (a bare array if
    the pytree was a single array). Quantized leaves hold their dequantized values in the
    leaf dtype; float leaves hold the exact original values.

  Raises:
    FormatError: the input is damaged, truncated, foreign or of an unsupported version.
  """
  buf = as_buffer(blob)
  with malformed_input():
    entries, _ = parse_header(buf, int(max_elements), int(max_bytes))
    tree: dict = {}
    for e in entries:
      r = record_reader(buf, e)
      n = math.prod(e.shape)
      if e.kind == KIND_FLOAT:
        value = records.decode_float(r, e.dtype, e.shape, n)
      elif e.kind in DQ_KINDS:
        value = records.decode_dq(r, e.dtype, e.shape, n, e.kind)
      else:
        value = records.decode_quantized(r, e.dtype, e.shape, n, e.version)
      if not e.comps:
        return value
      _insert(tree, e.comps, value)
    return tree


def reencode(
  blob,
  *,
  max_order: int = MAX_ORDER,
  max_elements: int = DEFAULT_MAX_ELEMENTS,
  max_bytes: int = DEFAULT_MAX_BYTES,
) -> bytes:
  """Re-encodes a ``.hemp`` file of any readable version with the current format and coder.

  Lossless: the same leaves, paths, dtypes, codebook sizes, used levels (bitwise) and
  level indices, so :func:`decompress` of the result is bitwise equal to that of ``blob``.
  Float leaves are re-stored from their exact values.

  Raises:
    FormatError: ``blob`` is not a valid ``.hemp`` file.
  """
  buf = as_buffer(blob)
  _check_max_order(max_order)
  with malformed_input():
    parsed, _ = parse_header(buf, int(max_elements), int(max_bytes))
    entries = []
    for e in parsed:
      r = record_reader(buf, e)
      n = math.prod(e.shape)
      typ = records.dtype_code(e.dtype) | (e.kind << 4)
      if e.kind == KIND_FLOAT:
        body = records.float_body(records.decode_float(r, e.dtype, e.shape, n))
      elif e.kind in DQ_KINDS:
        spec = records.decode_dq_parts(r, e.shape, n, e.kind)
        body = records.dq_body(e.shape, spec)
      else:
        parts = records.decode_quantized_parts(r, e.dtype, e.shape, n, e.version)
        body = records.quantized_record(*parts, int(max_order))
      entries.append((e.comps, typ, e.shape, body))
  return _write_file(entries)


def load_into(template, decoded):
  """Puts decoded values into a pytree shaped like ``template``.

  Leaves are matched by path name (:func:`hemp_jax.pytrees.path_name`: '/'-joined keys,
  trailing NNX ``value`` dropped), so a Linen params dict, an NNX ``State`` or its pure
  dict all work as templates.

  Args:
    template: a params pytree with the target structure, shapes and dtypes.
    decoded: the output of :func:`decompress`.

  Returns:
    A pytree with the structure of ``template`` holding the decoded numpy arrays.

  Raises:
    ValueError: naming the first leaf that is missing from ``decoded``, extra in it, or
      has a different shape or dtype.
  """
  dec_flat, _ = jax.tree_util.tree_flatten_with_path(decoded)
  by_name = {}
  for p, v in dec_flat:
    by_name[pytrees.path_name(p)] = v
  t_flat, treedef = jax.tree_util.tree_flatten_with_path(template)
  values, seen = [], set()
  for p, t in t_flat:
    name = pytrees.path_name(p)
    if name not in by_name:
      raise ValueError(f"leaf {name!r} of the template is missing from the decoded params")
    v = by_name[name]
    seen.add(name)
    t_shape, v_shape = tuple(np.shape(t)), tuple(np.shape(v))
    if t_shape != v_shape:
      raise ValueError(f"leaf {name!r}: shape mismatch, template {t_shape} vs decoded {v_shape}")
    t_dtype = getattr(t, "dtype", None)
    if t_dtype is not None and np.dtype(t_dtype) != np.asarray(v).dtype:
      raise ValueError(
        f"leaf {name!r}: dtype mismatch, template {np.dtype(t_dtype)} vs "
        f"decoded {np.asarray(v).dtype}"
      )
    values.append(v)
  for p, _ in dec_flat:
    name = pytrees.path_name(p)
    if name not in seen:
      raise ValueError(f"decoded leaf {name!r} has no counterpart in the template")
  return treedef.unflatten(values)


def compress_file(params, path, **options) -> int:
  """Writes :func:`compress` ``(params, **options)`` to ``path`` (atomically, through
  :func:`hemp_jax.fileio.write_atomic`).

  Returns:
    The number of bytes written.
  """
  blob = compress(params, **options)
  write_bytes_atomic(path, blob)
  return len(blob)


def decompress_file(path, **options):
  """Reads a ``.hemp`` file and :func:`decompress` es it."""
  with open(os.fspath(path), "rb") as f:
    return decompress(f.read(), **options)
