"""hj.hemp (the whole recipe as one optax transformation), hj.finalize and the budget's
strength setter, against direct implementations of what they promise."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import hemp_jax as hj
from hemp_jax import budget as budget_lib
from hemp_jax import quantization as q


def _params(seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  return {
    "a": {"kernel": jax.random.normal(k[0], (12, 10)) * 0.3, "bias": jnp.zeros(10)},
    "b": {"kernel": jax.random.normal(k[1], (10, 8)) * 0.2},
  }


def _loss(params, x):
  h = jnp.tanh(x @ params["a"]["kernel"] + params["a"]["bias"])
  return jnp.mean((h @ params["b"]["kernel"] - 0.5) ** 2)


def _data(steps, seed=1):
  return jax.random.normal(jax.random.key(seed), (steps, 16, 12))


def _run(tx, params, xs, loss=_loss):
  state = tx.init(params)
  out = []
  for x in xs:
    g = jax.grad(loss)(params, x)
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
    out.append(params)
  return out, state


def test_strength_zero_without_finish_is_the_inner_optimizer():
  params, xs = _params(), _data(6)
  inner = optax.sgd(0.1, 0.9)
  got, _ = _run(hj.hemp(inner, 0.0, total_steps=6, finish_steps=0, warmup_steps=2), params, xs)
  want, _ = _run(inner, params, xs)
  for a, b in zip(got, want):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_entropy_phase_is_add_entropy_grad_with_deferred_constant_leaves():
  params, xs = _params(), _data(8)
  inner = optax.sgd(0.05, 0.9)
  got, _ = _run(hj.hemp(inner, 0.3, total_steps=8, finish_steps=0, warmup_steps=3), params, xs)
  # hemp's codebooks: N = 8 with an exact zero; the bias (10 values) and "b/kernel" (80) are
  # below the size threshold (10 N + 1) in both.
  ref = optax.chain(
    hj.add_entropy_grad(
      0.3, num_levels=8, zero_level=True, degenerate="defer", degenerate_fit_step=3
    ),
    inner,
  )
  want, _ = _run(ref, params, xs)
  for a, b in zip(got, want):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _entropy_grads(latent, codebooks):
  """grad of the order-3 block rate (hj.tree_entropy) at ``latent``, per leaf."""
  return jax.grad(
    lambda p: hj.tree_entropy(p, codebooks, order=3, tuples="disjoint", rate="block", pool="group")
  )(latent)


@pytest.mark.parametrize("drift, refits, decay", [(0.0, 0, False), (3.0, 2, False), (0.0, 0, True)])
def test_finish_trains_the_latent_weights_straight_through_on_covering_codebooks(
  drift, refits, decay
):
  """With ``drift`` the loss pulls every kernel weight up: they leave their codebooks."""
  total, finish, warm = 10, 4, 2
  params, xs = _params(), _data(total)
  strength, lr = 0.2, 0.05

  def loss(p, x):
    return _loss(p, x) - drift * (jnp.sum(p["a"]["kernel"]) + jnp.sum(p["b"]["kernel"]))

  tx = hj.hemp(
    optax.sgd(lr),
    strength,
    total_steps=total,
    finish_steps=finish,
    warmup_steps=warm,
    num_levels=4,
    zero_level=False,
    finish_decay=decay,
  )
  # With the decay, the k-th finish step is scaled by (1 + cos(pi k / finish)) / 2.
  scale = (1 + np.cos(np.pi / finish)) / 2 if decay else 1.0
  state = tx.init(params)
  p = params
  refitted = 0
  for t, x in enumerate(xs):
    if t == total - finish - 1:
      before = hj.codebooks_of(state, params)
    if t == total - finish:
      # The finish starts: a codebook that does not cover the weights of now is refitted
      # on them, the others kept; the params are on their levels.
      cbs = hj.codebooks_of(state, params)
      latent = jax.tree.unflatten(jax.tree.structure(params), list(state.latent))
      for name in ("a", "b"):
        k, cb, old = latent[name]["kernel"], cbs[name]["kernel"], before[name]["kernel"]
        if old[0] <= k.min() and k.max() <= old[-1]:
          want = old
        else:
          want = hj.fit_codebook(k, 4, method="uniform", guard_levels=True)
          refitted += 1
        np.testing.assert_allclose(cb, want, rtol=1e-6)
        np.testing.assert_allclose(p[name]["kernel"], q.quantize(k, cb), atol=1e-6)
      assert cbs["a"]["bias"] is None  # 10 values: below the size threshold
      # From here: the loss is taken at Q(latent); the step moves the latent weights.
      grads = jax.grad(loss)(p, x)
      eg = _entropy_grads(latent, cbs)
      expect = jax.tree.map(
        lambda w, g, e: w - scale * lr * (g + (0 if e is None else strength * e)),
        latent,
        grads,
        eg,
        is_leaf=lambda v: v is None,
      )
    g = jax.grad(loss)(p, x)
    u, state = tx.update(g, state, p)
    p = optax.apply_updates(p, u)
    if t == total - finish:
      got = jax.tree.unflatten(jax.tree.structure(params), list(state.latent))
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got, expect)
  assert refitted == refits
  if decay:  # the last step's scale is 0: the latent weights stop where they are
    before_last = state.latent
    g = jax.grad(loss)(p, xs[-1])
    _, after = tx.update(g, state._replace(count=state.count - 1), p)
    for a, b in zip(before_last, after.latent):
      np.testing.assert_array_equal(a, b)
  # At the end the params are the decoded model.
  cbs = hj.codebooks_of(state, params)
  for name in ("a", "b"):
    k, cb = p[name]["kernel"], cbs[name]["kernel"]
    np.testing.assert_allclose(k, q.quantize(k, cb), atol=1e-6)


def test_a_leaf_that_stays_constant_stays_float():
  """A bias the loss never moves (in front of a normalization) gets no codebook."""
  params = {"w": jax.random.normal(jax.random.key(0), (8, 64)), "dead": jnp.zeros(128)}

  def loss(p, x):
    return jnp.mean((x @ p["w"]) ** 2)  # "dead" is not used

  xs = _data(8)[..., :8]
  tx = hj.hemp(optax.sgd(0.01), 1.0, total_steps=8, finish_steps=2, warmup_steps=2)
  out, state = _run(tx, params, xs, loss)
  cbs = hj.codebooks_of(state, params)
  assert cbs["w"] is not None and cbs["dead"] is None
  np.testing.assert_array_equal(out[-1]["dead"], 0.0)


def test_bad_schedules_are_one_line_errors():
  with pytest.raises(ValueError, match="finish_steps"):
    hj.hemp(optax.sgd(0.1), total_steps=10, finish_steps=10)
  with pytest.raises(ValueError, match="warmup_steps"):
    hj.hemp(optax.sgd(0.1), total_steps=10, finish_steps=5, warmup_steps=6)
  with pytest.raises(ValueError, match="total_steps"):
    hj.hemp(optax.sgd(0.1), total_steps=0)


class _Net(nnx.Module):
  def __init__(self, rngs):
    self.lin1 = nnx.Linear(12, 64, rngs=rngs)
    self.bn = nnx.BatchNorm(64, rngs=rngs)
    self.drop = nnx.Dropout(0.1, rngs=rngs)
    self.lin2 = nnx.Linear(64, 3, rngs=rngs)

  def __call__(self, x):
    return self.lin2(self.drop(nnx.relu(self.bn(self.lin1(x)))))


def test_nnx_optimizer_finalize_and_set_strength():
  model = _Net(nnx.Rngs(0))
  opt = nnx.Optimizer(model, hj.hemp(optax.sgd(0.05, 0.9), 0.5, total_steps=12), wrt=nnx.Param)
  x = jax.random.normal(jax.random.key(2), (32, 12))
  y = jnp.arange(32) % 3

  @nnx.jit
  def step(model, opt):
    def loss(m):
      return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    opt.update(model, nnx.grad(loss)(model))

  for i in range(12):
    if i == 5:
      budget_lib.set_strength(opt.opt_state, 0.25)
      assert float(optax.tree_utils.tree_get(opt.opt_state, "strength").get_value()) == 0.25
    step(model, opt)
  blob = hj.finalize(model, opt.opt_state)
  decoded = hj.decompress(blob)
  # BatchNorm statistics exactly, quantized params on the levels they already hold.
  np.testing.assert_array_equal(decoded["bn"]["mean"], np.asarray(model.bn.mean.get_value()))
  cbs = hj.codebooks_of(opt.opt_state, model)
  k = np.asarray(model.lin1.kernel.get_value())
  np.testing.assert_array_equal(decoded["lin1"]["kernel"], q.quantize(k, cbs["lin1"]["kernel"]))
  np.testing.assert_allclose(decoded["lin1"]["kernel"], k, atol=1e-6)
  # It loads back into a fresh model.
  fresh = _Net(nnx.Rngs(1))
  nnx.update(fresh, hj.load_into(nnx.state(fresh, nnx.Not(nnx.RngState)), decoded))
  np.testing.assert_array_equal(fresh.lin2.bias.get_value(), model.lin2.bias.get_value())


def test_set_strength_on_plain_and_injected_states():
  params = _params()
  state = hj.hemp(optax.adam(1e-3), 1.0, total_steps=10).init(params)
  state = budget_lib.set_strength(state, 3.0)
  assert float(state.strength) == 3.0
  inj = optax.inject_hyperparams(hj.add_entropy_grad, static_args=budget_lib.STATIC_ARGS)
  s2 = optax.chain(inj(strength=1.0), optax.sgd(0.1)).init(params)
  s2 = budget_lib.set_strength(s2, 2.0)
  assert float(optax.tree_utils.tree_get(s2, "strength")) == 2.0
  with pytest.raises(ValueError, match="no HEMP strength"):
    budget_lib.set_strength(optax.sgd(0.1).init(params), 1.0)


def test_linen_variables_finalize():
  params = _params()
  tx = hj.hemp(optax.sgd(0.1), 0.5, total_steps=4, finish_steps=1, warmup_steps=1)
  _, state = _run(tx, params, _data(4))
  variables = {"params": params, "batch_stats": {"mean": jnp.arange(3.0)}}
  decoded = hj.decompress(hj.finalize(variables, state))
  np.testing.assert_array_equal(decoded["batch_stats"]["mean"], [0.0, 1.0, 2.0])
  cbs = hj.codebooks_of(state, params)
  k = np.asarray(params["a"]["kernel"])
  np.testing.assert_array_equal(decoded["params"]["a"]["kernel"], q.quantize(k, cbs["a"]["kernel"]))
