"""Leaf records of a ``.hemp`` file: float bodies (exact values), quantized bodies
(codebook levels + the coder section) and dq bodies (dependent quantization: step, level
range + the coder section of :mod:`hemp_jax.codec.trellis`), written and read for every
format version.

The body layouts are defined in ``FORMAT.md`` ("Records"). Readers take a
:class:`~hemp_jax.codec.wire.Reader` over exactly one record and raise
:class:`~hemp_jax.codec.wire.FormatError` on anything malformed.
"""

from __future__ import annotations

import math
import warnings
import zlib

import jax.numpy as jnp
import numpy as np

from hemp_jax import quantization as q
from hemp_jax.codec import context_models, legacy, magnitude, model_selection, trellis
from hemp_jax.codec.wire import FormatError, Reader, unzigzag, write_varint, zigzag

__all__ = [
  "QuantizationWarning",
  "WARN_REL_ERROR",
  "fit_warning",
  "DTYPES",
  "KIND_FLOAT",
  "KIND_QUANTIZED",
  "KIND_DQ",
  "KIND_TRELLIS",
  "DQ_KINDS",
  "dq_kind",
  "FLOAT_RAW",
  "FLOAT_CONSTANT",
  "FLOAT_ZLIB",
  "FLOAT_PLANES",
  "FLOAT_MODES",
  "MAX_LEVELS",
  "CODER_MAGNITUDE",
  "DQ_MAGNITUDE",
  "magnitude_coded",
  "dq_magnitude_coded",
  "zero_level",
  "dtype_code",
  "is_floating",
  "to_le_bytes",
  "from_le_bytes",
  "float_body",
  "decode_float",
  "quantize_indices_np",
  "quantized_body",
  "quantized_record",
  "parse_quantized_head",
  "decode_symbols",
  "decode_quantized_parts",
  "decode_quantized",
  "dq_body",
  "parse_dq_head",
  "decode_dq_parts",
  "decode_dq",
]

# dtype codes (the type byte's bits 0-3) by index
DTYPES = [
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
_DTYPE_CODE = {d: i for i, d in enumerate(DTYPES)}
KIND_FLOAT, KIND_QUANTIZED, KIND_DQ, KIND_TRELLIS = 0, 1, 2, 3
DQ_KINDS = (KIND_DQ, KIND_TRELLIS)  # kind 3: a dq record of a trellis of 2**nu states
FLOAT_RAW, FLOAT_CONSTANT, FLOAT_ZLIB, FLOAT_PLANES = 0, 1, 2, 3
FLOAT_MODES = {
  FLOAT_RAW: "raw",
  FLOAT_CONSTANT: "constant",
  FLOAT_ZLIB: "zlib",
  FLOAT_PLANES: "planes",
}
MAX_LEVELS = 1 << 16
# A version-3 coder section whose first byte has kind bits (0-1) 3 is the magnitude
# coder's (FORMAT.md, "Magnitude coder"); so is a dq coder section whose header has
# bit 6 set.
CODER_MAGNITUDE = 3
DQ_MAGNITUDE = 0x40
# A byte plane longer than this is zlib-compressed only if its first _PLANE_PROBE bytes
# shrink by _PLANE_MIN_GAIN at zlib level 1 (a random mantissa byte does not).
_PLANE_PROBE = 1 << 16
_PLANE_MIN_GAIN = 0.03


def dtype_code(dtype) -> int:
  """The dtype code of a leaf dtype; ValueError for a dtype a file cannot hold."""
  dtype = np.dtype(dtype)
  if dtype not in _DTYPE_CODE:
    raise ValueError(
      f"unsupported leaf dtype {dtype}; supported: " + ", ".join(str(d) for d in DTYPES)
    )
  return _DTYPE_CODE[dtype]


def is_floating(dtype) -> bool:
  """Whether ``dtype`` is one of the float dtypes (the ones a leaf may be quantized in)."""
  return np.dtype(dtype) in (DTYPES[0], DTYPES[1], DTYPES[2], DTYPES[3])


def to_le_bytes(a: np.ndarray) -> bytes:
  """The values of ``a`` as little-endian bytes."""
  a = np.ascontiguousarray(a)
  size = a.dtype.itemsize
  if size == 1:
    return a.view(np.uint8).tobytes()
  return a.view(f"u{size}").astype(f"<u{size}").tobytes()


def from_le_bytes(data, dtype, count: int) -> np.ndarray:
  """Inverse of :func:`to_le_bytes`: ``count`` values of ``dtype`` (bools checked)."""
  dtype = np.dtype(dtype)
  size = dtype.itemsize
  raw = np.frombuffer(bytes(data), np.uint8 if size == 1 else f"<u{size}", count)
  if size > 1:
    raw = raw.astype(f"u{size}")
  out = raw.copy().view(dtype)
  if dtype == np.bool_ and out.size and raw.max() > 1:
    raise FormatError("invalid bool value in file")
  return out


# ------------------------------------------------------------------------ float bodies


def float_body(x: np.ndarray) -> bytes:
  """The smallest float body of the exact values ``x`` (any mode)."""
  raw = to_le_bytes(x)
  best = bytes([FLOAT_RAW]) + raw
  n, size = x.size, x.dtype.itemsize
  if n >= 1:
    first = raw[:size]
    if raw == first * n:
      return bytes([FLOAT_CONSTANT]) + first
  if n * size > 16:
    planes = np.frombuffer(raw, np.uint8).reshape(n, size).T
    flags, body = 0, bytearray([FLOAT_PLANES, 0])
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
      z = bytes([FLOAT_ZLIB]) + zlib.compress(planes.tobytes(), 9)
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


def decode_float(r: Reader, dtype, shape, n: int) -> np.ndarray:
  """The values of a float body (the whole of ``r``)."""
  mode = r.u8("float record mode")
  size = dtype.itemsize
  if mode == FLOAT_RAW:
    data = r.take(n * size, "raw values")
  elif mode == FLOAT_CONSTANT:
    if n < 1:
      r.fail("constant record for an empty leaf")
    data = bytes(r.take(size, "constant value")) * n
  elif mode == FLOAT_ZLIB:
    planes = _inflate_exact(r, bytes(r.take(r.remaining, "zlib data")), n * size, "zlib data")
    data = np.frombuffer(planes, np.uint8).reshape(size, n).T.tobytes()
  elif mode == FLOAT_PLANES:
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
  return from_le_bytes(data, dtype, n).reshape(shape)


# -------------------------------------------------------------------- quantized bodies


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
  if c.dtype in (np.dtype(np.float32), np.dtype(np.float64)) and is_floating(x.dtype):
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


class QuantizationWarning(UserWarning):
  """A leaf that its codebook does not fit: values clipped, or a large decoded error."""


#: Relative L2 error of a leaf above which compressing it warns.
WARN_REL_ERROR = 0.75


def fit_warning(name: str, x: np.ndarray, cb: np.ndarray, idx: np.ndarray) -> str | None:
  """One line when ``x`` does not fit its codebook ``cb`` (``idx``: its nearest levels).

  Values more than half the outermost gap beyond the outermost levels are clipped to
  them; a relative L2 error ``||x - q(x)|| / ||x||`` over :data:`WARN_REL_ERROR` means the
  decoded leaf is far from the trained one (e.g. a codebook fitted on a constant start).
  """
  c = np.asarray(cb, np.float64)
  if c.size < 2:
    return None
  lo, hi = c[0] - (c[1] - c[0]) / 2, c[-1] + (c[-1] - c[-2]) / 2
  # In the leaf's precision (float32 for 16/32-bit leaves: no float64 copy on the encode
  # path), sums accumulated in float64 without BLAS.
  ft = np.float64 if np.asarray(x).dtype == np.float64 else np.float32
  xf = np.asarray(x).astype(ft, copy=False).reshape(-1)
  xmin, xmax = float(xf.min()), float(xf.max())
  clipped = xmin < lo or xmax > hi
  energy = float(np.einsum("i,i->", xf, xf, dtype=np.float64))
  # Unclipped, no value is farther than half the widest gap from its level: when even
  # that bound stays under the threshold, the error itself need not be computed.
  half_gap = float(np.diff(c).max()) / 2
  if not clipped and xf.size * half_gap * half_gap < WARN_REL_ERROR**2 * energy:
    return None
  d = xf - c.astype(ft)[np.asarray(idx).reshape(-1)]
  rel = math.sqrt(float(np.einsum("i,i->", d, d, dtype=np.float64)) / energy) if energy else 0.0
  span = f"levels [{c[0]:.3g}, {c[-1]:.3g}], values [{xmin:.3g}, {xmax:.3g}]"
  if clipped:
    out = int(np.count_nonzero((xf < lo) | (xf > hi)))
    return (
      f"{name}: {out} of {xf.size} values lie outside its codebook and are clipped "
      f"({span}; relative error {rel:.2f})"
    )
  if rel > WARN_REL_ERROR:
    return f"{name}: decodes with relative error {rel:.2f} ({span})"
  return None


def quantized_body(x: np.ndarray, codebook, max_order: int, name: str = "") -> bytes:
  """Body (version 3) of a quantized leaf."""
  q.validate_codebook(codebook)
  k = int(np.shape(codebook)[0])
  if k > MAX_LEVELS:
    raise ValueError(f"codebooks are limited to {MAX_LEVELS} levels, got {k}")
  if x.size == 0:
    return quantized_record(k, np.zeros(k, bool), np.zeros(0, x.dtype), None, max_order)
  if not np.isfinite(x).all():
    raise ValueError(
      f"leaf {name!r} holds NaN or inf values, which its codebook cannot represent; "
      "replace them, or store the leaf in float (codebook None)"
    )
  cb = _effective_codebook(codebook)
  idx = quantize_indices_np(x, cb)
  message = fit_warning(name, x, cb, idx)
  if message:
    warnings.warn(message, QuantizationWarning, stacklevel=4)
  used = np.bincount(idx.reshape(-1), minlength=k) > 0
  levels = cb.astype(x.dtype)[used]
  compact = idx if used.all() else np.take((np.cumsum(used) - 1).astype(np.int32), idx)
  return quantized_record(k, used, levels, compact, max_order)


def quantized_record(k, used, levels, compact, max_order: int) -> bytes:
  """Version-3 quantized body from the codebook size, used mask, used levels (leaf dtype)
  and the compact symbols (None for an empty leaf)."""
  out = bytearray()
  if compact is None:
    write_varint(out, (k - 2) << 2)
    return bytes(out)
  partial = not used.all()
  raw = to_le_bytes(levels)
  steps = _level_steps(levels)
  arith = steps is not None and len(steps) < len(raw)
  write_varint(out, ((k - 2) << 2) | (int(arith) << 1) | int(partial))
  if partial:
    out += np.packbits(used.astype(np.uint8), bitorder="little").tobytes()
  out += steps if arith else raw
  a = int(used.sum())
  if a < 2:
    return bytes(out)
  coded = model_selection.encode(compact, a, max_order=max_order)
  section = coded.model + coded.payload
  signed = compact.astype(np.int64) - zero_level(levels)
  candidates = model_selection.scored_layouts(compact.shape)
  mag = _magnitude_section(signed, candidates, 0, len(section))
  if mag is not None:
    section = bytes([CODER_MAGNITUDE | mag[0] << 4]) + mag[1]
  return bytes(out) + section


def magnitude_coded(r: Reader) -> bool:
  """Whether the version-3 coder section at the reader is the magnitude coder's (its
  first byte's kind bits are :data:`CODER_MAGNITUDE`)."""
  return bool(r.remaining and r.buf[r.pos] & 3 == CODER_MAGNITUDE)


def dq_magnitude_coded(r: Reader) -> bool:
  """Whether the dq coder section at the reader is the magnitude coder's (header bit 6)."""
  return bool(r.remaining and r.buf[r.pos] & DQ_MAGNITUDE)


def zero_level(levels: np.ndarray) -> int:
  """The index of the level nearest zero (the first of equals; NaN counts as infinite):
  the magnitude coder codes symbol ``s`` as the signed level ``s - zero_level``."""
  a = np.abs(np.asarray(levels).astype(np.float64))
  return int(np.argmin(np.where(np.isnan(a), np.inf, a)))


def _magnitude_section(levels, candidates, dq: int, today_bytes: int, states=None):
  """``(layout, model section + payload)`` of the magnitude coder for signed ``levels``
  (``dq``: the state bits of a dq leaf's trellis, or 0; ``states``: those of its walk),
  or None unless it saves :data:`magnitude.LEAF_MIN_GAIN` of ``today_bytes`` (the bytes
  it would replace) with its header byte counted."""
  limit = 8 * ((1 - magnitude.LEAF_MIN_GAIN) * today_bytes - 1)
  if limit <= 0:
    return None
  return magnitude.encode_leaf(levels, candidates, dq=dq, limit_bits=limit, states=states)


def _level_steps(levels: np.ndarray) -> bytes | None:
  """Levels as an arithmetic progression ("arith"): the first two levels, then for each
  next level the zigzag varint of (its bit pattern - the bit pattern of the previous
  level plus the first step, computed in the leaf dtype). None below 3 levels or when a
  difference does not fit a 64-bit varint (float64 levels far off the progression)."""
  if levels.size < 3:
    return None
  out = bytearray(to_le_bytes(levels[:2]))
  with np.errstate(all="ignore"):
    step = levels[1:2] - levels[0:1]
  ints = _bits_of(levels)
  for i in range(2, levels.size):
    with np.errstate(all="ignore"):
      pred = int(_bits_of(levels[i - 1 : i] + step)[0])
    zz = zigzag(int(ints[i]) - pred)
    if zz >= 1 << 64:  # a far jump of a 64-bit pattern: the raw levels are stored instead
      return None
    write_varint(out, zz)
  return bytes(out)


def _bits_of(a: np.ndarray) -> np.ndarray:
  return a.view(f"u{a.dtype.itemsize}")


def _read_level_steps(r: Reader, dtype, a: int) -> np.ndarray:
  levels = np.empty(a, dtype)
  levels[:2] = from_le_bytes(r.take(2 * dtype.itemsize, "codebook levels"), dtype, 2)
  with np.errstate(all="ignore"):  # any bit patterns, NaN and inf included
    step = levels[1:2] - levels[0:1]
  width = 8 * dtype.itemsize
  bits = _bits_of(levels)
  for i in range(2, a):
    d = unzigzag(r.varint("codebook level step", max_value=(1 << (width + 1)) - 1))
    with np.errstate(all="ignore"):
      value = int(_bits_of(levels[i - 1 : i] + step)[0]) + d
    if not 0 <= value < 1 << width:
      r.fail("codebook level step out of range")
    bits[i] = value
  if dtype == np.bool_:
    r.fail("bool levels")
  return levels


def parse_quantized_head(r: Reader, dtype, n: int, version: int):
  """(K, used mask, levels) of a quantized body of format ``version``."""
  arith = False
  if version >= 3:
    h = r.varint("codebook size", max_value=((MAX_LEVELS - 2) << 2) | 3)
    k, arith, partial = (h >> 2) + 2, bool(h & 2), h & 1
  else:
    h = r.varint("codebook size", max_value=((MAX_LEVELS - 2) << 1) | 1)
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
  levels = from_le_bytes(r.take(a * dtype.itemsize, "codebook levels"), dtype, a)
  return k, used, levels


def decode_symbols(r: Reader, shape, levels: np.ndarray, version: int) -> np.ndarray:
  """The compact symbols (int32, ``shape``) of a quantized record's coder section (to
  ``r.end``), ``levels`` its used levels."""
  a = levels.size
  if version < 3:
    return legacy.decode_symbols(r, shape, a)
  if not magnitude_coded(r):
    return context_models.decode(r, shape, a)
  head = r.u8("coder model header")
  layout = head >> 4 & 1
  if head & ~0x13:
    r.fail(f"magnitude coder header {head:#04x} has unknown bits")
  if layout >= len(context_models.layouts(shape)):
    r.fail(f"magnitude coder layout {layout} does not exist for shape {tuple(shape)}")
  s = magnitude.decode_leaf(r, shape, layout, dq=0).astype(np.int64) + zero_level(levels)
  if s.size and (s.min() < 0 or s.max() >= a):
    r.fail("magnitude coder level beyond the used levels")
  return s.astype(np.int32)


def decode_quantized_parts(r: Reader, dtype, shape, n: int, version: int):
  """(K, used mask, levels, compact symbols or None) of a quantized body."""
  k, used, levels = parse_quantized_head(r, dtype, n, version)
  if n == 0:
    return k, used, levels, None
  if levels.size == 1:
    r.expect_end("constant quantized record")
    return k, used, levels, np.zeros(shape, np.int32)
  return k, used, levels, decode_symbols(r, shape, levels, version)


def decode_quantized(r: Reader, dtype, shape, n: int, version: int) -> np.ndarray:
  """The dequantized values (leaf dtype) of a quantized body."""
  _, _, levels, symbols = decode_quantized_parts(r, dtype, shape, n, version)
  if symbols is None:
    return np.zeros(shape, dtype)
  if levels.size == 1:
    return np.full(shape, levels[0], dtype)
  return np.take(levels, symbols)


# ------------------------------------------------------------------------- dq bodies


def dq_kind(spec: trellis.DQ) -> int:
  """The leaf kind of a dq leaf: 2 for the 4-state trellis, 3 for a larger one."""
  return KIND_DQ if spec.nu == 2 else KIND_TRELLIS


def dq_body(shape: tuple[int, ...], spec: trellis.DQ, name: str = "") -> bytes:
  """Body of a dependent-quantized leaf of ``shape`` with the levels and step of ``spec``:
  it decodes to :func:`trellis.values` of their reconstruction (in the leaf's dtype, which
  the leaf table holds). A leaf of kind 3 (:func:`dq_kind`) starts with the state bits of
  its trellis."""
  shape = tuple(shape)
  k = np.asarray(spec.levels)
  if k.shape != shape:
    raise ValueError(f"leaf {name!r}: dq levels of shape {k.shape} for a leaf of shape {shape}")
  out = bytearray([spec.nu] if spec.nu != 2 else [])
  out += np.float32(spec.step).astype("<f4").tobytes()
  if k.size == 0:
    return bytes(out)
  k = k.astype(np.int64).reshape(-1)
  lo, hi = int(k.min()), int(k.max())
  if max(-lo, hi) > trellis.MAX_LEVEL or hi - lo + 1 > trellis.MAX_SPAN:
    raise ValueError(
      f"leaf {name!r}: dq levels {lo}..{hi} exceed the format's limits (|k| <= "
      f"{trellis.MAX_LEVEL}, at most {trellis.MAX_SPAN} consecutive levels); use a larger step"
    )
  used = np.bincount(k - lo, minlength=hi - lo + 1) > 0
  partial = not used.all()
  write_varint(out, zigzag(lo))
  bitmap = np.packbits(used.astype(np.uint8), bitorder="little").tobytes() if partial else b""
  levels = np.flatnonzero(used) + lo
  section = b""
  if levels.size > 1:
    compact = (np.cumsum(used) - 1).astype(np.int32)[k - lo].reshape(shape)
    y, valid = trellis.chains(k.reshape(shape), spec.layout)
    st = trellis.states(y, valid, spec.nu)  # the states of the walk, for both coders
    section = trellis.encode_levels(compact, levels, spec.layout, spec.nu, st)
    size = len(bitmap + section)
    mag = _magnitude_section(k.reshape(shape), [spec.layout], spec.nu, size, st)
    if mag is not None:  # levels checked against the range alone: no bitmap
      partial, bitmap, section = False, b"", bytes([DQ_MAGNITUDE]) + mag[1]
  write_varint(out, (hi - lo) << 2 | spec.layout << 1 | int(partial))
  return bytes(out) + bitmap + section


def _state_bits(r: Reader, kind: int) -> int:
  """The state bits of a dq body's trellis: 2 for kind 2, read for kind 3."""
  if kind == KIND_DQ:
    return 2
  nu = r.u8("trellis state bits")
  if nu not in trellis.STATE_BITS or nu == 2:
    r.fail(f"trellis of {nu} state bits (kind 3 has {trellis.STATE_BITS[1:]})")
  return nu


def parse_dq_head(r: Reader, shape, n: int, kind: int = KIND_DQ):
  """(step, layout, used levels, state bits) of a dq body of leaf ``kind`` (levels None
  for an empty leaf)."""
  nu = _state_bits(r, kind)
  step = float(np.frombuffer(bytes(r.take(4, "dq step")), "<f4")[0])
  if not (math.isfinite(step) and step > 0):
    r.fail(f"dq step {step} is not a positive finite number")
  if n == 0:
    r.expect_end("empty dq record")
    return step, 0, None, nu
  lo = unzigzag(r.varint("lowest dq level", max_value=2 * trellis.MAX_LEVEL))
  h = r.varint("dq level range", max_value=((trellis.MAX_SPAN - 1) << 2) | 3)
  span, layout, partial = (h >> 2) + 1, (h >> 1) & 1, h & 1
  if lo + span - 1 > trellis.MAX_LEVEL:
    r.fail(f"dq levels {lo}..{lo + span - 1} beyond {trellis.MAX_LEVEL}")
  if layout >= len(context_models.layouts(shape)):
    r.fail(f"dq layout {layout} does not exist for shape {tuple(shape)}")
  if partial:
    bits = np.unpackbits(
      np.frombuffer(bytes(r.take((span + 7) // 8, "dq level bitmap")), np.uint8),
      bitorder="little",
    )
    if bits[span:].any():
      r.fail("dq level bitmap has bits beyond the level range")
    levels = np.flatnonzero(bits[:span]) + lo
    if levels.size == 0:
      r.fail("dq record without any used level")
  else:
    levels = np.arange(lo, lo + span)
  return step, layout, levels.astype(np.int64), nu


def decode_dq_parts(r: Reader, shape, n: int, kind: int = KIND_DQ):
  """The :class:`trellis.DQ` of a dq body of leaf ``kind`` (levels ``k`` int64, zeros for
  an empty leaf)."""
  step, layout, levels, nu = parse_dq_head(r, shape, n, kind)
  if levels is None:
    return trellis.DQ(step, np.zeros(shape, np.int64), layout, nu)
  return trellis.DQ(step, _dq_levels(r, shape, levels, layout, nu), layout, nu)


def _dq_levels(r: Reader, shape, levels: np.ndarray, layout: int, nu: int) -> np.ndarray:
  """The levels ``k`` (int64, ``shape``) of the rest of a dq body with used ``levels``:
  one level, or its coder section (the magnitude coder's or the per-quantizer tables)."""
  if levels.size == 1:
    r.expect_end("dq record of one level")
    return np.full(shape, levels[0], np.int64)
  if dq_magnitude_coded(r):
    return _dq_magnitude_levels(r, shape, levels, layout, nu)
  symbols, _ = trellis.decode_levels(r, shape, levels, layout, nu)
  return levels[symbols]


def _dq_magnitude_levels(r: Reader, shape, levels: np.ndarray, layout: int, nu: int):
  """The levels ``k`` (int64, ``shape``) of a dq coder section of the magnitude coder,
  each checked to be one of the used ``levels``."""
  head = r.u8("dq coder header")
  if head != DQ_MAGNITUDE:
    r.fail(f"dq coder header {head:#04x} has unknown bits")
  k = magnitude.decode_leaf(r, shape, layout, dq=nu).astype(np.int64)
  pos = np.minimum(np.searchsorted(levels, k), levels.size - 1)
  if not np.array_equal(levels[pos], k):
    r.fail("dq level outside the record's levels")
  return k


def decode_dq(r: Reader, dtype, shape, n: int, kind: int = KIND_DQ) -> np.ndarray:
  """The values (leaf dtype) of a dq body of leaf ``kind``."""
  step, layout, levels, nu = parse_dq_head(r, shape, n, kind)
  if levels is None:
    return np.zeros(shape, dtype)
  if levels.size > 1 and not dq_magnitude_coded(r):  # the tables' decoder knows the states
    symbols, quant = trellis.decode_levels(r, shape, levels, layout, nu)
    return trellis.level_values(levels, step, dtype)[quant.view(np.uint8), symbols]
  k = _dq_levels(r, shape, levels, layout, nu)
  return trellis.values(trellis.grid(k, layout, nu), step, dtype)
