"""Data-parallel training with HEMP: steps, evaluation, checkpoints, the loop.

The main path is one pure train step compiled with ``jax.jit`` over a 1-D ``("data",)``
mesh: the train state is replicated, the batch is sharded along its leading axis and the
compiler inserts the gradient all-reduce, so the same step runs on 1 CPU, N GPUs or a
TPU slice (:func:`data_parallel_train_step`). :func:`pmap_train_step` is the same step
under ``jax.pmap`` for users who ask for it; it averages the per-device gradients with
``pmean``. (Measured on jax 0.10.2: under ``pmap`` the gradient of a per-device loss is
per-device, so ``pmean(grads)`` is right and ``grad(pmean(loss))`` is not; it is under a
hand-written ``shard_map`` with ``check_vma`` that the opposite holds, DESIGN §4. The
tests compare both paths with a single-device run.) BatchNorm statistics under pmap are
averaged over devices after a step computed on per-device batches; under jit they are
over the global batch.

:func:`train_and_evaluate` is the loop behind ``hemp-jax train``: it evaluates the
continuous and the quantized model every epoch, writes ``metrics.jsonl``, checkpoints
with orbax at every epoch end, resumes from the last checkpoint, and stops with
:class:`TrainingDivergedError` on a non-finite loss, keeping the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from hemp_jax import data as data_lib
from hemp_jax import entropy as ent
from hemp_jax import groups as grp
from hemp_jax import models as models_lib
from hemp_jax import quantization as q
from hemp_jax import regularizer as reg

__all__ = [
  "TrainState",
  "TrainingDivergedError",
  "make_mesh",
  "make_optimizer",
  "create_train_state",
  "make_train_step",
  "make_eval_step",
  "data_parallel_train_step",
  "pmap_train_step",
  "quantize_params",
  "state_codebooks",
  "exact_entropy",
  "train_and_evaluate",
  "ConfigChangedError",
]


class TrainingDivergedError(RuntimeError):
  """The loss became NaN/Inf; the last good checkpoint is kept."""


class ConfigChangedError(ValueError):
  """The workdir holds a run of another config (resume refused; the message lists keys)."""


class TrainState(NamedTuple):
  """Everything a step changes. ``params``/``model_state`` are pure nested dicts."""

  step: jax.Array
  params: Any  # nnx.Param values
  model_state: Any  # other variables (BatchNorm statistics)
  opt_state: Any


# ------------------------------------------------------------------------------ setup


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """1-D ``("data",)`` mesh over ``devices`` (default: all local devices), Auto axis."""
  devices = list(jax.local_devices() if devices is None else devices)
  return jax.sharding.Mesh(np.asarray(devices), ("data",), axis_types=(AxisType.Auto,))


def _learning_rate(config, steps_per_epoch: int):
  opt = config.optimizer
  if opt.get("schedule", "constant") == "cosine":
    return optax.cosine_decay_schedule(opt.learning_rate, config.num_epochs * steps_per_epoch)
  return opt.learning_rate


def _quantizer_kwargs(config) -> dict:
  qc = config.quantizer
  return dict(
    num_levels=qc.num_levels,
    method=qc.method,
    guard_levels=qc.guard_levels,
    zero_level=qc.get("zero_level", False),
    min_size=qc.get("min_size", None),
    include=qc.get("include", None),
    exclude=qc.get("exclude", None),
  )


def _entropy_kwargs(config) -> dict:
  h = config.hemp
  return dict(order=h.order, tuples=h.tuples, rate=h.rate, pool=h.pool)


def make_optimizer(config, steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """The optax chain described by ``config`` (``optimizer``, ``hemp``, ``quantizer``).

  ``config.hemp.mode``:
    * ``"none"`` — the plain optimizer (baseline);
    * ``"grad"`` — ``chain(add_entropy_grad(strength), weight decay, optimizer)``;
    * ``"paper"`` — :func:`hemp_jax.paper_recipe` (SGD + the gated unscaled step).
  """
  from hemp_jax import pruning  # config.pruning: optional wrapper (issue #5)

  opt, h = config.optimizer, config.hemp
  lr = _learning_rate(config, steps_per_epoch)
  if h.mode == "paper":
    return pruning.pruning_from_config(
      config,
      reg.paper_recipe(
        learning_rate=lr,
        momentum=opt.get("momentum", 0.0),
        weight_decay=opt.weight_decay,
        lambda_h=h.strength,
        lambda_q=h.get("lambda_q", 0.1),
        refresh_every=h.refresh_every,
        sensitivity=h.get("sensitivity", True),
        **_entropy_kwargs(config),
        **_quantizer_kwargs(config),
      ),
      steps_per_epoch,
    )
  if opt.name == "sgd":
    base = optax.sgd(
      lr, momentum=opt.get("momentum", 0.0) or None, nesterov=opt.get("nesterov", False)
    )
  elif opt.name == "adam":
    base = optax.adam(lr)
  else:
    raise ValueError(f"optimizer.name must be 'sgd' or 'adam', got {opt.name!r}")
  parts = []
  if h.mode == "grad":
    parts.append(
      reg.add_entropy_grad(
        h.strength,
        refresh_every=h.refresh_every,
        refit_every=h.get("refit_every", None),
        **_entropy_kwargs(config),
        **_quantizer_kwargs(config),
      )
    )
  elif h.mode != "none":
    raise ValueError(f"hemp.mode must be 'none', 'grad' or 'paper', got {h.mode!r}")
  if opt.weight_decay:
    parts.append(optax.add_decayed_weights(opt.weight_decay))
  parts.append(base)
  # config.pruning (optional): magnitude/sensitivity pruning wrapping the chain.
  return pruning.pruning_from_config(config, optax.chain(*parts), steps_per_epoch)


def create_train_state(config, model: nnx.Module, tx: optax.GradientTransformation):
  """Splits an NNX model into ``(graphdef, TrainState)`` with pure-dict params."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = nnx.to_pure_dict(params)
  rest = nnx.to_pure_dict(rest)
  return graphdef, TrainState(jnp.zeros([], jnp.int32), params, rest, tx.init(params))


# ------------------------------------------------------------------------------ steps


def _forward(graphdef, params, model_state, images, train: bool):
  model = nnx.merge(graphdef, params, model_state)
  logits = model(images, train=train)
  _, _, new_state = nnx.split(model, nnx.Param, ...)
  return logits, nnx.to_pure_dict(new_state)


def _quantized_forward_params(params, opt_state):
  """Quantized leaves replaced by their straight-through quantization (QAT)."""
  flat = state_codebooks(opt_state)
  if flat is None:
    raise ValueError(
      "quantization-aware steps need a HEMP transformation in the optimizer "
      "(its codebooks); hemp.mode is 'none'"
    )
  leaves, treedef = jax.tree.flatten(params)
  return treedef.unflatten(
    [x if cb is None else q.quantize_ste(x, cb) for x, cb in zip(leaves, flat)]
  )


def make_train_step(
  graphdef,
  tx: optax.GradientTransformation,
  *,
  axis_name: str | None = None,
  quantized_forward: bool = False,
) -> Callable:
  """Pure ``step(state, images, labels) -> (state, metrics)``.

  With ``axis_name`` (inside ``pmap``) the gradients, metrics and BatchNorm statistics
  are averaged over devices with ``pmean``. With ``quantized_forward`` the task loss is
  computed on the quantized network (straight-through gradients to the continuous
  weights, codebooks from the HEMP state): quantization-aware fine-tuning.
  """

  def step(state: TrainState, images, labels):
    def loss_fn(params):
      if quantized_forward:
        params = _quantized_forward_params(params, state.opt_state)
      logits, new_ms = _forward(graphdef, params, state.model_state, images, True)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, (logits, new_ms)

    (loss, (logits, new_ms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    if axis_name is not None:
      loss, accuracy, grads = jax.lax.pmean((loss, accuracy, grads), axis_name)
      new_ms = jax.lax.pmean(new_ms, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = TrainState(state.step + 1, params, new_ms, opt_state)
    return new, {"loss": loss, "accuracy": accuracy}

  return step


def make_eval_step(graphdef) -> Callable:
  """Pure ``eval(params, model_state, images, labels) -> (correct, loss_sum)``."""

  def evaluate(params, model_state, images, labels):
    logits, _ = _forward(graphdef, params, model_state, images, False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(jnp.argmax(logits, -1) == labels), jnp.sum(loss)

  return evaluate


def data_parallel_train_step(step: Callable, mesh) -> Callable:
  """``jax.jit`` of ``step`` with the state replicated and the batch sharded on "data"."""
  replicated = NamedSharding(mesh, P())
  batch = NamedSharding(mesh, P("data"))
  return jax.jit(
    step,
    in_shardings=(replicated, batch, batch),
    out_shardings=(replicated, replicated),
    donate_argnums=(0,),
  )


def pmap_train_step(graphdef, tx, devices=None, *, quantized_forward: bool = False) -> Callable:
  """The train step under ``jax.pmap``: state replicated (not stacked), batch split.

  Returns ``step(state, images, labels)`` taking a global batch whose leading size is a
  multiple of the device count; it reshapes the batch to ``(devices, per_device, ...)``.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  inner = jax.pmap(
    make_train_step(graphdef, tx, axis_name="data", quantized_forward=quantized_forward),
    axis_name="data",
    in_axes=(None, 0, 0),
    out_axes=(None, None),
    devices=devices,
  )
  n = len(devices)

  def step(state, images, labels):
    if images.shape[0] % n:
      raise ValueError(f"batch size {images.shape[0]} is not a multiple of {n} devices")
    split = lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:])
    return inner(state, split(images), split(labels))

  return step


# ----------------------------------------------------------------- quantized evaluation


def state_codebooks(opt_state) -> tuple | None:
  """The flat codebook tuple held by a HEMP transformation inside ``opt_state``."""
  if isinstance(opt_state, (reg.AddEntropyGradState, reg.HempSecondStepState)):
    return opt_state.codebooks
  if isinstance(opt_state, (tuple, list)):
    for s in opt_state:
      found = state_codebooks(s)
      if found is not None:
        return found
  return None


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


def eval_codebooks(config, state: TrainState):
  """Codebooks for quantized evaluation: the HEMP state's, else fitted post-training."""
  flat = state_codebooks(state.opt_state)
  if flat is not None:
    return reg.codebooks_tree(state.params, flat)
  qc = reg.QuantizerConfig(**_quantizer_kwargs(config))
  flat = reg.fit_leaf_codebooks(
    state.params, qc, order=config.hemp.order, tuples=config.hemp.tuples
  )
  return reg.codebooks_tree(state.params, flat)


# ------------------------------------------------------------------------------ data


class InputPipeline(NamedTuple):
  """Epoch-indexed batches: ``train(epoch, start_batch)`` and ``eval()`` iterators."""

  train: Callable[[int, int], Iterator]
  eval: Callable[[], Iterator]
  steps_per_epoch: int
  num_classes: int
  image_shape: tuple


def input_pipeline(config) -> InputPipeline:
  """Offline datasets (``mnist5k``, ``digits``) or tfds ones (``mnist``, ``cifar10``,
  ``imagenet2012``, prepared in ``config.data_dir``)."""
  name = config.dataset
  info = data_lib.dataset_info(name)
  bs, seed = config.batch_size, config.seed
  if name in ("mnist5k", "digits"):
    ds = data_lib.load_mnist5k() if name == "mnist5k" else data_lib.load_digits_dataset()
    limit = config.get("max_train_examples", None)
    tr_x, tr_y = ds.train_images[:limit], ds.train_labels[:limit]
    train = lambda epoch, start=0: data_lib.iterate_batches(
      tr_x, tr_y, bs, rng_seed=seed, epoch=epoch, start_batch=start
    )
    evaluate = lambda: data_lib.iterate_batches(
      ds.test_images,
      ds.test_labels,
      config.eval_batch_size,
      rng_seed=seed,
      epoch=0,
      shuffle=False,
      drop_remainder=False,
    )
    steps = data_lib.num_batches(len(tr_y), bs)
  else:
    import contextlib

    from hemp_jax import experiment  # config.mock_data: random TFDS examples (smoke runs)

    size = {"image_size": config.image_size} if config.get("image_size", None) else {}
    with experiment.mock_tfds() if config.get("mock_data", False) else contextlib.nullcontext():
      tr = data_lib.load_tfds(
        name,
        info.train_split,
        batch_size=bs,
        train=True,
        seed=seed,
        data_dir=config.get("data_dir", None),
        **size,
      )
      ev = data_lib.load_tfds(
        name,
        info.eval_split,
        batch_size=config.eval_batch_size,
        train=False,
        seed=seed,
        data_dir=config.get("data_dir", None),
        **size,
      )
    info = info._replace(image_shape=tuple(tr.image_shape))
    train = lambda epoch, start=0: tr.batches(epoch, start_batch=start)
    evaluate = lambda: ev.batches(0)
    steps = len(tr)
  max_steps = config.get("max_steps_per_epoch", None)
  if max_steps:
    steps = min(steps, max_steps)
  return InputPipeline(train, evaluate, steps, info.num_classes, tuple(info.image_shape))


# ------------------------------------------------------------------------ checkpoints


def _checkpoint_manager(workdir: str):
  import orbax.checkpoint as ocp  # imported lazily: slow import

  return ocp.CheckpointManager(
    os.path.abspath(os.path.join(workdir, "checkpoints")),
    options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
  )


def _to_saveable(state: TrainState, epoch: int):
  return {"state": jax.tree.map(np.asarray, state), "epoch": np.asarray(epoch)}


def _restore_step(mngr, step: int, state: TrainState):
  """``(state, epoch index, metrics row or None)`` of checkpoint ``step``."""
  import orbax.checkpoint as ocp

  target = jax.tree.map(np.asarray, _to_saveable(state, 0))
  restored = mngr.restore(step, args=ocp.args.StandardRestore(target))
  epoch = int(restored["epoch"])
  try:
    row = (mngr.metadata(step).custom_metadata or {}).get("metrics_row")
  except Exception:  # the step metadata file is optional for restoring the arrays
    row = None
  if row is not None and row.get("epoch") != epoch + 1:
    row = None
  return restored["state"], epoch, row


def _restore(mngr, state: TrainState):
  """``(state, epoch index)`` of the latest checkpoint, or None (no fallback)."""
  step = mngr.latest_step()
  if step is None:
    return None
  restored_state, epoch, _ = _restore_step(mngr, step, state)
  return restored_state, epoch


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


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _restore_with_fallback(mngr, state: TrainState, workdir: str):
  """Restores the newest checkpoint that restores; sets aside those that do not.

  A checkpoint that fails to restore (garbage or truncated files, missing metadata, an
  emptied step directory, ...) is reported in one line on stderr and moved to
  ``<workdir>/checkpoints.corrupt/<step>``; the previous one is tried next.

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
    mngr = _checkpoint_manager(workdir)
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      with _quiet_orbax_logs():  # one line of ours per damaged step, not orbax's
        restored = _restore_step(mngr, step, state)
      break
    except Exception as e:  # orbax raises many types for damaged files
      dest = _set_aside(ckpt_dir, step)
      moved = True
      print(
        f"warning: checkpoint step {step} cannot be restored ({_first_line(e)}); "
        f"moved to {dest}; trying the previous one",
        file=sys.stderr,
      )
      # A fresh manager: orbax caches what it read of the damaged step.
      mngr = _checkpoint_manager(workdir)
  if moved and restored is None:
    print("warning: no checkpoint restores: training starts from scratch", file=sys.stderr)
  return mngr, restored


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


def _save(mngr, state: TrainState, epoch: int, row: dict | None = None):
  """Saves ``state`` at its step; ``row`` (the epoch's metrics) goes into its metadata,
  so the outputs can be re-derived if the run stops before they are written."""
  import orbax.checkpoint as ocp

  mngr.save(
    int(state.step),
    args=ocp.args.StandardSave(_to_saveable(state, epoch)),
    force=True,
    custom_metadata=None if row is None else {"metrics_row": row},
  )
  mngr.wait_until_finished()


# ------------------------------------------------------- workdir, resume guard, outputs

# Fields that change no result: a resume with another value is not a config change.
_RESUME_IGNORED_FIELDS = ("progress",)


def _first_missing_ancestor(path: str) -> str | None:
  path = os.path.abspath(path)
  top = None
  while not os.path.exists(path):
    top = path
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return top


def _prepare_workdir(workdir: str) -> str | None:
  """Creates ``workdir`` (if missing) and checks it is writable, before anything runs.

  Returns:
    The topmost directory this call created (to remove if the run fails before it
    starts), or None.

  Raises:
    NotADirectoryError: ``workdir`` (or a parent) is a file.
    PermissionError: it cannot be created or written.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(
      f"workdir {workdir} is a file, not a directory: pass a directory path "
      "(it is created if missing)"
    )
  created = _first_missing_ancestor(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except NotADirectoryError:
    parent = os.path.dirname(os.path.abspath(workdir))
    while parent != os.path.dirname(parent) and not os.path.exists(parent):
      parent = os.path.dirname(parent)
    raise NotADirectoryError(
      f"workdir {workdir}: {parent} is a file, not a directory; pass a directory path"
    ) from None
  except OSError as e:
    _remove_created(workdir, created)
    raise PermissionError(
      f"cannot create or write the workdir {workdir} ({e.strerror}): pass a writable --workdir"
    ) from None
  return created


def _remove_created(workdir: str, created: str | None) -> None:
  """Removes the empty directories ``_prepare_workdir`` created, up to ``created``."""
  if created is None:
    return
  path = os.path.abspath(workdir)
  while True:
    try:
      os.rmdir(path)
    except OSError:
      return
    if path == created:
      return
    path = os.path.dirname(path)


def _has_run(workdir: str) -> bool:
  ckpt = os.path.join(workdir, "checkpoints")
  has_ckpt = os.path.isdir(ckpt) and any(True for _ in os.scandir(ckpt))
  return has_ckpt or os.path.exists(os.path.join(workdir, "metrics.jsonl"))


def _check_resume(workdir: str, config, allow_config_change: bool) -> dict:
  """The resume guard: compares ``config`` with the workdir's ``config.json``.

  Returns:
    ``{field: (old, new)}`` of the accepted changes (empty when nothing changed or there
    is nothing to resume).

  Raises:
    ConfigChangedError: the workdir holds a run of another config and
      ``allow_config_change`` is False.
  """
  from hemp_jax.config_check import config_diff

  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path) or not _has_run(workdir):
    return {}
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    old, diff = None, {"config.json": (f"unreadable ({_first_line(e)})", "this config")}
  if old is not None:
    diff = config_diff(old, config, ignore=_RESUME_IGNORED_FIELDS)
  if diff and not allow_config_change:
    shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:8])
    more = f" (and {len(diff) - 8} more)" if len(diff) > 8 else ""
    raise ConfigChangedError(
      f"workdir {workdir} holds a run of another config ({len(diff)} field(s) differ: "
      f"{shown}{more}); use a new workdir, or resume with the change knowingly "
      "(hemp-jax train --allow-config-change; it is recorded in config_history.jsonl)"
    )
  return diff


def _atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` through a temporary file and ``os.replace``.

  The temporary file is opened like any other output (mode 0666 minus the umask), so
  readers see the old file or the new one, never a partial one.
  """
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    f = open(tmp, "wb")
  except OSError as e:  # name the file asked for, not the temporary one
    raise type(e)(e.errno, f"cannot write {path}: {e.strerror}") from None
  try:
    with f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _write_config(workdir: str, config, changes: dict, resumed_epochs: int) -> None:
  """Writes ``config.json``; an accepted change is appended to ``config_history.jsonl``."""
  if changes:
    entry = {
      "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "after_epoch": resumed_epochs,
      "changed": {k: [a, b] for k, (a, b) in changes.items()},
    }
    path = os.path.join(workdir, "config_history.jsonl")
    with open(path, "a") as f:
      f.write(json.dumps(entry) + "\n")
    print(f"config change accepted ({', '.join(changes)}); recorded in {path}", file=sys.stderr)
  _atomic_write_bytes(
    os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2).encode()
  )


def _invalidate_outputs(workdir: str) -> None:
  """Removes ``summary.json`` then ``model.hemp`` of an earlier epoch before training on:
  they are written again (last) when the run ends, so they never describe another epoch
  than ``metrics.jsonl``."""
  for name in ("summary.json", "model.hemp"):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      os.remove(path)


def _resume_rows(metrics_path: str, epochs_done: int, ckpt_row: dict | None) -> list[dict]:
  """Metrics rows of epochs ``1..epochs_done``: ``metrics.jsonl``'s, completed with the
  restored checkpoint's own row when the run stopped before writing it."""
  rows = _read_metrics(metrics_path, epochs_done)
  if epochs_done and (not rows or rows[-1]["epoch"] < epochs_done) and ckpt_row is not None:
    rows = [r for r in rows if r["epoch"] < epochs_done] + [ckpt_row]
  return rows


# ------------------------------------------------------------------------------ loop


def _progress(total: int, desc: str, enabled: bool):
  try:
    from tqdm.auto import tqdm
  except ImportError:  # pragma: no cover - tqdm is a dependency
    return None
  return tqdm(
    total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True, file=sys.stderr
  )


def _evaluate(eval_fn, params, model_state, batches) -> float:
  correct, count = 0, 0
  for images, labels in batches:
    c, _ = eval_fn(params, model_state, jnp.asarray(images), jnp.asarray(labels))
    correct += int(c)
    count += len(labels)
  return correct / max(count, 1)


def _read_metrics(path: str, upto_epoch: int) -> list[dict]:
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue  # a damaged line: the epoch's row is re-derived or recomputed
      if isinstance(row, dict) and isinstance(row.get("epoch"), int):
        rows.append(row)
  by_epoch = {r["epoch"]: r for r in rows if r["epoch"] <= upto_epoch}
  return [by_epoch[e] for e in sorted(by_epoch)]


def _write_metrics(path: str, rows: list[dict]):
  _atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def _finite(tree) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


def build(config):
  """Model, optimizer, initial state and data pipeline for ``config``."""
  pipe = input_pipeline(config)
  model = models_lib.init_model(
    config.model, num_classes=pipe.num_classes, seed=config.seed, **config.get("model_kwargs", {})
  )
  if config.get("init_checkpoint", None):  # fine-tuning (issue #5): before tx.init
    from hemp_jax import experiment

    experiment.load_init_checkpoint(model, config.init_checkpoint)
  tx = make_optimizer(config, pipe.steps_per_epoch)
  graphdef, state = create_train_state(config, model, tx)
  return graphdef, state, tx, pipe


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> dict:
  """Trains ``config`` in ``workdir``; returns the summary (also ``summary.json``).

  Files: ``config.json``, ``metrics.jsonl`` (one line per epoch: epoch, train_loss,
  train_accuracy, test_accuracy, test_accuracy_quantized, entropy_soft, entropy_exact,
  seconds), ``checkpoints/`` (orbax, last two epochs), ``model.hemp``, ``summary.json``.

  The config is validated before anything is compiled or written
  (:func:`hemp_jax.config_check.validate_config`). A workdir holding a run is resumed
  from its newest checkpoint that restores (damaged ones are moved to
  ``checkpoints.corrupt/``), if its ``config.json`` equals ``config`` (fields that
  change no result, like ``progress``, aside); ``allow_config_change`` accepts a changed
  config and appends the change to ``config_history.jsonl``. ``metrics.jsonl``,
  ``model.hemp`` and ``summary.json`` are written atomically after the checkpoint, the
  summary last; a rerun after a crash re-derives them, so they describe the same epoch.

  Raises:
    hemp_jax.config_check.ConfigError: a bad config field (nothing written).
    ConfigChangedError: the workdir holds a run of another config.
    NotADirectoryError, PermissionError: the workdir cannot be used.
    TrainingDivergedError: the loss became NaN/Inf (the last good checkpoint is kept).
  """
  from hemp_jax.config_check import validate_config

  # ---- checks before anything is compiled or written (a failed start leaves nothing)
  validate_config(config)
  created = _prepare_workdir(workdir)
  try:
    changes = _check_resume(workdir, config, allow_config_change)
    graphdef, state, tx, pipe = build(config)
    mesh = make_mesh()
    n_dev = mesh.devices.size
    if config.batch_size % n_dev:
      raise ValueError(
        f"batch_size {config.batch_size} must be a multiple of the {n_dev} local devices "
        f"(set --config.batch_size to a multiple of {n_dev})"
      )
  except BaseException:
    _remove_created(workdir, created)
    raise
  # ---- end of the checks
  qat_epochs = config.get("qat_epochs", 0) or 0
  if qat_epochs and config.hemp.mode == "none":
    raise ValueError("qat_epochs needs hemp.mode 'grad' or 'paper' (codebooks in the state)")
  use_pmap = config.get("parallel", "jit") == "pmap"
  if use_pmap:
    train_steps = [pmap_train_step(graphdef, tx, quantized_forward=qf) for qf in (False, True)]
  else:
    train_steps = [
      data_parallel_train_step(make_train_step(graphdef, tx, quantized_forward=qf), mesh)
      for qf in (False, True)
    ]
  # Every array the compiled steps see lives on the mesh, replicated: the state from
  # ``build``, a restored one, and the decoded and quantized params at evaluation.
  # Uncommitted inputs give the same shapes a different type (no mesh), and the step or
  # the evaluation would be traced and compiled a second time.
  on_mesh = functools.partial(jax.device_put, device=NamedSharding(mesh, P()))
  eval_fn = jax.jit(make_eval_step(graphdef))
  evaluate = lambda params, model_state: _evaluate(
    eval_fn, *on_mesh((params, model_state)), pipe.eval()
  )
  hk = _entropy_kwargs(config)
  soft_entropy = jax.jit(lambda p, cb: ent.tree_entropy(p, cb, **hk))
  quantized = jax.jit(quantize_params)

  metrics_path = os.path.join(workdir, "metrics.jsonl")
  # ---- resume: newest checkpoint that restores; outputs re-derived from it
  mngr, restored = _restore_with_fallback(_checkpoint_manager(workdir), state, workdir)
  _write_config(workdir, config, changes, 0 if restored is None else restored[1] + 1)
  start_epoch, ckpt_row = 0, None
  if restored is not None:
    state, last_epoch, ckpt_row = restored
    start_epoch = last_epoch + 1
    print(
      f"resumed after epoch {start_epoch} of {config.num_epochs} (step {int(state.step)})",
      file=sys.stderr,
    )
  rows = _resume_rows(metrics_path, start_epoch, ckpt_row)  # rows count epochs from 1
  if start_epoch < config.num_epochs:
    _invalidate_outputs(workdir)  # summary/model of an earlier epoch: written again at the end
    print("compiling the train step (the first step takes a while)...", file=sys.stderr)
  # ---- end of resume
  state = jax.tree.map(jnp.asarray, state) if use_pmap else on_mesh(state)
  show = config.get("progress", True)

  for epoch in range(start_epoch, config.num_epochs):
    t0 = time.time()
    bar = _progress(pipe.steps_per_epoch, f"epoch {epoch + 1}/{config.num_epochs}", show)
    losses, accs = [], []
    train_step = train_steps[epoch >= config.num_epochs - qat_epochs]
    for i, (images, labels) in enumerate(pipe.train(epoch, 0)):
      if i >= pipe.steps_per_epoch:
        break
      state, m = train_step(state, jnp.asarray(images), jnp.asarray(labels))
      loss = float(m["loss"])  # syncs every step (CPU collectives, DESIGN §4)
      if not math.isfinite(loss):
        if bar is not None:
          bar.close()
        last = mngr.latest_step()
        raise TrainingDivergedError(
          f"loss became {loss} at epoch {epoch + 1}, batch {i + 1} (step "
          f"{int(state.step)}); stopped. Last good checkpoint: "
          f"{'none' if last is None else f'step {last}'} in {workdir}/checkpoints. "
          "Lower the learning rate or the HEMP strength and resume "
          "(hemp-jax train --allow-config-change)."
        )
      losses.append(loss)
      accs.append(float(m["accuracy"]))
      if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accs[-1]:.3f}")
    codebooks = eval_codebooks(config, state)
    qparams = quantized(state.params, codebooks)
    row = {
      "epoch": epoch + 1,
      "train_loss": float(np.mean(losses)),
      "train_accuracy": float(np.mean(accs)),
      "test_accuracy": evaluate(state.params, state.model_state),
      "test_accuracy_quantized": evaluate(qparams, state.model_state),
      "entropy_soft": float(soft_entropy(state.params, codebooks)),
      "entropy_exact": exact_entropy(
        state.params, codebooks, order=hk["order"], tuples=hk["tuples"], rate=hk["rate"]
      ),
      "seconds": time.time() - t0,
    }
    if bar is not None:
      bar.set_postfix(
        loss=f"{row['train_loss']:.4f}",
        test=f"{row['test_accuracy']:.4f}",
        q=f"{row['test_accuracy_quantized']:.4f}",
        H=f"{row['entropy_exact']:.3f}",
      )
      bar.close()
    if show:
      print(
        f"epoch {epoch + 1:3d}  loss {row['train_loss']:.4f}  test {row['test_accuracy']:.4f}"
        f"  quantized {row['test_accuracy_quantized']:.4f}  H soft "
        f"{row['entropy_soft']:.4f} exact {row['entropy_exact']:.4f} bits/param",
        file=sys.stderr,
      )
    if not _finite(state.params):
      raise TrainingDivergedError(f"parameters became non-finite in epoch {epoch + 1}")
    rows.append(row)
    _save(mngr, state, epoch, row)  # the checkpoint first (it holds the row), outputs after
    _write_metrics(metrics_path, rows)

  codebooks = eval_codebooks(config, state)
  done = max(start_epoch, config.num_epochs)  # epochs the state has trained
  if not rows or rows[-1]["epoch"] != done:  # a checkpoint without its row (older version)
    rows = [r for r in rows if r["epoch"] < done]
    rows.append(_rederived_row(done, state, codebooks, evaluate, quantized, soft_entropy, hk))
  last = rows[-1]
  # ---- outputs: metrics.jsonl, model.hemp, then summary.json (each atomic, the summary last)
  _write_metrics(metrics_path, rows)
  model_path = os.path.join(workdir, "model.hemp")
  print(f"entropy-coding the weights into {model_path}...", file=sys.stderr)
  file_bytes = write_model_file(model_path, state, codebooks)
  print(f"decoding {model_path} to check it...", file=sys.stderr)
  decoded = read_model_file(model_path, state)
  test_accuracy_decoded = evaluate(decoded.params, decoded.model_state)
  num_values = int(sum(np.size(x) for x in jax.tree.leaves((state.params, state.model_state))))
  summary = {
    "model": config.model,
    "dataset": config.dataset,
    "hemp_mode": config.hemp.mode,
    "epochs": last["epoch"],
    "test_accuracy": last["test_accuracy"],
    "test_accuracy_quantized": last["test_accuracy_quantized"],
    "entropy_bits_per_param": last["entropy_exact"],
    "entropy_soft_bits_per_param": last["entropy_soft"],
    "entropy_order": hk["order"],
    "num_params": int(sum(np.size(x) for x in jax.tree.leaves(state.params))),
    "num_quantized_params": int(
      sum(
        np.size(x)
        for cb, x in zip(*grp.codebook_leaves(codebooks, state.params)[:2])
        if cb is not None
      )
    ),
    "file": model_path,
    "file_bytes": file_bytes,
    "bits_per_param_file": 8.0 * file_bytes / num_values,
    "compression_ratio": 4.0 * num_values / file_bytes,
    "test_accuracy_decoded": test_accuracy_decoded,
  }
  _write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def _rederived_row(epoch, state, codebooks, evaluate, quantized, soft_entropy, hk) -> dict:
  """The evaluation part of an epoch's metrics row, recomputed from its checkpoint (the
  training loss/accuracy of that epoch are lost: None)."""
  return {
    "epoch": epoch,
    "train_loss": None,
    "train_accuracy": None,
    "test_accuracy": evaluate(state.params, state.model_state),
    "test_accuracy_quantized": evaluate(quantized(state.params, codebooks), state.model_state),
    "entropy_soft": float(soft_entropy(state.params, codebooks)),
    "entropy_exact": exact_entropy(
      state.params, codebooks, order=hk["order"], tuples=hk["tuples"], rate=hk["rate"]
    ),
    "seconds": None,
    "rederived": True,
  }


def _model_file_tree(state: TrainState) -> dict:
  return {"params": state.params, "model_state": state.model_state}


def write_model_file(path: str, state: TrainState, codebooks) -> int:
  """Writes the ``.hemp`` file of a trained model: quantized params (``codebooks``; None
  leaves stay float) and the other model variables (BatchNorm statistics) in float.

  Returns:
    The file size in bytes.
  """
  from hemp_jax import codec

  tree = jax.tree.map(np.asarray, _model_file_tree(state))
  cbs = {"params": codebooks, "model_state": jax.tree.map(lambda _: None, tree["model_state"])}
  blob = codec.compress(tree, codebooks=cbs)
  _atomic_write_bytes(os.fspath(path), blob)  # mode 0666 minus the umask, like the others
  return len(blob)


def read_model_file(path: str, template: TrainState) -> TrainState:
  """Decodes a ``.hemp`` model file into ``template``'s structure (params, model_state).

  Raises:
    hemp_jax.codec.FormatError: damaged or foreign file.
    ValueError: the file's leaves do not match the model (names the first mismatch).
  """
  from hemp_jax import codec

  tree = codec.load_into(_model_file_tree(template), codec.decompress_file(path))
  tree = jax.tree.map(jnp.asarray, tree)
  return template._replace(params=tree["params"], model_state=tree["model_state"])


def evaluate_model_file(config, path: str) -> float:
  """Test accuracy of the model decoded from a ``.hemp`` file (model/data from config)."""
  graphdef, state, _, pipe = build(config)
  decoded = read_model_file(path, state)
  eval_fn = jax.jit(make_eval_step(graphdef))
  return _evaluate(eval_fn, decoded.params, decoded.model_state, pipe.eval())


def _write_json(path: str, obj: dict):
  _atomic_write_bytes(path, json.dumps(obj, indent=2).encode())


def load_final_state(config, workdir: str):
  """``(graphdef, TrainState)`` restored from the latest checkpoint in ``workdir``."""
  graphdef, state, _, _ = build(config)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(
      f"no checkpoint in {ckpt_dir}: is {workdir!r} a `hemp-jax train` work directory?"
    )
  _, restored = _restore_with_fallback(_checkpoint_manager(workdir), state, workdir)
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir} restores")
  return graphdef, jax.tree.map(jnp.asarray, restored[0])
