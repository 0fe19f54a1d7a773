"""Helpers of the experiment configs: fine-tuning from a checkpoint, mock TFDS data.

* :func:`load_init_checkpoint` — ``config.init_checkpoint``: start training from given
  weights (the ImageNet configs fine-tune a pretrained ResNet-18/50). Accepted sources:

  - a ``hemp-jax train`` workdir (the latest orbax checkpoint in ``<dir>/checkpoints``:
    params and BatchNorm statistics);
  - a ``.npz`` file whose keys are the '/'-joined path names of the model's variables as
    :func:`hemp_jax.groups.path_name` writes them (e.g. ``conv1/kernel``,
    ``bn1/scale``, ``bn1/mean``); every ``nnx.Param`` must be present, BatchNorm
    statistics may be (missing ones keep their initial values);
  - a ``.hemp`` file (:mod:`hemp_jax.codec`): the decoded params (statistics unchanged).

  Shapes are checked leaf by leaf; unknown keys are an error (a wrong model, or a
  converter that kept a classifier of another size).
* :func:`mock_tfds` — ``config.mock_data``: random examples with the real feature specs
  (``tfds.testing.mock_data``), for smoke runs of the TFDS configs without any data.
* :func:`load_python_file` — config and sweep files are loaded by path, not imported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import types
from typing import Iterator
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hemp_jax.groups import path_name

__all__ = ["load_init_checkpoint", "read_checkpoint_arrays", "mock_tfds", "load_python_file"]


def load_python_file(path: str, module_name: str) -> types.ModuleType:
  """Executes the Python file ``path`` as a fresh module named ``module_name``."""
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _flat_names(tree) -> dict:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {path_name(p): np.asarray(x) for p, x in flat}


def read_checkpoint_arrays(path: str) -> dict:
  """``{path name: array}`` from a train workdir, an ``.npz`` or a ``.hemp`` file."""
  path = os.fspath(path)
  if os.path.isdir(path):
    import orbax.checkpoint as ocp

    ckpt_dir = os.path.join(os.path.abspath(path), "checkpoints")
    if not os.path.isdir(ckpt_dir):
      raise FileNotFoundError(
        f"init_checkpoint {path!r} is a directory without "
        "checkpoints/ (expected a `hemp-jax train` workdir)"
      )
    mngr = ocp.CheckpointManager(ckpt_dir)
    step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
    restored = mngr.restore(step, args=ocp.args.StandardRestore())
    state = restored["state"]
    if isinstance(state, dict):
      params, model_state = state["params"], state.get("model_state", {})
    else:  # restored as a sequence (TrainState field order)
      params, model_state = state[1], state[2]
    out = _flat_names(model_state or {})
    out.update(_flat_names(params))
    return out
  if not os.path.isfile(path):
    raise FileNotFoundError(f"init_checkpoint not found: {path}")
  if path.endswith(".npz"):
    with np.load(path) as z:
      return {k: z[k] for k in z.files}
  if path.endswith(".hemp"):
    from hemp_jax import codec

    with open(path, "rb") as f:
      return _flat_names(codec.decompress(f.read()))
  raise ValueError(f"init_checkpoint {path!r}: expected a train workdir, .npz or .hemp")


def load_init_checkpoint(model: nnx.Module, path: str) -> nnx.Module:
  """Overwrites ``model``'s variables in place with those of ``path``; returns it."""
  source = read_checkpoint_arrays(path)
  _, params, rest = nnx.split(model, nnx.Param, ...)
  used, missing = set(), []

  def fill(state, required: bool):
    pure = nnx.to_pure_dict(state)
    flat, treedef = jax.tree_util.tree_flatten_with_path(pure)
    vals = []
    for p, x in flat:
      name = path_name(p)
      if name in source:
        v = np.asarray(source[name])
        if v.shape != np.shape(x):
          raise ValueError(
            f"init_checkpoint {path}: {name} has shape {v.shape}, the model has {np.shape(x)}"
          )
        vals.append(jnp.asarray(v, dtype=jnp.asarray(x).dtype))
        used.add(name)
      else:
        if required:
          missing.append(name)
        vals.append(x)
    nnx.replace_by_pure_dict(state, treedef.unflatten(vals))
    return state

  params = fill(params, True)
  rest = fill(rest, False)
  if missing:
    raise ValueError(
      f"init_checkpoint {path}: {len(missing)} parameter(s) missing, e.g. {missing[:5]}"
    )
  extra = sorted(set(source) - used)
  if extra:
    raise ValueError(f"init_checkpoint {path}: {len(extra)} unknown key(s), e.g. {extra[:5]}")
  nnx.update(model, params, rest)
  return model


@contextlib.contextmanager
def mock_tfds(num_examples: int = 16) -> Iterator[None]:
  """Random TFDS examples for every dataset (the prepared-data check is skipped).

  Pipelines built inside the context keep working after it (their sources are made
  inside).
  """
  import tensorflow_datasets as tfds

  from hemp_jax import data as data_lib

  with (
    mock.patch.object(data_lib.tfds_source, "_check_prepared", lambda *args: None),
    tfds.testing.mock_data(num_examples=num_examples),
  ):
    yield
