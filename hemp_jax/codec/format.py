"""The ``.hemp`` container: a versioned, self-describing, checksummed params file.

A file holds every leaf of a params pytree: its path, shape and dtype, and either the
codebook plus the entropy-coded level indices (a *quantized* leaf) or the exact values (a
*float* leaf: biases, norms, small tensors, integer leaves; lossless, bitwise). Everything
needed to decode is in the file and counted in its size.

Byte layout of version 3, written (all integers little-endian; ``varint`` = unsigned
LEB128)::

    file    := "HEMP" u8:3 u8:table_codec varint:table_length [varint:stored_length]
               stored_table records u32:crc32(every byte of the file before it)
      table_codec 0: the leaf table is stored as is (stored_length absent);
                  1: raw DEFLATE with the preset dictionary _NAME_DICT of common
                  parameter names (stored_length bytes inflate to table_length bytes)
    table   := varint:num_leaves leaf*
    leaf    := varint:keep varint:new component{new} u8:type varint:rank varint:dim{rank}
               varint:record_length
      keep       number of leading path components shared with the previous leaf
      component  varint t; t even: a str key of t >> 1 UTF-8 bytes follows;
                 t odd: an int key, zigzag-decoded from t >> 1
      type       dtype code (bits 0-3, see _DTYPES) | kind << 4 (0 float, 1 quantized)
    records := body{num_leaves}, in leaf order, each of record_length bytes; the file
               ends exactly after the last record and the checksum

One checksum over the whole file binds every record to its place (its leaf index and
path): records swapped, duplicated, moved or cut are a :class:`FormatError`. It is
verified before anything else is read.

Versions 1 and 2 (read, no longer written): ``"HEMP" u8:version varint:num_leaves leaf*
u32:crc32(header)`` followed by ``(body u32:crc32(body))`` per leaf, and the quantized
bodies' coder section of :mod:`hemp_jax.codec.coder` instead of
:mod:`hemp_jax.codec.models`.

Record bodies (all versions)::

    float body      := u8:mode data
      mode 0 raw        the n values, little-endian
      mode 1 constant   one value; all n values are bitwise equal to it (n >= 1)
      mode 2 zlib       zlib stream of the byte planes (byte j of every value, j = 0..);
                        written only where every plane compresses and it beats mode 3
      mode 3 planes     u8:flags, then byte plane j = 0.. of the values (byte j of every
                        value): flags bit j set: varint:length + a zlib stream of the n
                        bytes; clear: the n bytes raw. Low mantissa bytes of trained
                        weights are incompressible and stored raw (no time spent)
    quantized body  := varint:h [bitmap] levels [coder section]
      h            version 3: (K - 2) << 2 | arith << 1 | partial; versions 1-2:
                   (K - 2) << 1 | partial; K = codebook size
      bitmap       only when partial: ceil(K / 8) bytes, bit i (LSB first) = level i used
      levels       the A used levels, cast to the leaf dtype (the decoded leaf is exactly
                   ``codebook[indices].astype(dtype)``): little-endian values; or, when
                   arith (A >= 3), the first two values, then per further level the zigzag
                   varint of its bit pattern minus that of (previous level + first step)
                   computed in the leaf dtype (a uniform codebook: ~1 byte per level)
      coder        when n > 0 and A >= 2: the model section and range coder payload of
                   :mod:`hemp_jax.codec.models` (version 3) or :mod:`hemp_jax.codec.coder`
                   (versions 1-2), over the compact alphabet 0..A-1 (the
                   used levels in increasing index order). A = 1: no coder section (all
                   weights equal that level). n = 0: the body is ``h`` alone.

Every count and length read from a file is bounded before use, and the decoded size
(``max_bytes``, ``max_elements``) is checked from the leaf table before anything is
allocated, so damaged, truncated, crafted or foreign input raises :class:`FormatError`
instead of allocating or looping without bound; decoding time is linear in the decoded
size whatever the shapes (see :mod:`hemp_jax.codec.models`).

Paths: leaves are named by their pytree key path (dict keys, attribute names, sequence
indices); a trailing NNX ``value`` attribute is dropped, as in
:func:`hemp_jax.groups.path_name`. :func:`decompress` returns nested dicts of numpy arrays
keyed by those components (str keys stay str, int keys (sequence indices, int dict keys)
stay int; :func:`compress` refuses other key types, e.g. bool, rather than change them). :func:`load_into` maps the result
back onto a template pytree (Linen dicts, NNX ``State``, ...).
"""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hemp_jax import quantization as q
from hemp_jax.codec import coder, models
from hemp_jax.codec._wire import FormatError, Reader, write_varint

__all__ = [
  "FormatError",
  "FORMAT_VERSION",
  "MAGIC",
  "DEFAULT_MAX_ELEMENTS",
  "LeafReport",
  "Report",
  "compress",
  "decompress",
  "inspect",
  "format_inspection",
  "load_into",
  "compress_file",
  "decompress_file",
  "reencode",
  "write_bytes_atomic",
  "DEFAULT_MAX_BYTES",
]

MAGIC = b"HEMP"
FORMAT_VERSION = 3  # written; 2 added float record mode 3 (byte planes); 3: one file
# checksum, compressed leaf table, the coder of hemp_jax.codec.models
_READABLE_VERSIONS = (1, 2, 3)
DEFAULT_MAX_ELEMENTS = 1 << 31
DEFAULT_MAX_BYTES = 4 << 30
_MAX_TABLE_BYTES = 1 << 28
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


_NAME_DICT = (
  b"".join(_tagged(w) for w in _NAME_WORDS)
  + b"\x00\x03"
  + _tagged("params")
  + b"\x02\x01"
  + _tagged("kernel")
  + b"\x10\x04\x03\x03"
  + _tagged("bias")
  + b"\x00\x01"
)

_MAX_RANK = 32
_MAX_PATH_DEPTH = 64
_MAX_LEVELS = 1 << 16
_KIND_FLOAT, _KIND_QUANTIZED = 0, 1
_FLOAT_RAW, _FLOAT_CONSTANT, _FLOAT_ZLIB, _FLOAT_PLANES = 0, 1, 2, 3
_FLOAT_MODES = {
  _FLOAT_RAW: "raw",
  _FLOAT_CONSTANT: "constant",
  _FLOAT_ZLIB: "zlib",
  _FLOAT_PLANES: "planes",
}
# A byte plane longer than this is zlib-compressed only if its first _PLANE_PROBE bytes
# shrink by _PLANE_MIN_GAIN at zlib level 1 (a random mantissa byte does not).
_PLANE_PROBE = 1 << 16
_PLANE_MIN_GAIN = 0.03

_DTYPES = [
  np.dtype(d)
  for d in (
    np.float32,
    np.float16,
    jnp.bfloat16,
    np.float64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
  )
]
_DTYPE_CODE = {d: i for i, d in enumerate(_DTYPES)}


# ---------------------------------------------------------------------------- helpers


def _dtype_code(dtype) -> int:
  dtype = np.dtype(dtype)
  if dtype not in _DTYPE_CODE:
    raise ValueError(
      f"unsupported leaf dtype {dtype}; supported: " + ", ".join(str(d) for d in _DTYPES)
    )
  return _DTYPE_CODE[dtype]


def _is_floating(dtype) -> bool:
  return np.dtype(dtype) in (_DTYPES[0], _DTYPES[1], _DTYPES[2], _DTYPES[3])


def _to_le_bytes(a: np.ndarray) -> bytes:
  a = np.ascontiguousarray(a)
  size = a.dtype.itemsize
  if size == 1:
    return a.view(np.uint8).tobytes()
  return a.view(f"u{size}").astype(f"<u{size}").tobytes()


def _from_le_bytes(data, dtype, count: int) -> np.ndarray:
  dtype = np.dtype(dtype)
  size = dtype.itemsize
  raw = np.frombuffer(bytes(data), np.uint8 if size == 1 else f"<u{size}", count)
  if size > 1:
    raw = raw.astype(f"u{size}")
  out = raw.copy().view(dtype)
  if dtype == np.bool_ and out.size and raw.max() > 1:
    raise FormatError("invalid bool value in file")
  return out


def _key_component(k):
  if isinstance(k, jax.tree_util.DictKey):
    key = k.key
  elif isinstance(k, jax.tree_util.GetAttrKey):
    key = k.name
  elif isinstance(k, jax.tree_util.SequenceKey):
    key = k.idx
  elif isinstance(k, jax.tree_util.FlattenedIndexKey):
    key = k.key
  else:
    key = getattr(k, "key", k)
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


def _components(path) -> tuple:
  comps = [_key_component(k) for k in path]
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    comps = comps[:-1]
  return tuple(comps)


def _name(comps) -> str:
  return "/".join(str(c) for c in comps)


def _write_component(out: bytearray, c) -> None:
  if isinstance(c, int):
    zz = (c << 1) if c >= 0 else ((-c << 1) - 1)
    write_varint(out, (zz << 1) | 1)
  else:
    b = c.encode("utf-8")
    write_varint(out, len(b) << 1)
    out += b


def _read_component(r: Reader):
  t = r.varint("path component tag", max_value=1 << 62)
  if t & 1:
    zz = t >> 1
    return (zz >> 1) if not zz & 1 else -((zz + 1) >> 1)
  raw = r.take(t >> 1, "path component")
  try:
    return bytes(raw).decode("utf-8")
  except UnicodeDecodeError:
    r.fail("path component is not valid UTF-8")


# ------------------------------------------------------------------------ leaf records


def _float_body(x: np.ndarray) -> bytes:
  raw = _to_le_bytes(x)
  best = bytes([_FLOAT_RAW]) + raw
  n, size = x.size, x.dtype.itemsize
  if n >= 1:
    first = raw[:size]
    if raw == first * n:
      return bytes([_FLOAT_CONSTANT]) + first
  if n * size > 16:
    planes = np.frombuffer(raw, np.uint8).reshape(n, size).T
    flags, body = 0, bytearray([_FLOAT_PLANES, 0])
    for j in range(size):
      plane = planes[j].tobytes()
      z = _compressed_plane(plane)
      if z is None:
        body += plane
      else:
        flags |= 1 << j
        write_varint(body, len(z))
        body += z
    body[1] = flags
    if flags and len(body) < len(best):
      best = bytes(body)
    if flags == (1 << size) - 1:  # all planes compress: one stream may be smaller still
      z = bytes([_FLOAT_ZLIB]) + zlib.compress(planes.tobytes(), 9)
      if len(z) < len(best):
        best = z
  return best


def _compressed_plane(plane: bytes) -> bytes | None:
  """zlib stream of one byte plane, or None where it would not be smaller."""
  if len(plane) > _PLANE_PROBE:
    probe = zlib.compress(plane[:_PLANE_PROBE], 1)
    if len(probe) > (1 - _PLANE_MIN_GAIN) * _PLANE_PROBE:
      return None
  z = zlib.compress(plane, 6)
  return z if len(z) + 4 < len(plane) else None


def _inflate_exact(r: Reader, data: bytes, n: int, name: str) -> bytes:
  """Decompresses ``data``, which must hold a complete zlib stream of exactly n bytes."""
  d = zlib.decompressobj()
  try:
    out = d.decompress(data, n + 1)
  except zlib.error as e:
    r.fail(f"{name} corrupt: {e}")
  if len(out) != n or not d.eof or d.unused_data:
    r.fail(f"{name} does not match the leaf size")
  return out


def _decode_float(r: Reader, dtype, shape, n: int) -> np.ndarray:
  mode = r.u8("float record mode")
  size = dtype.itemsize
  if mode == _FLOAT_RAW:
    data = r.take(n * size, "raw values")
  elif mode == _FLOAT_CONSTANT:
    if n < 1:
      r.fail("constant record for an empty leaf")
    data = bytes(r.take(size, "constant value")) * n
  elif mode == _FLOAT_ZLIB:
    planes = _inflate_exact(r, bytes(r.take(r.remaining, "zlib data")), n * size, "zlib data")
    data = np.frombuffer(planes, np.uint8).reshape(size, n).T.tobytes()
  elif mode == _FLOAT_PLANES:
    flags = r.u8("byte plane flags")
    if flags >> size:
      r.fail(f"byte plane flags {flags:#x} name planes beyond the {size} of {dtype}")
    planes = []
    for j in range(size):
      if flags >> j & 1:
        length = r.varint("byte plane length", max_value=r.remaining)
        planes.append(_inflate_exact(r, bytes(r.take(length, "byte plane")), n, f"byte plane {j}"))
      else:
        planes.append(bytes(r.take(n, f"byte plane {j}")))
    data = np.frombuffer(b"".join(planes), np.uint8).reshape(size, n).T.tobytes()
  else:
    r.fail(f"unknown float record mode {mode}")
  r.expect_end("float record")
  return _from_le_bytes(data, dtype, n).reshape(shape)


def _effective_codebook(codebook) -> np.ndarray:
  """The codebook as jax sees it (float64 becomes float32 unless x64 is enabled)."""
  return np.asarray(jnp.asarray(codebook))


def quantize_indices_np(x: np.ndarray, codebook: np.ndarray) -> np.ndarray:
  """:func:`hemp_jax.quantize_indices` without jax dispatch (no per-shape compilation).

  Identical results: nearest level, ties to the lower one, computed in the codebook dtype
  (``mids = (c[1:] + c[:-1]) / 2``, ``searchsorted(mids, x, side="left")``). Non-finite
  inputs and codebooks other than float32/float64 go to the jax function itself.
  """
  c = np.asarray(codebook)
  x = np.asarray(x)
  if c.dtype in (np.dtype(np.float32), np.dtype(np.float64)) and _is_floating(x.dtype):
    xc = x.astype(c.dtype)
    if np.isfinite(xc).all():
      mids = (c[1:] + c[:-1]) / c.dtype.type(2)
      if mids.size > 64:
        return np.searchsorted(mids, xc, side="left").astype(np.int32)
      # searchsorted(side="left") counts the mids strictly below x; for few levels,
      # counting with whole-array comparisons is several times faster.
      idx = np.zeros(xc.shape, np.uint8)
      above = np.empty(xc.shape, bool)
      for m in mids:
        np.greater(xc, m, out=above)
        idx += above
      return idx.astype(np.int32)
  return np.asarray(q.quantize_indices(x, c)).reshape(x.shape)


def _quantized_body(x: np.ndarray, codebook, max_order: int, name: str = "") -> bytes:
  """Body (version 3) of a quantized leaf."""
  q.validate_codebook(codebook)
  k = int(np.shape(codebook)[0])
  if k > _MAX_LEVELS:
    raise ValueError(f"codebooks are limited to {_MAX_LEVELS} levels, got {k}")
  if x.size == 0:
    return _quantized_record(k, np.zeros(k, bool), np.zeros(0, x.dtype), None, max_order)
  if not np.isfinite(x).all():
    raise ValueError(
      f"leaf {name!r} holds NaN or inf values, which its codebook cannot represent; "
      "replace them, or store the leaf in float (codebook None)"
    )
  cb = _effective_codebook(codebook)
  idx = quantize_indices_np(x, cb)
  used = np.bincount(idx.reshape(-1), minlength=k) > 0
  levels = cb.astype(x.dtype)[used]
  compact = idx if used.all() else np.take((np.cumsum(used) - 1).astype(np.int32), idx)
  return _quantized_record(k, used, levels, compact, max_order)


def _quantized_record(k, used, levels, compact, max_order: int) -> bytes:
  """Version-3 quantized body from the codebook size, used mask, used levels (leaf dtype)
  and the compact symbols (None for an empty leaf)."""
  out = bytearray()
  if compact is None:
    write_varint(out, (k - 2) << 2)
    return bytes(out)
  partial = not used.all()
  raw = _to_le_bytes(levels)
  steps = _level_steps(levels)
  arith = steps is not None and len(steps) < len(raw)
  write_varint(out, ((k - 2) << 2) | (int(arith) << 1) | int(partial))
  if partial:
    out += np.packbits(used.astype(np.uint8), bitorder="little").tobytes()
  out += steps if arith else raw
  a = int(used.sum())
  if a < 2:
    return bytes(out)
  coded = models.encode(compact, a, max_order=max_order)
  out += coded.model
  out += coded.payload
  return bytes(out)


def _level_steps(levels: np.ndarray) -> bytes | None:
  """Levels as an arithmetic progression (version 3, "arith"): the first two levels, then
  for each next level the zigzag varint of (its bit pattern - the bit pattern of the
  previous level plus the first step, computed in the leaf dtype). None below 3 levels or
  when a difference does not fit a 64-bit varint (float64 levels far off the progression)."""
  if levels.size < 3:
    return None
  out = bytearray(_to_le_bytes(levels[:2]))
  with np.errstate(all="ignore"):
    step = levels[1:2] - levels[0:1]
  ints = _bits_of(levels)
  for i in range(2, levels.size):
    with np.errstate(all="ignore"):
      pred = int(_bits_of(levels[i - 1 : i] + step)[0])
    d = int(ints[i]) - pred
    zz = (d << 1) if d >= 0 else ((-d << 1) - 1)
    if zz >= 1 << 64:  # a far jump of a 64-bit pattern: the raw levels are stored instead
      return None
    write_varint(out, zz)
  return bytes(out)


def _bits_of(a: np.ndarray) -> np.ndarray:
  return a.view(f"u{a.dtype.itemsize}")


def _read_level_steps(r: Reader, dtype, a: int) -> np.ndarray:
  levels = np.empty(a, dtype)
  levels[:2] = _from_le_bytes(r.take(2 * dtype.itemsize, "codebook levels"), dtype, 2)
  with np.errstate(all="ignore"):  # any bit patterns, NaN and inf included
    step = levels[1:2] - levels[0:1]
  width = 8 * dtype.itemsize
  bits = _bits_of(levels)
  for i in range(2, a):
    zz = r.varint("codebook level step", max_value=(1 << (width + 1)) - 1)
    d = (zz >> 1) if not zz & 1 else -((zz + 1) >> 1)
    with np.errstate(all="ignore"):
      value = int(_bits_of(levels[i - 1 : i] + step)[0]) + d
    if not 0 <= value < 1 << width:
      r.fail("codebook level step out of range")
    bits[i] = value
  if dtype == np.bool_:
    r.fail("bool levels")
  return levels


def _parse_quantized_head(r: Reader, dtype, n: int, version: int = FORMAT_VERSION):
  """(K, used mask, levels) of a quantized record."""
  arith = False
  if version >= 3:
    h = r.varint("codebook size", max_value=((_MAX_LEVELS - 2) << 2) | 3)
    k, arith, partial = (h >> 2) + 2, bool(h & 2), h & 1
  else:
    h = r.varint("codebook size", max_value=((_MAX_LEVELS - 2) << 1) | 1)
    k, partial = (h >> 1) + 2, h & 1
  if n == 0:
    r.expect_end("empty quantized record")
    return k, np.zeros(k, bool), np.zeros(0, dtype)
  if partial:
    bits = np.unpackbits(
      np.frombuffer(bytes(r.take((k + 7) // 8, "used-level bitmap")), np.uint8), bitorder="little"
    )
    used = bits[:k].astype(bool)
    if bits[k:].any():
      r.fail("used-level bitmap has bits beyond the codebook size")
  else:
    used = np.ones(k, bool)
  a = int(used.sum())
  if a == 0:
    r.fail("quantized record without any used level")
  if arith:
    if a < 3:
      r.fail("level steps for fewer than 3 levels")
    return k, used, _read_level_steps(r, dtype, a)
  levels = _from_le_bytes(r.take(a * dtype.itemsize, "codebook levels"), dtype, a)
  return k, used, levels


def _decode_symbols(r: Reader, shape, alphabet: int, version: int) -> np.ndarray:
  if version >= 3:
    return models.decode(r, shape, alphabet)
  return coder.decode_symbols(r, shape, alphabet)


def _decode_quantized_parts(r: Reader, dtype, shape, n: int, version: int):
  """(K, used mask, levels, compact symbols or None) of a quantized record."""
  k, used, levels = _parse_quantized_head(r, dtype, n, version)
  if n == 0:
    return k, used, levels, None
  if levels.size == 1:
    r.expect_end("constant quantized record")
    return k, used, levels, np.zeros(shape, np.int32)
  return k, used, levels, _decode_symbols(r, shape, levels.size, version)


def _decode_quantized(r: Reader, dtype, shape, n: int, version: int) -> np.ndarray:
  _, _, levels, symbols = _decode_quantized_parts(r, dtype, shape, n, version)
  if symbols is None:
    return np.zeros(shape, dtype)
  if levels.size == 1:
    return np.full(shape, levels[0], dtype)
  return np.take(levels, symbols)


# ---------------------------------------------------------------------------- flatten


@dataclasses.dataclass
class _Entry:
  comps: tuple
  kind: int
  dtype: np.dtype
  shape: tuple
  length: int = 0
  offset: int = 0
  version: int = FORMAT_VERSION


def _flatten(params, codebooks):
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
    comps = _components(p)
    if comps in seen:
      raise ValueError(f"two leaves share the path {_name(comps)!r}")
    if len(comps) > _MAX_PATH_DEPTH:
      raise ValueError(
        f"leaf {_name(comps)!r} is {len(comps)} keys deep; a .hemp file holds paths of at "
        f"most {_MAX_PATH_DEPTH} keys"
      )
    seen.add(comps)
    arr = np.asarray(x)
    if arr.ndim > _MAX_RANK:
      raise ValueError(
        f"leaf {_name(comps)!r} has rank {arr.ndim}; a .hemp file holds arrays of rank at "
        f"most {_MAX_RANK} (reshape it)"
      )
    _dtype_code(arr.dtype)
    if cb is not None and not _is_floating(arr.dtype):
      raise ValueError(
        f"leaf {_name(comps)!r} has a codebook but dtype {arr.dtype}; only "
        "float leaves can be quantized"
      )
    out.append((comps, arr, cb))
  if len(out) > 1 and any(len(c) == 0 for c, _, _ in out):
    raise ValueError("a params tree with several leaves needs a path for each")
  return out


# ---------------------------------------------------------------------------- public


def compress(
  params, codebooks=None, *, max_order: int = coder.MAX_ORDER, **quantizer_options
) -> bytes:
  """Encodes a params pytree into ``.hemp`` bytes.

  Args:
    params: a pytree of arrays (Linen dict, NNX ``State``, nested dicts/lists...). Float
      leaves are float32, float16, bfloat16 or float64; integer and bool leaves are kept
      losslessly.
    codebooks: a pytree like ``params`` with a 1-D codebook per quantized leaf and
      ``None`` for leaves stored exactly. When None, codebooks are fitted with
      :func:`hemp_jax.groups.fit_codebooks` with ``quantizer_options``.
    max_order: the highest context order the coder may try (0..3).
    **quantizer_options: passed to ``fit_codebooks`` (``num_levels`` is required),
      e.g. ``num_levels=4, method="lloyd_max", guard_levels=True, min_size=41``.

  Returns:
    The file contents. A quantized leaf decodes to exactly
    ``dequantize(quantize_indices(x, cb), cb).astype(x.dtype)``; a float leaf decodes
    bitwise equal to ``x``.
  """
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
  if not 0 <= int(max_order) <= coder.MAX_ORDER:
    raise ValueError(f"max_order must be in 0..{coder.MAX_ORDER}, got {max_order}")
  leaves = _flatten(params, codebooks)
  entries = []
  for comps, arr, cb in leaves:
    if cb is None:
      kind, body = _KIND_FLOAT, _float_body(arr)
    else:
      kind, body = _KIND_QUANTIZED, _quantized_body(arr, cb, int(max_order), _name(comps))
    entries.append((comps, _dtype_code(arr.dtype) | (kind << 4), arr.shape, body))
  return _write_file(entries)


def _leaf_table(entries) -> bytes:
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
      _write_component(table, c)
    table.append(typ)
    write_varint(table, len(shape))
    for d in shape:
      write_varint(table, d)
    write_varint(table, len(body))
    prev = comps
  return bytes(table)


def _deflate_table(table: bytes) -> bytes:
  z = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _NAME_DICT)
  return z.compress(table) + z.flush()


def _write_file(entries) -> bytes:
  """A version-3 file from ``(comps, type byte, shape, body)`` entries."""
  table = _leaf_table(entries)
  out = bytearray(MAGIC)
  out.append(FORMAT_VERSION)
  packed = _deflate_table(table)
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


def _as_buffer(blob) -> bytes:
  if isinstance(blob, (bytes, bytearray, memoryview)):
    return bytes(blob)
  raise FormatError(f"expected bytes, got {type(blob).__name__}")


def _parse_header(
  buf: bytes, max_elements: int, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[list[_Entry], int]:
  """Entries (with record offsets) and the end of the header, for every version."""
  r = Reader(buf, what="hemp header")
  if len(buf) < len(MAGIC) or buf[: len(MAGIC)] != MAGIC:
    raise FormatError("not a .hemp file (bad magic)")
  r.pos = len(MAGIC)
  version = r.u8("format version")
  if version not in _READABLE_VERSIONS:
    raise FormatError(
      f"unsupported .hemp format version {version} (this reader supports "
      f"{', '.join(map(str, _READABLE_VERSIONS))})"
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
  codec = r.u8("leaf table codec")
  length = r.varint("leaf table length", max_value=_MAX_TABLE_BYTES)
  if codec == 0:
    table = bytes(r.take(length, "leaf table"))
  elif codec == 1:
    stored = r.varint("stored leaf table length", max_value=r.remaining)
    z = zlib.decompressobj(-15, zdict=_NAME_DICT)
    try:
      table = z.decompress(bytes(r.take(stored, "leaf table")), length + 1)
    except zlib.error as e:
      r.fail(f"leaf table corrupt: {e}")
    if len(table) != length or not z.eof or z.unused_data:
      r.fail("leaf table does not match its length")
  else:
    r.fail(f"unknown leaf table codec {codec}")
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


def _check_layout(entries, pos: int, size: int) -> None:
  if pos > size:
    raise FormatError(f"truncated file: records need {pos} bytes, file has {size}")
  if pos < size:
    raise FormatError(f"{size - pos} unexpected trailing bytes after the last record")
  names = set()
  for e in entries:
    if e.comps in names:
      raise FormatError(f"duplicate leaf path {_name(e.comps)!r}")
    names.add(e.comps)
  if len(entries) > 1 and any(len(e.comps) == 0 for e in entries):
    raise FormatError("a leaf without a path in a multi-leaf file")


def _parse_leaves(r: Reader, count, max_elements, max_bytes, version, file_size=None):
  file_size = len(r.buf) if file_size is None else file_size
  entries: list[_Entry] = []
  prev: tuple = ()
  total = 0
  total_bytes = 0
  for i in range(count):
    keep = r.varint(f"leaf {i} path prefix", max_value=len(prev))
    new = r.varint(f"leaf {i} path length", max_value=_MAX_PATH_DEPTH - keep)
    comps = prev[:keep] + tuple(_read_component(r) for _ in range(new))
    typ = r.u8(f"leaf {i} type")
    code, kind = typ & 15, typ >> 4
    if code >= len(_DTYPES) or kind > _KIND_QUANTIZED:
      r.fail(f"leaf {_name(comps)!r}: unknown type byte {typ:#04x}")
    dtype = _DTYPES[code]
    if kind == _KIND_QUANTIZED and not _is_floating(dtype):
      r.fail(f"leaf {_name(comps)!r}: quantized leaf with non-float dtype {dtype}")
    rank = r.varint(f"leaf {i} rank", max_value=_MAX_RANK)
    shape = tuple(r.varint(f"leaf {i} dimension", max_value=max_elements) for _ in range(rank))
    n = math.prod(shape)
    total += n
    total_bytes += n * dtype.itemsize
    if n > max_elements or total > max_elements:
      r.fail(f"more than max_elements={max_elements} values (leaf {_name(comps)!r})")
    if total_bytes > max_bytes:
      r.fail(
        f"decodes to more than max_bytes={max_bytes} bytes (leaf {_name(comps)!r}); "
        "pass a larger max_bytes to decompress if the file is trusted"
      )
    length = r.varint(f"leaf {i} record length", max_value=file_size)
    entries.append(_Entry(comps, kind, dtype, shape, length, version=version))
    prev = comps
  return entries


def _record_reader(buf: bytes, e: _Entry) -> Reader:
  what = f"record {_name(e.comps)!r}"
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
      raise FormatError(f"leaf path {_name(comps)!r} runs through another leaf")
    node = child
  if comps[-1] in node:
    raise FormatError(f"leaf path {_name(comps)!r} collides with another leaf's path")
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
  buf = _as_buffer(blob)
  try:
    entries, _ = _parse_header(buf, int(max_elements), int(max_bytes))
    tree: dict = {}
    for e in entries:
      r = _record_reader(buf, e)
      n = math.prod(e.shape)
      if e.kind == _KIND_FLOAT:
        value = _decode_float(r, e.dtype, e.shape, n)
      else:
        value = _decode_quantized(r, e.dtype, e.shape, n, e.version)
      if not e.comps:
        return value
      _insert(tree, e.comps, value)
    return tree
  except FormatError:
    raise
  except (KeyboardInterrupt, SystemExit):
    raise
  except Exception as ex:  # a safety net: any other failure on bad input is a FormatError
    raise FormatError(f"malformed .hemp file ({type(ex).__name__}: {ex})") from None


@dataclasses.dataclass
class LeafReport:
  """One leaf of an :func:`inspect` report. Byte counts exclude the leaf's header entry."""

  path: str
  shape: tuple
  dtype: str
  kind: str  # "quantized" or "float"
  num_params: int
  record_bytes: int  # body (+ its 4-byte checksum in versions 1-2)
  levels: int | None = None  # K, the codebook size
  used_levels: int | None = None
  order: int | None = None  # context order of the coder (None: nothing coded)
  model: str = ""  # coder model (version 3): static / unit / polya, and the layout
  codebook_bytes: int = 0  # K header, used-level bitmap, level values
  table_bytes: int = 0  # coder model section (context tables)
  payload_bytes: int = 0  # range coder payload (float leaves: the stored values)
  storage: str = ""  # float leaves: raw / constant / zlib / planes

  @property
  def bits_per_param(self) -> float:
    return 8.0 * self.record_bytes / self.num_params if self.num_params else 0.0


@dataclasses.dataclass
class Report:
  """What :func:`inspect` finds in a file."""

  version: int
  file_bytes: int
  header_bytes: int  # including the header checksum (version 3: the file checksum)
  leaves: list

  @property
  def num_params(self) -> int:
    return sum(l.num_params for l in self.leaves)

  @property
  def quantized_params(self) -> int:
    return sum(l.num_params for l in self.leaves if l.kind == "quantized")

  @property
  def bits_per_param(self) -> float:
    return 8.0 * self.file_bytes / self.num_params if self.num_params else 0.0

  def as_dict(self) -> dict:
    """A JSON-friendly dict: totals, and every leaf with its bits/param."""
    leaves = []
    for l in self.leaves:
      d = dataclasses.asdict(l)
      d["shape"] = list(l.shape)
      d["bits_per_param"] = l.bits_per_param
      leaves.append(d)
    return {
      "version": self.version,
      "file_bytes": self.file_bytes,
      "header_bytes": self.header_bytes,
      "num_params": self.num_params,
      "quantized_params": self.quantized_params,
      "bits_per_param": self.bits_per_param,
      "totals": self.totals(),
      "leaves": leaves,
    }

  def totals(self) -> dict:
    """Byte totals by part of the file ("header" includes the header checksum of versions
    1-2 and the one file checksum of version 3, which has no record checksums)."""
    return {
      "file": self.file_bytes,
      "header": self.header_bytes,
      "record_checksums": 4 * len(self.leaves) if self.version < 3 else 0,
      "payload": sum(l.payload_bytes for l in self.leaves if l.kind == "quantized"),
      "tables": sum(l.table_bytes for l in self.leaves),
      "codebooks": sum(l.codebook_bytes for l in self.leaves),
      "float": sum(l.record_bytes - 4 for l in self.leaves if l.kind == "float"),
    }


def quantized_symbols(blob, min_size: int = 0):
  """Yields ``(path, shape, levels, coded_bytes, symbols)`` for each quantized leaf of a
  ``.hemp`` file written by the version-3 coder with at least ``min_size`` weights and a
  coder section: ``levels`` the used levels, ``coded_bytes`` the size of its model section
  + payload and ``symbols`` (the leaf's shape) its indices into ``levels``. For measuring
  the coder; leaves of version-1/2 files are skipped (:func:`reencode` first).

  Raises:
    FormatError: ``blob`` is not a valid ``.hemp`` file.
  """
  buf = _as_buffer(blob)
  entries, _ = _parse_header(buf, DEFAULT_MAX_ELEMENTS)
  for e in entries:
    n = math.prod(e.shape)
    if e.kind != _KIND_QUANTIZED or n < max(1, min_size) or e.version < 3:
      continue
    r = _record_reader(buf, e)
    _, _, levels = _parse_quantized_head(r, e.dtype, n)
    if levels.size < 2:
      continue
    coded = r.remaining
    yield _name(e.comps), e.shape, levels, coded, models.decode(r, e.shape, levels.size)


def inspect(
  blob, *, max_elements: int = DEFAULT_MAX_ELEMENTS, max_bytes: int = DEFAULT_MAX_BYTES
) -> Report:
  """Structure and size breakdown of a ``.hemp`` file, without decoding the payloads.

  Checksums and structure are verified; raises :class:`FormatError` like
  :func:`decompress`.
  """
  buf = _as_buffer(blob)
  try:
    entries, header_end = _parse_header(buf, int(max_elements), int(max_bytes))
    leaves = []
    for e in entries:
      r = _record_reader(buf, e)
      n = math.prod(e.shape)
      rep = LeafReport(
        path=_name(e.comps),
        shape=e.shape,
        dtype=str(e.dtype),
        kind="quantized" if e.kind == _KIND_QUANTIZED else "float",
        num_params=n,
        record_bytes=e.length + (4 if e.version < 3 else 0),
      )
      if e.kind == _KIND_FLOAT:
        mode = r.u8("float record mode")
        rep.storage = _FLOAT_MODES.get(mode, f"mode {mode}")
        rep.payload_bytes = r.remaining
      else:
        k, used, levels = _parse_quantized_head(r, e.dtype, n, e.version)
        rep.levels, rep.used_levels = k, int(used.sum())
        rep.codebook_bytes = r.pos - e.offset
        if n and levels.size >= 2:
          if e.version >= 3:
            info = models.parse_model(r, e.shape, levels.size)
            rep.model = f"{models.KIND_NAMES[info.kind]}/L{info.layout}" + (
              f"/P{info.period}" if info.period > 1 else ""
            )
          else:
            info = coder.parse_model(r, e.shape, levels.size)
          rep.order, rep.table_bytes = info.order, info.model_bytes
          rep.payload_bytes = r.remaining
      leaves.append(rep)
    return Report(
      version=buf[len(MAGIC)],
      file_bytes=len(buf),
      header_bytes=header_end + (4 if buf[len(MAGIC)] >= 3 else 0),
      leaves=leaves,
    )
  except FormatError:
    raise
  except (KeyboardInterrupt, SystemExit):
    raise
  except Exception as ex:
    raise FormatError(f"malformed .hemp file ({type(ex).__name__}: {ex})") from None


def format_inspection(report: Report) -> str:
  """A human-readable table of an :func:`inspect` report."""
  rows = [
    (
      "path",
      "shape",
      "dtype",
      "kind",
      "K",
      "used",
      "order",
      "model",
      "payload",
      "table",
      "codebook",
      "record",
      "bits/param",
    )
  ]
  for l in report.leaves:
    quant = l.kind == "quantized"
    rows.append(
      (
        l.path or "<root>",
        "x".join(str(d) for d in l.shape) or "()",
        l.dtype,
        l.kind if quant else f"float/{l.storage}",
        str(l.levels) if quant else "-",
        str(l.used_levels) if quant else "-",
        str(l.order) if l.order is not None else "-",
        l.model or "-",
        str(l.payload_bytes),
        str(l.table_bytes),
        str(l.codebook_bytes),
        str(l.record_bytes),
        f"{l.bits_per_param:.4f}",
      )
    )
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = []
  for j, r in enumerate(rows):
    lines.append(
      "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    )
    if j == 0:
      lines.append("-" * len(lines[0]))
  t = report.totals()
  lines.append("")
  lines.append(
    f".hemp v{report.version}: {report.file_bytes} bytes, {report.num_params} "
    f"params ({report.quantized_params} quantized), "
    f"{report.bits_per_param:.4f} bits/param"
  )
  lines.append(
    f"  header {t['header']} B, record checksums {t['record_checksums']} B, payload "
    f"{t['payload']} B, tables {t['tables']} B, codebooks {t['codebooks']} B, "
    f"float values {t['float']} B"
  )
  return "\n".join(lines)


def load_into(template, decoded):
  """Puts decoded values into a pytree shaped like ``template``.

  Leaves are matched by path name (:func:`hemp_jax.groups.path_name`: '/'-joined keys,
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
  from hemp_jax.groups import path_name

  dec_flat, _ = jax.tree_util.tree_flatten_with_path(decoded)
  by_name = {}
  for p, v in dec_flat:
    by_name[path_name(p)] = v
  t_flat, treedef = jax.tree_util.tree_flatten_with_path(template)
  values, seen = [], set()
  for p, t in t_flat:
    name = path_name(p)
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
    name = path_name(p)
    if name not in seen:
      raise ValueError(f"decoded leaf {name!r} has no counterpart in the template")
  return treedef.unflatten(values)


def compress_file(params, path, **options) -> int:
  """Writes :func:`compress` ``(params, **options)`` to ``path`` (atomically).

  Returns:
    The number of bytes written.
  """
  blob = compress(params, **options)
  write_bytes_atomic(path, blob)
  return len(blob)


def write_bytes_atomic(path, data: bytes) -> None:
  """Writes ``data`` to ``path`` through a temporary file in the same folder and a rename.

  The file gets mode 0666 less the process umask (0644 usually), like ``open(path, "w")``.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def decompress_file(path, **options):
  """Reads a ``.hemp`` file and :func:`decompress` es it."""
  with open(os.fspath(path), "rb") as f:
    return decompress(f.read(), **options)


def reencode(
  blob,
  *,
  max_order: int = coder.MAX_ORDER,
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
  buf = _as_buffer(blob)
  if not 0 <= int(max_order) <= coder.MAX_ORDER:
    raise ValueError(f"max_order must be in 0..{coder.MAX_ORDER}, got {max_order}")
  try:
    parsed, _ = _parse_header(buf, int(max_elements), int(max_bytes))
    entries = []
    for e in parsed:
      r = _record_reader(buf, e)
      n = math.prod(e.shape)
      typ = _dtype_code(e.dtype) | (e.kind << 4)
      if e.kind == _KIND_FLOAT:
        body = _float_body(_decode_float(r, e.dtype, e.shape, n))
      else:
        k, used, levels, symbols = _decode_quantized_parts(r, e.dtype, e.shape, n, e.version)
        body = _quantized_record(k, used, levels, symbols, int(max_order))
      entries.append((e.comps, typ, e.shape, body))
  except FormatError:
    raise
  except (KeyboardInterrupt, SystemExit):
    raise
  except Exception as ex:
    raise FormatError(f"malformed .hemp file ({type(ex).__name__}: {ex})") from None
  return _write_file(entries)
