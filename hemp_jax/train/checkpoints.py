"""Checkpoints: the run's own (orbax, with the data position, and a fallback on damage)
and the weights a run starts from (``init_checkpoint``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys

import jax
import numpy as np
from flax import nnx

from hemp_jax import codec
from hemp_jax.codec.checkpoints import flatten_tree
from hemp_jax.pytrees import fill_tree
from hemp_jax.train.steps import TrainState

__all__ = [
  "DataPosition",
  "checkpoint_manager",
  "restore_with_fallback",
  "save_checkpoint",
  "read_checkpoint_arrays",
  "load_init_checkpoint",
  "first_line",
]


def checkpoint_manager(workdir: str):
  """The orbax manager of ``<workdir>/checkpoints`` (the last two steps are kept)."""
  import orbax.checkpoint as ocp  # imported lazily: slow import

  return ocp.CheckpointManager(
    os.path.abspath(os.path.join(workdir, "checkpoints")),
    options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
  )


def _to_saveable(state: TrainState, epoch: int):
  return {"state": jax.tree.map(np.asarray, state), "epoch": np.asarray(epoch)}


class DataPosition:
  """The grain iterator state after the last batch the loop consumed.

  The host iterator runs ahead of the loop (prefetch, double buffering), so its own
  ``get_state()`` is not the position to resume from; the loop records the state that
  followed each batch and saves that one. Saved and restored by grain's orbax handler
  (``grain.checkpoint.CheckpointSave`` / ``CheckpointRestore``: one JSON file per
  process), in the same format as the iterator's own state.
  """

  def __init__(self, state: dict | None = None):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state).encode()

  def set_state(self, state: bytes) -> None:
    self.state = json.loads(state)

  def start_prefetch(self) -> None:  # called by grain's handler after a restore
    pass


def first_line(e: BaseException) -> str:
  """``"Type: first line of the message"`` (at most 300 characters)."""
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _restore_step(mngr, step: int, state: TrainState, data_position=None):
  """``(state, epoch index, metrics row or None)`` of checkpoint ``step``; fills
  ``data_position`` with the saved grain iterator state when the checkpoint has one."""
  import orbax.checkpoint as ocp

  target = jax.tree.map(np.asarray, _to_saveable(state, 0))
  restored = mngr.restore(step, args=ocp.args.StandardRestore(target))
  epoch = int(restored["epoch"])
  try:
    metadata = mngr.metadata(step).custom_metadata or {}
  except Exception:  # the step metadata file is optional for restoring the arrays
    metadata = {}
  row = metadata["metrics_row"] if "metrics_row" in metadata else None
  if row is not None and row.get("epoch") != epoch + 1:
    row = None
  data_dir = os.path.join(str(mngr.directory), str(step), "data")
  if data_position is not None and os.path.isdir(data_dir):
    import grain
    from etils import epath

    grain.checkpoint.CheckpointHandler().restore(
      epath.Path(data_dir), args=grain.checkpoint.CheckpointRestore(data_position)
    )
  return restored["state"], epoch, row


def _set_aside(ckpt_dir: str, step: int) -> str:
  """Moves checkpoint ``step`` to ``<workdir>/checkpoints.corrupt/`` (renamed, not deleted)."""
  src = os.path.join(ckpt_dir, str(step))
  dest_dir = ckpt_dir.rstrip(os.sep) + ".corrupt"
  os.makedirs(dest_dir, exist_ok=True)
  dest = os.path.join(dest_dir, str(step))
  n = 1
  while os.path.exists(dest):
    n += 1
    dest = os.path.join(dest_dir, f"{step}.{n}")
  os.replace(src, dest)
  return dest


@contextlib.contextmanager
def _quiet_orbax_logs():
  """Silences absl's ERROR/WARNING log lines while a checkpoint is tried."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)


def restore_with_fallback(
  mngr, state: TrainState, workdir: str, data_position: DataPosition | None = None
):
  """Restores the newest checkpoint that restores; sets aside those that do not.

  A checkpoint that fails to restore (garbage or truncated files, missing metadata, an
  emptied step directory, ...) is reported in one line on stderr and moved to
  ``<workdir>/checkpoints.corrupt/<step>``; the previous one is tried next.

  Args:
    mngr: the workdir's :func:`checkpoint_manager`.
    state: a state of the run (the structure to restore into).
    workdir: the run's directory.
    data_position: filled with the saved grain iterator position, when there is one.

  Returns:
    ``(manager, restored)``: the manager (a fresh one if steps were moved) and
    ``(state, epoch index, metrics row or None)``, or None when no checkpoint restores.
  """
  ckpt_dir = os.path.abspath(os.path.join(workdir, "checkpoints"))
  moved = False
  restored = None
  # A step that is not a directory (orbax would silently skip it and later save over it).
  for name in sorted(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else []:
    if name.isdigit() and not os.path.isdir(os.path.join(ckpt_dir, name)):
      dest = _set_aside(ckpt_dir, int(name))
      moved = True
      print(
        f"warning: checkpoint step {name} cannot be restored (not a directory); moved to "
        f"{dest}; trying the previous one",
        file=sys.stderr,
      )
  if moved:
    mngr = checkpoint_manager(workdir)
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      with _quiet_orbax_logs():  # one line of ours per damaged step, not orbax's
        restored = _restore_step(mngr, step, state, data_position)
      break
    except Exception as e:  # orbax raises many types for damaged files
      dest = _set_aside(ckpt_dir, step)
      moved = True
      print(
        f"warning: checkpoint step {step} cannot be restored ({first_line(e)}); "
        f"moved to {dest}; trying the previous one",
        file=sys.stderr,
      )
      # A fresh manager: orbax caches what it read of the damaged step.
      mngr = checkpoint_manager(workdir)
  if moved and restored is None:
    print("warning: no checkpoint restores: training starts from scratch", file=sys.stderr)
  return mngr, restored


def save_checkpoint(
  mngr,
  state: TrainState,
  epoch: int,
  row: dict | None = None,
  data_position: DataPosition | None = None,
) -> None:
  """Saves ``state`` and the last completed ``epoch``, then the grain iterator position.

  ``row`` (the epoch's metrics) goes into the checkpoint's metadata, so the outputs can
  be re-derived if the run stops before they are written. The position goes into
  ``<step>/data/process_<i>-of-<n>.json`` through grain's orbax handler, next to orbax's
  single ``default`` item (not as a ``Composite`` item: a manager that restored a
  single-item checkpoint refuses composite saves, and single-item checkpoints of earlier
  versions stay readable). A checkpoint without it resumes from the same batches anyway:
  the order is a function of (seed, epoch, batch).
  """
  import orbax.checkpoint as ocp

  step = int(state.step)
  mngr.save(
    step,
    args=ocp.args.StandardSave(_to_saveable(state, epoch)),
    force=True,
    custom_metadata=None if row is None else {"metrics_row": row},
  )
  mngr.wait_until_finished()
  if data_position is not None and data_position.state is not None:
    import grain
    from etils import epath

    if jax.process_count() > 1:  # the step directory is final on every process
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"hemp_jax checkpoint {step}")
    path = epath.Path(os.path.join(str(mngr.directory), str(step), "data"))
    path.mkdir(parents=True, exist_ok=True)
    grain.checkpoint.CheckpointHandler().save(
      path, args=grain.checkpoint.CheckpointSave(data_position)
    )


# ------------------------------------------------------------- weights to start from


def read_checkpoint_arrays(path) -> dict:
  """``{path name: array}`` of the weights at ``path``.

  Args:
    path: a ``hemp-jax train`` workdir (its latest checkpoint: params and BatchNorm
      statistics), or anything :func:`hemp_jax.codec.read_checkpoint` reads (``.npz``,
      ``.safetensors``, an orbax directory, ``.msgpack``, ``.hemp``).

  Raises:
    FileNotFoundError: nothing at ``path``, or a workdir without checkpoints.
    ValueError: a file of no supported format.
  """
  path = os.fspath(path)
  ckpt_dir = os.path.join(os.path.abspath(path), "checkpoints")
  if not os.path.isdir(ckpt_dir):
    return flatten_tree(codec.read_checkpoint(path))
  if not any(name.isdigit() for name in os.listdir(ckpt_dir)):
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
  state = codec.read_checkpoint(ckpt_dir)["state"]
  if "params" in state:
    params, model_state = state["params"], state["model_state"] if "model_state" in state else {}
  else:  # restored as a sequence (TrainState field order)
    params, model_state = state["1"], state["2"]
  out = flatten_tree(model_state)
  out.update(flatten_tree(params))
  return out


def load_init_checkpoint(model: nnx.Module, path: str) -> nnx.Module:
  """Overwrites ``model``'s variables in place with those of ``path``; returns it.

  Names are :func:`hemp_jax.pytrees.path_name` s (``conv1/kernel``, ``bn1/scale``,
  ``bn1/mean``, ...). Every ``nnx.Param`` must be present, BatchNorm statistics may be
  (missing ones keep their initial values); shapes are checked leaf by leaf, and an
  unknown name is an error (a wrong model, or a converter that kept a classifier of
  another size).
  """
  source = read_checkpoint_arrays(path)
  _, params, rest = nnx.split(model, nnx.Param, ...)
  used, missing = set(), []
  for state, required in ((params, True), (rest, False)):
    try:
      tree, taken, absent = fill_tree(nnx.to_pure_dict(state), source)
    except ValueError as e:
      raise ValueError(f"init_checkpoint {path}: {e}") from None
    nnx.replace_by_pure_dict(state, tree)
    used.update(taken)
    if required:
      missing += absent
  if missing:
    raise ValueError(
      f"init_checkpoint {path}: {len(missing)} parameter(s) missing, e.g. {missing[:5]}"
    )
  extra = sorted(set(source) - used)
  if extra:
    raise ValueError(f"init_checkpoint {path}: {len(extra)} unknown key(s), e.g. {extra[:5]}")
  nnx.update(model, params, rest)
  return model
