"""The library calls a user's own training loop makes: codebooks out of any optimizer
state, compress on NNX containers, a warning per leaf its codebook does not fit."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import hemp_jax as hj
from hemp_jax import cli


def _model():
  return nnx.Sequential(
    nnx.Linear(30, 40, rngs=nnx.Rngs(0)),
    nnx.BatchNorm(40, rngs=nnx.Rngs(0)),
    nnx.Linear(40, 5, rngs=nnx.Rngs(1)),
  )


def _hemp():
  return hj.add_entropy_grad(1.0, order=3, num_levels=4)


def _expected(params):
  """The codebooks add_entropy_grad fits at init, as a tree (independent path)."""
  state = _hemp().init(params)
  return hj.codebooks_tree(params, state.codebooks)


@pytest.mark.parametrize(
  "wrap",
  [
    lambda t: optax.chain(t, optax.sgd(0.1, 0.9)),
    lambda t: optax.chain(optax.clip_by_global_norm(1.0), t, optax.adam(1e-3)),
    lambda t: optax.masked(
      optax.chain(t, optax.sgd(0.1)), lambda p: jax.tree.map(lambda _: True, p)
    ),
    lambda t: optax.MultiSteps(optax.chain(t, optax.adam(1e-3)), every_k_schedule=2),
    lambda t: optax.chain(t, optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)),
    lambda t: hj.prune(optax.chain(t, optax.sgd(0.1)), sparsity=0.5),
  ],
  ids=["chain", "chain3", "masked", "multisteps", "inject_hyperparams", "prune"],
)
def test_codebooks_of_plain_optax_states(wrap):
  params = hj.plain_params(_model())
  state = wrap(_hemp()).init(params)
  got = hj.codebooks_of(state, params)
  want = _expected(params)
  assert jax.tree.structure(got, is_leaf=lambda x: x is None) == jax.tree.structure(
    want, is_leaf=lambda x: x is None
  )
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  assert sum(x is not None for x in jax.tree.leaves(got, is_leaf=lambda x: x is None)) == 2


def test_codebooks_of_nnx_optimizer_and_compress_of_a_module():
  model = _model()
  opt = nnx.Optimizer(model, optax.chain(_hemp(), optax.sgd(0.1, 0.9)), wrt=nnx.Param)
  x = jnp.ones((8, 30))
  grads = nnx.grad(lambda m: (m(x) ** 2).mean())(model)
  opt.update(model, grads)
  cb = hj.codebooks_of(opt.opt_state, model)
  params = hj.plain_params(model)
  want = _expected(hj.plain_params(_model()))  # codebooks are fitted at init, frozen
  for a, b in zip(jax.tree.leaves(cb), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  # compress takes the module, its State or the plain arrays: the same file
  blobs = {hj.compress(p, cb) for p in (model, nnx.state(model, nnx.Param), params)}
  assert len(blobs) == 1
  decoded = hj.decompress(blobs.pop())
  k = params["layers"][0]["kernel"]
  np.testing.assert_array_equal(
    decoded["layers"][0]["kernel"], hj.quantize(k, cb["layers"][0]["kernel"])
  )


def test_codebooks_of_linen_train_state():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(5)(nn.relu(nn.Dense(40)(x)))

  variables = Net().init(jax.random.PRNGKey(0), jnp.ones((1, 30)))
  tx = optax.chain(_hemp(), optax.adam(1e-3))
  ts = train_state.TrainState.create(apply_fn=Net().apply, params=variables["params"], tx=tx)
  cb = hj.codebooks_of(ts.opt_state, ts.params)
  assert cb["Dense_0"]["kernel"].shape == (6,) and cb["Dense_0"]["bias"] is None


def test_codebooks_of_without_hemp_says_so():
  params = hj.plain_params(_model())
  with pytest.raises(ValueError, match="no HEMP state in opt_state"):
    hj.codebooks_of(optax.adam(1e-3).init(params), params)
  two = optax.chain(_hemp(), _hemp(), optax.sgd(0.1))
  with pytest.raises(ValueError, match="more than one HEMP state"):
    hj.codebooks_of(two.init(params), params)


def test_a_leaf_clipped_by_its_codebook_warns_once_naming_it():
  x = np.random.default_rng(0).normal(size=(256, 64)).astype(np.float32)
  params = {"dense": {"kernel": x, "bias": np.zeros(64, np.float32)}, "ok": {"kernel": x}}
  cb = {
    "dense": {"kernel": np.array([-0.3, -0.1, 0.1, 0.3], np.float32), "bias": None},
    "ok": {"kernel": np.linspace(-4.5, 4.5, 16).astype(np.float32)},
  }
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    hj.compress(params, cb)
  messages = [
    str(w.message) for w in caught if issubclass(w.category, hj.codec.QuantizationWarning)
  ]
  assert len(messages) == 1
  assert messages[0].startswith("dense/kernel: ") and "clipped" in messages[0]
  # a codebook fitted on a constant start (+-0.001) decodes the trained leaf badly
  dead = {"b": {"kernel": np.array([-0.001, 0.0, 0.001], np.float32)}}
  with pytest.warns(hj.codec.QuantizationWarning, match=r"b/kernel: .* clipped"):
    hj.compress({"b": {"kernel": x * 0.05}}, dead)


def test_hemp_jax_compress_prints_the_warning_as_one_line(tmp_path, capsys):
  x = np.random.default_rng(0).normal(size=(256, 64)).astype(np.float32)
  np.savez(tmp_path / "w.npz", w=x)
  argv = ["compress", str(tmp_path / "w.npz"), "--no-progress", "--method", "uniform"]
  assert cli.main([*argv, "--levels", "2"]) == 0
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert len(err) == 1 and err[0] == "warning: w: decodes with relative error 0.77 (2 levels)", err
  assert cli.main([*argv, "--levels", "16"]) == 0  # a good fit: nothing said
  assert capsys.readouterr().err == ""


def test_quantized_loss_gradient_is_the_straight_through_one():
  rng = np.random.default_rng(3)
  params = {
    "dense": {"kernel": jnp.asarray(rng.normal(size=(20, 8)), jnp.float32), "bias": jnp.ones(8)},
  }
  cb = hj.fit_codebooks(params, num_levels=4)
  assert cb["dense"]["bias"] is None
  x = jnp.asarray(rng.normal(size=(16, 20)), jnp.float32)

  def loss(p):
    return jnp.mean(jnp.tanh(x @ p["dense"]["kernel"] + p["dense"]["bias"]) ** 2)

  qp = hj.quantized(params, cb, straight_through=False)
  np.testing.assert_array_equal(
    qp["dense"]["kernel"], hj.quantize(params["dense"]["kernel"], cb["dense"]["kernel"])
  )
  assert qp["dense"]["bias"] is params["dense"]["bias"]
  got = jax.grad(lambda p: loss(hj.quantized(p, cb)))(params)
  want = jax.grad(loss)(qp)  # the float gradient at the quantized point
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert float(jnp.abs(got["dense"]["kernel"]).sum()) > 0
  # the flat tuple of an optimizer state gives the same values
  state = _hemp().init(params)
  flat_q = hj.quantized(params, state.codebooks)
  tree_q = hj.quantized(params, hj.codebooks_of(state, params))
  for a, b in zip(jax.tree.leaves(flat_q), jax.tree.leaves(tree_q)):
    np.testing.assert_array_equal(a, b)
