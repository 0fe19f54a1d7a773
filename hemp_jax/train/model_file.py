"""The ``.hemp`` file of a trained model: quantized params and the other model variables."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from hemp_jax.fileio import write_atomic
from hemp_jax.train.steps import TrainState

__all__ = ["model_file_bytes", "write_model_file", "read_model_file"]


def _model_file_tree(state: TrainState) -> dict:
  return {"params": state.params, "model_state": state.model_state}


def model_file_bytes(state: TrainState, codebooks) -> bytes:
  """The ``.hemp`` file of a trained model: quantized params (``codebooks``; None leaves
  stay float) and the other model variables (BatchNorm statistics) in float."""
  from hemp_jax import codec

  tree = jax.tree.map(np.asarray, _model_file_tree(state))
  cbs = {"params": codebooks, "model_state": jax.tree.map(lambda _: None, tree["model_state"])}
  return codec.compress(tree, codebooks=cbs)


def write_model_file(path: str, state: TrainState, codebooks) -> int:
  """Writes :func:`model_file_bytes` to ``path`` (atomically).

  Returns:
    The file size in bytes.
  """
  blob = model_file_bytes(state, codebooks)
  write_atomic(os.fspath(path), blob)
  return len(blob)


def read_model_file(path: str, template: TrainState) -> TrainState:
  """Decodes a ``.hemp`` model file into ``template``'s structure (params, model_state).

  Raises:
    hemp_jax.codec.FormatError: damaged or foreign file.
    ValueError: the file's leaves do not match the model (names the first mismatch).
  """
  from hemp_jax import codec

  decoded = codec.decompress_file(path)
  if (
    isinstance(decoded, dict) and "params" in decoded and set(decoded) <= {"params", "model_state"}
  ):
    tree = codec.load_into(_model_file_tree(template), decoded)
  else:  # a file of the params alone (sweep points, a compressed params checkpoint)
    if jax.tree.leaves(template.model_state):
      raise ValueError(
        f"{path} holds parameters only, but this model also needs its batch-norm "
        "statistics (model_state): compress a `hemp-jax train` workdir instead"
      )
    tree = {
      "params": codec.load_into(template.params, decoded),
      "model_state": template.model_state,
    }
  tree = jax.tree.map(jnp.asarray, tree)
  return template._replace(params=tree["params"], model_state=tree["model_state"])
