"""The large-alphabet magnitude model (hemp_jax.codec.magnitude): bit-exact round trips,
the dq state bit, estimates, and malformed bytes (FormatError only, bounded time)."""

import time
import zlib

import numpy as np
import pytest

from hemp_jax.codec import magnitude as mg
from hemp_jax.codec import records, trellis
from hemp_jax.codec.context_models import segment_rows, walked
from hemp_jax.codec.wire import FormatError, Reader, write_varint, zigzag

PER_CASE_SECONDS = 1.0  # loose: the machine is shared


def _levels(rng, shape, kind):
  """Signed levels of a few kinds (scales changing by row and column, as in weights)."""
  rows, cols = shape
  if kind == "zeros":
    return np.zeros(shape, np.int64)
  if kind == "one":
    x = np.zeros(shape, np.int64)
    x[rng.integers(rows), rng.integers(cols)] = -3
    return x
  if kind == "huge":  # the whole int16 range: an alphabet of 2**16
    return rng.integers(-32768, 32768, shape)
  if kind == "mixed":  # mostly small, a few huge
    x = np.rint(rng.laplace(0, 2, shape)).astype(np.int64)
    far = rng.random(shape) < 0.02
    return np.where(far, rng.integers(-32767, 32768, shape), x)
  if kind == "extreme":
    x = rng.integers(-2, 3, shape)
    x.reshape(-1)[:: max(1, x.size // 3)] = mg.MAX_MAGNITUDE
    x.reshape(-1)[0] = -mg.MAX_MAGNITUDE
    return x
  scale = np.exp(rng.normal(0, 0.7, (rows, 1)) + rng.normal(0, 0.7, (1, cols)))
  return np.rint(rng.laplace(0, 4, shape) * scale).astype(np.int64)


SHAPES = [(1, 1), (1, 13), (17, 1), (5, 7), (37, 23), (130, 3), (64, 97), (5000, 3)]
KINDS = ["weights", "zeros", "one", "huge", "mixed", "extreme"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_matrix_round_trip(shape, kind):
  rng = np.random.default_rng(zlib.crc32(repr((shape, kind)).encode()))
  x = _levels(rng, shape, kind)
  enc = mg.encode_matrix(x)
  got = mg.decode_matrix(enc.model, enc.payload, *shape)
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (11, 1), (29, 31), (200, 57)])
def test_masked_round_trip(shape):
  """Any validity mask (no geometry): entries outside it decode as 0."""
  rng = np.random.default_rng(shape[0] * 1000 + shape[1])
  y = _levels(rng, shape, "weights")
  for density in (0.0, 0.3, 1.0):
    valid = rng.random(shape) < density
    enc = mg.encode(y, valid)
    got = mg.decode(enc.model, enc.payload, shape, valid)
    np.testing.assert_array_equal(got, np.where(valid, y, 0))


@pytest.mark.parametrize("dq", [False, True])
def test_walked_geometry_with_segments(dq):
  """A tall matrix walked in segments: the geometry maps scales to its rows; dq chains
  are the walked columns."""
  rows, cols = 5000, 3
  seg_t, s = segment_rows(rows, cols)
  assert s > 1 and (s - 1) * seg_t < rows < s * seg_t  # a ragged last segment
  x = _levels(np.random.default_rng(5), (rows, cols), "weights")
  y, _, _ = walked(x)
  enc = mg.encode(y, geometry=(rows, cols), dq=dq, scales=(True, True))
  assert mg.parse_model(Reader(enc.model)).row_scales is not None
  got = mg.decode(enc.model, enc.payload, y.shape, geometry=(rows, cols))
  np.testing.assert_array_equal(got, y)


@pytest.mark.parametrize(
  "options",
  [
    dict(scales=(False, False)),
    dict(scales=(True, False)),
    dict(scales=(False, True)),
    dict(scales=(True, True), contexts=1),
    dict(scales=(True, True), contexts=mg.MAX_SCALE_CONTEXTS),
    dict(direct=1),
    dict(direct=mg.MAX_DIRECT),
    dict(beta_index=0),
    dict(beta_index=len(mg.BETAS) - 1),
  ],
)
@pytest.mark.parametrize("dq", [False, True])
def test_forced_options_round_trip(options, dq):
  x = _levels(np.random.default_rng(7), (90, 41), "mixed")
  enc = mg.encode_matrix(x, dq=dq, **options)
  info = mg.parse_model(Reader(enc.model))
  assert info.dq == dq
  np.testing.assert_array_equal(mg.decode_matrix(enc.model, enc.payload, 90, 41), x)


def test_dq_states():
  """The state machine of dependent quantization, per column, 0 at each chain start."""
  mag = np.array([[1, 0], [1, 2], [0, 1], [3, 0]])
  valid = np.ones(mag.shape, bool)
  # column 0: parities 1,1,0 -> states 0, 2, 3, 3 ... NEXT[0][1]=2, [2][1]=3, [3][0]=3
  # column 1: parities 0,0,1 -> states 0, 0, 0, 2
  np.testing.assert_array_equal(trellis.states(mag, valid), [[0, 0], [2, 0], [3, 0], [3, 2]])
  valid[1, 0] = False  # an invalid entry leaves the state as it is
  np.testing.assert_array_equal(trellis.states(mag, valid)[:, 0], [0, 2, 2, 1])


def test_dq_context_pays_on_dq_like_levels():
  """Levels whose zero probability depends on the trellis state: the dq bit finds it."""
  rng = np.random.default_rng(3)
  rows, cols = 400, 64
  x = np.zeros((rows, cols), np.int64)
  state = np.zeros(cols, np.int64)
  for r in range(rows):
    zero = rng.random(cols) < np.where(state >= 2, 0.05, 0.7)
    x[r] = np.where(zero, 0, rng.integers(1, 6, cols) * rng.choice([-1, 1], cols))
    state = trellis.NEXT[state, np.abs(x[r]) & 1]
  plain = mg.encode_matrix(x)
  dq = mg.encode_matrix(x, dq=True)
  assert len(dq.payload) < 0.9 * len(plain.payload)
  np.testing.assert_array_equal(mg.decode_matrix(dq.model, dq.payload, rows, cols), x)


@pytest.mark.parametrize("kind", ["weights", "mixed", "huge"])
def test_estimate_is_close_to_the_payload(kind):
  x = _levels(np.random.default_rng(11), (300, 200), kind)
  for dq in (False, True):
    enc = mg.encode_matrix(x, dq=dq)
    real = 8 * len(enc.payload)
    assert abs(real - enc.estimated_bits) <= 0.002 * real + 64


def test_reader_api_and_payload_from_reader():
  x = _levels(np.random.default_rng(2), (40, 30), "weights")
  enc = mg.encode_matrix(x)
  seg_t, s = segment_rows(40, 30)
  r = Reader(b"\x07" + enc.model + enc.payload, pos=1)
  got = mg.decode(r, None, (seg_t, s * 30), geometry=(40, 30))
  np.testing.assert_array_equal(got, x)


def test_encoder_input_errors():
  with pytest.raises(ValueError, match="cannot be coded"):
    mg.encode_matrix(np.array([[mg.MAX_MAGNITUDE + 1, 0]]))
  with pytest.raises(ValueError, match="does not match"):
    mg.encode(np.zeros((3, 4), np.int64), geometry=(5, 5))
  with pytest.raises(ValueError):
    mg.encode_matrix(np.zeros((3, 4), np.int64), direct=0)
  with pytest.raises(ValueError, match="matrix of ints"):
    mg.encode(np.zeros((3, 4), np.float32))


def _model_bytes(flags=0x18, direct=8, escapes=3, contexts=16, offset=0, scales=()):
  out = bytearray([flags])
  for v in (direct, escapes, contexts, zigzag(offset)):
    write_varint(out, v)
  for low, span in scales:
    write_varint(out, zigzag(low))
    write_varint(out, span - 1)
  return bytes(out)


@pytest.mark.parametrize(
  "kw, message",
  [
    (dict(flags=0x58), "unknown bits"),
    (dict(direct=0), "direct symbols"),
    (dict(direct=mg.MAX_DIRECT + 1), "direct symbols"),
    (dict(escapes=mg.MAX_ESCAPES + 1), "escape classes"),
    (dict(direct=1, escapes=0), "fewer than 2"),
    (dict(contexts=0), "scale contexts"),
    (dict(contexts=mg.MAX_SCALE_CONTEXTS + 1), "scale contexts"),
    (dict(offset=mg.MAX_OFFSET + 1), "context offset"),
    (dict(flags=0x19, scales=[(0, mg.MAX_SCALE_SPAN + 1)]), "scale span"),
    (dict(flags=0x19), "truncated"),
  ],
)
def test_bad_model_sections(kw, message):
  with pytest.raises(FormatError, match=message):
    mg.decode(_model_bytes(**kw), b"", (4, 4))


def test_trailing_model_bytes():
  with pytest.raises(FormatError, match="trailing"):
    mg.decode(_model_bytes() + b"\x00", b"", (4, 4))


def _fuzz_cases(rng, model: bytes, payload: bytes, n: int):
  """Damaged (model, payload) pairs: bit flips, truncations, random bytes."""
  for i in range(n):
    m, p = bytearray(model), bytearray(payload)
    kind = i % 5
    if kind == 0 and m:
      pos = rng.integers(len(m) * 8)
      m[pos // 8] ^= 1 << (pos % 8)
    elif kind == 1 and p:
      for _ in range(rng.integers(1, 4)):
        pos = rng.integers(len(p) * 8)
        p[pos // 8] ^= 1 << (pos % 8)
    elif kind == 2:
      m = m[: rng.integers(len(m) + 1)]
    elif kind == 3:
      p = p[: rng.integers(len(p) + 1)]
    else:
      m = bytearray(rng.integers(0, 256, rng.integers(1, 12)).astype(np.uint8).tobytes())
      p = bytearray(rng.integers(0, 256, rng.integers(0, 64)).astype(np.uint8).tobytes())
    yield bytes(m), bytes(p)


@pytest.mark.parametrize("dq", [False, True])
def test_fuzzed_bytes_raise_format_error_only(dq):
  rng = np.random.default_rng(99 + dq)
  shape = (120, 37)
  x = _levels(rng, shape, "mixed")
  enc = mg.encode_matrix(x, dq=dq)
  seg_t, s = segment_rows(*shape)
  outcomes = {"ok": 0, "error": 0}
  for m, p in _fuzz_cases(rng, enc.model, enc.payload, 300):
    t0 = time.perf_counter()
    try:
      got = mg.decode(m, p, (seg_t, s * shape[1]), geometry=shape)
    except FormatError:
      outcomes["error"] += 1
    else:
      assert got.shape == (seg_t, s * shape[1]) and got.dtype == np.int32
      outcomes["ok"] += 1
    assert time.perf_counter() - t0 < PER_CASE_SECONDS
  assert outcomes["error"] > 50  # the model section's checks catch most damage


# ------------------------------------------------------------------- in .hemp files


def _scaled_levels(rng, shape, spread=1.0):
  rows, cols = shape
  scale = np.exp(rng.normal(0, spread, (rows, 1)) + rng.normal(0, spread / 2, (1, cols)))
  return rng.laplace(0, 1, shape) * scale


@pytest.mark.parametrize("levels", [16, 64, 65, 4096, 1 << 16])
def test_quantized_leaves_of_up_to_65536_levels_round_trip(levels):
  """The magnitude coder in quantized records (coder kind 3): symbols coded as offsets
  from the level nearest zero, at any codebook size the format allows."""
  from hemp_jax import codec

  rng = np.random.default_rng(levels)
  half = levels // 2
  k = np.clip(np.rint(_scaled_levels(rng, (120, 90)) * max(2, half / 16)), 1 - half, half - 1)
  cb = (np.arange(levels) - half).astype(np.float32) * np.float32(0.01)
  x = cb[k.astype(np.int64) + half]  # on the grid: the decoded leaf is x itself
  blob = codec.compress({"w": x}, {"w": cb})
  leaf = codec.inspect(blob).leaves[0]
  assert leaf.model.startswith("magnitude/") and leaf.levels == levels
  np.testing.assert_array_equal(codec.decompress(blob)["w"], x)
  assert codec.reencode(blob) == blob


def test_zero_level_is_the_level_nearest_zero():
  assert records.zero_level(np.array([-3.0, -1.0, 1.0, 2.0])) == 1  # the first of equals
  assert records.zero_level(np.array([0.5, 1.0, 2.0])) == 0  # no zero level
  assert records.zero_level(np.array([np.nan, 4.0, -np.inf])) == 1  # NaN counts as inf
  assert records.zero_level(np.array([np.nan, np.nan])) == 0


def test_magnitude_sections_are_taken_only_where_they_save():
  """The record keeps today's coder unless the magnitude coder saves LEAF_MIN_GAIN."""
  from hemp_jax import codec

  rng = np.random.default_rng(3)
  flat = rng.laplace(0, 1, (200, 60)).astype(np.float32)  # no scale structure
  cb = np.linspace(-6, 6, 25).astype(np.float32)
  blob = codec.compress({"w": flat}, {"w": cb})
  assert not codec.inspect(blob).leaves[0].model.startswith("magnitude")
