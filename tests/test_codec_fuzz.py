"""Fuzzing the .hemp reader: damaged input raises FormatError, fast, never anything else."""

import time
import zlib

import jax.numpy as jnp
import numpy as np
import pytest

from hemp_jax.codec import FormatError, coder, compress, decompress, inspect

PER_CASE_SECONDS = 1.0  # loose: the machine is shared; typical cases take ~0.1 ms
TOTAL_SECONDS = 25.0


def _markov(rng, rows, cols, k, stay=0.85):
  x = np.empty((rows, cols), np.int64)
  x[0] = rng.integers(0, k, cols)
  for r in range(1, rows):
    x[r] = np.where(rng.random(cols) < stay, x[r - 1], rng.integers(0, k, cols))
  return x


def _base_params():
  rng = np.random.default_rng(1234)
  cb6 = np.linspace(-0.5, 0.5, 6).astype(np.float32)
  cb66 = np.linspace(-3, 3, 66).astype(np.float32)
  params = {
    "conv": {
      "kernel": cb6[_markov(rng, 75, 16, 6)].reshape(5, 5, 3, 16),
      "bias": rng.standard_normal(16).astype(np.float32),
    },
    "fc": {"kernel": cb66[rng.integers(20, 46, (30, 12))], "bias": np.zeros(12, np.float32)},
    "vec": cb6[rng.integers(0, 6, 200)],
    "half": rng.standard_normal((6, 5)).astype(np.float16),
    "ramp": np.arange(64, dtype=np.float32).astype(jnp.bfloat16),
    "steps": np.arange(5, dtype=np.int64),
    "empty": np.zeros((0, 3), np.float32),
    "scalar": np.float32(2.0),
    "flat": np.full((10, 10), 0.1, np.float32),
  }
  cbs = {k: None for k in params}
  cbs["conv"] = {"kernel": cb6, "bias": None}
  cbs["fc"] = {"kernel": cb66, "bias": None}
  cbs["vec"] = cb6
  cbs["flat"] = cb6
  cbs["empty"] = cb6
  return params, cbs


@pytest.fixture(scope="module")
def blob():
  params, cbs = _base_params()
  b = compress(params, cbs)
  rep = inspect(b)
  orders = {l.path: l.order for l in rep.leaves}
  assert orders["conv/kernel"] >= 1 and orders["fc/kernel"] == 0  # both coder paths
  return b


def _records(blob):
  """(offset, body length) of every record."""
  rep = inspect(blob)
  pos, out = rep.header_bytes, []
  for leaf in rep.leaves:
    out.append((pos, leaf.record_bytes - 4))
    pos += leaf.record_bytes
  return rep.header_bytes, out


def _corruptions(blob, rng):
  n = len(blob)
  header_end, _ = _records(blob)
  cases = []

  def add(kind, data):
    data = bytes(data)
    if data != blob:
      cases.append((kind, data))

  for _ in range(350):  # single and multi bit flips
    b = bytearray(blob)
    for _ in range(int(rng.integers(1, 4))):
      i = int(rng.integers(n))
      b[i] ^= 1 << int(rng.integers(8))
    add("bitflip", b)
  for _ in range(150):  # truncations
    add("truncate", blob[: int(rng.integers(0, n))])
  for _ in range(150):  # insertions
    i = int(rng.integers(0, n + 1))
    add("insert", blob[:i] + rng.bytes(int(rng.integers(1, 9))) + blob[i:])
  for _ in range(100):  # deletions
    i = int(rng.integers(0, n))
    add("delete", blob[:i] + blob[i + int(rng.integers(1, 9)) :])
  for _ in range(150):  # random bytes over a span
    i = int(rng.integers(0, n))
    j = min(n, i + int(rng.integers(1, 33)))
    add("overwrite", blob[:i] + rng.bytes(j - i) + blob[j:])
  for _ in range(100):  # valid header, garbage body
    body = (
      rng.bytes(n - header_end)
      if rng.random() < 0.5
      else rng.bytes(int(rng.integers(0, 2 * (n - header_end))))
    )
    add("garbage-body", blob[:header_end] + body)
  for _ in range(50):  # foreign data
    add("foreign", rng.bytes(int(rng.integers(0, 200))))
  for _ in range(50):  # magic + garbage
    add("magic+garbage", b"HEMP\x01" + rng.bytes(int(rng.integers(0, 300))))
  return cases


def test_fuzz_corruptions_raise_format_error(blob):
  rng = np.random.default_rng(2024)
  cases = _corruptions(blob, rng)
  assert len(cases) >= 1000
  worst = 0.0
  start = time.perf_counter()
  for kind, data in cases:
    t = time.perf_counter()
    with pytest.raises(FormatError):
      decompress(data)
    with pytest.raises(FormatError):
      inspect(data)
    dt = time.perf_counter() - t
    worst = max(worst, dt)
    assert dt < PER_CASE_SECONDS, (kind, dt)
  assert time.perf_counter() - start < TOTAL_SECONDS
  assert worst < PER_CASE_SECONDS


def _fix_crcs(blob_bytes, header_end, records):
  b = bytearray(blob_bytes)
  b[header_end - 4 : header_end] = zlib.crc32(bytes(b[: header_end - 4])).to_bytes(4, "little")
  for off, length in records:
    b[off + length : off + length + 4] = zlib.crc32(bytes(b[off : off + length])).to_bytes(
      4, "little"
    )
  return bytes(b)


def test_fuzz_checksum_valid_garbage_never_crashes(blob):
  """Records corrupted *behind valid checksums* (what only a crafted file can do) must
  still give FormatError or a well-formed result, within the time bound: every length and
  count read from the file is bounds-checked."""
  rng = np.random.default_rng(77)
  header_end, records = _records(blob)
  outcomes = {"error": 0, "decoded": 0}
  start = time.perf_counter()
  for i in range(300):
    b = bytearray(blob)
    off, length = records[int(rng.integers(len(records)))]
    if length == 0:
      continue
    mode = i % 3
    if mode == 0:  # flip bits inside one record body
      for _ in range(int(rng.integers(1, 6))):
        j = off + int(rng.integers(length))
        b[j] ^= 1 << int(rng.integers(8))
    elif mode == 1:  # random body of the same length
      b[off : off + length] = rng.bytes(length)
    else:  # random header byte (not the magic/version)
      j = int(rng.integers(5, header_end - 4))
      b[j] = int(rng.integers(256))
    data = _fix_crcs(bytes(b), header_end, records)
    t = time.perf_counter()
    try:
      out = decompress(data, max_elements=10**6)
      outcomes["decoded"] += 1
      assert isinstance(out, dict)
    except FormatError:
      outcomes["error"] += 1
    assert time.perf_counter() - t < PER_CASE_SECONDS
  assert outcomes["error"] > 0
  assert time.perf_counter() - start < TOTAL_SECONDS


def test_garbage_payload_behind_valid_model_is_bounded():
  """The range decoder on random words: symbols stay in range, no crash, no hang."""
  from hemp_jax.codec._wire import Reader

  rng = np.random.default_rng(5)
  x = _markov(rng, 64, 32, 6)
  coded = coder.encode_symbols(x, 6)
  for _ in range(200):
    garbage = rng.bytes(int(rng.integers(0, 64)))
    try:
      y = coder.decode_symbols(Reader(coded.model + garbage), x.shape, 6)
      assert y.shape == x.shape and y.min() >= 0 and y.max() < 6
    except FormatError:
      pass
