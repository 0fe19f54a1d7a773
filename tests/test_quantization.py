"""Codebook fitters and scalar quantization."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hemp_jax as hj


@pytest.fixture
def weights():
  return np.random.default_rng(0).normal(scale=0.05, size=20000).astype(np.float32)


def test_uniform_codebook_spans_range(weights):
  c = np.asarray(hj.uniform_codebook(weights, 5))
  assert c.shape == (5,)
  assert c[0] == pytest.approx(weights.min()) and c[-1] == pytest.approx(weights.max())
  np.testing.assert_allclose(np.diff(c), (weights.max() - weights.min()) / 4, rtol=1e-5)


@pytest.mark.parametrize("n", [2, 3, 4, 7, 16])
def test_uniform_zero_level_is_exact_and_covers_range(weights, n):
  c = np.asarray(hj.uniform_codebook(weights, n, zero_level=True))
  assert c.shape == (n,)
  assert 0.0 in c and np.all(np.isfinite(c))
  if n > 2:  # two levels with an exact zero cannot cover weights of both signs
    assert c[0] <= weights.min() + 1e-7 and c[-1] >= weights.max() - 1e-7
  else:
    assert max(-c[0], c[-1]) >= max(-weights.min(), weights.max()) - 1e-7
  np.testing.assert_allclose(np.diff(c), np.diff(c)[0], rtol=1e-5)
  # positive-only weights put zero at the bottom
  cp = np.asarray(hj.uniform_codebook(np.abs(weights), n, zero_level=True))
  assert cp[0] == 0.0


def test_uniform_step_mode(weights):
  c = np.asarray(hj.uniform_codebook(weights, step=0.05))
  np.testing.assert_allclose(c / 0.05, np.round(c / 0.05), atol=1e-5)
  assert c[0] <= weights.min() and c[-1] >= weights.max()
  assert 0.0 in np.round(c, 7)
  with pytest.raises(ValueError, match="num_levels"):
    hj.uniform_codebook(weights, 3, step=0.05)


def test_guard_levels(weights):
  c = np.asarray(hj.uniform_codebook(weights, 4, guard_levels=True))
  assert c.shape == (6,)
  assert c[0] < weights.min() and c[-1] > weights.max()
  assert c[1] - c[0] == pytest.approx(c[2] - c[1], rel=1e-5)
  lm = np.asarray(hj.lloyd_max_codebook(weights, 4, guard_levels=True))
  assert lm.shape == (6,) and np.all(np.diff(lm) > 0)


def test_lloyd_mse_never_increases_and_beats_uniform(weights):
  mses = [
    float(hj.quantization_mse(weights, hj.lloyd_max_codebook(weights, 6, num_iters=i)))
    for i in range(0, 30)
  ]
  assert all(b <= a * (1 + 1e-6) for a, b in zip(mses, mses[1:]))
  assert mses[-1] < 0.5 * mses[0]  # iteration 0 is the uniform codebook


def test_lloyd_converges_to_centroid_condition(weights):
  c = np.asarray(hj.lloyd_max_codebook(weights, 5, num_iters=200), np.float64)
  idx = np.asarray(hj.quantize_indices(weights, c))
  for k in range(5):
    assert c[k] == pytest.approx(weights[idx == k].astype(np.float64).mean(), rel=1e-4)


def test_lloyd_is_deterministic_and_jittable(weights):
  a = hj.lloyd_max_codebook(weights, 6)
  b = hj.lloyd_max_codebook(weights, 6)
  c = jax.jit(hj.lloyd_max_codebook, static_argnums=1)(weights, 6)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-8)


def test_lloyd_gaussian_matches_known_levels():
  # Lloyd-Max levels of N(0, 1) for N = 4: +-0.4528, +-1.5104 (Max 1960).
  w = np.random.default_rng(1).normal(size=200000).astype(np.float32)
  c = np.asarray(hj.lloyd_max_codebook(w, 4, method="gaussian", num_iters=200))
  np.testing.assert_allclose(np.abs(c), [1.5104, 0.4528, 0.4528, 1.5104], atol=0.01)


@pytest.mark.parametrize(
  "fit",
  [
    lambda w: hj.uniform_codebook(w, 4),
    lambda w: hj.lloyd_max_codebook(w, 4),
    lambda w: hj.uniform_codebook(w, 4, zero_level=True),
    lambda w: hj.lloyd_max_codebook(w, 3, method="gaussian"),
  ],
)
def test_constant_tensor_gets_valid_codebook_with_value_on_a_level(fit):
  w = np.full(100, -0.25, np.float32)
  c = np.asarray(fit(w))
  hj.validate_codebook(c)
  assert np.min(np.abs(c - (-0.25))) < 1e-6


def test_quantize_indices_is_nearest_level(weights):
  c = hj.lloyd_max_codebook(weights, 7)
  idx = np.asarray(hj.quantize_indices(weights, c))
  brute = np.argmin(np.abs(weights[:, None] - np.asarray(c)[None, :]), axis=1)
  np.testing.assert_array_equal(idx, brute)
  assert idx.dtype == np.int32
  np.testing.assert_array_equal(hj.dequantize(idx, c), np.asarray(c)[idx])
  np.testing.assert_array_equal(hj.quantize(weights, c), np.asarray(c)[idx])


def test_quantize_keeps_shape_and_handles_ties():
  c = np.array([0.0, 1.0, 2.0], np.float32)
  w = np.array([[0.5, 1.5], [-3.0, 9.0]], np.float32)
  np.testing.assert_array_equal(hj.quantize_indices(w, c), [[0, 1], [0, 2]])


def test_straight_through_gradient_is_identity():
  c = np.array([-1.0, 0.0, 1.0], np.float32)
  w = jnp.array([0.2, -0.7, 0.9])
  y, g = jax.value_and_grad(lambda x: jnp.sum(hj.quantize_ste(x, c) * jnp.arange(3.0)))(w)
  np.testing.assert_allclose(g, [0.0, 1.0, 2.0])
  assert float(y) == pytest.approx(0 * 0 + 1 * -1 + 2 * 1)


def test_bad_codebooks_and_inputs():
  w = np.zeros(10, np.float32)
  with pytest.raises(ValueError, match="num_levels must be >= 2"):
    hj.uniform_codebook(w, 1)
  with pytest.raises(ValueError, match="num_levels must be >= 2"):
    hj.lloyd_max_codebook(w, 1)
  with pytest.raises(ValueError, match="NaN or Inf"):
    hj.lloyd_max_codebook(np.array([0.0, np.nan]), 2)
  with pytest.raises(ValueError, match="empty"):
    hj.uniform_codebook(np.zeros(0), 2)
  with pytest.raises(ValueError, match="sorted"):
    hj.quantize_indices(w, np.array([1.0, 0.0]))
  with pytest.raises(ValueError, match="1-D"):
    hj.quantize_indices(w, np.zeros((2, 2)))
  with pytest.raises(ValueError, match="out of range"):
    hj.dequantize(np.array([0, 5]), np.array([0.0, 1.0]))
  with pytest.raises(ValueError, match="method"):
    hj.lloyd_max_codebook(w, 2, method="kmeans")


def test_fit_codebooks_selection():
  rng = np.random.default_rng(0)
  params = {
    "a": {"kernel": rng.normal(size=(10, 10)).astype(np.float32), "bias": np.zeros(10, np.float32)},
    "b": {"kernel": rng.normal(size=(30, 2)).astype(np.float32)},
    "steps": np.arange(100),
  }
  cbs = hj.fit_codebooks(params, 4)  # paper threshold: > 10 N = 40 elements
  assert cbs["a"]["bias"] is None and cbs["steps"] is None
  assert cbs["a"]["kernel"].shape == (6,) and cbs["b"]["kernel"].shape == (6,)
  cbs = hj.fit_codebooks(params, 4, exclude=r"^b/", guard_levels=False, method="lloyd_max")
  assert cbs["b"]["kernel"] is None and cbs["a"]["kernel"].shape == (4,)
  cbs = hj.fit_codebooks(params, 4, include=r"kernel", min_size=1)
  assert cbs["a"]["bias"] is None and cbs["b"]["kernel"] is not None
