"""An accuracy budget instead of a strength sweep: adapt the regularizer strength per epoch.

The user gives an allowed drop of the validation accuracy below a reference (the float
model's, a given number, or the float run's accuracy after the same epoch): the target is
``reference - drop``. After each epoch the loop reports the validation accuracy of the
model as it trains and the size of its decoded file; :func:`budget_update` moves the
strength multiplicatively, up while the accuracy is above the target (room to compress
more), down while it is below,

    strength <- clip(strength * exp(gain * (accuracy - target) / 0.01), lo, hi)

(``gain`` per point of accuracy; one epoch moves it by at most ``max_factor``), and keeps
the smallest decoded model that met the target. Everything here is plain Python on floats,
called once per epoch on the host. :func:`set_strength` puts the strength into the
optimizer state — :func:`hemp_jax.hemp`'s, or an ``optax.inject_hyperparams`` one::

  tx = hj.hemp(optax.sgd(0.1, 0.9), 1.0, total_steps=n)
  budget = hj.budget.budget_init(1.0, reference=float_val, drop=1.0)
  ...  # after each epoch:
  budget = hj.budget.budget_update(budget, epoch=e, accuracy=acc, size=nbytes)
  opt_state = hj.budget.set_strength(opt_state, budget.strength)
"""

from __future__ import annotations

import inspect
import math
from typing import NamedTuple

import jax.numpy as jnp

from hemp_jax import regularizer as reg

__all__ = ["BudgetState", "budget_init", "budget_update", "meets", "set_strength", "STATIC_ARGS"]

#: Every argument of :func:`hemp_jax.add_entropy_grad` but ``strength``: the
#: ``static_args`` of ``optax.inject_hyperparams`` so that only the strength is injected.
STATIC_ARGS = tuple(
  n for n in inspect.signature(reg.add_entropy_grad).parameters if n != "strength"
)


class BudgetState(NamedTuple):
  """The controller's state: the next strength, the target and what it has seen.

  Attributes:
    strength: the strength for the next epoch.
    target: the validation accuracy the output must reach (``reference - drop``).
    best: ``(epoch, strength, decoded accuracy, size)`` of the smallest model that met
      the target so far, or None.
    trace: one ``(epoch, strength, decoded accuracy, size)`` per reported epoch.
    drop: the allowed drop in points.
  """

  strength: float
  target: float
  best: tuple | None = None
  trace: tuple = ()
  drop: float = 0.0  # points below the reference (a moving reference: see budget_update)


def budget_init(strength: float, *, reference: float, drop: float) -> BudgetState:
  """A controller starting at ``strength`` that holds ``reference - drop``.

  Args:
    strength: the first epoch's strength (> 0).
    reference: the accuracy the budget is measured from (a fraction, e.g. 0.9205).
    drop: the allowed drop in points of accuracy (e.g. 1.0 for one percentage point).

  Raises:
    ValueError: a non-positive strength, a reference outside [0, 1] or a negative drop.
  """
  if not strength > 0:
    raise ValueError(f"strength must be > 0, got {strength}")
  if not 0.0 <= reference <= 1.0:
    raise ValueError(f"reference must be an accuracy in [0, 1], got {reference}")
  if not drop >= 0:
    raise ValueError(f"drop must be >= 0 points, got {drop}")
  return BudgetState(float(strength), float(reference) - float(drop) / 100.0, drop=float(drop))


def meets(state: BudgetState, accuracy: float, margin: float = 0.0) -> bool:
  """Whether a model of validation ``accuracy`` can be the output: at least ``margin``
  points above ``state.target``."""
  return float(accuracy) >= state.target + float(margin) / 100.0


def budget_update(
  state: BudgetState,
  *,
  epoch: int,
  accuracy: float,
  size: float,
  gain: float = 0.5,
  lo: float = 1e-3,
  hi: float = 1e3,
  reference: float | None = None,
  decoded: float | None = None,
  max_factor: float = 2.0,
  margin: float = 0.0,
) -> BudgetState:
  """The state after an epoch trained at ``state.strength``.

  Args:
    state: the controller's state.
    epoch: the epoch just finished (recorded).
    accuracy: the decoded model's validation accuracy after it (a fraction).
    size: its size (file bytes, or bits/param): the smallest one within the target wins.
    gain: log-strength change per point of accuracy above (or below) the target.
    lo, hi: the strength's range.
    max_factor: the most the strength moves in one epoch (up or down): one noisy epoch
      far above the target must not throw the strength to where the network dies.
    reference: a reference that moves with training: the float model's accuracy after
      the same epoch, for a run trained from scratch (early epochs of any run are less
      accurate than its last): the strength steers to ``reference - drop`` this epoch.
      The output is still judged against ``state.target`` (the float model's final
      accuracy minus the drop: an early epoch held against a weaker reference would
      otherwise win with an accuracy the finished float model beats by more).
    decoded: the decoded model's accuracy when it is not ``accuracy`` (before a
      quantization-aware finish the model as trained is continuous, and what it decodes
      to is not yet what the finish will make of it): the strength follows ``accuracy``,
      the smallest model is chosen among those whose ``decoded`` accuracy met the target.
    margin: points above the target that the accuracy is held to: the strength steers
      there, and only a model at least that far above the target can be the output
      (e.g. a standard error of the validation accuracy: chosen among epochs and fed
      back to the strength on the same images, a model that meets the target there by
      a hair is below it on unseen data more often than not).

  Returns:
    The new state: next strength, best, trace.
  """
  decoded = float(accuracy if decoded is None else decoded)
  record = (int(epoch), state.strength, decoded, float(size))
  best = state.best
  if meets(state, decoded, margin) and (best is None or size < best[3]):
    best = record
  steer = state.target if reference is None else float(reference) - state.drop / 100.0
  limit = math.log(max_factor)
  step = min(max(gain * (float(accuracy) - steer - float(margin) / 100.0) / 0.01, -limit), limit)
  strength = min(max(state.strength * math.exp(step), lo), hi)
  return BudgetState(strength, state.target, best, state.trace + (record,), state.drop)


def set_strength(opt_state, strength: float):
  """``opt_state`` with the HEMP strength set to ``strength`` (for the next steps).

  The strength is the ``strength`` field of :func:`hemp_jax.hemp`'s state, or the injected
  hyperparameter of ``optax.inject_hyperparams(hj.add_entropy_grad, ...)``: found anywhere
  in the state by name (``optax.tree_utils``). ``nnx.Optimizer.opt_state`` holds it in a
  Variable, which is set in place (and the same state returned).

  Raises:
    ValueError: no strength in ``opt_state``, or more than one.
  """
  from flax import nnx
  from optax import tree_utils as otu

  try:
    found = otu.tree_get(opt_state, "strength")
  except KeyError as e:
    raise ValueError(f"more than one strength in opt_state ({e})") from None
  if found is None:
    raise ValueError(
      "no HEMP strength in opt_state: use hj.hemp(...) or "
      "optax.inject_hyperparams(hj.add_entropy_grad, static_args=hj.budget.STATIC_ARGS)"
    )
  if isinstance(found, nnx.Variable):
    found.set_value(jnp.asarray(strength, jnp.asarray(found.get_value()).dtype))
    return opt_state
  return otu.tree_set(opt_state, strength=jnp.asarray(strength, jnp.asarray(found).dtype))
