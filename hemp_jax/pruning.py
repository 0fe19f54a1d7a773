"""Pruning as optax transformations: magnitude and loss-sensitivity (LOBSTER-style).

:func:`prune` wraps an inner optimizer (like :func:`hemp_jax.hemp_second_step`, because
the sensitivity score needs the raw loss gradient that reaches the wrapper before the
inner chain changes it). It keeps one boolean mask per pruned leaf in its state and,
on every step, returns updates that leave every pruned weight *exactly* 0
(``w + (-w) == 0`` in floating point), so a uniform codebook with an exact zero level
(``quantizer.zero_level=True``) turns them into one frequent symbol for the coder.

Schedule (Zhu & Gupta, 2017): at steps ``begin_step, begin_step + frequency, ...`` up to
``end_step`` the target sparsity of every pruned leaf rises as
``s(t) = s_f * (1 - (1 - p)^3)``, ``p = (t - begin_step) / (end_step - begin_step)``
(``s_f`` at ``t >= end_step``); at each such step the ``floor(s(t) * n)`` weights of the
leaf with the smallest score are pruned, already pruned ones first, so masks only grow
and the sparsity is exact.

Scores: ``"magnitude"``: ``|w|``; ``"sensitivity"``: ``|dL/dw| * |w|`` with ``|dL/dw|`` an
exponential moving average (``grad_decay``; 0 uses the current batch's gradient alone) —
parameters the loss is least sensitive to go first, the idea of LOBSTER (Tartaglione et
al., 2022), which is also the gate of the HEMP paper's recipe.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hemp_jax import groups as grp

NO_PARAMS_MSG = (
  "pruning needs the current parameters: pass `params` to `init` and to "
  "`update(updates, state, params)`."
)

__all__ = [
  "PruneState",
  "prune",
  "sparsity_schedule",
  "leaf_sparsity",
  "PRUNING_METHODS",
]

# Scores of prune (a config adds "none": no pruning).
PRUNING_METHODS = ("magnitude", "sensitivity")


class PruneState(NamedTuple):
  """State of :func:`prune`."""

  count: jax.Array  # steps taken (int32)
  masks: tuple  # one bool mask (True = kept) or None per params leaf
  grad_ema: tuple  # EMA of |dL/dw| per pruned leaf ("sensitivity"), else ()
  inner_state: Any


def sparsity_schedule(step, target: float, begin_step: int, end_step: int):
  """Target sparsity at ``step``: 0 before ``begin_step``, cubic ramp, ``target`` after."""
  step = jnp.asarray(step, jnp.float32)
  span = max(int(end_step) - int(begin_step), 1)
  p = jnp.clip((step - begin_step) / span, 0.0, 1.0)
  s = target * (1.0 - (1.0 - p) ** 3)
  return jnp.where(step < begin_step, 0.0, jnp.where(step >= end_step, target, s))


def _prune_mask(score, mask, sparsity):
  """Keeps all but the ``floor(sparsity * n)`` smallest scores (pruned ones first)."""
  flat = jnp.where(mask.reshape(-1), score.reshape(-1).astype(jnp.float32), -1.0)
  n = flat.size
  k = jnp.floor(sparsity * n + 1e-6).astype(jnp.int32)
  k = jnp.maximum(k, n - jnp.sum(mask))  # never un-prune
  order = jnp.argsort(flat, stable=True)
  ranks = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
  return (ranks >= k).reshape(mask.shape)


def leaf_sparsity(params, state: PruneState | None = None) -> float:
  """Fraction of exact zeros among the pruned leaves (all float leaves if no state)."""
  leaves = jax.tree.leaves(params)
  masks = state.masks if state is not None else [True] * len(leaves)
  zeros = total = 0
  for x, m in zip(leaves, masks):
    if m is None or not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
      continue
    zeros += int(jnp.sum(jnp.asarray(x) == 0))
    total += int(jnp.size(x))
  return zeros / max(total, 1)


def prune(
  inner: optax.GradientTransformation | None = None,
  *,
  sparsity: float,
  method: str = "magnitude",
  begin_step: int = 0,
  end_step: int = 1000,
  frequency: int = 100,
  min_size: int = 100,
  include: str | None = None,
  exclude: str | None = None,
  grad_decay: float = 0.9,
  mask: Any = None,
) -> optax.GradientTransformation:
  """Wraps ``inner`` so that a growing set of weights is pruned to exactly 0.

  Args:
    inner: the optimizer to wrap (any optax transformation; None: identity, then put this
      last in a chain). It sees the incoming gradients with pruned entries zeroed.
    sparsity: final fraction of pruned weights per leaf, in [0, 1).
    method: ``"magnitude"`` (score ``|w|``) or ``"sensitivity"`` (``|dL/dw| * |w|``).
    begin_step, end_step: the ramp of :func:`sparsity_schedule`.
    frequency: masks are updated every this many steps within the ramp (and at
      ``end_step``); they are re-applied at every step.
    min_size: leaves with fewer elements (biases, small tensors) are not pruned.
    include, exclude: regexes on leaf path names (see :func:`hemp_jax.select_groups`).
    grad_decay: EMA decay of ``|dL/dw|`` for the sensitivity score.
    mask: optional boolean pytree (or callable giving one) restricting the pruned leaves.

  Returns:
    An ``optax.GradientTransformation`` with :class:`PruneState`.
  """
  if method not in PRUNING_METHODS:
    raise ValueError(f"method must be one of {PRUNING_METHODS}, got {method!r}")
  if not 0.0 <= sparsity < 1.0:
    raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
  if frequency < 1 or end_step < begin_step or begin_step < 0:
    raise ValueError(
      f"bad schedule: begin_step={begin_step}, end_step={end_step}, frequency={frequency}"
    )
  if not 0.0 <= grad_decay < 1.0:
    raise ValueError(f"grad_decay must be in [0, 1), got {grad_decay}")
  inner = inner if inner is not None else optax.identity()
  sensitivity = method == "sensitivity"

  def init_fn(params):
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    selected = jax.tree.leaves(
      grp.select_groups(params, min_size=min_size, include=include, exclude=exclude)
    )
    if mask is not None:
      extra = jax.tree.leaves(mask(params) if callable(mask) else mask)
      selected = [a and bool(b) for a, b in zip(selected, extra)]
    leaves = jax.tree.leaves(params)
    masks = tuple(jnp.ones(jnp.shape(x), bool) if s else None for s, x in zip(selected, leaves))
    ema = (
      tuple(
        None if m is None else jnp.zeros(jnp.shape(x), jnp.float32) for m, x in zip(masks, leaves)
      )
      if sensitivity
      else ()
    )
    return PruneState(jnp.zeros([], jnp.int32), masks, ema, inner.init(params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    g_leaves, treedef = jax.tree.flatten(updates)
    w_leaves = jax.tree.leaves(params)
    count = state.count
    if sensitivity:
      ema = tuple(
        None if m is None else grad_decay * e + (1 - grad_decay) * jnp.abs(g)
        for m, e, g in zip(state.masks, state.grad_ema, g_leaves)
      )
      # Bias correction of the EMA started at zero.
      corr = 1.0 - grad_decay ** (count.astype(jnp.float32) + 1.0)
    else:
      ema = ()
    on_schedule = (
      (count >= begin_step)
      & (count <= end_step)
      & (((count - begin_step) % frequency == 0) | (count == end_step))
    )
    target = sparsity_schedule(count, sparsity, begin_step, end_step)

    def new_masks():
      out = []
      for i, (m, w) in enumerate(zip(state.masks, w_leaves)):
        if m is None:
          out.append(None)
          continue
        score = jnp.abs(w)
        if sensitivity:
          score = score * ema[i] / corr
        out.append(_prune_mask(score, m, target))
      return tuple(out)

    masks = jax.lax.cond(on_schedule, new_masks, lambda: state.masks)
    masked_g = [g if m is None else jnp.where(m, g, 0) for g, m in zip(g_leaves, masks)]
    inner_u, inner_state = inner.update(treedef.unflatten(masked_g), state.inner_state, params)
    out = [
      u if m is None else jnp.where(m, u, -w).astype(u.dtype)
      for u, w, m in zip(jax.tree.leaves(inner_u), w_leaves, masks)
    ]
    new_state = PruneState(optax.safe_int32_increment(count), masks, ema, inner_state)
    return treedef.unflatten(out), new_state

  return optax.GradientTransformation(init_fn, update_fn)
