"""Pruning transforms: exact sparsity, pruned weights stay 0, sensitivity ranking."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import hemp_jax as hj
from hemp_jax import pruning


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {
    "dense": {
      "kernel": jnp.asarray(rng.normal(size=(20, 30)), jnp.float32),
      "bias": jnp.asarray(rng.normal(size=(30,)), jnp.float32),
    },
    "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 4, 8)), jnp.float32)},
  }


def _run(tx, params, steps, seed=1, state=None):
  state = tx.init(params) if state is None else state
  rng = np.random.default_rng(seed)
  step = jax.jit(tx.update)
  for _ in range(steps):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_schedule_shape():
  s = [float(pruning.sparsity_schedule(t, 0.8, 10, 20)) for t in (0, 9, 10, 15, 20, 99)]
  assert s[0] == s[1] == s[2] == 0.0
  assert 0.0 < s[3] < 0.8 and s[4] == pytest.approx(0.8) and s[5] == pytest.approx(0.8)
  ts = np.arange(0, 30)
  vals = np.asarray([float(pruning.sparsity_schedule(t, 0.8, 10, 20)) for t in ts])
  assert np.all(np.diff(vals) >= -1e-7)


@pytest.mark.parametrize("method", ["magnitude", "sensitivity"])
def test_exact_sparsity_and_zeros_stay(method):
  params = _params()
  tx = pruning.prune(
    optax.sgd(0.1), sparsity=0.75, method=method, begin_step=2, end_step=8, frequency=2, min_size=50
  )
  p, state = _run(tx, params, 9)  # the last mask update is at step index end_step
  masks = state.masks
  leaves = jax.tree.leaves(p)
  # Bias (30 elements) is below min_size: not pruned.
  names = [hj.path_name(k) for k, _ in jax.tree_util.tree_flatten_with_path(p)[0]]
  for name, x, m in zip(names, leaves, masks):
    if name.endswith("bias"):
      assert m is None and np.all(np.asarray(x) != 0)
    else:
      n = x.size
      assert int(np.sum(~np.asarray(m))) == int(np.floor(0.75 * n + 1e-6))
      np.testing.assert_array_equal(np.asarray(x)[~np.asarray(m)], 0.0)
  zeros_before = [np.asarray(x) == 0 for x in leaves]
  # More steps after the ramp: same masks, pruned weights exactly 0, others move.
  p2, state2 = _run(tx, p, 5, seed=3, state=state)
  for x0, x, m, m2 in zip(zeros_before, jax.tree.leaves(p2), masks, state2.masks):
    if m is None:
      continue
    np.testing.assert_array_equal(np.asarray(m), np.asarray(m2))
    assert np.all(np.asarray(x)[x0] == 0.0)
    assert np.all(np.asarray(x)[np.asarray(m)] != 0.0)
  assert pruning.leaf_sparsity(p2, state2) == pytest.approx(0.75, abs=0.01)


def test_masks_monotone_during_ramp():
  params = _params(2)
  tx = pruning.prune(optax.sgd(0.05), sparsity=0.9, begin_step=0, end_step=20, frequency=3)
  state = tx.init(params)
  rng = np.random.default_rng(0)
  prev = None
  for _ in range(21):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    upd, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, upd)
    cur = [np.asarray(m) for m in state.masks if m is not None]
    if prev is not None:
      for a, b in zip(prev, cur):
        assert np.all(b <= a)  # kept set only shrinks
    prev = cur


def test_magnitude_prunes_smallest():
  params = _params(4)
  tx = pruning.prune(None, sparsity=0.5, begin_step=0, end_step=0, frequency=1, min_size=50)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  _, state = tx.update(zeros, state, params)
  for x, m in zip(jax.tree.leaves(params), state.masks):
    if m is None:
      continue
    a = np.abs(np.asarray(x)).reshape(-1)
    k = int(np.floor(0.5 * a.size + 1e-6))
    expected = np.ones(a.size, bool)
    expected[np.argsort(a, kind="stable")[:k]] = False
    np.testing.assert_array_equal(np.asarray(m).reshape(-1), expected)


def test_sensitivity_picks_smallest_grad_times_weight():
  params = _params(5)
  rng = np.random.default_rng(9)
  grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
  tx = pruning.prune(
    optax.sgd(0.0),
    sparsity=0.3,
    method="sensitivity",
    begin_step=0,
    end_step=0,
    frequency=1,
    min_size=50,
    grad_decay=0.0,
  )
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  for x, g, m, y in zip(
    jax.tree.leaves(params), jax.tree.leaves(grads), state.masks, jax.tree.leaves(new)
  ):
    if m is None:
      continue
    score = (np.abs(np.asarray(g)) * np.abs(np.asarray(x))).reshape(-1)
    k = int(np.floor(0.3 * score.size + 1e-6))
    pruned = set(np.argsort(score, kind="stable")[:k].tolist())
    got = set(np.flatnonzero(~np.asarray(m).reshape(-1)).tolist())
    assert got == pruned
    # Differs from the magnitude choice (the gradient matters).
    mag = set(np.argsort(np.abs(np.asarray(x)).reshape(-1), kind="stable")[:k].tolist())
    assert got != mag
    np.testing.assert_array_equal(np.asarray(y).reshape(-1)[sorted(got)], 0.0)


def test_pruned_weights_land_on_exact_zero_level():
  params = _params(6)
  tx = pruning.prune(optax.adam(1e-2), sparsity=0.8, begin_step=0, end_step=4, frequency=1)
  p, state = _run(tx, params, 6)
  cbs = hj.fit_codebooks(p, 4, zero_level=True, guard_levels=True, min_size=50)
  for x, cb, m in zip(
    jax.tree.leaves(p), jax.tree.leaves(cbs, is_leaf=lambda v: v is None), state.masks
  ):
    if m is None:
      continue
    idx = np.asarray(hj.quantize_indices(x, cb))
    zero = int(np.flatnonzero(np.asarray(cb) == 0.0)[0])
    assert np.all(idx[~np.asarray(m)] == zero)
    assert np.all(np.asarray(hj.quantize(x, cb))[~np.asarray(m)] == 0.0)


def test_with_hemp_chain_and_config():
  from hemp_jax import train

  c = ml_collections.ConfigDict(
    {
      "num_epochs": 2,
      "optimizer": {
        "name": "adam",
        "learning_rate": 1e-2,
        "schedule": "constant",
        "momentum": 0.0,
        "weight_decay": 0.0,
      },
      "quantizer": {
        "num_levels": 4,
        "method": "uniform",
        "guard_levels": True,
        "zero_level": True,
        "min_size": None,
      },
      "hemp": {
        "mode": "grad",
        "strength": 1.0,
        "order": 2,
        "tuples": "disjoint",
        "rate": "block",
        "pool": "group",
        "refresh_every": 1,
        "lambda_q": 0.1,
      },
      "pruning": {
        "method": "magnitude",
        "sparsity": 0.6,
        "begin_epoch": 0.0,
        "end_epoch": 1.0,
        "frequency": 1,
        "min_size": 50,
        "grad_decay": 0.9,
      },
    }
  )
  tx = train.make_optimizer(c, steps_per_epoch=3)
  p, state = _run(tx, _params(7), 6)
  assert isinstance(state, pruning.PruneState)
  assert hj.codebooks_of(state, _params(7)) is not None  # HEMP state found inside
  assert pruning.leaf_sparsity(p, state) == pytest.approx(0.6, abs=0.01)
  c.pruning.method = "none"
  assert not isinstance(train.make_optimizer(c, 3).init(_params()), pruning.PruneState)


def test_bad_arguments():
  with pytest.raises(ValueError, match="method"):
    pruning.prune(None, sparsity=0.5, method="random")
  with pytest.raises(ValueError, match="sparsity"):
    pruning.prune(None, sparsity=1.0)
  with pytest.raises(ValueError, match="schedule"):
    pruning.prune(None, sparsity=0.5, begin_step=5, end_step=2)
  tx = pruning.prune(None, sparsity=0.5)
  with pytest.raises(ValueError, match="params"):
    tx.init(None)
