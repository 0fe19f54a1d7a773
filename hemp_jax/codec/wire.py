"""Byte-level helpers of the ``.hemp`` format: varints, zigzag, bit packing, the reader.

Every read from a file goes through :class:`Reader`, which never reads past the end of
its window and raises :class:`FormatError` (a ``ValueError``) naming what was being read.
The encodings are defined in ``FORMAT.md`` ("Conventions").
"""

from __future__ import annotations

import numpy as np

__all__ = [
  "FormatError",
  "Reader",
  "write_varint",
  "varint_size",
  "zigzag",
  "unzigzag",
  "pack_bits",
  "unpack_bits",
]

_MAX_VARINT_BYTES = 10  # enough for 64-bit values


class FormatError(ValueError):
  """The input is not a valid ``.hemp`` file (damaged, truncated, foreign or unsupported)."""


def write_varint(out: bytearray, value: int) -> None:
  """Appends ``value`` (an int >= 0, < 2**64) as an unsigned LEB128 varint."""
  value = int(value)
  if value < 0 or value >= 1 << 64:
    raise ValueError(f"varint out of range: {value}")
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return


def varint_size(value: int) -> int:
  """Number of bytes :func:`write_varint` uses for ``value``."""
  return max(1, (int(value).bit_length() + 6) // 7)


def zigzag(value: int) -> int:
  """The zigzag code of a signed int: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ..."""
  return (value << 1) if value >= 0 else ((-value << 1) - 1)


def unzigzag(code: int) -> int:
  """Inverse of :func:`zigzag`."""
  return (code >> 1) if not code & 1 else -((code + 1) >> 1)


class Reader:
  """Sequential, bounds-checked reader over ``buf[pos:end]``."""

  __slots__ = ("buf", "pos", "end", "what")

  def __init__(self, buf, pos: int = 0, end: int | None = None, what: str = "file"):
    self.buf = buf
    self.pos = pos
    self.end = len(buf) if end is None else end
    self.what = what

  @property
  def remaining(self) -> int:
    return self.end - self.pos

  def fail(self, msg: str):
    raise FormatError(f"{self.what}: {msg}")

  def u8(self, name: str) -> int:
    if self.pos >= self.end:
      self.fail(f"truncated while reading {name}")
    b = self.buf[self.pos]
    self.pos += 1
    return b

  def take(self, n: int, name: str):
    """The next ``n`` bytes (a slice of the buffer)."""
    if n < 0 or n > self.end - self.pos:
      self.fail(f"truncated: {name} needs {n} bytes, {self.end - self.pos} left")
    s = self.buf[self.pos : self.pos + n]
    self.pos += n
    return s

  def varint(self, name: str, max_value: int = (1 << 64) - 1, min_value: int = 0) -> int:
    value = 0
    shift = 0
    for i in range(_MAX_VARINT_BYTES):
      if self.pos >= self.end:
        self.fail(f"truncated while reading {name}")
      b = self.buf[self.pos]
      self.pos += 1
      value |= (b & 0x7F) << shift
      if not b & 0x80:
        if i and b == 0:
          self.fail(f"non-canonical varint for {name}")
        break
      shift += 7
    else:
      self.fail(f"varint too long for {name}")
    if value < min_value or value > max_value:
      self.fail(f"{name} = {value} out of range [{min_value}, {max_value}]")
    return value

  def expect_end(self, name: str) -> None:
    if self.pos != self.end:
      self.fail(f"{self.end - self.pos} unexpected trailing bytes after {name}")


def pack_bits(values: np.ndarray, bits: int) -> bytes:
  """Packs non-negative ints (< 2**bits) with ``bits`` bits each, LSB first, zero padded."""
  v = np.asarray(values, np.uint32).reshape(-1)
  if bits == 0 or v.size == 0:
    return b""
  planes = ((v[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
  return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data, count: int, bits: int) -> np.ndarray:
  """Inverse of :func:`pack_bits`: ``count`` values (int64). ``data`` must be long enough."""
  if bits == 0 or count == 0:
    return np.zeros(count, np.int64)
  raw = np.frombuffer(bytes(data), np.uint8)
  flat = np.unpackbits(raw, bitorder="little")[: count * bits].reshape(count, bits)
  return (flat.astype(np.int64) << np.arange(bits, dtype=np.int64)).sum(axis=1)
