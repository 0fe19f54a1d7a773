"""From a config to the objects of a run: model, optimizer, state, input, codebooks.

The functions here take a whole config (completed with the defaults); the parts they
build take plain arguments (:mod:`hemp_jax.train.config`'s adapters make them).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import optax

from hemp_jax import models as models_lib
from hemp_jax.train import config as cfg
from hemp_jax.train.checkpoints import (
  checkpoint_manager,
  load_init_checkpoint,
  restore_with_fallback,
)
from hemp_jax.train.evaluate import evaluate_accuracy, evaluation_codebooks, make_eval_fn
from hemp_jax.train.input import input_pipeline
from hemp_jax.train.model_file import read_model_file
from hemp_jax.train.optimizer import optimizer_chain
from hemp_jax.train.steps import TrainState, create_train_state

__all__ = [
  "build",
  "make_optimizer",
  "eval_codebooks",
  "load_final_state",
  "evaluate_model_file",
]


def make_optimizer(config, steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """The optax chain of ``config`` (``optimizer``, ``hemp``, ``quantizer``, ``pruning``).

  See :func:`hemp_jax.train.optimizer.optimizer_chain` for the modes; ``hemp.strength``
  in paper mode is the authors' ``lambda_H`` when ``hemp.lambda_units="authors"`` (the
  default: their pooled entropy in bits per tuple, so the entropy is pooled over all
  quantized tensors whatever ``hemp.pool`` says).
  """
  config = cfg.with_defaults(config)
  return optimizer_chain(**cfg.optimizer_kwargs(config, steps_per_epoch))


def eval_codebooks(config, state: TrainState):
  """Codebooks for quantized evaluation: the HEMP state's, else fitted post-training."""
  kwargs = cfg.codebook_kwargs(cfg.with_defaults(config))
  return evaluation_codebooks(state.params, state.opt_state, **kwargs)


def build(config):
  """``(graphdef, state, tx, pipe)``: model, optimizer, initial state and input of ``config``."""
  config = cfg.with_defaults(config)
  pipe = input_pipeline(**cfg.pipeline_kwargs(config))
  model = models_lib.init_model(
    config.model, num_classes=pipe.num_classes, seed=config.seed, **config.model_kwargs
  )
  # config.dtype "bfloat16": activations and matmuls in bf16, params stay float32.
  models_lib.set_dtype(model, config.dtype)
  if config.init_checkpoint:  # fine-tuning: before tx.init
    load_init_checkpoint(model, config.init_checkpoint)
  tx = make_optimizer(config, pipe.steps_per_epoch)
  graphdef, state = create_train_state(model, tx)
  return graphdef, state, tx, pipe


def load_final_state(config, workdir: str):
  """``(graphdef, TrainState)`` restored from the latest checkpoint in ``workdir``."""
  graphdef, state, _, _ = build(config)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(
      f"no checkpoint in {ckpt_dir}: is {workdir!r} a `hemp-jax train` work directory?"
    )
  _, restored = restore_with_fallback(checkpoint_manager(workdir), state, workdir)
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir} restores")
  return graphdef, jax.tree.map(jnp.asarray, restored[0])


def evaluate_model_file(config, path: str) -> float:
  """Test accuracy of the model decoded from a ``.hemp`` file (model/data from config)."""
  graphdef, state, _, pipe = build(config)
  decoded = read_model_file(path, state)
  eval_fn = make_eval_fn(graphdef, pipe.normalize)
  return evaluate_accuracy(eval_fn, decoded.params, decoded.model_state, pipe.eval())
