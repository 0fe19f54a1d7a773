"""Evaluation of a train state: accuracy, quantized accuracy, soft and exact entropy."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from hemp_jax import entropy as ent
from hemp_jax import groups as grp
from hemp_jax import quantization as q
from hemp_jax import regularizer as reg
from hemp_jax.train.steps import make_eval_step

__all__ = [
  "Evaluator",
  "evaluation_codebooks",
  "evaluate_accuracy",
  "exact_entropy",
  "make_eval_fn",
  "quantize_params",
  "quantized_size",
]


def quantize_params(params, codebooks) -> Any:
  """``params`` with every quantized leaf replaced by its nearest levels."""
  return jax.tree.map(
    lambda cb, x: x if cb is None else q.quantize(x, cb),
    codebooks,
    params,
    is_leaf=lambda x: x is None,
  )


def exact_entropy(params, codebooks, *, order: int, tuples: str, rate: str) -> float:
  """Exact empirical rate of the quantized leaves (index streams in scan order).

  Per-group rates weighted by group size, bits per quantized parameter.
  """
  cbs, leaves, _, _ = grp.codebook_leaves(codebooks, params)
  bits, count = 0.0, 0
  for cb, x in zip(cbs, leaves):
    if cb is None:
      continue
    idx = q.quantize_indices(grp.scan_stream(x), cb)
    r = float(ent.empirical_entropy(idx, int(np.shape(cb)[0]), order, tuples, rate))
    bits += r * int(np.size(x))
    count += int(np.size(x))
  return bits / max(count, 1)


def quantized_size(params, codebooks) -> int:
  """Number of quantized parameters (the elements of the leaves with a codebook)."""
  cbs, leaves, _, _ = grp.codebook_leaves(codebooks, params)
  return int(sum(np.size(x) for cb, x in zip(cbs, leaves) if cb is not None))


def evaluation_codebooks(
  params, opt_state, quantizer: reg.QuantizerConfig, *, order: int, tuples: str
) -> Any:
  """Codebooks for quantized evaluation: the HEMP state's, else fitted post-training.

  Args:
    params: the params.
    opt_state: the optimizer state (its HEMP transformation's codebooks are used).
    quantizer: how codebooks are fitted when the state holds none.
    order, tuples: leaves too short for one tuple stay in float.

  Returns:
    A tree like ``params`` with a codebook or None at every leaf.
  """
  try:
    return reg.codebooks_of(opt_state, params)
  except ValueError:  # no HEMP state: fitted post-training
    flat = reg.fit_leaf_codebooks(params, quantizer, order=order, tuples=tuples)
    return reg.codebooks_tree(params, flat)


def make_eval_fn(graphdef, normalize: Callable) -> Callable:
  """Jitted ``(params, model_state, images, labels) -> (correct, loss_sum)``.

  ``normalize`` maps a batch as the pipeline gives it to the model's input.
  """
  eval_step = make_eval_step(graphdef)
  return jax.jit(lambda p, ms, x, y: eval_step(p, ms, normalize(x), y))


def evaluate_accuracy(eval_fn: Callable, params, model_state, batches: Iterable) -> float:
  """Fraction of correct predictions of ``eval_fn`` (:func:`make_eval_fn`) over ``batches``."""
  correct, count = 0, 0
  for images, labels in batches:
    c, _ = eval_fn(params, model_state, jnp.asarray(images), jnp.asarray(labels))
    correct += int(c)
    count += len(labels)
  return correct / max(count, 1)


class Evaluator:
  """The evaluation part of an epoch's metrics row, compiled once for a run.

  Args:
    graphdef: the model's NNX graph definition.
    pipe: the run's :class:`~hemp_jax.train.input.InputPipeline` (its test split and
      its validation split, if any).
    entropy: the run's entropy (order, tuples, rate, pool).
    place: puts ``(params, model_state)`` where the evaluation runs (default: as given).
  """

  def __init__(self, graphdef, pipe, entropy: reg.EntropyConfig, place: Callable | None = None):
    self._eval_fn = make_eval_fn(graphdef, pipe.normalize)
    self._batches = {"test": pipe.eval, "validation": pipe.validation}
    self._place = place or (lambda tree: tree)
    self.entropy = entropy
    hk = entropy._asdict()
    self._soft = jax.jit(lambda p, cb: ent.tree_entropy(p, cb, **hk))
    self._quantize = jax.jit(quantize_params)

  @property
  def has_validation(self) -> bool:
    """Whether the run holds out a validation split."""
    return self._batches["validation"] is not None

  def accuracy(self, params, model_state, split: str = "test") -> float:
    """Accuracy on ``split`` ("test" or "validation") of the model with these variables."""
    batches = self._batches[split]()
    return evaluate_accuracy(self._eval_fn, *self._place((params, model_state)), batches)

  def quantize(self, params, codebooks):
    """:func:`quantize_params`, compiled."""
    return self._quantize(params, codebooks)

  def row(self, params, model_state, codebooks) -> dict:
    """``test_accuracy``, ``test_accuracy_quantized``, ``entropy_soft``, ``entropy_exact``;
    with a validation split also ``validation_accuracy`` and
    ``validation_accuracy_quantized``."""
    e = self.entropy
    quantized = self.quantize(params, codebooks)
    row = {
      "test_accuracy": self.accuracy(params, model_state),
      "test_accuracy_quantized": self.accuracy(quantized, model_state),
      "entropy_soft": float(self._soft(params, codebooks)),
      "entropy_exact": exact_entropy(
        params, codebooks, order=e.order, tuples=e.tuples, rate=e.rate
      ),
    }
    if self.has_validation:
      row["validation_accuracy"] = self.accuracy(params, model_state, "validation")
      row["validation_accuracy_quantized"] = self.accuracy(quantized, model_state, "validation")
    return row
