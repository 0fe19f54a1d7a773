"""The accuracy-budget controller: it reaches and holds the target, keeps the smallest
model within it, and its strength reaches an optax state through inject_hyperparams."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hemp_jax as hj
from hemp_jax import budget as B


def _accuracy(strength):  # a model that loses accuracy as the strength grows
  return 0.95 - 0.02 * math.log1p(strength)


def _size(strength):  # and gets smaller
  return 10_000 / (1 + strength)


@pytest.mark.parametrize("start", [0.01, 1.0, 100.0])
def test_controller_reaches_and_holds_the_target(start):
  state = B.budget_init(start, reference=0.95, drop=3.0)
  assert state.target == pytest.approx(0.92)
  star = math.exp(1.5) - 1  # _accuracy(star) == 0.92
  for epoch in range(1, 41):
    s = state.strength
    state = B.budget_update(state, epoch=epoch, accuracy=_accuracy(s), size=_size(s))
  late = [t[1] for t in state.trace[-10:]]
  assert all(abs(s / star - 1) < 0.05 for s in late), late
  assert all(abs(_accuracy(s) - 0.92) < 0.001 for s in late)
  feasible = [t for t in state.trace if t[2] >= state.target]
  assert state.best in feasible
  assert state.best[3] == min(t[3] for t in feasible)
  assert len(state.trace) == 40 and state.trace[0][0] == 1


def test_controller_steps_and_bounds():
  s = B.budget_init(1.0, reference=0.9, drop=1.0)
  up = B.budget_update(s, epoch=1, accuracy=s.target + 0.01, size=1.0, gain=0.5)
  down = B.budget_update(s, epoch=1, accuracy=s.target - 0.01, size=1.0, gain=0.5)
  assert up.strength == pytest.approx(math.exp(0.5))
  assert down.strength == pytest.approx(math.exp(-0.5))
  assert up.best is not None and down.best is None  # below the target: not a candidate
  # A margin holds the accuracy that far above the target: the strength steers there,
  # and a model below it is not a candidate.
  held = B.budget_update(s, epoch=1, accuracy=s.target + 0.005, size=1.0, gain=0.5, margin=1.0)
  assert held.strength == pytest.approx(math.exp(-0.25)) and held.best is None
  above = B.budget_update(s, epoch=1, accuracy=s.target + 0.011, size=1.0, margin=1.0)
  assert above.best is not None and above.strength > 1.0
  capped = B.budget_update(s, epoch=1, accuracy=1.0, size=1.0, hi=2.0)
  assert capped.strength == 2.0
  for bad in (dict(strength=0.0), dict(reference=1.5), dict(drop=-1.0)):
    kw = dict(strength=1.0, reference=0.9, drop=1.0) | bad
    with pytest.raises(ValueError):
      B.budget_init(kw.pop("strength"), **kw)


def test_strength_reaches_the_optax_state():
  params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(64, 32)), jnp.float32)}
  hemp = optax.inject_hyperparams(hj.add_entropy_grad, static_args=B.STATIC_ARGS)
  tx = optax.chain(hemp(strength=1.0, order=3, num_levels=4), optax.sgd(0.1))
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  update = jax.jit(tx.update)
  u1, _ = update(zero, state, params)
  state = optax.tree_utils.tree_set(state, strength=jnp.asarray(5.0))
  u5, state = update(zero, state, params)
  np.testing.assert_allclose(u5["w"], 5.0 * u1["w"], rtol=1e-5, atol=1e-8)
  assert float(jnp.abs(u1["w"]).sum()) > 0
  assert hj.codebooks_of(state, params)["w"].shape == (6,)


def test_moving_reference_steers_each_epoch_and_the_output_meets_the_final_target():
  """A run from scratch is steered against the float run's accuracy after the same epoch;
  the output must meet the target of the float model's final accuracy."""
  s = B.budget_init(1.0, reference=0.9, drop=1.0)
  s = B.budget_update(s, epoch=1, accuracy=0.80, size=5.0, reference=0.805)
  assert s.target == pytest.approx(0.89)
  assert s.strength == pytest.approx(math.exp(0.5 * 0.5))  # 0.5 points above 0.795
  assert s.best is None  # below the final target
  s = B.budget_update(s, epoch=2, accuracy=0.885, size=4.0, reference=0.88, margin=0.2)
  assert s.strength == pytest.approx(math.exp(0.25 + 0.5 * 1.3))  # 1.3 points above 0.872
  assert s.best is None  # 0.885 < 0.89 + 0.002
  s = B.budget_update(s, epoch=3, accuracy=0.893, size=3.0, reference=0.9, margin=0.2)
  assert s.best == (3, s.trace[-1][1], 0.893, 3.0) and s.target == pytest.approx(0.89)
