"""The entropy estimator against independent numpy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hemp_jax as hj
from hemp_jax import entropy as ent

MODES = [("disjoint", "block"), ("sliding", "block"), ("sliding", "conditional")]


def ngram_rate(idx, order, tuples, rate):
  """Exact n-gram entropy rate of an index stream with np.unique over tuples."""
  idx = np.asarray(idx).reshape(-1)
  m = idx.size
  if tuples == "disjoint":
    num = m // order
    tup = idx[: num * order].reshape(num, order)
  else:
    num = m - order + 1
    tup = np.stack([idx[i : i + num] for i in range(order)], axis=1)
  return _rate_of_tuples(tup, order, rate)


def _entropy_of_rows(rows):
  _, counts = np.unique(rows, axis=0, return_counts=True)
  p = counts / counts.sum()
  return float(-(p * np.log2(p)).sum())


def _rate_of_tuples(tup, order, rate):
  h = _entropy_of_rows(tup)
  if rate == "block":
    return h / order
  return h - (_entropy_of_rows(tup[:, :-1]) if order > 1 else 0.0)


def dense_reference(w, c, order, tuples):
  """The paper code's O(T K^n) formulation: full outer product of soft one-hots per tuple."""
  w = np.asarray(w, np.float64).reshape(-1)
  c = np.asarray(c, np.float64)
  num_levels = c.size
  pi = np.zeros((w.size, num_levels))
  for j, x in enumerate(w):
    if x <= c[0]:
      pi[j, 0] = 1
    elif x >= c[-1]:
      pi[j, -1] = 1
    else:
      k = np.searchsorted(c, x, side="right") - 1
      t = (x - c[k]) / (c[k + 1] - c[k])
      pi[j, k], pi[j, k + 1] = 1 - t, t
  m = w.size
  starts = range(0, m - order + 1, order) if tuples == "disjoint" else range(m - order + 1)
  hist = np.zeros((num_levels,) * order)
  for s in starts:
    outer = pi[s]
    for i in range(1, order):
      outer = np.multiply.outer(outer, pi[s + i])
    hist += outer
  return hist / hist.sum()


def _h(p):
  p = p[p > 0]
  return float(-(p * np.log2(p)).sum())


def dense_reference_rate(w, c, order, tuples, rate):
  p = dense_reference(w, c, order, tuples)
  if rate == "block":
    return _h(p) / order
  return _h(p) - (_h(p.sum(axis=-1)) if order > 1 else 0.0)


def snapped(rng, num_levels, size, skew=False):
  c = np.sort(rng.choice(np.linspace(-1, 1, 1000), size=num_levels, replace=False))
  c = c.astype(np.float32)
  if skew:
    probs = rng.dirichlet(np.full(num_levels, 0.3))
    idx = rng.choice(num_levels, size=size, p=probs)
  else:
    idx = rng.integers(0, num_levels, size=size)
  return c, idx, c[idx]


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("num_levels", [2, 3, 6, 16])
@pytest.mark.parametrize("tuples,rate", MODES)
def test_soft_equals_numpy_ngram_on_levels(order, num_levels, tuples, rate):
  rng = np.random.default_rng(order * 100 + num_levels)
  c, idx, w = snapped(rng, num_levels, 403, skew=num_levels > 3)
  expected = ngram_rate(idx, order, tuples, rate)
  soft = float(hj.soft_entropy(w, c, order, tuples, rate))
  exact = float(hj.empirical_entropy(idx, num_levels, order, tuples, rate))
  assert soft == pytest.approx(expected, abs=1e-5)
  assert exact == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("tuples,rate", MODES)
def test_soft_equals_dense_outer_product_off_levels(order, tuples, rate):
  rng = np.random.default_rng(7 + order)
  c = np.sort(rng.normal(size=5)).astype(np.float32)
  w = rng.normal(size=97).astype(np.float32) * 1.2  # some outside the range: clipped
  expected = dense_reference_rate(w, c, order, tuples, rate)
  assert float(hj.soft_entropy(w, c, order, tuples, rate)) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("tuples,rate", MODES)
def test_sparse_path_equals_dense_path(monkeypatch, order, tuples, rate):
  rng = np.random.default_rng(3)
  c = np.sort(rng.normal(size=6)).astype(np.float32)
  w = rng.normal(size=301).astype(np.float32)
  dense_val, dense_grad = jax.value_and_grad(lambda x: hj.soft_entropy(x, c, order, tuples, rate))(
    w
  )
  monkeypatch.setattr(ent, "DENSE_MAX_CELLS", 1)
  sparse_val, sparse_grad = jax.value_and_grad(
    lambda x: hj.soft_entropy(x, c, order, tuples, rate)
  )(w)
  assert float(sparse_val) == pytest.approx(float(dense_val), abs=1e-5)
  np.testing.assert_allclose(sparse_grad, dense_grad, atol=1e-5)


def test_sparse_path_large_cell_space_exact():
  # K^n = 256^4 = 2^32 cells: only the sparse path can hold this; check against numpy.
  rng = np.random.default_rng(11)
  c, idx, w = snapped(rng, 256, 2000)
  for tuples, rate in MODES:
    expected = ngram_rate(idx, 4, tuples, rate)
    assert float(hj.soft_entropy(w, c, 4, tuples, rate)) == pytest.approx(expected, abs=1e-5)
    assert float(hj.empirical_entropy(idx, 256, 4, tuples, rate)) == pytest.approx(
      expected, abs=1e-5
    )


@pytest.mark.parametrize("tuples,rate", MODES)
def test_chunked_histogram_equals_unchunked(tuples, rate):
  rng = np.random.default_rng(5)
  c = np.sort(rng.normal(size=6)).astype(np.float32)
  w = rng.normal(size=1000).astype(np.float32)
  f = lambda x, ce: hj.soft_entropy(x, c, 3, tuples, rate, chunk_entries=ce)
  v1, g1 = jax.value_and_grad(f)(w, 1 << 20)
  v2, g2 = jax.value_and_grad(f)(w, 64)  # 8 tuples per chunk, last chunk padded
  assert float(v2) == pytest.approx(float(v1), abs=1e-6)
  np.testing.assert_allclose(g2, g1, atol=1e-6)


def test_float32_histogram_keeps_its_mass_at_millions_of_weights():
  # Float32 scatter-adds into one table lose the small corner weights once the cells'
  # running sums are large; the estimator sums into several table copies per chunk.
  # At 4M weights one table per chunk was off by 4.5e-7 (relative); now ~1e-8.
  rng = np.random.default_rng(11)
  w = rng.normal(size=1 << 22).astype(np.float32)
  c = np.array([-4, -1.5, -0.5, 0.5, 1.5, 4], np.float32)
  v32 = float(jax.jit(lambda x: hj.soft_entropy(x, c, 3))(w))
  with jax.enable_x64(True):
    v64 = float(hj.soft_entropy(jnp.asarray(w, jnp.float64), jnp.asarray(c, jnp.float64), 3))
  assert abs(v32 - v64) / v64 < 1e-7


def _interior_weights(rng, c, size, margin=0.15):
  """Weights strictly inside level intervals, away from the boundaries."""
  k = rng.integers(0, len(c) - 1, size=size)
  t = rng.uniform(margin, 1 - margin, size=size)
  return c[k] + t * (c[k + 1] - c[k])


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("tuples,rate", MODES)
def test_gradient_matches_central_differences_float64(order, tuples, rate):
  with jax.enable_x64(True):
    rng = np.random.default_rng(order)
    c = np.array([-1.0, -0.4, 0.1, 0.5, 1.2])
    w = jnp.asarray(_interior_weights(rng, c, 40), jnp.float64)
    f = lambda x: hj.soft_entropy(x, jnp.asarray(c), order, tuples, rate)
    grad = np.asarray(jax.grad(f)(w))
    eps = 1e-6
    fd = np.empty(w.shape[0])
    for i in range(w.shape[0]):
      e = jnp.zeros_like(w).at[i].set(eps)
      fd[i] = (float(f(w + e)) - float(f(w - e))) / (2 * eps)
  assert np.abs(grad).max() > 1e-3
  np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("tuples,rate", MODES)
def test_jit_equals_eager(tuples, rate):
  rng = np.random.default_rng(1)
  c = jnp.asarray(np.sort(rng.normal(size=6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=500), jnp.float32)
  f = lambda x, cb: hj.soft_entropy(x, cb, 3, tuples, rate)
  eager_v, eager_g = jax.value_and_grad(f)(w, c)
  jit_v, jit_g = jax.jit(jax.value_and_grad(f))(w, c)
  assert float(jit_v) == pytest.approx(float(eager_v), abs=1e-6)
  np.testing.assert_allclose(jit_g, eager_g, atol=1e-6)


def _params_tree(rng):
  return {
    "conv": {
      "kernel": rng.normal(size=(3, 3, 4, 8)).astype(np.float32),
      "bias": rng.normal(size=(8,)).astype(np.float32),
    },
    "dense1": {"kernel": rng.normal(size=(50, 30)).astype(np.float32)},
    "dense2": {"kernel": rng.normal(size=(30, 10)).astype(np.float32)},
    "big": {"kernel": rng.normal(size=(40, 70)).astype(np.float32)},
  }


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("tuples,rate", MODES)
def test_tree_vmapped_equals_loop_over_groups(order, tuples, rate):
  rng = np.random.default_rng(order)
  params = _params_tree(rng)
  codebooks = hj.fit_codebooks(params, 4, min_size=41)
  assert codebooks["conv"]["bias"] is None
  names, rates, sizes = hj.tree_group_rates(
    params, codebooks, order=order, tuples=tuples, rate=rate
  )
  loop = {}
  for path in ["conv/kernel", "dense1/kernel", "dense2/kernel", "big/kernel"]:
    a, b = path.split("/")
    loop[path] = float(
      hj.soft_entropy(hj.scan_stream(params[a][b]), codebooks[a][b], order, tuples, rate)
    )
  assert sorted(names) == sorted(loop)
  for name, r in zip(names, rates):
    assert float(r) == pytest.approx(loop[name], abs=1e-5)
  sizes_by = dict(zip(names, sizes))
  expected = sum(loop[n] * sizes_by[n] for n in names) / sum(sizes)
  total = hj.tree_entropy(params, codebooks, order=order, tuples=tuples, rate=rate)
  assert float(total) == pytest.approx(expected, abs=1e-5)
  jitted = jax.jit(lambda p, cb: hj.tree_entropy(p, cb, order=order, tuples=tuples, rate=rate))(
    params, codebooks
  )
  assert float(jitted) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("tuples,rate", MODES)
def test_tree_global_pool_equals_pooled_ngram(order, tuples, rate):
  rng = np.random.default_rng(order + 20)
  params = _params_tree(rng)
  codebooks = hj.fit_codebooks(params, 4, min_size=41)
  # Snap to levels: pooled soft rate == exact n-gram of the pooled per-group tuples.
  snapped_params = jax.tree.map(
    lambda cb, x: x if cb is None else np.asarray(hj.quantize(x, cb)),
    codebooks,
    params,
    is_leaf=lambda x: x is None,
  )
  tups = []
  for cb, x in [
    (codebooks[a]["kernel"], snapped_params[a]["kernel"])
    for a in ["conv", "dense1", "dense2", "big"]
  ]:
    idx = np.asarray(hj.quantize_indices(hj.scan_stream(x), cb))
    if tuples == "disjoint":
      num = idx.size // order
      tups.append(idx[: num * order].reshape(num, order))
    else:
      num = idx.size - order + 1
      tups.append(np.stack([idx[i : i + num] for i in range(order)], axis=1))
  expected = _rate_of_tuples(np.concatenate(tups), order, rate)
  got = hj.tree_entropy(
    snapped_params, codebooks, order=order, tuples=tuples, rate=rate, pool="global"
  )
  assert float(got) == pytest.approx(expected, abs=1e-5)


def test_tree_global_sparse_equals_dense(monkeypatch):
  rng = np.random.default_rng(4)
  params = _params_tree(rng)
  codebooks = hj.fit_codebooks(params, 4, min_size=41)
  f = lambda p: hj.tree_entropy(
    p, codebooks, order=2, tuples="sliding", rate="conditional", pool="global"
  )
  v1, g1 = jax.value_and_grad(f)(params)
  monkeypatch.setattr(ent, "DENSE_MAX_CELLS", 1)
  v2, g2 = jax.value_and_grad(f)(params)
  assert float(v2) == pytest.approx(float(v1), abs=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_tree_gradient_flows_only_to_quantized_leaves():
  rng = np.random.default_rng(0)
  params = _params_tree(rng)
  codebooks = hj.fit_codebooks(params, 4, min_size=41)
  g = jax.grad(lambda p: hj.tree_entropy(p, codebooks, order=2))(params)
  assert np.all(np.asarray(g["conv"]["bias"]) == 0)
  assert np.abs(np.asarray(g["big"]["kernel"])).sum() > 0


@pytest.mark.parametrize("method", ["uniform", "lloyd_max"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_constant_tensor_has_zero_bits(method, order):
  params = {"w": np.full((20, 30), 0.37, np.float32)}
  codebooks = hj.fit_codebooks(params, 4, method=method)
  for tuples, rate in MODES:
    assert float(
      hj.tree_entropy(params, codebooks, order=order, tuples=tuples, rate=rate)
    ) == pytest.approx(0.0, abs=1e-6)
    assert float(
      hj.soft_entropy(params["w"], codebooks["w"], order, tuples, rate)
    ) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("num_levels", [2, 4, 9])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_entropy_never_exceeds_log2_k(num_levels, order):
  rng = np.random.default_rng(num_levels * order)
  w = rng.uniform(-1, 1, size=5000).astype(np.float32)
  c = hj.uniform_codebook(w, num_levels)
  for tuples, rate in MODES:
    h = float(hj.soft_entropy(w, c, order, tuples, rate))
    assert 0 <= h <= np.log2(num_levels) + 1e-6
  # uniform i.i.d. symbols reach close to the bound at order 1
  idx = rng.integers(0, num_levels, size=20000)
  assert float(hj.empirical_entropy(idx, num_levels)) == pytest.approx(
    np.log2(num_levels), abs=0.01
  )


def test_bad_inputs_raise_clear_errors():
  c = np.array([-1.0, 0.0, 1.0], np.float32)
  w = np.zeros(10, np.float32)
  with pytest.raises(ValueError, match="order"):
    hj.soft_entropy(w, c, order=0)
  with pytest.raises(ValueError, match="at least 2 levels"):
    hj.soft_entropy(w, np.array([0.0], np.float32))
  with pytest.raises(ValueError, match="sorted"):
    hj.soft_entropy(w, np.array([1.0, 0.0], np.float32))
  with pytest.raises(ValueError, match="duplicate"):
    hj.soft_entropy(w, np.array([0.0, 0.0, 1.0], np.float32))
  with pytest.raises(ValueError, match="NaN or Inf"):
    hj.soft_entropy(np.array([0.0, np.nan, 1.0], np.float32), c)
  with pytest.raises(ValueError, match="NaN or Inf"):
    hj.soft_entropy(w, np.array([0.0, np.inf], np.float32))
  with pytest.raises(ValueError, match="longer than"):
    hj.soft_entropy(np.zeros(3, np.float32), c, order=4, tuples="sliding")
  with pytest.raises(ValueError, match="tuples"):
    hj.soft_entropy(w, c, tuples="overlapping")
  with pytest.raises(ValueError, match="sliding"):
    hj.soft_entropy(w, c, order=2, tuples="disjoint", rate="conditional")
  with pytest.raises(ValueError, match="out of range"):
    hj.empirical_entropy(np.array([0, 3]), 3)
  with pytest.raises(ValueError, match="longer than"):
    hj.tree_entropy({"a": np.zeros(2, np.float32)}, {"a": c}, order=3, tuples="sliding")
  with pytest.raises(ValueError, match="pool"):
    hj.tree_entropy({"a": w}, {"a": c}, pool="layer")
  with pytest.raises(ValueError, match="same number of levels"):
    hj.tree_entropy(
      {"a": w, "b": w}, {"a": c, "b": np.array([0.0, 1.0], np.float32)}, pool="global"
    )
  with pytest.raises(ValueError, match="no quantized groups"):
    hj.tree_entropy({"a": w}, {"a": None})


def test_scan_stream_round_trip_and_order():
  x = np.arange(2 * 3 * 4).reshape(2, 3, 4)
  s = np.asarray(hj.scan_stream(x))
  # output unit (last axis) major: the first 6 entries are unit 0's fan-in.
  np.testing.assert_array_equal(s[:6], x[..., 0].reshape(-1))
  np.testing.assert_array_equal(hj.unscan_stream(s, x.shape), x)
  np.testing.assert_array_equal(hj.unscan_stream(hj.scan_stream(x[0, 0]), (4,)), x[0, 0])
