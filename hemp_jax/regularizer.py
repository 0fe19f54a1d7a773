"""HEMP as optax gradient transformations, and a pure loss-side penalty.

Two ways to train with the entropy regularizer:

* :func:`add_entropy_grad` — the simple, general mode: adds ``strength * grad H(params)``
  to the incoming updates, like ``optax.add_decayed_weights`` adds weight decay. Put it
  before any optimizer in an ``optax.chain``; equivalent to adding ``strength * H`` to the
  loss (:func:`entropy_penalty`) but without touching the loss function.
* :func:`hemp_second_step` / :func:`paper_recipe` — the update of the paper's code
  (DESIGN.md §2): after the inner optimizer's step (SGD), a second step that is *not* scaled
  by the learning rate, ``w <- w - S * (lambda_h grad H(w) + lambda_q (w - Q(w)))`` with
  the sensitivity gate ``S = 1 - |dL/dw| / max|dL/dw|`` per tensor, then ``w`` clipped to
  the range of the real levels. It wraps the inner optimizer because the gate needs the
  raw loss gradient while the pull acts on the weights after the inner step.

State layout: codebooks are fitted at ``init`` and stored as a tuple with one entry per
leaf of ``jax.tree.leaves(params)`` (a codebook, or ``None`` for leaves kept in float).
A flat tuple, not a tree, because ``nnx.Optimizer`` hands ``init`` a state whose leaves
are wrapped in ``nnx.Param`` nodes and ``update`` the bare arrays: the leaf order is the
same, the tree structure is not. :func:`codebooks_tree` rebuilds the pytree.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hemp_jax import entropy as ent
from hemp_jax import groups as grp
from hemp_jax import pytrees
from hemp_jax import quantization as q

NO_PARAMS_MSG = (
  "HEMP transformations need the current parameters: pass `params` to "
  "`init` and to `update(updates, state, params)`."
)

__all__ = [
  "AddEntropyGradState",
  "HempSecondStepState",
  "QuantizerConfig",
  "add_entropy_grad",
  "hemp",
  "HempState",
  "entropy_penalty",
  "hemp_second_step",
  "paper_recipe",
  "codebooks_tree",
  "codebooks_of",
  "finalize",
  "fit_leaf_codebooks",
  "authors_entropy_scale",
  "is_degenerate",
  "LAMBDA_UNITS",
  "DEGENERATE",
]

# Units of ``lambda_h`` in :func:`hemp_second_step` / :func:`paper_recipe`.
LAMBDA_UNITS = ("per_param", "authors")


class QuantizerConfig(NamedTuple):
  """How codebooks are fitted (see :func:`hemp_jax.fit_codebooks`); the defaults are
  :func:`hemp`'s."""

  num_levels: int = 8
  method: str = "uniform"
  guard_levels: bool = True
  zero_level: bool = True
  min_size: int | None = None
  include: str | None = None
  exclude: str | None = None
  lloyd_method: str = "empirical"


class EntropyConfig(NamedTuple):
  """Which entropy is estimated (see :func:`hemp_jax.tree_entropy`)."""

  order: int = 3
  tuples: str = "disjoint"
  rate: str = "block"
  pool: str = "group"


class AddEntropyGradState(NamedTuple):
  """State of :func:`add_entropy_grad`."""

  count: jax.Array  # updates applied so far (int32)
  codebooks: tuple  # one codebook or None per params leaf
  entropy_grad: tuple  # cached grad H per leaf (refresh_every > 1), else ()
  pending: tuple = ()  # per leaf: codebook not fitted yet (degenerate="defer"), else ()


class HempSecondStepState(NamedTuple):
  """State of :func:`hemp_second_step`."""

  count: jax.Array
  codebooks: tuple
  entropy_grad: tuple  # cached grad H per leaf (None for float leaves)
  targets: tuple  # cached Q(w) per leaf (None for float leaves)
  inner_state: Any
  pending: tuple = ()  # per leaf: codebook not fitted yet (degenerate="defer"), else ()


def _mask_leaves(mask, params) -> list | None:
  if mask is None:
    return None
  if callable(mask):
    mask = mask(params)
  return jax.tree.leaves(mask)


DEGENERATE = ("defer", "float", "keep")


def is_degenerate(x, rel_tol: float = 1e-6) -> jax.Array:
  """True where a tensor's values span (near) nothing: ``max - min <= rel_tol * max(1, |x|max)``.

  Flax initializes biases (and batch-norm scales) to constants: a codebook fitted there
  has levels within +-0.001 of the constant and cannot hold the trained values.
  """
  x = jnp.asarray(x, jnp.float32)
  span = jnp.max(x) - jnp.min(x)
  return span <= rel_tol * jnp.maximum(1.0, jnp.max(jnp.abs(x)))


def _check_degenerate(degenerate: str, fit_step: int | None):
  if degenerate not in DEGENERATE:
    raise ValueError(f"degenerate must be one of {DEGENERATE}, got {degenerate!r}")
  if degenerate == "defer" and (fit_step is None or int(fit_step) < 1):
    raise ValueError(
      f"degenerate='defer' needs degenerate_fit_step >= 1 (the step at which the codebooks "
      f"of constant leaves are fitted), got {fit_step!r}"
    )


def _pending_flags(params, codebooks: tuple, degenerate: str) -> tuple:
  """Per quantized leaf, whether its codebook waits for the warm-up (``()`` if unused)."""
  if degenerate != "defer":
    return ()
  return tuple(
    None if cb is None else is_degenerate(x) for x, cb in zip(jax.tree.leaves(params), codebooks)
  )


def fit_leaf_codebooks(
  params,
  quantizer: QuantizerConfig,
  mask=None,
  *,
  order: int = 1,
  tuples: str = "disjoint",
  degenerate: str = "keep",
) -> tuple:
  """Codebooks for every leaf of ``params`` (flat tuple, ``None`` for float leaves).

  Leaves are selected by ``quantizer`` (size threshold, include/exclude regexes on path
  names) and, if given, by ``mask`` (a boolean pytree like ``params`` or a callable
  returning one); leaves too short for one tuple of ``order`` stay in float.
  ``degenerate="float"`` also leaves in float every leaf whose values are constant
  (:func:`is_degenerate`; needs concrete params); "keep" and "defer" fit them like the
  others (a placeholder for "defer", refitted after the warm-up by the transforms).
  """
  min_size = quantizer.min_size
  if min_size is None:
    min_size = 10 * quantizer.num_levels + 1
  min_size = max(min_size, order)
  selected = jax.tree.leaves(
    grp.select_groups(
      params, min_size=min_size, include=quantizer.include, exclude=quantizer.exclude
    )
  )
  extra = _mask_leaves(mask, params)
  if extra is not None:
    if len(extra) != len(selected):
      raise ValueError(f"mask has {len(extra)} leaves but params have {len(selected)}")
    selected = [a and bool(b) for a, b in zip(selected, extra)]
  if not any(selected):
    raise ValueError(
      "no parameter is selected for quantization: check min_size, include/exclude and mask"
    )
  leaves = jax.tree.leaves(params)
  if degenerate == "float":
    try:
      selected = [sel and not bool(is_degenerate(x)) for sel, x in zip(selected, leaves)]
    except jax.errors.ConcretizationTypeError:
      raise ValueError("degenerate='float' needs concrete params (call init outside jit)") from None
  return tuple(_fit_one(x, quantizer) if sel else None for sel, x in zip(selected, leaves))


def _fit_one(x, quantizer: QuantizerConfig) -> jax.Array:
  """One leaf's codebook as ``quantizer`` describes it."""
  lloyd = {"lloyd_method": quantizer.lloyd_method} if quantizer.method == "lloyd_max" else {}
  return grp.fit_codebook(
    x,
    quantizer.num_levels,
    method=quantizer.method,
    guard_levels=quantizer.guard_levels,
    zero_level=quantizer.zero_level,
    **lloyd,
  )


def codebooks_tree(params, codebooks: tuple) -> Any:
  """Rebuilds a codebooks pytree like ``params`` from a state's flat codebook tuple."""
  treedef = jax.tree.structure(params)
  if treedef.num_leaves != len(codebooks):
    raise ValueError(
      f"params have {treedef.num_leaves} leaves but the state holds "
      f"{len(codebooks)} codebooks: not the params this state was made for"
    )
  return treedef.unflatten(list(codebooks))


def codebooks_of(opt_state, params) -> Any:
  """The codebooks of the HEMP transform inside an optax state, as a pytree like ``params``.

  The HEMP state (of :func:`add_entropy_grad`, :func:`hemp_second_step` or
  :func:`paper_recipe`) is found anywhere in ``opt_state`` by its ``codebooks`` field
  (``optax.tree_utils.tree_get``): inside chains, ``optax.masked``,
  ``optax.inject_hyperparams``, ``optax.MultiSteps`` or :func:`hemp_jax.prune`. Flax's
  wrappers are taken off first (``nnx.Optimizer.opt_state`` holds every array in a
  ``Variable``).

  Args:
    opt_state: an optax state, or ``nnx.Optimizer.opt_state``, or a Linen
      ``TrainState.opt_state``.
    params: what the optimizer was initialized on: a params pytree, an ``nnx.State`` or
      the ``nnx.Module`` (its ``nnx.Param`` variables).

  Returns:
    A pytree like :func:`hemp_jax.pytrees.plain_params` of ``params`` with a codebook (1-D array) for
    every quantized leaf and None for the others (what :func:`hemp_jax.compress` takes).

  Raises:
    ValueError: ``opt_state`` holds no HEMP state, or more than one.
  """
  from optax import tree_utils as otu

  state = pytrees.plain_params(opt_state)
  try:
    codebooks = otu.tree_get(state, "codebooks")
  except KeyError as e:  # several states have the field
    raise ValueError(f"more than one HEMP state in opt_state ({e})") from None
  if codebooks is None:
    raise ValueError(
      "no HEMP state in opt_state: put hj.add_entropy_grad (or hj.paper_recipe) in the chain"
    )
  pending = otu.tree_get(state, "pending")
  if pending:
    codebooks = [
      cb if p is None or not bool(np.asarray(p)) else None for cb, p in zip(codebooks, pending)
    ]
  return codebooks_tree(pytrees.plain_params(params), tuple(codebooks))


def finalize(
  variables, opt_state, path=None, *, params=None, max_order: int | None = None
) -> bytes:
  """The ``.hemp`` file of a model trained with a HEMP optimizer: its end product.

  Every leaf the HEMP state quantizes is coded on its codebook (:func:`codebooks_of`); the
  other variables (float leaves, BatchNorm statistics) are stored exactly. After
  :func:`hemp`'s finish the params already are the decoded values.

  Args:
    variables: an ``nnx.Module`` (all its variables but the random-number state), a Linen
      variables dict (``{"params": ..., "batch_stats": ...}``), or a params pytree.
    opt_state: the optimizer state holding the HEMP state (``nnx.Optimizer.opt_state``,
      ``TrainState.opt_state``, an optax state).
    path: where to write the file (atomically), or None.
    params: what the optimizer was initialized on, when it is not ``variables``' params
      (a Module's ``nnx.Param`` state, a dict's ``"params"`` entry, else ``variables``).
    max_order: the coder's highest context order (default: the coder's).

  Returns:
    The file's bytes; it decodes with :func:`hemp_jax.decompress` (and
    :func:`hemp_jax.load_into` into a template).
  """
  from flax import nnx

  from hemp_jax import codec
  from hemp_jax.fileio import write_atomic

  prefix = ()
  if isinstance(variables, nnx.Module):
    params = nnx.state(variables, nnx.Param) if params is None else params
    variables = nnx.state(variables, nnx.Not(nnx.RngState))
  elif params is None and isinstance(variables, dict) and "params" in variables:
    params, prefix = variables["params"], ("params",)
  tree = pytrees.plain_params(variables)
  params = tree if params is None else params
  by_name = {}
  for p, cb in jax.tree_util.tree_flatten_with_path(codebooks_of(opt_state, params))[0]:
    by_name["/".join(str(e) for e in prefix + pytrees.path_entries(p))] = cb
  codebooks = jax.tree_util.tree_map_with_path(lambda p, _: by_name.get(pytrees.path_name(p)), tree)
  kwargs = {} if max_order is None else {"max_order": max_order}
  blob = codec.compress(jax.tree.map(np.asarray, tree), codebooks, **kwargs)
  if path is not None:
    write_atomic(os.fspath(path), blob)
  return blob


def entropy_penalty(
  params,
  codebooks,
  *,
  strength: float = 1.0,
  order: int = 3,
  tuples: str = "disjoint",
  rate: str = "block",
  pool: str = "group",
) -> jax.Array:
  """``strength * H(params)`` in bits per quantized parameter, for adding to a loss.

  ``codebooks`` is a pytree like ``params`` (see :func:`hemp_jax.fit_codebooks`) or the
  flat tuple held in an optimizer state.
  """
  if isinstance(codebooks, tuple) and not hasattr(codebooks, "_fields"):
    codebooks = codebooks_tree(params, codebooks)
  return strength * ent.tree_entropy(
    params, codebooks, order=order, tuples=tuples, rate=rate, pool=pool
  )


def _entropy_grad(params, codebooks: tuple, entropy: EntropyConfig) -> tuple:
  """grad H per leaf (flat tuple; None where the leaf is kept in float)."""
  # On flat leaf lists: the same code serves Linen dicts, NNX states and wrapped leaves.
  leaves = jax.tree.leaves(params)
  g = jax.grad(lambda ls: ent.tree_entropy(ls, list(codebooks), **entropy._asdict()))(leaves)
  return tuple(gl if cb is not None else None for gl, cb in zip(g, codebooks))


def _zeros_like_quantized(params, codebooks: tuple) -> tuple:
  """Zeros shaped like each quantized leaf (None elsewhere): a refresh cache before its
  first fill. Step 0 always refreshes, so ``init`` need not compute (or compile) grad H."""
  return tuple(
    None if cb is None else jnp.zeros_like(x) for x, cb in zip(jax.tree.leaves(params), codebooks)
  )


def _every(count, period: int | None):
  return jnp.asarray(False) if not period else (count % period) == 0


def _refit(params, codebooks: tuple, quantizer: QuantizerConfig, pending: tuple = ()) -> tuple:
  """Codebooks refitted on ``params`` (leaves still pending keep their placeholder)."""
  flags = pending or (None,) * len(codebooks)
  out = []
  for x, cb, p in zip(jax.tree.leaves(params), codebooks, flags):
    if cb is None:
      out.append(None)
      continue
    new = _fit_one(x, quantizer).astype(cb.dtype)
    out.append(new if p is None else jnp.where(p, cb, new))
  return tuple(out)


def _cover(params, codebooks: tuple, quantizer: QuantizerConfig, pending: tuple) -> tuple:
  """Codebooks refitted on ``params`` where the values leave ``[c_0, c_{K-1}]``."""
  refit = _refit(params, codebooks, quantizer, pending)
  out = []
  for x, cb, new in zip(jax.tree.leaves(params), codebooks, refit):
    if cb is None:
      out.append(None)
      continue
    covered = (jnp.min(x) >= cb[0]) & (jnp.max(x) <= cb[-1])
    out.append(jnp.where(covered, cb, new))
  return tuple(out)


def _maybe_refit(count, params, codebooks, quantizer, refit_every):
  if not refit_every:
    return codebooks
  return jax.lax.cond(
    (count > 0) & _every(count, refit_every),
    lambda: _refit(params, codebooks, quantizer),
    lambda: codebooks,
  )


def _fit_pending(count, params, codebooks: tuple, pending: tuple, quantizer, fit_step):
  """At ``count == fit_step`` fits the codebooks still pending; returns (codebooks, pending).

  A leaf whose values still span nothing then (a bias in front of a normalization, which
  the loss never moves) stays pending for good: no codebook, no entropy gradient, stored
  in float. A codebook fitted on it would have levels ~1e-8 apart, and the entropy
  gradient, which scales with the inverse level spacing, would throw it far away.
  """
  if not pending:
    return codebooks, pending
  now = count == fit_step
  leaves = jax.tree.leaves(params)
  still = tuple(None if p is None else is_degenerate(x) for x, p in zip(leaves, pending))

  def fit():
    return tuple(
      cb if p is None else jnp.where(p & ~d, _fit_one(x, quantizer).astype(cb.dtype), cb)
      for x, cb, p, d in zip(leaves, codebooks, pending, still)
    )

  codebooks = jax.lax.cond(now, fit, lambda: codebooks)
  pending = tuple(None if p is None else p & (~now | d) for p, d in zip(pending, still))
  return codebooks, pending


def _drop_pending(grads: tuple, pending: tuple) -> tuple:
  """Zero entropy gradient on leaves whose codebook is not fitted yet."""
  if not pending:
    return grads
  return tuple(
    g if (g is None or p is None) else jnp.where(p, jnp.zeros_like(g), g)
    for g, p in zip(grads, pending)
  )


def add_entropy_grad(
  strength: float,
  *,
  order: int = 3,
  num_levels: int = 4,
  method: str = "uniform",
  guard_levels: bool = True,
  zero_level: bool = False,
  min_size: int | None = None,
  include: str | None = None,
  exclude: str | None = None,
  tuples: str = "disjoint",
  rate: str = "block",
  pool: str = "group",
  refresh_every: int = 1,
  refit_every: int | None = None,
  mask: Any = None,
  lloyd_method: str = "empirical",
  degenerate: str = "keep",
  degenerate_fit_step: int | None = None,
) -> optax.GradientTransformation:
  """Adds ``strength * grad H(params)`` to the updates (the HEMP regularizer).

  ``H`` is the soft order-n entropy of the quantized leaves, bits per quantized parameter
  (:func:`hemp_jax.tree_entropy`). Codebooks are fitted from the params at ``init`` and
  frozen (or refitted every ``refit_every`` steps).

  Args:
    strength: lambda, the weight of the entropy term.
    order: tuple length n.
    num_levels: N real levels per group (K = N + 2 with guard levels).
    method: codebook fitter, "uniform" or "lloyd_max".
    guard_levels: the paper's two guard levels.
    zero_level: uniform codebooks with an exact zero (for pruning).
    min_size: leaves with fewer elements stay in float (default ``10 N + 1``).
    include, exclude: regexes on leaf path names.
    tuples, rate, pool: see :func:`hemp_jax.tree_entropy`.
    refresh_every: recompute ``grad H`` every this many steps and reuse it in between
      (the paper: 10); 1 recomputes every step.
    refit_every: refit the codebooks every this many steps (None: frozen).
    mask: like ``optax.add_decayed_weights``: a boolean pytree or a callable giving one;
      only True leaves are regularized (combined with the selection above).
    lloyd_method: "empirical" or "gaussian" for ``method="lloyd_max"``.
    degenerate: leaves whose starting values are constant (Flax's zero biases), whose
      codebook would hold nothing: "defer" — no entropy gradient on them until step
      ``degenerate_fit_step``, where their codebook is fitted on the weights of then;
      "float" — kept in float; "keep" — fitted at init like the others (levels within
      +-0.001 of the constant).
    degenerate_fit_step: the warm-up length for ``degenerate="defer"`` (steps).

  Returns:
    An ``optax.GradientTransformation``.
  """
  quantizer = QuantizerConfig(
    num_levels, method, guard_levels, zero_level, min_size, include, exclude, lloyd_method
  )
  entropy = EntropyConfig(order, tuples, rate, pool)
  _check_entropy_options(entropy, refresh_every, degenerate, degenerate_fit_step)

  def init_fn(params):
    return _entropy_init(params, quantizer, entropy, mask, refresh_every, degenerate)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    refit_now = None
    if refit_every:
      refit_now = (state.count > 0) & _every(state.count, refit_every)
    grads, state = _entropy_step(
      state,
      params,
      quantizer=quantizer,
      entropy=entropy,
      refresh_every=refresh_every,
      refit_now=refit_now,
      fit_step=degenerate_fit_step,
    )
    leaves, treedef = jax.tree.flatten(updates)
    new = [u if g is None else u + strength * g.astype(u.dtype) for u, g in zip(leaves, grads)]
    return treedef.unflatten(new), state

  return optax.GradientTransformation(init_fn, update_fn)


def _check_entropy_options(entropy: EntropyConfig, refresh_every, degenerate, fit_step) -> None:
  """The checks of :func:`add_entropy_grad`'s options (also :func:`hemp`'s)."""
  ent.check_options(entropy.order, entropy.tuples, entropy.rate)
  if refresh_every < 1:
    raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
  _check_degenerate(degenerate, fit_step)


def _entropy_init(
  params, quantizer: QuantizerConfig, entropy: EntropyConfig, mask, refresh_every, degenerate
) -> AddEntropyGradState:
  """:func:`add_entropy_grad`'s state at ``init``: codebooks fitted, cache, pending flags."""
  if params is None:
    raise ValueError(NO_PARAMS_MSG)
  codebooks = fit_leaf_codebooks(
    params, quantizer, mask, order=entropy.order, tuples=entropy.tuples, degenerate=degenerate
  )
  cached = _zeros_like_quantized(params, codebooks) if refresh_every > 1 else ()
  pending = _pending_flags(params, codebooks, degenerate)
  return AddEntropyGradState(jnp.zeros([], jnp.int32), codebooks, cached, pending)


def _entropy_step(
  state: AddEntropyGradState,
  params,
  *,
  quantizer: QuantizerConfig,
  entropy: EntropyConfig,
  refresh_every: int,
  refit_now,
  fit_step: int | None,
) -> tuple:
  """One step of :func:`add_entropy_grad`'s state: ``(grad H per leaf, next state)``.

  The codebooks are refitted on ``params`` where ``refit_now`` (a traced bool, or None:
  never), the pending ones fitted at ``fit_step``, then ``grad H`` is computed (or taken
  from the cache between refreshes).
  """
  codebooks = state.codebooks
  if refit_now is not None:
    codebooks = jax.lax.cond(
      refit_now, lambda: _refit(params, codebooks, quantizer, state.pending), lambda: codebooks
    )
  codebooks, pending = _fit_pending(
    state.count, params, codebooks, state.pending, quantizer, fit_step
  )
  if refresh_every > 1:
    refresh_now = _every(state.count, refresh_every)
    if pending:
      refresh_now = refresh_now | (state.count == fit_step)
    if refit_now is not None:
      refresh_now = refresh_now | refit_now
    grads = jax.lax.cond(
      refresh_now,
      lambda: _drop_pending(_entropy_grad(params, codebooks, entropy), pending),
      lambda: state.entropy_grad,
    )
    cached = grads
  else:
    grads = _drop_pending(_entropy_grad(params, codebooks, entropy), pending)
    cached = ()
  count = optax.safe_int32_increment(state.count)
  return grads, AddEntropyGradState(count, codebooks, cached, pending)


class HempState(NamedTuple):
  """State of :func:`hemp`."""

  count: jax.Array  # steps taken (int32)
  strength: jax.Array  # the entropy term's weight (float32; hemp_jax.budget.set_strength sets it)
  latent: tuple  # per leaf: the continuous weights (the finish trains these; params are Q of them)
  entropy: AddEntropyGradState  # codebooks, pending flags, cached grad H
  inner: Any  # the wrapped optimizer's state


def hemp(
  optimizer: optax.GradientTransformation,
  strength: float = 1.0,
  *,
  total_steps: int,
  finish_steps: int | None = None,
  warmup_steps: int | None = None,
  refit_every: int | None = None,
  order: int = 3,
  num_levels: int = 8,
  method: str = "uniform",
  guard_levels: bool = True,
  zero_level: bool = True,
  min_size: int | None = None,
  include: str | None = None,
  exclude: str | None = None,
  tuples: str = "disjoint",
  rate: str = "block",
  pool: str = "group",
  refresh_every: int = 1,
  mask: Any = None,
  lloyd_method: str = "empirical",
  degenerate: str = "defer",
  finish_decay: bool = True,
) -> optax.GradientTransformation:
  """The whole HEMP recipe around any optax optimizer: the one line a training loop changes.

  Three phases over ``total_steps`` (DESIGN.md §2, "The recipe"):

  1. warm-up (``warmup_steps``): the entropy term acts on the leaves whose starting values
     spread; leaves that start constant (zero biases, unit normalization scales) get no
     entropy gradient, and their codebooks are fitted on the weights of the warm-up's end;
  2. entropy phase: ``optimizer`` sees ``grads + strength * grad H`` (codebooks as fitted,
     or refitted every ``refit_every`` steps);
  3. finish (the last ``finish_steps``, a third by default): a codebook that no longer covers the weights the
     network has learnt is refitted on them; the codebooks are then frozen, and the
     params the loop sees are the quantized weights — the decoded model — while the
     continuous weights live in the state (``latent``) and take the optimizer's steps
     (straight-through quantization-aware training, with no change to the loss). At the
     end the params are the decoded model: :func:`finalize` writes them.

  ``strength`` is held in the state; set it between steps (an accuracy budget,
  :mod:`hemp_jax.budget`) with ``optax.tree_utils.tree_set(opt_state, strength=s)``.

  Args:
    optimizer: the inner optimizer (any optax transformation; weight decay included).
    strength: lambda, the weight of the entropy term (bits per quantized parameter).
    total_steps: the length of training in optimizer steps.
    finish_steps: the quantization-aware finish (default: a third of ``total_steps``;
      0: none, the params stay continuous and :func:`finalize` quantizes them).
    warmup_steps: the warm-up (default: a tenth of ``total_steps``, at least 1).
    refit_every: refit period of the entropy phase in steps (None: the codebooks are
      fitted at the start, or after the warm-up, and refitted only for the finish).
    degenerate: leaves that start constant: "defer" (the warm-up above), "float" or
      "keep" (see :func:`add_entropy_grad`).
    finish_decay: scale the optimizer's steps on the continuous weights by a cosine from
      1 to 0 over the finish, so that the quantized model settles (with a constant
      learning rate the last steps otherwise leave it wherever the noise put it).
    num_levels, zero_level: N = 8 uniform levels with an exact zero (and the two guard
      levels): weights that SGD spreads over a wide, lopsided range keep a level where
      most of them are (a grid over [min, max] without the zero level puts none there),
      and the entropy term can gather them on it.
    Other arguments: as in :func:`add_entropy_grad`.

  Returns:
    An ``optax.GradientTransformation`` whose state is a :class:`HempState`.
  """
  total_steps = int(total_steps)
  if total_steps < 1:
    raise ValueError(f"total_steps must be >= 1, got {total_steps}")
  if finish_steps is None:
    finish_steps = total_steps // 3
  if warmup_steps is None:
    warmup_steps = max(1, total_steps // 10)
  finish_steps, warmup_steps = int(finish_steps), int(warmup_steps)
  finish_start = total_steps - finish_steps
  if not 0 <= finish_steps < total_steps:
    raise ValueError(f"finish_steps must be in [0, total_steps), got {finish_steps}")
  if not 1 <= warmup_steps <= finish_start:
    raise ValueError(
      f"warmup_steps must be in [1, total_steps - finish_steps = {finish_start}], "
      f"got {warmup_steps}"
    )
  if refit_every is not None and int(refit_every) < 1:
    raise ValueError(f"refit_every must be >= 1 or None, got {refit_every}")
  quantizer = QuantizerConfig(
    num_levels, method, guard_levels, zero_level, min_size, include, exclude, lloyd_method
  )
  entropy = EntropyConfig(order, tuples, rate, pool)
  _check_entropy_options(entropy, refresh_every, degenerate, warmup_steps)

  def init_fn(params):
    entropy_state = _entropy_init(params, quantizer, entropy, mask, refresh_every, degenerate)
    plain = pytrees.plain_params(params)
    return HempState(
      jnp.zeros([], jnp.int32),
      jnp.asarray(strength, jnp.float32),
      tuple(jnp.array(x) for x in jax.tree.leaves(plain)),
      entropy_state,
      optimizer.init(params),
    )

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    count = state.count
    leaves, treedef = jax.tree.flatten(params)
    # In the finish the params are Q(latent): the steps act on the continuous weights.
    finishing = count >= finish_start
    src = treedef.unflatten(
      [jnp.where(finishing, lat, x).astype(x.dtype) for lat, x in zip(state.latent, leaves)]
    )
    refit_now = None
    if refit_every:
      refit_now = (count > 0) & _every(count, refit_every) & (count < finish_start)
    grads, est = _entropy_step(
      state.entropy,
      src,
      quantizer=quantizer,
      entropy=entropy,
      refresh_every=refresh_every,
      refit_now=refit_now,
      fit_step=warmup_steps if degenerate == "defer" else None,
    )
    g_leaves, g_def = jax.tree.flatten(updates)
    g_leaves = [
      u if g is None else u + state.strength.astype(u.dtype) * g.astype(u.dtype)
      for u, g in zip(g_leaves, grads)
    ]
    steps, inner = optimizer.update(g_def.unflatten(g_leaves), state.inner, src)
    if finish_decay and finish_steps:
      done = jnp.clip((count - finish_start + 1) / finish_steps, 0.0, 1.0)
      scale = jnp.where(finishing, 0.5 * (1.0 + jnp.cos(jnp.pi * done)), 1.0)
      steps = jax.tree.map(lambda s: (s * scale).astype(s.dtype), steps)
    latent = optax.apply_updates(src, steps)
    if finish_steps:
      # The finish starts at the next step: a codebook that no longer covers the weights
      # it starts from is refitted on them (the others stay, and so does what the entropy
      # term has shaped around them).
      codebooks = jax.lax.cond(
        count + 1 == finish_start,
        lambda: _cover(latent, est.codebooks, quantizer, est.pending),
        lambda: est.codebooks,
      )
      est = est._replace(codebooks=codebooks)
      # Leaves still pending (never fitted) stay continuous.
      flags = est.pending or (None,) * len(codebooks)
      quantize_next = count + 1 >= finish_start
      out = []
      for lat, x, s, cb, p in zip(
        jax.tree.leaves(latent), leaves, jax.tree.leaves(steps), codebooks, flags
      ):
        if cb is not None:
          on = quantize_next if p is None else quantize_next & ~p
          s = jnp.where(on, q.quantize(lat, cb) - x, s).astype(s.dtype)
        out.append(s)
      steps = treedef.unflatten(out)
    new = HempState(
      optax.safe_int32_increment(count),
      state.strength,
      tuple(jax.tree.leaves(latent)),
      est,
      inner,
    )
    return steps, new

  return optax.GradientTransformation(init_fn, update_fn)


def authors_entropy_scale(order: int) -> float:
  """Factor that turns the authors' ``lambda_H`` into a per-parameter strength.

  The paper's code (DESIGN.md §2) differentiates the order-n joint entropy ``H_n`` in bits
  per n-tuple of one histogram pooled over all quantized tensors; this library's
  estimator differentiates ``H_n / n`` in bits per parameter (``pool="global"`` gives the
  same pooled histogram). So at orders 1, 3, 4, ... their gradient is ``n`` times ours and
  their ``lambda_H`` is our strength divided by ``n``. At order 2 their code trains with a
  hand-written gradient (the partner weight's tent weight fixed at 1/2, divided by the
  number of parameters) that equals ours per parameter (nearly exactly, DESIGN.md §2),
  so the factor is 1 there. Their update multiplies by ``lambda_H`` twice; we apply it
  once (identical at their default ``lambda_H = 1``), and we do not copy their order-2
  clamp of each gradient element to +-0.01.

  Args:
    order: the tuple length n (>= 1).

  Returns:
    ``s`` such that ``lambda_h * s * grad(H_n / n)`` is the authors' entropy step.
  """
  order = int(order)
  if order < 1:
    raise ValueError(f"order must be >= 1, got {order}")
  return 1.0 if order == 2 else float(order)


def _sensitivity(g):
  """S = 1 - |g| / max|g| for one tensor (1 everywhere when the gradient is all zero)."""
  a = jnp.abs(g)
  m = jnp.max(a)
  return jnp.where(m > 0, 1.0 - a / jnp.where(m > 0, m, 1.0), 1.0)


def _level_range(cb, guard_levels: bool):
  return (cb[1], cb[-2]) if guard_levels else (cb[0], cb[-1])


def _second_step_scale(entropy: EntropyConfig, refresh_every: int, lambda_units: str) -> float:
  """Checks the second step's options; the factor that turns ``lambda_h`` into our units."""
  ent.check_options(entropy.order, entropy.tuples, entropy.rate)
  if refresh_every < 1:
    raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
  if lambda_units not in LAMBDA_UNITS:
    raise ValueError(f"lambda_units must be one of {LAMBDA_UNITS}, got {lambda_units!r}")
  if lambda_units == "authors" and (entropy.pool != "global" or entropy.rate != "block"):
    raise ValueError(
      "lambda_units='authors' is the authors' pooled entropy: use pool='global' and "
      f"rate='block' (got pool={entropy.pool!r}, rate={entropy.rate!r})"
    )
  return authors_entropy_scale(entropy.order) if lambda_units == "authors" else 1.0


def _gated_steps(
  params,
  w1,
  inner_updates,
  updates,
  codebooks,
  grads,
  targets,
  pending,
  *,
  lambda_h,
  lambda_q,
  sensitivity,
  guard_levels,
):
  """The second step's updates: ``clip(w1 - S (lambda_h grad H + lambda_q (w1 - Q))) - w``
  on quantized leaves (the inner update on pending and float leaves)."""
  w_leaves, treedef = jax.tree.flatten(params)
  out = []
  flags = pending or (None,) * len(codebooks)
  for w, w_1, u, g, cb, gh, tq, p in zip(
    w_leaves,
    jax.tree.leaves(w1),
    jax.tree.leaves(inner_updates),
    jax.tree.leaves(updates),
    codebooks,
    grads,
    targets,
    flags,
  ):
    if cb is None:
      out.append(u)
      continue
    gate = _sensitivity(g) if sensitivity else 1.0
    w2 = w_1 - gate * (lambda_h * gh + lambda_q * (w_1 - tq))
    step = (jnp.clip(w2, *_level_range(cb, guard_levels)) - w).astype(u.dtype)
    out.append(step if p is None else jnp.where(p, u, step))
  return treedef.unflatten(out)


def hemp_second_step(
  inner: optax.GradientTransformation,
  *,
  lambda_h: float = 1.0,
  lambda_q: float = 0.1,
  order: int = 3,
  num_levels: int = 4,
  method: str = "uniform",
  guard_levels: bool = True,
  zero_level: bool = False,
  min_size: int | None = None,
  include: str | None = None,
  exclude: str | None = None,
  tuples: str = "disjoint",
  rate: str = "block",
  pool: str = "group",
  refresh_every: int = 10,
  sensitivity: bool = True,
  mask: Any = None,
  lloyd_method: str = "empirical",
  lambda_units: str = "per_param",
  degenerate: str = "keep",
  degenerate_fit_step: int | None = None,
  refit_every: int | None = None,
) -> optax.GradientTransformation:
  """The paper's update: ``inner``'s step, then an unscaled, gated entropy/pull step.

  With ``g`` the incoming loss gradient and ``w1 = w + inner(g)``, for every quantized
  leaf: ``w_new = clip(w1 - S * (lambda_h * grad H + lambda_q * (w1 - Q)), lo, hi)``,
  ``S = 1 - |g| / max|g|`` per tensor (all ones with ``sensitivity=False``), ``[lo, hi]``
  the range of the real levels (guards excluded). ``grad H`` and the targets ``Q`` are
  computed at ``w1`` every ``refresh_every`` steps (the paper: 10) and reused in between.
  Float leaves get ``inner``'s update only.

  Args:
    inner: the optimizer of the first step (the paper: SGD, lr 0.1, weight decay 1e-4).
    lambda_h, lambda_q: weights of the entropy gradient and of the pull to the levels.
    refresh_every: period of the ``grad H`` / ``Q`` refresh.
    sensitivity: use the gate ``S``.
    lloyd_method: "empirical" or "gaussian" (the paper's code) for ``method="lloyd_max"``.
    lambda_units: "per_param" — ``grad H`` is the gradient of the rate in bits per
      parameter (this library's estimator); "authors" — ``lambda_h`` means what the
      paper's code means: the gradient of ``H_n`` in bits per n-tuple of one histogram
      pooled over all quantized tensors (needs ``pool="global"``; the conversion is
      :func:`authors_entropy_scale`).
    refit_every: refit the codebooks on the weights every this many steps (the authors'
      ``--bound_recompute``; None: frozen).
    degenerate, degenerate_fit_step: as in :func:`add_entropy_grad`; a pending leaf gets
      the inner step only (no entropy step, pull or clamp) until its codebook is fitted.
    Other arguments: as in :func:`add_entropy_grad`.

  Returns:
    An ``optax.GradientTransformation`` whose updates already include the clip.
  """
  quantizer = QuantizerConfig(
    num_levels, method, guard_levels, zero_level, min_size, include, exclude, lloyd_method
  )
  entropy = EntropyConfig(order, tuples, rate, pool)
  scale = _second_step_scale(entropy, refresh_every, lambda_units)
  _check_degenerate(degenerate, degenerate_fit_step)

  def refresh(w1, codebooks):
    grads = _entropy_grad(w1, codebooks, entropy)
    if scale != 1.0:
      grads = tuple(None if g is None else g * scale for g in grads)
    targets = tuple(
      None if cb is None else q.quantize(x, cb) for x, cb in zip(jax.tree.leaves(w1), codebooks)
    )
    return grads, targets

  def init_fn(params):
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    codebooks = fit_leaf_codebooks(
      params, quantizer, mask, order=order, tuples=tuples, degenerate=degenerate
    )
    # Two separate zero trees: a donated state must not hold one buffer twice.
    return HempSecondStepState(
      jnp.zeros([], jnp.int32),
      codebooks,
      _zeros_like_quantized(params, codebooks),
      _zeros_like_quantized(params, codebooks),
      inner.init(params),
      _pending_flags(params, codebooks, degenerate),
    )

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    inner_updates, inner_state = inner.update(updates, state.inner_state, params)
    w1 = optax.apply_updates(params, inner_updates)
    codebooks = _maybe_refit(state.count, w1, state.codebooks, quantizer, refit_every)
    codebooks, pending = _fit_pending(
      state.count, w1, codebooks, state.pending, quantizer, degenerate_fit_step
    )
    refresh_now = _every(state.count, refresh_every)
    if pending:
      refresh_now = refresh_now | (state.count == degenerate_fit_step)
    if refit_every:
      refresh_now = refresh_now | _every(state.count, refit_every)
    grads, targets = jax.lax.cond(
      refresh_now,
      lambda: refresh(w1, codebooks),
      lambda: (state.entropy_grad, state.targets),
    )
    steps = _gated_steps(
      params,
      w1,
      inner_updates,
      updates,
      codebooks,
      grads,
      targets,
      pending,
      lambda_h=lambda_h,
      lambda_q=lambda_q,
      sensitivity=sensitivity,
      guard_levels=guard_levels,
    )
    new_state = HempSecondStepState(
      optax.safe_int32_increment(state.count), codebooks, grads, targets, inner_state, pending
    )
    return steps, new_state

  return optax.GradientTransformation(init_fn, update_fn)


def paper_recipe(
  *,
  learning_rate: float = 0.1,
  momentum: float = 0.0,
  weight_decay: float = 1e-4,
  lambda_h: float = 1.0,
  lambda_q: float = 0.1,
  order: int = 3,
  num_levels: int = 4,
  refresh_every: int = 10,
  method: str = "lloyd_max",
  lloyd_method: str = "gaussian",
  pool: str = "global",
  lambda_units: str = "authors",
  **kwargs,
) -> optax.GradientTransformation:
  """The paper code's training update as one optax transformation.

  ``hemp_second_step(chain(add_decayed_weights(wd), sgd(lr, momentum)), ...)`` with the
  paper code's defaults: lr 0.1, momentum 0, weight decay 1e-4, ``lambda_H = 1`` and
  ``lambda_Q = 0.1`` in the authors' units (:func:`authors_entropy_scale`), order 3, one
  histogram pooled over all quantized tensors, N = 4 Lloyd-Max levels of a Gaussian fit
  plus two guard levels, fitted on the starting params and frozen, tensors above 10 N
  elements quantized, refresh every 10 steps, the sensitivity gate and the clamp to the
  real levels. ``learning_rate`` may be an optax schedule; ``lambda_units="per_param"``,
  ``pool="group"``, ``method="uniform"`` or ``lloyd_method="empirical"`` depart from the
  paper knowingly.
  """
  inner = optax.chain(
    optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum or None)
  )
  return hemp_second_step(
    inner,
    lambda_h=lambda_h,
    lambda_q=lambda_q,
    order=order,
    num_levels=num_levels,
    refresh_every=refresh_every,
    method=method,
    lloyd_method=lloyd_method,
    pool=pool,
    lambda_units=lambda_units,
    **kwargs,
  )
