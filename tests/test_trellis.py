"""Dependent quantization (hemp_jax.codec.trellis): state machine, Viterbi, dq records."""

import itertools
import math
import zlib

import jax.numpy as jnp
import numpy as np
import pytest

from hemp_jax import cli, codec
from hemp_jax.codec import (
  FormatError,
  checkpoints,
  container,
  context_models,
  ptq,
  records,
  trellis,
)
from hemp_jax.codec.wire import Reader

BF16 = np.dtype(jnp.bfloat16)


def _next_state(s: int, parity: int, nu: int) -> int:
  """The machine of nu state bits, bit by bit from its polynomials (FORMAT.md): the
  reference of trellis.MACHINES."""
  h0, h1 = trellis.POLYNOMIALS[nu]
  bits = [(s >> (nu - i)) & 1 for i in range(1, nu + 1)] + [0]
  new = [bits[i] ^ ((h0 >> i) & 1 & bits[0]) ^ ((h1 >> i) & 1 & parity) for i in range(1, nu + 1)]
  return sum(b << (nu - i) for i, b in enumerate(new, 1))


def _sequential_states(k, valid, nu=2):
  """The state machine entry by entry (the reference of trellis.states)."""
  rows, width = k.shape
  out = np.empty((rows, width), np.uint8)
  for c in range(width):
    s = 0
    for t in range(rows):
      out[t, c] = s
      if valid[t, c]:
        s = _next_state(s, int(k[t, c]) & 1, nu)
  return out


def _objective(w, valid, k, delta, lam, rate, nu=2):
  """sum (w - j * delta)**2 + lam * rate[quantizer, k] over the valid entries (float64)."""
  q = _sequential_states(k, valid, nu) >> (nu - 1)
  j = 2 * k.astype(np.int64) - np.sign(k) * q
  cap = (rate.shape[1] - 1) // 2
  bits = rate.astype(np.float64)[q, np.clip(k, -cap, cap) + cap]
  return float((((w - j * delta) ** 2 + lam * bits) * valid).sum())


@pytest.mark.parametrize("nu", trellis.STATE_BITS)
def test_machines_follow_their_polynomials(nu):
  """Every state has two successors and two predecessors, both of the same quantizer; the
  4-state machine is VVC's."""
  m = trellis.MACHINES[nu]
  for s in range(1 << nu):
    assert [int(m.next[s, p]) for p in (0, 1)] == [_next_state(s, p, nu) for p in (0, 1)]
  for n in range(1 << nu):
    assert [int(m.next[m.pred[n, p], p]) for p in (0, 1)] == [n, n]
    assert m.pred[n, 0] >> (nu - 1) == m.pred[n, 1] >> (nu - 1)
  np.testing.assert_array_equal(trellis.MACHINES[2].next, [[0, 2], [2, 0], [1, 3], [3, 1]])


def _candidates(x, delta, q):
  """The levels the trellis considers for weight x in quantizer q: the two grid points of
  the quantizer around |x| and zero."""
  a, sign = abs(x) / delta, -1 if x < 0 else 1
  recon = (lambda k: 2 * k) if q == 0 else (lambda k: max(2 * k - 1, 0))
  k = 0
  while recon(k + 1) <= a:
    k += 1
  return {0, sign * k, sign * (k + 1)}


def _laplace(shape, seed=0, scale=0.05):
  return np.random.default_rng(seed).laplace(0, scale, shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (33, 5), (100, 1), (1, 40), (0, 4), (64, 9)])
def test_state_scan_equals_sequential_reference(shape):
  rng = np.random.default_rng(sum(shape))
  k = rng.integers(-6, 7, shape)
  for valid in (np.ones(shape, bool), rng.random(shape) < 0.7):
    np.testing.assert_array_equal(trellis.states(k, valid), _sequential_states(k, valid))
  np.testing.assert_array_equal(trellis.states(k), _sequential_states(k, np.ones(shape, bool)))


@pytest.mark.parametrize("shape", [(3000,), (50, 7), (7, 500), (3, 3, 5, 11), (5000, 3)])
def test_state_scan_on_the_walk_of_a_leaf(shape):
  """The walk's mask (entries beyond the last segment) is skipped like any other."""
  k = np.random.default_rng(3).integers(-4, 5, shape)
  for layout in range(len(context_models.layouts(shape))):
    y, valid = trellis.chains(k, layout)
    assert not valid.all() or y.size == k.size
    np.testing.assert_array_equal(trellis.states(y, valid), _sequential_states(y, valid))
    np.testing.assert_array_equal(trellis.unchain(y, shape, layout), k)


@pytest.mark.parametrize("nu", [2, 3, 5])
def test_viterbi_is_optimal_over_its_candidates(nu):
  """Exhaustive search over every path whose levels are candidates in their states'
  quantizers, on short chains with masks and random rate tables."""
  rng = np.random.default_rng(nu)
  delta, cap = 0.7, 6
  for _ in range(120 if nu == 2 else 40):
    rows = int(rng.integers(1, 6))
    w = rng.normal(0, 1.5, (rows, 2))
    valid = rng.random((rows, 2)) < 0.8
    lam = float(rng.uniform(0, 1))
    rate = rng.uniform(0.5, 6, (2, 2 * cap + 1)).astype(np.float32)
    k, st = trellis.viterbi(w, valid, delta, lam, rate, nu=nu)
    np.testing.assert_array_equal(st, _sequential_states(k, valid, nu))
    assert (k[~valid] == 0).all()
    best = 0.0
    for c in range(2):
      wc, vc = w[:, c : c + 1], valid[:, c : c + 1]
      opts = [
        sorted(_candidates(wc[t, 0], delta, 0) | _candidates(wc[t, 0], delta, 1))
        if vc[t, 0]
        else [0]
        for t in range(rows)
      ]
      col_best = math.inf
      for path in itertools.product(*opts):
        kk = np.array(path).reshape(rows, 1)
        s = _sequential_states(kk, vc, nu)
        if all(
          not vc[t, 0] or kk[t, 0] in _candidates(wc[t, 0], delta, s[t, 0] >> (nu - 1))
          for t in range(rows)
        ):
          col_best = min(col_best, _objective(wc, vc, kk, delta, lam, rate, nu))
      best += col_best
    assert _objective(w, valid, k, delta, lam, rate, nu) <= best + 1e-4


def _greedy(w, valid, delta, nu=2):
  """Each weight to its nearest reconstruction in its current state's quantizer (rows in
  a loop, chains across)."""
  rows, width = w.shape
  k = np.zeros((rows, width), np.int64)
  s = np.zeros(width, np.int64)
  for t in range(rows):
    a = np.abs(w[t]) / delta
    sign = np.where(w[t] < 0, -1, 1)
    q = s >> (nu - 1)
    k0 = np.floor(a / 2 + 0.5)  # Q0: the nearest of 0, 2, 4, ...
    k1 = np.where(a < 0.5, 0, np.floor((a + 1) / 2 + 0.5))  # Q1: of 0, 1, 3, 5, ...
    kt = (sign * np.where(q == 0, k0, k1)).astype(np.int64) * valid[t]
    k[t] = kt
    s = np.where(valid[t], trellis.MACHINES[nu].next[s, kt & 1], s)
  return k


@pytest.mark.parametrize("nu", [2, 5])
@pytest.mark.parametrize("shape", [(300, 200), (3, 3, 16, 32), (4000,), (9, 700)])
def test_trellis_never_worse_than_greedy_or_zero(shape, nu):
  """Never worse than rounding in each state's quantizer, nor than all zeros."""
  x = _laplace(shape, seed=len(shape))
  y, valid = trellis.chains(x)
  w = y.astype(np.float64)
  for delta in (0.004, 0.02, 0.08):
    lam = trellis.DQ_SLOPE * delta * delta
    cap = int(np.abs(w).max() / delta) // 2 + 3
    zeros = np.zeros((2, 2 * cap + 1), np.float32)
    k0, st0 = trellis.viterbi(w, valid, delta, 0.0, zeros, nu=nu)
    rate = trellis.rate_table(trellis.level_counts(k0, st0, valid, cap, nu=nu))
    k, st = trellis.viterbi(w, valid, delta, lam, rate, nu=nu)
    ours = _objective(w, valid, k, delta, lam, rate, nu)
    greedy = _objective(w, valid, _greedy(w, valid, delta, nu), delta, lam, rate, nu)
    zero = _objective(w, valid, np.zeros(w.shape, np.int64), delta, lam, rate, nu)
    assert ours <= greedy * (1 + 1e-6) and ours <= zero * (1 + 1e-6)
    assert ours < greedy  # strictly better on such tensors


def test_greedy_reference_is_nearest_in_each_quantizer():
  w = np.linspace(-5, 5, 2001)[:, None] * np.ones((1, 4))
  valid = np.ones(w.shape, bool)
  k = _greedy(w, valid, 1.0)
  st = _sequential_states(k, valid)
  j = 2 * k - np.sign(k) * (st >> 1)
  err = np.abs(w - j)
  grid = [np.arange(-6, 7) * 2, np.array([-5, -3, -1, 0, 1, 3, 5])]
  best = np.where(
    st >> 1, np.abs(w[..., None] - grid[1]).min(-1), np.abs(w[..., None] - grid[0]).min(-1)
  )
  np.testing.assert_allclose(err, best)


def _roundtrip(tree, specs, tmp_path):
  path = tmp_path / "dq.hemp"
  codec.compress_file(tree, path, codebooks=specs)
  blob = path.read_bytes()
  out = codec.decompress_file(path)
  assert codec.reencode(blob) == blob
  return blob, out


SHAPES = [(5000,), (3,), (2000, 3), (3, 2000), (3, 3, 16, 32), (5, 5, 1, 7), (1, 7, 1), (4, 4)]


@pytest.mark.parametrize("nu", [2, 5])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16, np.float64])
def test_dq_decode_is_bit_exact(shape, dtype, nu, tmp_path):
  x = _laplace(shape, seed=len(shape)).astype(dtype)
  fit = trellis.fit_step(x, 0.01, nu=nu)
  assert fit.values.dtype == x.dtype and fit.nu == nu
  blob, out = _roundtrip(
    {"w": x, "b": np.ones(3, np.float32)}, {"w": fit.spec, "b": None}, tmp_path
  )
  np.testing.assert_array_equal(out["w"].view(np.uint8), fit.values.view(np.uint8))
  # the decoded values are j * step of the trellis states
  k = fit.levels
  j = trellis.grid(k, 0, nu)
  np.testing.assert_array_equal(out["w"], trellis.values(j, fit.step, dtype))
  leaf = codec.inspect(blob).leaves[1]
  assert leaf.kind == "dq" and leaf.model.startswith("dq/L0" if nu == 2 else "dq32")


@pytest.mark.parametrize("nu", [2, 3, 5])
@pytest.mark.parametrize("shape", [(60, 50), (300, 40), (24, 16, 1, 3)])
@pytest.mark.parametrize("dtype", [np.float32, BF16])
def test_dq_magnitude_decode_is_bit_exact(shape, dtype, nu, tmp_path):
  """Scales changing by row and column: the magnitude coder codes the levels."""
  rng = np.random.default_rng(len(shape) + nu)
  spread = np.exp(rng.normal(0, 1.0, (shape[0],) + (1,) * (len(shape) - 1)))
  spread = spread * np.exp(rng.normal(0, 0.5, shape[-1]))
  x = (_laplace(shape, seed=nu) * spread).astype(dtype)
  layout = trellis.chain_layout(shape)
  fit = trellis.fit_step(x, 0.002, nu=nu, layout=layout)
  blob, out = _roundtrip({"w": x}, {"w": fit.spec}, tmp_path)
  np.testing.assert_array_equal(out["w"].view(np.uint8), fit.values.view(np.uint8))
  leaf = codec.inspect(blob).leaves[0]
  assert leaf.model.endswith(f"magnitude/L{layout}")
  spec = checkpoints.hemp_codebooks(blob)[1]["w"]
  assert (spec.nu, spec.layout) == (nu, layout)
  np.testing.assert_array_equal(spec.levels, fit.levels)


@pytest.mark.parametrize("layout", [0, 1])
def test_dq_layouts_one_level_and_empty_leaves(layout, tmp_path):
  rng = np.random.default_rng(7)
  shape = (40, 30)
  k = rng.integers(-9, 10, shape)
  tree = {
    "many": np.zeros(shape, np.float32),
    "one_odd": np.zeros(shape, np.float32),  # one level, odd: the states still cycle
    "one_even": np.zeros((7,), np.float16),
    "empty": np.zeros((0, 5), np.float32),
    "two": np.zeros((2, 2), np.float32),
  }
  specs = {
    "many": trellis.DQ(0.125, k, layout),
    "one_odd": trellis.DQ(0.5, np.full(shape, 3), layout),
    "one_even": trellis.DQ(0.5, np.full((7,), -2)),
    "empty": trellis.DQ(1.0, np.zeros((0, 5), np.int64)),
    "two": trellis.DQ(2.0, np.array([[1, -1], [0, 1]])),
  }
  blob, out = _roundtrip(tree, specs, tmp_path)
  for name, spec in specs.items():
    j = trellis.grid(spec.levels, spec.layout) if spec.levels.size else np.zeros(0)
    want = trellis.values(j, spec.step, tree[name].dtype).reshape(tree[name].shape)
    np.testing.assert_array_equal(out[name], want)
  assert set(np.unique(out["one_odd"] / 0.5)) == {5.0, 6.0}  # Q1: 2k - 1, Q0: 2k
  kinds = {leaf.path: (leaf.kind, leaf.model) for leaf in codec.inspect(blob).leaves}
  assert kinds["many"] == ("dq", f"dq/L{layout}")


def test_hemp_codebooks_keep_dq_leaves():
  x = _laplace((60, 40))
  tree = {"w": x, "u": _laplace((30, 20), seed=3), "b": np.ones(3, np.float32)}
  specs = {"w": trellis.fit_step(x, 0.01).spec, "u": np.linspace(-0.1, 0.1, 9), "b": None}
  blob = codec.compress(tree, specs)
  values, cbs = checkpoints.hemp_codebooks(blob)
  assert isinstance(cbs["w"], trellis.DQ) and cbs["b"] is None
  assert codec.compress(values, cbs) == blob


def test_dq_spec_and_record_limits():
  with pytest.raises(ValueError, match="positive"):
    trellis.DQ(0.0, np.zeros(3, np.int64))
  with pytest.raises(ValueError, match="integers"):
    trellis.DQ(1.0, np.zeros(3))
  x = np.zeros(4, np.float32)
  with pytest.raises(ValueError, match="shape"):
    codec.compress({"w": x}, {"w": trellis.DQ(1.0, np.zeros(5, np.int64))})
  with pytest.raises(ValueError, match="limits"):
    codec.compress({"w": x}, {"w": trellis.DQ(1.0, np.array([0, 1, 2, 1 << 21]))})
  with pytest.raises(ValueError, match="only float leaves"):
    codec.compress({"w": np.zeros(4, np.int32)}, {"w": trellis.DQ(1.0, np.zeros(4, np.int64))})


def test_fit_error_meets_every_bound_and_is_tight():
  rng = np.random.default_rng(11)
  outliers = _laplace((256, 64), seed=2)
  outliers.reshape(-1)[rng.choice(outliers.size, 20, replace=False)] = 2.5
  tensors = [
    _laplace((300, 200)),
    rng.normal(0, 0.1, (3, 3, 32, 64)).astype(np.float32),
    outliers,
    _laplace((50,), seed=4),
    _laplace((1000, 300), seed=5).astype(np.float16),
  ]
  for x in tensors:
    for target in (0.2, 0.064, 0.033):
      fit = trellis.fit_error(x, target)
      rel = ptq._exact_rel_error(x, fit.values)
      assert rel <= target
      if x.size > 1000:
        assert rel >= 0.95 * target, (x.shape, target, rel)


def test_dq_saves_over_ecsq_at_equal_error():
  """Files of one Laplacian tensor at the same error bound: dq at least 2.5% smaller."""
  flat = {"w": _laplace((400, 300), seed=9)}
  sizes = {}
  for method in ("ecsq", "dq"):
    values, cbs, res = ptq.quantize_tree(flat, method=method, max_rel_error=0.064)
    assert res[0].rel_error <= 0.064
    sizes[method] = len(codec.compress(values, cbs))
  assert sizes["dq"] < 0.975 * sizes["ecsq"], sizes


def test_quantize_tree_dq_targets():
  rng = np.random.default_rng(3)
  flat = {
    "a": _laplace((300, 200)),
    "b": rng.normal(0, 1, (3, 3, 16, 32)).astype(np.float32),
    "zeros": np.zeros((30, 30), np.float32),
    "const": np.full((20, 20), 0.3, np.float16),
    "bias": np.ones(10, np.float32),
  }
  values, cbs, res = ptq.quantize_tree(flat, method="dq", max_rel_error=0.05)
  by = {r.path: r for r in res}
  assert isinstance(cbs["a"], trellis.DQ) and isinstance(cbs["b"], trellis.DQ)
  assert cbs["bias"] is None and not by["bias"].quantized
  for p in ("zeros", "const"):  # one exact level
    np.testing.assert_array_equal(values[p], flat[p])
  assert all(r.rel_error <= 0.05 for r in res)
  out = codec.decompress(codec.compress(values, cbs))
  for p in flat:
    np.testing.assert_array_equal(np.asarray(out[p]).view(np.uint8), values[p].view(np.uint8))

  values, cbs, res = ptq.quantize_tree(flat, method="dq", bits_per_param=3.0)
  q = [r for r in res if r.quantized]
  bits = sum(r.est_bits for r in q) / sum(math.prod(r.shape) for r in q)
  assert 2.7 < bits < 3.3
  rep = codec.inspect(codec.compress(values, cbs))
  nq = rep.quantized_params
  assert 2.7 < 8 * sum(l.record_bytes for l in rep.leaves if l.kind != "float") / nq < 3.3

  _, cbs, res = ptq.quantize_tree(flat, method="dq", bits_per_param=1.0, max_rel_error=0.1)
  assert all(r.rel_error <= 0.1 for r in res)

  _, cbs, res = ptq.quantize_tree(flat, method="dq", step=0.01)
  assert cbs["a"].step == np.float32(0.01)

  with pytest.raises(ValueError, match="num_levels"):
    ptq.quantize_tree(flat, method="dq", num_levels=4)
  with pytest.raises(ValueError, match="zero level"):
    ptq.quantize_tree(flat, method="dq", max_rel_error=0.1, zero_level=False)


def test_cli_compress_method_dq(tmp_path, capsys):
  rng = np.random.default_rng(0)
  src = tmp_path / "p.npz"
  np.savez(src, **{"fc/kernel": rng.laplace(0, 0.05, (200, 100)).astype(np.float32)})
  out = tmp_path / "p.hemp"
  assert (
    cli.main(["compress", str(src), "-o", str(out), "--method", "dq", "--max-rel-error", "0.1"])
    == 0
  )
  assert "dq" in capsys.readouterr().out
  x = codec.decompress(out.read_bytes())["fc"]["kernel"]
  w = np.load(src)["fc/kernel"]
  assert np.linalg.norm(x - w) / np.linalg.norm(w) <= 0.1


# ------------------------------------------------------------------------------ fuzz


def _dq_blob():
  rng = np.random.default_rng(21)
  x = rng.laplace(0, 0.05, (40, 24)).astype(np.float32)
  scaled = x * np.exp(rng.normal(0, 1.0, (40, 1)) + rng.normal(0, 0.5, 24)).astype(np.float32)
  tree = {
    "dq": x,
    "narrow": rng.laplace(0, 0.05, (300, 3)).astype(np.float32),
    "one": np.zeros((5, 6), np.float32),
    "dq32": x,
    "magnitude": scaled,
  }
  specs = {
    "dq": trellis.fit_step(x, 0.02).spec,
    "narrow": trellis.fit_step(tree["narrow"], 0.01).spec,
    "one": trellis.DQ(0.25, np.full((5, 6), 1), 1),
    "dq32": trellis.fit_step(x, 0.02, nu=5).spec,
    "magnitude": trellis.fit_step(scaled, 0.004, nu=3).spec,
  }
  blob = codec.compress(tree, specs)
  models = {leaf.path: leaf.model for leaf in codec.inspect(blob).leaves}
  assert models["dq32"] == "dq32/L0" and models["magnitude"] == "dq8-magnitude/L0"
  return blob


def _with_crc(body: bytes) -> bytes:
  return body + zlib.crc32(body).to_bytes(4, "little")


def test_fuzzed_dq_records_raise_format_error_only():
  """Bit flips and truncations (checksum kept: all FormatError), and bit flips, random
  bytes and cuts inside the dq records with the checksum recomputed (FormatError, or a
  file that decodes to the shapes it declares); never another exception."""
  blob = _dq_blob()
  entries, _ = container.parse_header(blob, container.DEFAULT_MAX_ELEMENTS)
  spans = [(e.offset, e.offset + e.length) for e in entries]
  rng = np.random.default_rng(5)
  for i in range(600):
    b = bytearray(blob)
    if i % 2:
      for _ in range(int(rng.integers(1, 4))):
        j = int(rng.integers(len(b)))
        b[j] ^= 1 << int(rng.integers(8))
      data = bytes(b)
    else:
      data = blob[: int(rng.integers(0, len(blob)))]
    with pytest.raises(FormatError):
      codec.decompress(data)
  decoded = 0
  for i in range(1500):
    lo, hi = spans[i % len(spans)]
    body = bytearray(blob[:-4])
    mode = i % 3
    if mode == 0:
      for _ in range(int(rng.integers(1, 4))):
        j = int(rng.integers(lo, hi))
        body[j] ^= 1 << int(rng.integers(8))
      data = _with_crc(bytes(body))
    elif mode == 1:
      j = int(rng.integers(lo, hi))
      n = int(rng.integers(1, 6))
      body[j : j + n] = rng.bytes(n)[: max(0, min(n, hi - j))]
      data = _with_crc(bytes(body))
    else:  # a record cut short: the leaf table's length no longer matches
      data = _with_crc(bytes(body[: int(rng.integers(lo, hi))] + body[hi:]))
    try:
      out = codec.decompress(data)
    except FormatError:
      continue
    decoded += 1
    for e in entries:
      leaf = out[e.comps[0]]
      assert leaf.shape == e.shape and leaf.dtype == e.dtype
  assert decoded < 1500


def test_dq_kind_is_refused_by_files_of_versions_1_2():
  """A dq kind in a version-2 leaf table is an unknown type."""
  blob = _dq_blob()
  parsed, _ = container.parse_header(blob, container.DEFAULT_MAX_ELEMENTS)
  assert parsed[0].kind == 2 and parsed[1].kind == 3
  for kind in (2, 3):
    v2 = bytearray(b"HEMP\x02")
    table = container.leaf_table([(("w",), kind << 4, (3,), b"")])
    v2 += table + zlib.crc32(bytes(v2) + table).to_bytes(4, "little")
    with pytest.raises(FormatError, match="unknown type"):
      codec.decompress(bytes(v2))


@pytest.mark.parametrize("nu", [0, 1, 2, 7, 255])
def test_kind_3_records_name_a_larger_trellis(nu):
  """The state bits of a kind-3 record are 3 .. 6; anything else is a FormatError."""
  x = _laplace((20, 8))
  body = records.dq_body(x.shape, trellis.fit_step(x, 0.01, nu=3).spec)
  assert body[0] == 3
  records.decode_dq(Reader(body), x.dtype, x.shape, x.size, records.KIND_TRELLIS)
  with pytest.raises(FormatError, match="state bits"):
    records.decode_dq(Reader(bytes([nu]) + body[1:]), x.dtype, x.shape, x.size, 3)


def test_garbage_payload_behind_a_valid_dq_header_is_bounded():
  """The row-by-row decoder on random payloads: levels in range, or FormatError."""
  rng = np.random.default_rng(8)
  x = rng.laplace(0, 0.05, (64, 20)).astype(np.float32)
  spec = trellis.fit_step(x, 0.01).spec
  levels, compact = np.unique(spec.levels, return_inverse=True)
  layout = spec.layout
  section = trellis.encode_levels(compact.reshape(x.shape), levels, layout)
  r = Reader(section)
  trellis.parse_tables(r, levels.size)
  tables = section[: r.pos]
  for _ in range(200):
    garbage = rng.bytes(int(rng.integers(0, 64)))
    try:
      sym, quant = trellis.decode_levels(Reader(tables + garbage), x.shape, levels, layout)
    except FormatError:
      continue
    assert sym.shape == quant.shape == x.shape and sym.min() >= 0 and sym.max() < levels.size
    k = levels[sym]
    y, valid = trellis.chains(k, layout)
    in_q1 = trellis.unchain(trellis.states(y, valid) >> 1, x.shape, layout)
    np.testing.assert_array_equal(quant, in_q1.astype(bool))
