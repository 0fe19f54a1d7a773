"""The optax transformations against direct implementations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import hemp_jax as hj


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {
    "dense1": {
      "kernel": jnp.asarray(rng.normal(size=(12, 16)), jnp.float32),
      "bias": jnp.zeros(16, jnp.float32),
    },
    "dense2": {
      "kernel": jnp.asarray(rng.normal(size=(16, 3)) * 0.3, jnp.float32),
      "bias": jnp.zeros(3, jnp.float32),
    },
  }


def _loss(params, x, y):
  h = jnp.tanh(x @ params["dense1"]["kernel"] + params["dense1"]["bias"])
  logits = h @ params["dense2"]["kernel"] + params["dense2"]["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _batch(step):
  rng = np.random.default_rng(100 + step)
  return (
    jnp.asarray(rng.normal(size=(8, 12)), jnp.float32),
    jnp.asarray(rng.integers(0, 3, size=8)),
  )


KW = dict(order=2, num_levels=4, min_size=41)


def test_add_entropy_grad_adds_strength_times_grad_h():
  params = _params()
  tx = hj.add_entropy_grad(0.5, **KW)
  state = tx.init(params)
  cbs = hj.codebooks_tree(params, state.codebooks)
  assert cbs["dense1"]["bias"] is None and cbs["dense1"]["kernel"].shape == (6,)
  zeros = jax.tree.map(jnp.zeros_like, params)
  out, state = tx.update(zeros, state, params)
  expected = jax.grad(lambda p: hj.tree_entropy(p, cbs, order=2))(params)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, 0.5 * b, atol=1e-7)
  assert int(state.count) == 1


@pytest.mark.parametrize("make_opt", [lambda: optax.sgd(0.1), lambda: optax.adam(1e-2)])
def test_chain_equals_penalty_added_to_loss(make_opt):
  params0 = _params(1)
  lam = 0.3
  tx = optax.chain(hj.add_entropy_grad(lam, **KW), make_opt())
  state = tx.init(params0)
  cbs = hj.codebooks_tree(params0, state[0].codebooks)

  @jax.jit
  def step_tx(p, s, x, y):
    g = jax.grad(_loss)(p, x, y)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  opt = make_opt()
  ostate = opt.init(params0)

  @jax.jit
  def step_penalty(p, s, x, y):
    g = jax.grad(lambda q: _loss(q, x, y) + hj.entropy_penalty(q, cbs, strength=lam, order=2))(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  p1, p2 = params0, params0
  for i in range(5):
    x, y = _batch(i)
    p1, state = step_tx(p1, state, x, y)
    p2, ostate = step_penalty(p2, ostate, x, y)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(a, b, atol=2e-6)
  assert not np.allclose(p1["dense1"]["kernel"], params0["dense1"]["kernel"])


def test_regularizer_lowers_entropy():
  params = _params(2)
  tx = optax.chain(hj.add_entropy_grad(1.0, **KW), optax.sgd(20.0))
  state = tx.init(params)
  cbs = hj.codebooks_tree(params, state[0].codebooks)
  h0 = float(hj.tree_entropy(params, cbs, order=2))
  step = jax.jit(
    lambda p, s: (lambda u_s: (optax.apply_updates(p, u_s[0]), u_s[1]))(
      tx.update(jax.tree.map(jnp.zeros_like, p), s, p)
    )
  )
  for _ in range(30):
    params, state = step(params, state)
  assert float(hj.tree_entropy(params, cbs, order=2)) < 0.8 * h0


class _MLP(nnx.Module):
  def __init__(self, rngs):
    self.dense1 = nnx.Linear(12, 16, rngs=rngs)
    self.dense2 = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.dense2(jnp.tanh(self.dense1(x)))


def test_works_with_nnx_optimizer_and_matches_plain_dicts():
  model = _MLP(nnx.Rngs(0))
  params0 = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  tx = optax.chain(hj.add_entropy_grad(0.2, **KW), optax.sgd(0.1))
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def nnx_step(model, opt, x, y):
    loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
    grads = nnx.grad(loss_fn)(model)
    opt.update(model, grads)

  def loss_dict(p, x, y):
    h = jnp.tanh(x @ p["dense1"]["kernel"] + p["dense1"]["bias"])
    logits = h @ p["dense2"]["kernel"] + p["dense2"]["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  state = tx.init(params0)
  p = params0
  for i in range(3):
    x, y = _batch(i)
    nnx_step(model, opt, x, y)
    u, state = tx.update(jax.grad(loss_dict)(p, x, y), state, p)
    p = optax.apply_updates(p, u)
  got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(p)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_refresh_every_reuses_cached_gradient():
  params = _params(3)
  tx = hj.add_entropy_grad(1.0, refresh_every=3, **KW)
  state = tx.init(params)
  cbs = hj.codebooks_tree(params, state.codebooks)
  zeros = jax.tree.map(jnp.zeros_like, params)
  g0 = jax.grad(lambda p: hj.tree_entropy(p, cbs, order=2))(params)
  moved = jax.tree.map(lambda x: x * 0.9, params)
  g_moved = jax.grad(lambda p: hj.tree_entropy(p, cbs, order=2))(moved)
  out0, state = tx.update(zeros, state, params)  # step 0: refresh at params
  out1, state = tx.update(zeros, state, moved)  # step 1: cached (params' gradient)
  out2, state = tx.update(zeros, state, moved)
  out3, state = tx.update(zeros, state, moved)  # step 3: refresh at moved
  k = ("dense1", "kernel")
  np.testing.assert_allclose(out0[k[0]][k[1]], g0[k[0]][k[1]], atol=1e-7)
  np.testing.assert_allclose(out1[k[0]][k[1]], g0[k[0]][k[1]], atol=1e-7)
  np.testing.assert_allclose(out2[k[0]][k[1]], g0[k[0]][k[1]], atol=1e-7)
  np.testing.assert_allclose(out3[k[0]][k[1]], g_moved[k[0]][k[1]], atol=1e-7)


def test_refit_every_refits_codebooks():
  params = _params(4)
  tx = hj.add_entropy_grad(1.0, refit_every=2, **KW)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  scaled = jax.tree.map(lambda x: 2 * x, params)
  _, s1 = tx.update(zeros, state, scaled)  # count 0: no refit
  _, s2 = tx.update(zeros, s1, scaled)  # count 1: no refit
  _, s3 = tx.update(zeros, s2, scaled)  # count 2: refit from scaled params
  c0 = state.codebooks[1]  # leaves: dense1/bias, dense1/kernel, dense2/bias, dense2/kernel
  assert state.codebooks[0] is None
  np.testing.assert_array_equal(s2.codebooks[1], c0)
  np.testing.assert_allclose(s3.codebooks[1], 2 * np.asarray(c0), rtol=1e-5)


def test_mask_limits_regularized_leaves():
  params = _params(5)
  mask = {"dense1": {"kernel": True, "bias": False}, "dense2": {"kernel": False, "bias": False}}
  tx = hj.add_entropy_grad(1.0, mask=mask, order=2, num_levels=4, min_size=1)
  state = tx.init(params)
  out, _ = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  assert np.abs(np.asarray(out["dense1"]["kernel"])).sum() > 0
  assert np.all(np.asarray(out["dense2"]["kernel"]) == 0)
  tx2 = hj.add_entropy_grad(1.0, mask=lambda p: mask, order=2, num_levels=4, min_size=1)
  out2, _ = tx2.update(jax.tree.map(jnp.zeros_like, params), tx2.init(params), params)
  np.testing.assert_allclose(out2["dense1"]["kernel"], out["dense1"]["kernel"])


def test_missing_params_raise():
  tx = hj.add_entropy_grad(1.0, **KW)
  with pytest.raises(ValueError, match="params"):
    tx.init(None)
  state = tx.init(_params())
  with pytest.raises(ValueError, match="params"):
    tx.update(_params(), state)
  with pytest.raises(ValueError, match="no parameter is selected"):
    hj.add_entropy_grad(1.0, num_levels=4).init({"b": jnp.zeros(3)})


def _direct_paper_update(params, steps, *, lr, wd, lambda_h, lambda_q, order, refresh):
  """The update rule of DESIGN.md §2 written out directly, on numpy arrays."""
  codebooks = hj.fit_codebooks(params, 4, min_size=41)
  w = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  names = [("dense1", "kernel"), ("dense2", "kernel")]
  cached_gh, cached_q = None, None
  for step in range(steps):
    x, y = _batch(step)
    g = jax.grad(_loss)(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), w), x, y)
    g = jax.tree.map(lambda a: np.asarray(a, np.float64), g)
    w1 = jax.tree.map(lambda a, b: a - lr * (b + wd * a), w, g)
    if step % refresh == 0:
      w1_32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), w1)
      gh = jax.grad(lambda p: hj.tree_entropy(p, codebooks, order=order))(w1_32)
      cached_gh = {n: np.asarray(gh[n[0]][n[1]], np.float64) for n in names}
      cached_q = {
        n: np.asarray(hj.quantize(w1_32[n[0]][n[1]], codebooks[n[0]][n[1]]), np.float64)
        for n in names
      }
    for n in names:
      gn = np.abs(g[n[0]][n[1]])
      s = 1 - gn / gn.max()
      a = w1[n[0]][n[1]]
      a = a - s * (lambda_h * cached_gh[n] + lambda_q * (a - cached_q[n]))
      cb = np.asarray(codebooks[n[0]][n[1]])
      w1[n[0]][n[1]] = np.clip(a, cb[1], cb[-2])
    w = w1
  return w


def test_paper_recipe_matches_direct_update_rule():
  params = _params(6)
  kw = dict(lr=0.1, wd=1e-4, lambda_h=1.0, lambda_q=0.1, order=2, refresh=3)
  tx = hj.paper_recipe(
    learning_rate=kw["lr"],
    weight_decay=kw["wd"],
    lambda_h=1.0,
    lambda_q=0.1,
    order=2,
    num_levels=4,
    refresh_every=3,
    min_size=41,
    method="uniform",
    pool="group",
    lambda_units="per_param",
  )
  state = tx.init(params)

  @jax.jit
  def step(p, s, x, y):
    u, s = tx.update(jax.grad(_loss)(p, x, y), s, p)
    return optax.apply_updates(p, u), s

  p = params
  steps = 7
  for i in range(steps):
    p, state = step(p, state, *_batch(i))
  expected = _direct_paper_update(params, steps, **kw)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, atol=2e-5)
  # the quantized leaves stay inside the real level range
  cb = hj.codebooks_tree(params, state.codebooks)["dense1"]["kernel"]
  k = np.asarray(p["dense1"]["kernel"])
  assert k.min() >= float(cb[1]) - 1e-7 and k.max() <= float(cb[-2]) + 1e-7


# ------------------------------------------------------------- the authors' units


def _tent_rows(w, cb):
  """Tent memberships and their derivatives, (M, K) each, written out in numpy."""
  k = np.clip(np.searchsorted(cb, w, side="right") - 1, 0, len(cb) - 2)
  d = cb[k + 1] - cb[k]
  t = np.clip((w - cb[k]) / d, 0.0, 1.0)
  inside = ((w - cb[k]) / d >= 0) & ((w - cb[k]) / d <= 1)
  pi = np.zeros((w.size, len(cb)))
  dpi = np.zeros_like(pi)
  rows = np.arange(w.size)
  pi[rows, k] += 1 - t
  pi[rows, k + 1] += t
  dpi[rows, k] -= inside / d
  dpi[rows, k + 1] += inside / d
  return pi, dpi


def _authors_entropy_grad(streams, cbs, order):
  """grad of the pooled order-n joint entropy in bits per n-tuple (the authors' quantity).

  ``P(s) = (1/T) sum_tuples prod_m pi_{s_m}``, one dense K^n table pooled over all
  tensors; ``dH/dw_j = -(1/T) sum_s log2 P(s) dprod/dw_j`` (the ``+1/ln 2`` term sums to
  zero). Independent of the library: tuples by explicit loops, dense outer products.
  """
  tuples = []  # (tensor index, start) of every disjoint tuple
  rows = []
  for g, (w, cb) in enumerate(zip(streams, cbs)):
    pi, dpi = _tent_rows(w, cb)
    rows.append((pi, dpi))
    tuples += [(g, j) for j in range(0, w.size - order + 1, order)]
  K = len(cbs[0])
  table = np.zeros((K,) * order)
  for g, j in tuples:
    outer = np.ones(())
    for m in range(order):
      outer = np.multiply.outer(outer, rows[g][0][j + m])
    table += outer
  P = table / len(tuples)
  logp = np.log2(np.where(P > 0, P, 1.0))
  grads = [np.zeros(w.size) for w in streams]
  for g, j in tuples:
    pi, dpi = rows[g]
    for m in range(order):
      outer = np.ones(())
      for mm in range(order):
        outer = np.multiply.outer(outer, dpi[j + mm] if mm == m else pi[j + mm])
      grads[g][j + m] = -(logp * outer).sum() / len(tuples)
  H = -(P[P > 0] * np.log2(P[P > 0])).sum()
  return H, grads


@pytest.mark.parametrize("order", [1, 3, 4])
def test_paper_recipe_in_authors_units_matches_their_update(order):
  """One step of paper_recipe at the authors' lambda_H against their update in numpy:
  SGD step, then w - S * (lambda_H * grad H_n[bits/tuple, pooled] + lambda_Q (w - Q)),
  clamped to the real levels; two quantized tensors pooled into one histogram."""
  params = _params(3)
  lam_h, lam_q, lr, wd = 0.7, 0.1, 0.1, 1e-4
  tx = hj.paper_recipe(
    learning_rate=lr, weight_decay=wd, lambda_h=lam_h, lambda_q=lam_q, order=order, min_size=41
  )
  state = tx.init(params)
  cbs = hj.codebooks_tree(params, state.codebooks)
  x, y = _batch(0)
  g = jax.grad(_loss)(params, x, y)
  u, _ = tx.update(g, state, params)
  ours = optax.apply_updates(params, u)

  names = [("dense1", "kernel"), ("dense2", "kernel")]
  w1 = {n: np.asarray(params[n[0]][n[1]], np.float64) for n in names}
  gn = {n: np.asarray(g[n[0]][n[1]], np.float64) for n in names}
  w1 = {n: w1[n] - lr * (gn[n] + wd * w1[n]) for n in names}
  cb = {n: np.asarray(cbs[n[0]][n[1]], np.float64) for n in names}
  # the scan order shared by estimator and coder: output unit by output unit
  streams = [np.asarray(hj.scan_stream(jnp.asarray(w1[n])), np.float64) for n in names]
  _, gstream = _authors_entropy_grad(streams, [cb[n] for n in names], order)
  for n, gs in zip(names, gstream):
    gh = np.asarray(hj.unscan_stream(jnp.asarray(gs), w1[n].shape), np.float64)
    qv = cb[n][np.argmin(np.abs(w1[n][..., None] - cb[n]), axis=-1)]
    s = 1 - np.abs(gn[n]) / np.abs(gn[n]).max()
    w2 = np.clip(w1[n] - s * (lam_h * gh + lam_q * (w1[n] - qv)), cb[n][1], cb[n][-2])
    np.testing.assert_allclose(ours[n[0]][n[1]], w2, atol=3e-6, rtol=0)
    assert np.abs(gh).max() > 1e-3  # the entropy term is not vanishing in this test
  # float leaves (biases) get the SGD step only
  b = np.asarray(params["dense1"]["bias"]) - lr * (
    np.asarray(g["dense1"]["bias"]) + wd * np.asarray(params["dense1"]["bias"])
  )
  np.testing.assert_allclose(ours["dense1"]["bias"], b, atol=1e-7)


def test_authors_entropy_scale_and_units_guard():
  assert [hj.authors_entropy_scale(n) for n in (1, 2, 3, 4)] == [1.0, 1.0, 3.0, 4.0]
  with pytest.raises(ValueError, match="order"):
    hj.authors_entropy_scale(0)
  with pytest.raises(ValueError, match="pool='global'"):
    hj.paper_recipe(pool="group")
  with pytest.raises(ValueError, match="lambda_units"):
    hj.paper_recipe(lambda_units="bits")


# ------------------------------------------------------ leaves that start constant


def _params_zero_bias(seed=0):
  p = _params(seed)
  p["dense1"]["bias"] = jnp.zeros(48, jnp.float32)  # quantized (> min_size), starts at 0
  p["dense1"]["kernel"] = jnp.asarray(np.random.default_rng(seed).normal(size=(12, 48)))
  p["dense2"]["kernel"] = jnp.asarray(np.random.default_rng(seed + 1).normal(size=(48, 3)) * 0.3)
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)


def test_is_degenerate():
  assert bool(hj.is_degenerate(jnp.zeros(5))) and bool(hj.is_degenerate(jnp.full(4, 3.0)))
  assert not bool(hj.is_degenerate(jnp.array([0.0, 1e-3])))


def test_degenerate_float_keeps_constant_leaves_in_float():
  params = _params_zero_bias()
  st = hj.add_entropy_grad(1.0, degenerate="float", **KW).init(params)
  cbs = hj.codebooks_tree(params, st.codebooks)
  assert cbs["dense1"]["bias"] is None and cbs["dense1"]["kernel"] is not None
  st = hj.add_entropy_grad(1.0, degenerate="keep", **KW).init(params)
  cb = hj.codebooks_tree(params, st.codebooks)["dense1"]["bias"]
  assert float(cb[-2] - cb[1]) <= 2e-3  # the degenerate codebook "keep" gives


def test_degenerate_defer_fits_after_warmup_and_skips_gradient_before():
  params = _params_zero_bias(1)
  fit_step = 3
  tx = hj.add_entropy_grad(0.5, degenerate="defer", degenerate_fit_step=fit_step, **KW)
  state = tx.init(params)
  flags = hj.codebooks_tree(params, state.pending)
  assert bool(flags["dense1"]["bias"]) and not bool(flags["dense1"]["kernel"])
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  p = params
  for i in range(fit_step + 2):
    g = jax.grad(_loss_zero_bias)(p, *_batch(i))
    u, new_state = step(g, state, p)
    cbs = hj.codebooks_tree(p, new_state.codebooks)
    if i < fit_step:  # bias: loss gradient only; its codebook is still the placeholder
      np.testing.assert_array_equal(u["dense1"]["bias"], g["dense1"]["bias"])
    if i == fit_step:  # fitted on the weights of this step
      expected = hj.fit_codebooks(p, 4, min_size=41)["dense1"]["bias"]
      np.testing.assert_allclose(cbs["dense1"]["bias"], expected, rtol=1e-6)
      assert float(expected[-2] - expected[1]) > 1e-2  # the trained spread, not +-0.001
    if i >= fit_step:  # then the full entropy gradient with the new codebooks
      gh = jax.grad(lambda q: hj.tree_entropy(q, cbs, order=2))(p)
      np.testing.assert_allclose(
        u["dense1"]["bias"], g["dense1"]["bias"] + 0.5 * gh["dense1"]["bias"], atol=1e-6
      )
    assert bool(hj.codebooks_tree(p, new_state.pending)["dense1"]["bias"]) == (i < fit_step)
    # the kernel is regularized from step 0
    assert float(jnp.abs(u["dense1"]["kernel"] - g["dense1"]["kernel"]).max()) > 0
    p = optax.apply_updates(p, jax.tree.map(lambda a: -0.5 * a, u))
    state = new_state


def _loss_zero_bias(params, x, y):
  h = jnp.tanh(x @ params["dense1"]["kernel"] + params["dense1"]["bias"])
  logits = h @ params["dense2"]["kernel"] + params["dense2"]["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@pytest.mark.parametrize("degenerate", ["keep", "defer"])
def test_paper_recipe_does_not_pin_constant_leaves_with_defer(degenerate):
  params = _params_zero_bias(2)
  kw = dict(degenerate_fit_step=4) if degenerate == "defer" else {}
  tx = hj.paper_recipe(
    lambda_h=1.0, order=1, min_size=41, refresh_every=1, degenerate=degenerate, **kw
  )
  state = tx.init(params)

  @jax.jit
  def step(p, s, x, y):
    u, s = tx.update(jax.grad(_loss_zero_bias)(p, x, y), s, p)
    return optax.apply_updates(p, u), s

  p = params
  for i in range(4):
    p, state = step(p, state, *_batch(i))
  spread = float(jnp.abs(p["dense1"]["bias"]).max())
  if degenerate == "keep":  # clamped to the levels of the zero start: pinned near 0
    assert spread <= 2e-3
  else:  # SGD only during the warm-up: the bias moves freely
    assert spread > 5e-3
    p, state = step(p, state, *_batch(4))  # fit step: codebook from the trained bias
    cb = hj.codebooks_tree(p, state.codebooks)["dense1"]["bias"]
    assert float(cb[-2] - cb[1]) > 5e-3
