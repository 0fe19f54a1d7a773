"""Post-training quantization (hemp_jax.codec.ptq): fits on sorted prefix sums, ECSQ, targets."""

import math

import numpy as np
import pytest

from hemp_jax import codec
from hemp_jax.codec import checkpoints, ptq, scalar


def _laplace(shape, seed=0, scale=0.05):
  return np.random.default_rng(seed).laplace(0, scale, shape).astype(np.float32)


def _with_outliers(shape, seed=0, frac=0.001, sigmas=50.0):
  rng = np.random.default_rng(seed)
  x = rng.laplace(0, 0.05, shape).astype(np.float32)
  sigma = float(x.std())
  m = max(1, int(frac * x.size))
  pos = rng.choice(x.size, m, replace=False)
  x.reshape(-1)[pos] = (sigmas * sigma * rng.choice([-1.0, 1.0], m)).astype(np.float32)
  return x, pos


def _direct(x, fit):
  """Independent assignment: brute-force nearest level, its squared error and counts."""
  w = x.reshape(-1).astype(np.float64)
  lv = fit.levels
  idx = np.argmin(np.abs(w[:, None] - lv[None, :]), axis=1)
  return idx, float(((w - lv[idx]) ** 2).sum()), np.bincount(idx, minlength=lv.size)


def test_fit_uniform_matches_direct_computation():
  x = _laplace((300, 40))
  st = ptq.sorted_stats(x)
  fit = ptq.fit_uniform(st, 0.02)
  idx, sq, counts = _direct(x, fit)
  np.testing.assert_array_equal(fit.counts, counts)
  assert fit.sqerr == pytest.approx(sq, rel=1e-9)
  assert 0.0 in fit.levels  # the zero level
  k = np.rint(fit.levels / 0.02)
  np.testing.assert_array_equal(fit.levels, (k * 0.02).astype(np.float32))  # the grid k * step
  p = counts / counts.sum()
  h = -(p * np.log2(p)).sum() * x.size
  assert fit.bits == pytest.approx(h + fit.levels.size * (32 + 6) + 40)
  values, cb = ptq._apply(x, fit)
  np.testing.assert_array_equal(values.reshape(-1), fit.levels[idx].astype(np.float32))
  assert cb.dtype == np.float32 and cb.size == fit.levels.size


def test_envelope_is_the_argmin_of_distortion_plus_rate():
  rng = np.random.default_rng(1)
  for _ in range(20):
    k = int(rng.integers(2, 30))
    levels = np.sort(rng.normal(0, 1, k))
    levels = np.unique(levels)
    cost = rng.uniform(0, 3, levels.size)
    lv, thr = scalar._envelope(levels, cost)
    w = rng.normal(0, 1.5, 2000)
    brute = levels[np.argmin((w[:, None] - levels) ** 2 + cost, axis=1)]
    env = lv[np.searchsorted(thr, w, side="left")]
    np.testing.assert_allclose(
      (w - env) ** 2 + cost[np.searchsorted(levels, env)],
      (w - brute) ** 2 + cost[np.searchsorted(levels, brute)],
      rtol=0,
      atol=1e-12,
    )


def test_ecsq_lagrangian_decreases_to_a_fixed_point():
  """Entropy-constrained Lloyd: D + lam * R never increases; the end is a fixed point."""
  x = _laplace((200, 50), seed=2)
  st = ptq.sorted_stats(x)
  step = st.scale
  lam = ptq.ECSQ_SLOPE * step * step
  w = x.reshape(-1).astype(np.float64)

  def lagrangian(fit):  # of the fit's own assignment (its thresholds), not the nearest level
    v = fit.levels[np.searchsorted(fit.thresholds, w, side="left")]
    c = np.bincount(np.searchsorted(fit.levels, v), minlength=fit.levels.size)
    return ((w - v) ** 2).sum() + lam * (c * np.log2(w.size / c)).sum()

  js = [lagrangian(ptq.fit_ecsq(st, step, iters=k)) for k in range(0, 12)]
  assert all(b <= a * (1 + 1e-9) for a, b in zip(js, js[1:])), js
  assert js[-1] < 0.99 * js[0]
  fit = ptq.fit_ecsq(st, step, iters=60)
  cost = lam * np.log2(w.size / fit.counts)
  got = fit.levels[np.searchsorted(fit.thresholds, w, side="left")]
  best = fit.levels[np.argmin((w[:, None] - fit.levels) ** 2 + cost, axis=1)]
  np.testing.assert_array_equal(got, best)  # optimal under its own model
  assert 0.0 in fit.levels


def test_ecsq_saves_3_percent_at_equal_mse_at_low_rate():
  """At ~1.6 bits/param on Laplace weights, the same coder, files counted in bytes (the
  saving shrinks with the rate: ~3.7% at 1.9 bits/param, < 1% at 3; bench_ptq.py)."""
  x = _laplace((256, 256), seed=3)
  st = ptq.sorted_stats(x)

  def file(fit):
    v, cb = ptq._apply(x, fit)
    return len(codec.compress({"w": v}, {"w": cb})), fit.sqerr

  e_bytes, e_sq = file(ptq.fit_ecsq(st, 1.2 * st.scale))
  # nearest-level files around that error: interpolate their bytes at ECSQ's error
  pts = sorted(file(ptq.fit_uniform(st, s * st.scale)) for s in 2.0 ** np.arange(-1.5, 0.51, 0.125))
  sq = np.log([p[1] for p in pts])
  by = np.log([p[0] for p in pts])
  order = np.argsort(sq)
  ref = math.exp(np.interp(math.log(e_sq), sq[order], by[order]))
  assert 8 * e_bytes / x.size < 1.8
  assert e_bytes <= 0.97 * ref


def test_outliers_kept_and_bits_target_met():
  x, pos = _with_outliers((400, 300))
  flat = {"a/kernel": x, "b/kernel": _laplace((128, 64), seed=5), "bn/var": np.ones(64, np.float32)}
  values, cbs, results = ptq.quantize_tree(flat, bits_per_param=3.0)
  res = {r.path: r for r in results}
  assert not res["bn/var"].quantized and cbs["bn/var"] is None
  assert values["bn/var"] is flat["bn/var"]
  for p in ("a/kernel", "b/kernel"):
    d = values[p].astype(np.float64) - flat[p]
    assert math.sqrt((d**2).sum() / (flat[p].astype(np.float64) ** 2).sum()) == pytest.approx(
      res[p].rel_error
    )
  assert max(res[p].rel_error for p in ("a/kernel", "b/kernel")) <= 0.10
  # outliers decode to within half a step of their value (kept, not clipped)
  step = np.min(np.diff(cbs["a/kernel"]))
  assert np.abs(values["a/kernel"].reshape(-1)[pos] - x.reshape(-1)[pos]).max() <= step / 2 + 1e-6
  n = x.size + flat["b/kernel"].size
  est = sum(r.est_bits for r in results if r.quantized) / n
  assert est == pytest.approx(3.0, rel=0.02)
  blob = codec.compress(
    checkpoints.unflatten_names(values, "/"), checkpoints.unflatten_names(cbs, "/")
  )
  rep = codec.inspect(blob)
  qbits = 8 * sum(l.record_bytes for l in rep.leaves if l.kind == "quantized") / n
  assert qbits == pytest.approx(3.0, rel=0.03)


def test_clipping_to_min_max_would_fail_where_the_grid_does_not():
  x, _ = _with_outliers((500, 200), seed=7)
  st = ptq.sorted_stats(x)
  # 16 levels spanning min..max (what fit_codebooks gives): most weights fall on 1-2 levels
  lv = np.linspace(x.min(), x.max(), 16)
  mm = scalar._nearest(st, lv)
  grid = ptq.fit_uniform(st, 0.4 * st.scale)
  assert ptq.relative_error(mm, st) > 0.3
  assert ptq.relative_error(grid, st) < 0.1


def test_max_rel_error_bound_is_met_and_tight():
  flat = {
    f"l{i}/kernel": _laplace((100 + 50 * i, 64), seed=i, scale=0.01 * (i + 1)) for i in range(3)
  }
  for method in ("uniform", "ecsq", "lloyd"):
    _, _, results = ptq.quantize_tree(flat, method=method, max_rel_error=0.05)
    for r in results:
      assert r.quantized and r.rel_error <= 0.05, (method, r)
      if method != "lloyd":  # the step is refined between grid points
        assert r.rel_error >= 0.04, (method, r)


def test_num_levels_and_lloyd():
  x, _ = _with_outliers((200, 100), seed=9)
  st = ptq.sorted_stats(x)
  for n in (3, 4, 8, 16):
    u = ptq.fit_uniform_levels(st, n)
    assert u.levels.size <= n and 0.0 in u.levels
    k = u.levels / np.diff(u.levels).min()  # levels in use: integer multiples of the step
    np.testing.assert_allclose(k, np.rint(k), atol=1e-4)
    assert np.ptp(np.rint(k)) <= n - 1
    mm = scalar._nearest(st, np.linspace(x.min(), x.max(), n))
    assert u.sqerr < mm.sqerr
    lloyd = ptq.fit_lloyd(st, n)
    assert lloyd.levels.size <= n and 0.0 in lloyd.levels
    assert lloyd.sqerr <= u.sqerr * (1 + 1e-9)


@pytest.mark.parametrize(
  "kind,shape",
  [("laplace", (512, 256)), ("gauss", (3, 3, 64, 128))],
)
def test_levels_16_within_1_15_of_lloyd_max(kind, shape):
  """``--levels 16`` (the default method for a level count) against 16-level Lloyd-Max."""
  rng = np.random.default_rng(4)
  draw = rng.laplace if kind == "laplace" else rng.normal
  x = draw(0.0, 0.05, shape).astype(np.float32)
  st = ptq.sorted_stats(x)
  lloyd = ptq.relative_error(ptq.fit_lloyd(st, 16), st)
  values, codebooks, (res,) = ptq.quantize_tree({"w": x}, num_levels=16)
  err = np.linalg.norm((values["w"] - x).astype(np.float64)) / np.linalg.norm(x.astype(np.float64))
  assert res.levels <= 16 and codebooks["w"].size <= 16
  assert err == pytest.approx(res.rel_error, rel=1e-9)
  assert err <= 1.15 * lloyd
  # the uniform N-level grid (what --levels gave before) stays available, and is worse
  _, _, (grid,) = ptq.quantize_tree({"w": x}, method="uniform", num_levels=16)
  assert grid.rel_error > err
  # the refinement trades a little error for rate: fewer estimated bits than Lloyd-Max
  assert res.est_bits < ptq.fit_lloyd(st, 16).bits


def test_lloyd_keeps_n_levels_on_outliers():
  """Empty cells of the clipped starting grid are refilled by splitting the worst cell."""
  rng = np.random.default_rng(5)
  x = rng.laplace(0, 1, 1359)
  x[:2] = [-40.0, 45.0]  # two outliers far beyond the bulk
  st = ptq.sorted_stats(x.astype(np.float32))
  for n in (8, 16, 32):
    f = ptq.fit_lloyd(st, n)
    assert f.levels.size == n
    assert (f.counts > 0).all()


def test_select_leaves_defaults():
  flat = {
    "params/conv/kernel": np.zeros((3, 3, 16, 16), np.float32),
    "params/conv/bias": np.zeros(512, np.float32),
    "params/small/kernel": np.zeros((4, 4), np.float32),
    "batch_stats/bn/mean": np.zeros((1024,), np.float32),
    "model.bn1.running_var": np.zeros((2, 1024), np.float32),
    "model.bn1.num_batches_tracked": np.array(3, np.int64),
    "ema/moving_variance": np.zeros((64, 64), np.float16),
    "emb/table": np.zeros((64, 64), np.float16),
  }
  sel = ptq.select_leaves(flat)
  assert sel["params/conv/kernel"] == "" and sel["emb/table"] == ""
  assert sel["params/conv/bias"].startswith("1-D")
  assert sel["params/small/kernel"].startswith("fewer than")
  for p in ("batch_stats/bn/mean", "model.bn1.running_var", "ema/moving_variance"):
    assert sel[p] == "normalization statistics", p
  assert sel["model.bn1.num_batches_tracked"] == "int64 values"
  sel = ptq.select_leaves(flat, quantize_vectors=True, quantize_norm_stats=True, exclude="emb")
  assert sel["params/conv/bias"] == "" and sel["model.bn1.running_var"] == ""
  assert sel["emb/table"] == "matched by --exclude"


def test_float16_leaf_levels_are_exact():
  x = _laplace((64, 64), seed=4).astype(np.float16)
  values, cbs, results = ptq.quantize_tree({"w": x}, step=0.013)
  blob = codec.compress({"w": values["w"]}, {"w": cbs["w"]})
  assert codec.decompress(blob)["w"].tobytes() == values["w"].tobytes()
  assert values["w"].dtype == np.float16


def test_bad_targets():
  flat = {"w": _laplace((64, 64))}
  with pytest.raises(ValueError, match="give one of"):
    ptq.quantize_tree(flat, step=0.1, num_levels=4)
  with pytest.raises(ValueError, match="give a target"):
    ptq.quantize_tree(flat)
  with pytest.raises(ValueError, match="lloyd method takes num_levels"):
    ptq.quantize_tree(flat, method="lloyd", step=0.1)
  with pytest.raises(ValueError, match="needs .* levels"):
    ptq.fit_uniform(ptq.sorted_stats(flat["w"]), 1e-9)


@pytest.mark.parametrize(
  "kw",
  [
    dict(bits_per_param=2.0),
    dict(max_rel_error=0.1),
    dict(step=0.05),
    dict(num_levels=4),
    dict(method="ecsq", bits_per_param=2.0),
    dict(method="lloyd", num_levels=4),
    dict(bits_per_param=2.0, zero_level=False),
  ],
)
def test_edge_tensors_and_dtypes_round_trip(kw):
  import ml_dtypes

  rng = np.random.default_rng(0)
  flat = {
    "zero/kernel": np.zeros((32, 32), np.float32),
    "const/kernel": np.full((32, 32), 0.3, np.float32),
    "neg/kernel": np.full((32, 32), -0.2, np.float32),
    "bf16/kernel": rng.laplace(0, 0.1, (64, 64)).astype(ml_dtypes.bfloat16),
    "f64/kernel": rng.laplace(0, 0.1, (64, 64)),
    "f16/kernel": rng.laplace(0, 0.1, (64, 64)).astype(np.float16),
    "nan/kernel": np.full((32, 32), np.nan, np.float32),
  }
  values, cbs, results = ptq.quantize_tree(flat, **kw)
  res = {r.path: r for r in results}
  assert not res["nan/kernel"].quantized and res["nan/kernel"].reason.startswith(
    "non-finite values: "
  )
  for p in ("zero/kernel", "const/kernel", "neg/kernel"):  # one level, exact
    assert res[p].quantized and res[p].levels == 1 and res[p].rel_error == 0.0, p
  blob = codec.compress(
    checkpoints.unflatten_names(values, "/"), checkpoints.unflatten_names(cbs, "/")
  )
  dec = checkpoints.flatten_tree(codec.decompress(blob))
  for p, v in values.items():
    v = np.asarray(v)
    assert dec[p].dtype == flat[p].dtype and dec[p].tobytes() == v.tobytes(), p
