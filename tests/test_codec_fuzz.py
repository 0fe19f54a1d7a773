"""Fuzzing the .hemp reader: damaged or crafted input raises FormatError, fast, bounded.

Three families of cases, 10,000+ in all, on small files (so the whole campaign takes a
few seconds):

* damage (bit flips, truncation, insertion, deletion, overwrite, foreign bytes) with the
  checksum left as it was: every case must be a FormatError (0 silent changes);
* records rearranged (swapped, duplicated, moved, dropped), each record moving intact
  as the per-record checksums of version 2 allowed: every case must be a FormatError;
* crafted files whose checksum is *recomputed* after the change, so they test the parser
  rather than the CRC: every field of the leaf table (counts, path components, types,
  ranks, huge dimensions and record lengths), the coder model sections and payloads.
  Such a file may be a valid file with other contents; it must decode to arrays of the
  shapes it declares or raise FormatError, nothing else, in < 1 s, and within the memory
  ``max_bytes`` allows.
"""

import resource
import time
import zlib

import jax.numpy as jnp
import numpy as np
import pytest

from hemp_jax.codec import (
  FormatError,
  compress,
  container,
  context_models,
  decompress,
  inspect,
  legacy,
  magnitude,
  model_selection,
  records,
  trellis,
)
from hemp_jax.codec.wire import Reader, write_varint

PER_CASE_SECONDS = 1.0  # loose: the machine is shared; typical cases take ~0.3 ms
MAX_BYTES = 64 << 20  # the decoded size a crafted case may ask for
MAX_RSS_GROWTH = 1 << 30


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
  drift = rng.dirichlet(np.full(4, 0.1), 24)
  unit_idx = (rng.random((120, 24, 1)) > np.cumsum(drift, axis=1)[None]).sum(axis=2).clip(0, 3)
  mild = rng.dirichlet(30 * np.array([0.1, 0.2, 0.4, 0.2, 0.1]), 24)
  polya_idx = (rng.random((120, 24, 1)) > np.cumsum(mild, axis=1)[None]).sum(axis=2).clip(0, 4)
  # disjoint 3-tuples of the scan stream: zero, then a pair that is zero or live together
  live = rng.random(61 * 20 // 3 + 1) < 0.2
  tuples = np.where(live[:, None], rng.integers(0, 2, (live.size, 3)) * 4 + 1, 3)
  tuples[:, 0] = 3
  tuple_idx = tuples.reshape(-1)[: 61 * 20].reshape(20, 61).T
  srng = np.random.default_rng(77)
  spread = np.exp(srng.normal(0, 1.0, (48, 1)) + srng.normal(0, 0.5, (1, 40)))
  scaled = (srng.laplace(0, 0.05, (48, 40)) * spread).astype(np.float32)
  params = {
    "conv": {
      "kernel": cb6[_markov(rng, 75, 16, 6)].reshape(5, 5, 3, 16),
      "bias": rng.standard_normal(16).astype(np.float32),
    },
    "fc": {"kernel": cb66[rng.integers(20, 46, (30, 12))], "bias": np.zeros(12, np.float32)},
    "units": cb6[unit_idx],
    "adaptive": cb6[polya_idx].reshape(120, 1, 24),
    "vec": cb6[rng.integers(0, 6, 200)],
    "tuples": cb6[tuple_idx],
    "half": rng.standard_normal((6, 5)).astype(np.float16),
    "ramp": np.arange(64, dtype=np.float32).astype(jnp.bfloat16),
    "steps": np.arange(5, dtype=np.int64),
    "empty": np.zeros((0, 3), np.float32),
    "scalar": np.float32(2.0),
    "flat": np.full((10, 10), 0.1, np.float32),
    "list": [np.ones(3, np.int8), np.zeros(2, np.uint16)],
    "dq": rng.laplace(0, 0.05, (40, 24)).astype(np.float32),
    # scales changing by row and column: the magnitude coder's leaves
    "scaled": scaled,
    "dqmag": scaled,
  }
  cbs = {k: None for k in params}
  cbs["conv"] = {"kernel": cb6, "bias": None}
  cbs["fc"] = {"kernel": cb66, "bias": None}
  cbs["units"] = cb6
  cbs["adaptive"] = cb6
  cbs["vec"] = cb6
  cbs["tuples"] = cb6
  cbs["flat"] = cb6
  cbs["empty"] = cb6
  cbs["list"] = [None, None]
  cbs["dq"] = trellis.fit_step(params["dq"], 0.02).spec
  params["dq8"] = params["dq"]
  cbs["dq8"] = trellis.fit_step(params["dq"], 0.02, nu=3).spec  # leaf kind 3
  cbs["scaled"] = np.linspace(-3, 3, 255).astype(np.float32) * float(np.abs(scaled).max()) / 3
  cbs["dqmag"] = trellis.fit_step(scaled, 0.004, nu=5).spec
  return params, cbs


class Parsed:
  """A version-3 file taken apart: leaf fields and record bodies, to rebuild crafted files."""

  def __init__(self, blob):
    entries, _ = container.parse_header(blob, container.DEFAULT_MAX_ELEMENTS)
    self.leaves = []
    for e in entries:
      self.leaves.append(
        {
          "comps": e.comps,
          "type": records.dtype_code(e.dtype) | (e.kind << 4),
          "shape": list(e.shape),
          "body": bytes(blob[e.offset : e.offset + e.length]),
        }
      )

  def table(self, override=None) -> bytes:
    """The leaf table; ``override(i, field, value) -> value`` may change any field."""
    f = override or (lambda i, field, v: v)
    t = bytearray()
    write_varint(t, f(-1, "count", len(self.leaves)))
    prev = ()
    for i, leaf in enumerate(self.leaves):
      comps = leaf["comps"]
      keep = 0
      while keep < min(len(prev), len(comps)) and prev[keep] == comps[keep]:
        keep += 1
      write_varint(t, f(i, "keep", keep))
      write_varint(t, f(i, "new", len(comps) - keep))
      for c in comps[keep:]:
        container.write_component(t, c)
      t.append(f(i, "type", leaf["type"]) & 255)
      shape = leaf["shape"]
      write_varint(t, f(i, "rank", len(shape)))
      for d in shape:
        write_varint(t, f(i, "dim", d))
      write_varint(t, f(i, "length", len(leaf["body"])))
      prev = comps
    return bytes(t)

  def build(self, table=None, bodies=None, deflate=False, fix_crc=True) -> bytes:
    table = self.table() if table is None else table
    bodies = [leaf["body"] for leaf in self.leaves] if bodies is None else bodies
    out = bytearray(container.MAGIC) + bytes([3])
    if deflate:
      packed = container.deflate_table(table)
      out.append(1)
      write_varint(out, len(table))
      write_varint(out, len(packed))
      out += packed
    else:
      out.append(0)
      write_varint(out, len(table))
      out += table
    out += b"".join(bodies)
    crc = zlib.crc32(out) if fix_crc else 0
    return bytes(out + crc.to_bytes(4, "little"))


@pytest.fixture(scope="module")
def blob():
  params, cbs = _base_params()
  b = compress(params, cbs)
  kinds = {l.path: l.model for l in inspect(b).leaves}
  assert kinds["conv/kernel"].startswith("static") and kinds["units"].startswith("unit")
  assert kinds["adaptive"].startswith("polya") and kinds["dq"] == "dq/L0"
  assert kinds["dq8"] == "dq8/L0" and kinds["scaled"] == "magnitude/L0"
  assert kinds["dqmag"] == "dq32-magnitude/L0"
  return b


def test_builder_reproduces_the_writer(blob):
  parsed = Parsed(blob)
  assert parsed.build(deflate=True) == blob
  assert container.leaf_table(
    [(l["comps"], l["type"], l["shape"], l["body"]) for l in parsed.leaves]
  )
  assert _flat(decompress(parsed.build())) == _flat(decompress(blob))


def _flat(tree, prefix=()):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, prefix + (k,)))
    return out
  return {prefix: (tree.dtype.str, tree.shape, tree.tobytes())}


def _damaged(blob, rng, count):
  """Damage that leaves the checksum as it was."""
  n = len(blob)
  out = []
  kinds = ["bitflip", "truncate", "insert", "delete", "overwrite", "foreign", "append"]
  while len(out) < count:
    kind = kinds[len(out) % len(kinds)]
    if kind == "bitflip":
      b = bytearray(blob)
      for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(n))
        b[i] ^= 1 << int(rng.integers(8))
    elif kind == "truncate":
      b = blob[: int(rng.integers(0, n))]
    elif kind == "insert":
      i = int(rng.integers(0, n + 1))
      b = blob[:i] + rng.bytes(int(rng.integers(1, 9))) + blob[i:]
    elif kind == "delete":
      i = int(rng.integers(0, n))
      b = blob[:i] + blob[i + int(rng.integers(1, 9)) :]
    elif kind == "overwrite":
      i = int(rng.integers(0, n))
      j = min(n, i + int(rng.integers(1, 33)))
      b = blob[:i] + rng.bytes(j - i) + blob[j:]
    elif kind == "foreign":
      b = (b"HEMP\x03" if rng.random() < 0.5 else b"") + rng.bytes(int(rng.integers(0, 300)))
    else:
      b = blob + rng.bytes(int(rng.integers(1, 16)))
    if bytes(b) != blob:
      out.append((kind, bytes(b)))
  return out


def _rearranged(parsed, rng, count, fix_crc):
  """Records swapped / duplicated / moved / dropped, the leaf table's lengths following
  the records (as a tool that moves whole records would leave them)."""
  n = len(parsed.leaves)
  out = []
  original = [leaf["body"] for leaf in parsed.leaves]
  while len(out) < count:
    bodies = list(original)
    kind = ["swap", "duplicate", "move", "drop"][len(out) % 4]
    i, j = (int(v) for v in rng.choice(n, 2, replace=False))
    if kind == "swap":
      bodies[i], bodies[j] = bodies[j], bodies[i]
    elif kind == "duplicate":
      bodies[j] = bodies[i]
    elif kind == "move":
      bodies.insert(j, bodies.pop(i))
    else:
      bodies[i] = b""
    if bodies == original:
      continue
    lengths = [len(b) for b in bodies]

    def override(k, field, v, lengths=lengths):
      return lengths[k] if field == "length" else v

    data = parsed.build(parsed.table(override), bodies, deflate=True, fix_crc=False)
    if not fix_crc:  # the original file checksum travels with the moved records
      data = data[:-4] + (bytes(parsed.build(deflate=True))[-4:])
    else:
      data = data[:-4] + zlib.crc32(data[:-4]).to_bytes(4, "little")
    out.append((kind, data))
  return out


_HUGE = [2**31, 2**32 + 1, 2**40, 2**62, 2**64 - 1, 10**12, 65, 33, 4095, 0, 1]


def _crafted(parsed, rng, count):
  """Files with a recomputed checksum: leaf-table fields, bodies, coder sections."""
  n = len(parsed.leaves)
  out = []
  fields = ["count", "keep", "new", "type", "rank", "dim", "length"]
  while len(out) < count:
    mode = len(out) % 6
    bodies = [leaf["body"] for leaf in parsed.leaves]
    table = None
    if mode in (0, 1):  # one leaf-table field set to a huge / boundary / random value
      target = int(rng.integers(-1, n))
      field = fields[int(rng.integers(len(fields)))]
      value = _HUGE[int(rng.integers(len(_HUGE)))] if mode == 0 else int(rng.integers(0, 1 << 20))
      hit = []

      def override(k, f, v, target=target, field=field, value=value, hit=hit):
        if f == field and (k == target or field == "count") and not hit:
          hit.append(1)
          return value
        return v

      table = parsed.table(override)
    elif mode == 2:  # random bytes over a span of the leaf table
      t = bytearray(parsed.table())
      i = int(rng.integers(len(t)))
      t[i : i + int(rng.integers(1, 6))] = rng.bytes(int(rng.integers(1, 6)))
      table = bytes(t)
    elif mode == 3:  # bit flips inside one record body (model sections, payloads)
      k = int(rng.integers(n))
      b = bytearray(bodies[k])
      if b:
        for _ in range(int(rng.integers(1, 4))):
          i = int(rng.integers(len(b)))
          b[i] ^= 1 << int(rng.integers(8))
      bodies[k] = bytes(b)
    elif mode == 4:  # a random body of the same or another length (table follows)
      k = int(rng.integers(n))
      size = len(bodies[k]) if rng.random() < 0.5 else int(rng.integers(0, 64))
      bodies[k] = rng.bytes(size)
    else:  # the coder section of a quantized body replaced by random model bytes
      k = int(rng.integers(n))
      b = bodies[k]
      cut = int(rng.integers(0, len(b) + 1))
      bodies[k] = b[:cut] + rng.bytes(int(rng.integers(0, 24)))
    if table is None:
      lengths = [len(b) for b in bodies]
      table = parsed.table(lambda k, f, v: lengths[k] if f == "length" else v)
    out.append((f"crafted{mode}", parsed.build(table, bodies, deflate=bool(len(out) % 2))))
  return out


def _check_decoded(out, data):
  """A crafted file that decodes must give arrays of the shapes and dtypes it declares."""
  rep = inspect(data, max_bytes=MAX_BYTES)
  flat = _flat(out) if isinstance(out, dict) else {(): (out.dtype.str, out.shape, None)}
  assert len(flat) == len(rep.leaves)
  for leaf in rep.leaves:
    assert leaf.num_params == int(np.prod(leaf.shape))


def test_fuzz_ten_thousand_cases(blob):
  """>= 10,000 cases: damage and rearranged records are all FormatError (0 silent
  changes); crafted files (checksum recomputed) decode to well-formed arrays or raise
  FormatError; never another exception; every case < 1 s; memory bounded."""
  rng = np.random.default_rng(2026)
  parsed = Parsed(blob)
  legacy = (pytest.importorskip("pathlib").Path(__file__).parent / "fixtures").joinpath(
    "lenet5_hemp.hemp"
  )
  legacy = legacy.read_bytes()  # a real version-2 file: damage it too
  must_fail = (
    _damaged(blob, rng, 3000)
    + _damaged(legacy, rng, 300)
    + _rearranged(parsed, rng, 1200, fix_crc=False)
  )
  may_decode = _rearranged(parsed, rng, 500, fix_crc=True) + _crafted(parsed, rng, 5200)
  assert len(must_fail) + len(may_decode) >= 10_000
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  stats = {"cases": 0, "format_error": 0, "decoded": 0, "silent": 0, "other": 0}
  worst = 0.0
  start = time.perf_counter()
  for expect_error, cases in ((True, must_fail), (False, may_decode)):
    for kind, data in cases:
      stats["cases"] += 1
      t = time.perf_counter()
      try:
        out = decompress(data, max_bytes=MAX_BYTES)
      except FormatError:
        stats["format_error"] += 1
      except Exception as e:  # pragma: no cover - what this test exists to catch
        stats["other"] += 1
        raise AssertionError(f"{kind}: {type(e).__name__}: {e}") from e
      else:
        stats["decoded"] += 1
        if expect_error:
          stats["silent"] += 1
          raise AssertionError(f"{kind}: damaged file decoded without an error")
        _check_decoded(out, data)
      dt = time.perf_counter() - t
      worst = max(worst, dt)
      assert dt < PER_CASE_SECONDS, (kind, dt)
  total = time.perf_counter() - start
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  print(f"\nfuzz: {stats}, worst case {1e3 * worst:.1f} ms, total {total:.1f} s")
  assert stats["silent"] == stats["other"] == 0
  assert stats["cases"] >= 10_000 and stats["format_error"] >= len(must_fail)
  assert rss - rss0 < MAX_RSS_GROWTH


def test_inspect_agrees_on_a_sample(blob):
  """inspect raises FormatError on the damaged cases too (it checks the same checksum)."""
  rng = np.random.default_rng(7)
  for _, data in _damaged(blob, rng, 300):
    with pytest.raises(FormatError):
      inspect(data)


def test_huge_declared_sizes_are_refused_before_allocating(blob):
  """A constant record may legitimately decode to much more than the file; max_bytes
  bounds it from the leaf table, before any allocation."""
  parsed = Parsed(blob)
  i = next(k for k, leaf in enumerate(parsed.leaves) if leaf["comps"] == ("flat",))
  parsed.leaves[i]["shape"] = [1 << 20, (1 << 10) + 1]  # 4 GiB + 4 MiB of float32
  data = parsed.build()
  t = time.perf_counter()
  with pytest.raises(FormatError, match="max_bytes"):
    decompress(data)
  assert time.perf_counter() - t < 0.1


def test_garbage_payload_behind_valid_models_is_bounded():
  """The range decoder on random words, for every model kind: symbols stay in range, no
  crash, no hang."""
  rng = np.random.default_rng(5)
  x = _markov(rng, 64, 32, 6)
  forced = [
    (lay, kind, m, period)
    for period in (1, 3)
    for lay, allow in context_models.allowed(x.shape, 6, period).items()
    for kind, m in allow
  ]
  for force in forced:
    try:
      coded = model_selection.encode(x, 6, force=force)
    except ValueError:
      continue
    for _ in range(20):
      garbage = rng.bytes(int(rng.integers(0, 64)))
      try:
        y = context_models.decode(Reader(coded.model + garbage), x.shape, 6)
        assert y.shape == x.shape and y.min() >= 0 and y.max() < 6
      except FormatError:
        pass
  coded = legacy.encode_symbols(x, 6)  # the legacy coder (versions 1-2)
  for _ in range(50):
    garbage = rng.bytes(int(rng.integers(0, 64)))
    try:
      y = legacy.decode_symbols(Reader(coded.model + garbage), x.shape, 6)
      assert y.shape == x.shape and y.min() >= 0 and y.max() < 6
    except FormatError:
      pass


@pytest.mark.parametrize("nu", [0, 2, 5])
def test_garbage_payload_behind_a_magnitude_model_is_bounded(nu):
  """The magnitude coder's decoder (quantized: nu = 0; dq trellises) on random payloads
  behind a valid model section: int32 levels of the leaf's shape, or FormatError."""
  rng = np.random.default_rng(11 + nu)
  shape = (30, 1, 24)
  spread = np.exp(rng.normal(0, 0.8, (30, 1, 1)) + rng.normal(0, 0.8, (1, 1, 24)))
  k = np.rint(rng.laplace(0, 4, shape) * spread).astype(np.int64)
  coded = magnitude.encode_leaf(k, [0, 1], dq=nu, limit_bits=float("inf"))
  assert coded is not None
  layout, section = coded
  r = Reader(section)
  magnitude.parse_model(r)
  model = section[: r.pos]
  for _ in range(50):
    garbage = rng.bytes(int(rng.integers(0, 64)))
    t = time.perf_counter()
    try:
      y = magnitude.decode_leaf(Reader(model + garbage), shape, layout, nu)
      assert y.shape == shape and y.dtype == np.int32
    except FormatError:
      pass
    assert time.perf_counter() - t < PER_CASE_SECONDS
  np.testing.assert_array_equal(magnitude.decode_leaf(Reader(section), shape, layout, nu), k)
