"""The optax chain of a training run: plain, with the entropy gradient, or the paper's update."""

from __future__ import annotations

from typing import Any

import optax

from hemp_jax import pruning as pruning_lib
from hemp_jax import regularizer as reg

__all__ = ["HEMP_MODES", "OPTIMIZERS", "SCHEDULES", "learning_rate", "optimizer_chain"]

# "none": the plain optimizer; "grad": add_entropy_grad in front of it; "paper":
# paper_recipe (DESIGN.md §2).
HEMP_MODES = ("none", "grad", "paper")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")


def learning_rate(value: float, schedule: str = "constant", total_steps: int = 1):
  """``value``, or a cosine decay from it to 0 over ``total_steps`` (``"cosine"``)."""
  if schedule == "cosine":
    return optax.cosine_decay_schedule(value, total_steps)
  return value


def optimizer_chain(
  hemp_mode: str = "none",
  *,
  name: str = "sgd",
  learning_rate: Any,
  momentum: float | None = 0.0,
  nesterov: bool = False,
  weight_decay: float | None = 0.0,
  regularizer: dict | None = None,
  pruning: dict | None = None,
) -> optax.GradientTransformation:
  """The optimizer of a run.

  Args:
    hemp_mode: ``"none"`` — the plain optimizer (baseline); ``"grad"`` —
      :func:`hemp_jax.hemp` around ``chain(weight decay, optimizer)`` (the entropy term,
      then the quantization-aware finish); ``"paper"`` —
      :func:`hemp_jax.paper_recipe` (SGD + the gated unscaled step; ``name`` and
      ``nesterov`` are not used).
    name: ``"sgd"`` or ``"adam"``.
    learning_rate: a float or an optax schedule (:func:`learning_rate`).
    momentum, nesterov, weight_decay: of the optimizer (``momentum`` 0: none).
    regularizer: keyword arguments of :func:`hemp_jax.hemp` (``"grad"``) or
      of :func:`hemp_jax.paper_recipe` (``"paper"``) other than the optimizer's.
    pruning: keyword arguments of :func:`hemp_jax.pruning.prune` wrapping the chain, or
      None.
  """
  regularizer = regularizer or {}
  if hemp_mode == "paper":
    tx = reg.paper_recipe(
      learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay, **regularizer
    )
    return _with_pruning(tx, pruning)
  if name == "sgd":
    base = optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov)
  elif name == "adam":
    base = optax.adam(learning_rate)
  else:
    raise ValueError(f"optimizer.name must be 'sgd' or 'adam', got {name!r}")
  if hemp_mode not in HEMP_MODES:
    raise ValueError(f"hemp.mode must be 'none', 'grad' or 'paper', got {hemp_mode!r}")
  # A chain even of one: the state layout of checkpoints written before (a tuple).
  decay = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
  tx = optax.chain(*decay, base)
  if hemp_mode == "grad":
    tx = reg.hemp(tx, **regularizer)
  return _with_pruning(tx, pruning)


def _with_pruning(tx: optax.GradientTransformation, pruning: dict | None):
  return tx if pruning is None else pruning_lib.prune(tx, **pruning)
