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

import collections
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
  """1-D ``("data",)`` mesh over ``devices`` (default: all devices of all processes),
  Auto axis."""
  devices = list(jax.devices() if devices is None else devices)
  return jax.sharding.Mesh(np.asarray(devices), ("data",), axis_types=(AxisType.Auto,))


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Joins a multi-process JAX job (``jax.distributed.initialize``) before any backend use.

  On CPU the cross-process collectives are gloo's (set here, DESIGN §5). Arguments left
  ``None`` are detected by ``jax.distributed.initialize`` (``$JAX_COORDINATOR_ADDRESS``,
  SLURM, Open MPI, TPU pods, ...).

  Args:
    coordinator_address: ``HOST:PORT`` of process 0's coordinator service.
    num_processes: Number of processes.
    process_id: This process's index in ``[0, num_processes)``.
  """
  if (num_processes is None) != (process_id is None):
    raise ValueError(
      "give both --num_processes and --process_id (or neither, to let JAX detect them)"
    )
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id {process_id} is not in [0, {num_processes}): fix it")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU backend only
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )


def is_main_process() -> bool:
  """Whether this process writes the outputs (metrics, summary, model file): process 0."""
  return jax.process_index() == 0


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
    lloyd_method=qc.get("lloyd_method", "empirical"),
  )


def _degenerate_kwargs(config, steps_per_epoch: int) -> dict:
  """How leaves that start constant get their codebooks (``quantizer.degenerate``)."""
  qc = config.quantizer
  mode = qc.get("degenerate", "keep")
  if mode != "defer":
    return dict(degenerate=mode)
  epochs = qc.get("degenerate_fit_epochs", 1.0)
  return dict(degenerate=mode, degenerate_fit_step=max(1, round(epochs * steps_per_epoch)))


def _entropy_kwargs(config) -> dict:
  h = config.hemp
  return dict(order=h.order, tuples=h.tuples, rate=h.rate, pool=h.pool)


def make_optimizer(config, steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """The optax chain described by ``config`` (``optimizer``, ``hemp``, ``quantizer``).

  ``config.hemp.mode``:
    * ``"none"`` — the plain optimizer (baseline);
    * ``"grad"`` — ``chain(add_entropy_grad(strength), weight decay, optimizer)``;
    * ``"paper"`` — :func:`hemp_jax.paper_recipe` (SGD + the gated unscaled step).
      ``hemp.strength`` is the authors' ``lambda_H`` (``hemp.lambda_units="authors"``,
      the default: their pooled entropy in bits per tuple, so the entropy is pooled over
      all quantized tensors whatever ``hemp.pool`` says) or a per-parameter strength
      (``hemp.lambda_units="per_param"``, with ``hemp.pool``).
  """
  from hemp_jax import pruning  # config.pruning: optional wrapper (issue #5)

  opt, h = config.optimizer, config.hemp
  lr = _learning_rate(config, steps_per_epoch)
  if h.mode == "paper":
    units = h.get("lambda_units", "authors")
    entropy_kw = _entropy_kwargs(config)
    if units == "authors":
      entropy_kw["pool"] = "global"
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
        refit_every=h.get("refit_every", None),
        lambda_units=units,
        **entropy_kw,
        **_quantizer_kwargs(config),
        **_degenerate_kwargs(config, steps_per_epoch),
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
        **_degenerate_kwargs(config, steps_per_epoch),
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
      logits = logits.astype(jnp.float32)  # bf16 models: the loss in float32
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
    logits = logits.astype(jnp.float32)
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
  """Epoch-indexed batches and what the step needs to read them.

  ``train(epoch, start_batch)`` returns a grain iterator over this process's rows of the
  epoch's global batches (``get_state`` / ``set_state``); ``eval()`` iterates the whole
  test split in this process; ``normalize`` maps a (uint8) batch to the model's float
  input and runs inside the jitted steps (identity for the float offline sets).
  """

  train: Callable[[int, int], Iterator]
  eval: Callable[[], Iterator]
  steps_per_epoch: int
  num_classes: int
  image_shape: tuple
  normalize: Callable = data_lib.Normalize(None)


def _pipeline_options(config) -> data_lib.PipelineOptions:
  d = config.get("data", None) or {}
  return data_lib.PipelineOptions(
    worker_count=int(d.get("worker_count", 0) or 0),
    num_threads=int(d.get("num_threads", 2)),
    prefetch=int(d.get("prefetch", 4)),
  )


def input_pipeline(config) -> InputPipeline:
  """The grain graph (:mod:`hemp_jax.data.pipeline`) over the offline datasets
  (``mnist5k``, ``digits``: float32 images from memory) or tfds ones (``mnist``,
  ``cifar10``, ``imagenet2012`` prepared in ``config.data_dir``: uint8 images, normalized on
  the device). ``config.batch_size`` is the global batch; this process reads its
  ``1 / process_count`` share of every batch."""
  name = config.dataset
  info = data_lib.dataset_info(name)
  bs, seed = config.batch_size, config.seed
  options = _pipeline_options(config)
  host = dict(process_index=jax.process_index(), process_count=jax.process_count())
  max_steps = config.get("max_steps_per_epoch", None)
  if name in ("mnist5k", "digits"):
    ds = data_lib.load_mnist5k() if name == "mnist5k" else data_lib.load_digits_dataset()
    limit = config.get("max_train_examples", None)
    train_src = data_lib.ArraySource(ds.train_images[:limit], ds.train_labels[:limit])
    eval_src = data_lib.ArraySource(ds.test_images, ds.test_labels)
    transform = eval_transform = None
    normalize = data_lib.Normalize(None)
    image_shape = tuple(info.image_shape)
  else:
    import contextlib

    from hemp_jax import experiment  # config.mock_data: random TFDS examples (smoke runs)

    data_dir = config.get("data_dir", None)
    with experiment.mock_tfds() if config.get("mock_data", False) else contextlib.nullcontext():
      base, train_src = data_lib.open_tfds_source(name, info.train_split, data_dir)
      _, eval_src = data_lib.open_tfds_source(name, info.eval_split, data_dir)
    size = info.image_shape[0]
    if base == "imagenet2012" and config.get("image_size", None):
      size = int(config.image_size)
    transform = eval_transform = data_lib.ImageTransform(base, size)
    normalize = data_lib.Normalize(base)
    image_shape = (size, size, info.image_shape[2])
  train_pipe = data_lib.GrainPipeline(
    train_src,
    batch_size=bs,
    train=True,
    seed=seed,
    transform=transform,
    max_batches=max_steps,
    options=options,
    **host,
  )
  # Evaluation reads the whole test split in every process (results are identical).
  eval_pipe = data_lib.GrainPipeline(
    eval_src,
    batch_size=config.eval_batch_size,
    train=False,
    seed=seed,
    transform=eval_transform,
    options=options._replace(worker_count=0),
  )
  return InputPipeline(
    lambda epoch, start=0: train_pipe.epoch(epoch, start),
    lambda: eval_pipe.epoch(0),
    len(train_pipe),
    info.num_classes,
    image_shape,
    normalize,
  )


# ------------------------------------------------------------------------ checkpoints


def _checkpoint_manager(workdir: str):
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


def _restore_step(mngr, step: int, state: TrainState, data_position=None):
  """``(state, epoch index, metrics row or None)`` of checkpoint ``step``; fills
  ``data_position`` with the saved grain iterator state when the checkpoint has one."""
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
  data_dir = os.path.join(str(mngr.directory), str(step), "data")
  if data_position is not None and os.path.isdir(data_dir):
    import grain
    from etils import epath

    grain.checkpoint.CheckpointHandler().restore(
      epath.Path(data_dir), args=grain.checkpoint.CheckpointRestore(data_position)
    )
  return restored["state"], epoch, row


def _restore(mngr, state: TrainState, data_position: DataPosition | None = None):
  """``(state, epoch index)`` of the latest checkpoint, or None (no fallback)."""
  step = mngr.latest_step()
  if step is None:
    return None
  restored_state, epoch, _ = _restore_step(mngr, step, state, data_position)
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


def _restore_with_fallback(
  mngr, state: TrainState, workdir: str, data_position: DataPosition | None = None
):
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
        restored = _restore_step(mngr, step, state, data_position)
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


def _save(
  mngr,
  state: TrainState,
  epoch: int,
  row: dict | None = None,
  data_position: DataPosition | None = None,
):
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
  # config.dtype "bfloat16": activations and matmuls in bf16, params stay float32.
  models_lib.set_dtype(model, config.get("dtype", "float32"))
  if config.get("init_checkpoint", None):  # fine-tuning (issue #5): before tx.init
    from hemp_jax import experiment

    experiment.load_init_checkpoint(model, config.init_checkpoint)
  tx = make_optimizer(config, pipe.steps_per_epoch)
  graphdef, state = create_train_state(config, model, tx)
  return graphdef, state, tx, pipe


def _local(tree):
  """This process's copy of replicated (possibly multi-process) arrays."""

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x.addressable_data(0)
    return x

  return jax.tree.map(one, tree)


def _feed(host_iter, put: Callable, ahead: int = 2):
  """Device batches ``ahead`` batches in front of the loop (double buffering).

  Yields ``(images, labels, data_state)``: the arrays already transferred (``put``) and
  the grain iterator state that follows the batch (what a checkpoint taken after it saves).
  While the loop runs step ``i``, batches ``i + 1 .. i + ahead`` are on their way.
  """
  buf = collections.deque()
  get_state = getattr(host_iter, "get_state", lambda: None)

  def pull() -> None:
    try:
      images, labels = next(host_iter)
    except StopIteration:
      return
    buf.append((put(images), put(labels), get_state()))

  for _ in range(ahead):
    pull()
  while buf:
    item = buf.popleft()
    pull()
    yield item


def _close(it) -> None:
  close = getattr(it, "close", None)
  if close is not None:
    close()


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> dict:
  """Trains ``config`` in ``workdir``; returns the summary (also ``summary.json``).

  Files (written by process 0): ``config.json``, ``metrics.jsonl`` (one line per epoch:
  epoch, train_loss, train_accuracy, test_accuracy, test_accuracy_quantized,
  entropy_soft, entropy_exact, seconds, examples_per_s, input_wait_fraction),
  ``checkpoints/`` (orbax, every process; the last two: every epoch end and, with
  ``config.checkpoint_every_steps``, mid-epoch; each holds the grain iterator position),
  ``model.hemp`` and ``summary.json``.

  Several processes (after :func:`initialize_distributed`) train data-parallel:
  ``config.batch_size`` is the global batch, each process reads its share
  (:func:`input_pipeline`) and the batch is assembled on the global mesh.
  On CPU the loop syncs on the loss every step (DESIGN §4); on accelerators only every
  ``config.log_every_steps`` steps.

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
  main = is_main_process()
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
  qat_epochs = config.get("qat_epochs", 0) or 0  # > 0 only with a regularizer (validated)
  use_pmap = config.get("parallel", "jit") == "pmap"
  if use_pmap and jax.process_count() > 1:
    raise ValueError("parallel='pmap' is single-process; use 'jit' with several processes")
  normalize = pipe.normalize
  if use_pmap:
    pmapped = [pmap_train_step(graphdef, tx, quantized_forward=qf) for qf in (False, True)]
    train_steps = [(lambda s, x, y, f=f: f(s, normalize(jnp.asarray(x)), y)) for f in pmapped]
    put = np.asarray
  else:

    def with_input(step):
      return lambda state, images, labels: step(state, normalize(images), labels)

    train_steps = [
      data_parallel_train_step(
        with_input(make_train_step(graphdef, tx, quantized_forward=qf)), mesh
      )
      for qf in (False, True)
    ]
    batch_sharding = NamedSharding(mesh, P("data"))
    put = functools.partial(jax.make_array_from_process_local_data, batch_sharding)
  # Every array the compiled steps see lives on the mesh, replicated: the state from
  # ``build``, a restored one, and the decoded and quantized params at evaluation.
  # Uncommitted inputs give the same shapes a different type (no mesh), and the step or
  # the evaluation would be traced and compiled a second time.
  on_mesh = functools.partial(jax.device_put, device=NamedSharding(mesh, P()))
  # Evaluation runs in every process on its own devices (the whole test split each).
  on_local = functools.partial(
    jax.device_put, device=NamedSharding(make_mesh(jax.local_devices()), P())
  )
  eval_step = make_eval_step(graphdef)
  eval_fn = jax.jit(lambda p, ms, x, y: eval_step(p, ms, normalize(x), y))
  evaluate = lambda params, model_state: _evaluate(
    eval_fn, *on_local(_local((params, model_state))), pipe.eval()
  )
  hk = _entropy_kwargs(config)
  soft_entropy = jax.jit(lambda p, cb: ent.tree_entropy(p, cb, **hk))
  quantized = jax.jit(quantize_params)

  metrics_path = os.path.join(workdir, "metrics.jsonl")
  steps = pipe.steps_per_epoch
  # ---- resume: newest checkpoint that restores; outputs re-derived from it
  position = DataPosition()
  mngr, restored = _restore_with_fallback(_checkpoint_manager(workdir), state, workdir, position)
  if main:
    _write_config(workdir, config, changes, 0 if restored is None else restored[1] + 1)
  start_epoch, start_batch, ckpt_row = 0, 0, None
  if restored is not None:
    state, last_epoch, ckpt_row = restored
    start_epoch = last_epoch + 1
    # A mid-epoch checkpoint: the batches of epoch ``start_epoch`` already trained.
    start_batch = int(state.step) - start_epoch * steps
    if not 0 <= start_batch < steps:
      start_batch = 0
    print(
      f"resumed after epoch {start_epoch} of {config.num_epochs}"
      + (f", batch {start_batch} of epoch {start_epoch + 1}" if start_batch else "")
      + f" (step {int(state.step)})",
      file=sys.stderr,
    )
  rows = _resume_rows(metrics_path, start_epoch, ckpt_row)  # rows count epochs from 1
  if start_epoch < config.num_epochs:
    if main:  # summary/model of an earlier epoch: written again at the end
      _invalidate_outputs(workdir)
    print("compiling the train step (the first step takes a while)...", file=sys.stderr)
  # ---- end of resume
  state = jax.tree.map(jnp.asarray, state) if use_pmap else on_mesh(state)
  show = config.get("progress", True) and main
  on_cpu = jax.default_backend() == "cpu"
  # CPU: sync on the loss every step (queued CPU collectives deadlock, DESIGN §4).
  sync_every = 1 if on_cpu else max(1, int(config.get("log_every_steps", 50) or 50))
  ckpt_every = config.get("checkpoint_every_steps", None) or 0

  host_it = None
  for epoch in range(start_epoch, config.num_epochs):
    t0 = time.time()
    first = start_batch if epoch == start_epoch else 0
    if host_it is None:
      host_it = pipe.train(epoch, 0)
    if first:
      if position.state is not None:
        host_it.set_state(position.state)  # bitwise the batches an uninterrupted run reads
      else:
        _close(host_it)
        host_it = pipe.train(epoch, first)
    bar = _progress(steps, f"epoch {epoch + 1}/{config.num_epochs}", show)
    if bar is not None and first:
      bar.update(first)
    losses, accs, pending = [], [], []
    wait = 0.0
    train_step = train_steps[epoch >= config.num_epochs - qat_epochs]
    feed = _feed(host_it, put)
    for i in range(first, steps):
      tw = time.perf_counter()
      images, labels, data_state = next(feed)
      wait += time.perf_counter() - tw
      state, m = train_step(state, images, labels)
      pending.append(m)
      position.state = data_state
      if (i + 1) % sync_every and i + 1 < steps and not (ckpt_every and (i + 1) % ckpt_every == 0):
        continue
      fetched = jax.device_get(pending)  # the only host sync of the loop
      for j, mj in enumerate(fetched):
        loss = float(mj["loss"])
        if not math.isfinite(loss):
          if bar is not None:
            bar.close()
          last = mngr.latest_step()
          batch = i + 2 - len(fetched) + j
          raise TrainingDivergedError(
            f"loss became {loss} at epoch {epoch + 1}, batch {batch} (step "
            f"{int(state.step) - len(fetched) + j + 1}); stopped. Last good checkpoint: "
            f"{'none' if last is None else f'step {last}'} in {workdir}/checkpoints. "
            "Lower the learning rate or the HEMP strength and resume "
            "(hemp-jax train --allow-config-change)."
          )
        losses.append(loss)
        accs.append(float(mj["accuracy"]))
      if bar is not None:
        bar.update(len(fetched))
        bar.set_postfix(loss=f"{losses[-1]:.4f}", acc=f"{accs[-1]:.3f}")
      pending = []
      if ckpt_every and (i + 1) % ckpt_every == 0 and i + 1 < steps:
        # mid-epoch: epoch - 1 is the last complete one (no metrics row yet)
        _save(mngr, state, epoch - 1, None, position)
    train_seconds = time.time() - t0
    _close(host_it)
    # The next epoch's iterator starts prefetching while this one is evaluated.
    host_it = pipe.train(epoch + 1, 0) if epoch + 1 < config.num_epochs else None
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
      "examples_per_s": (steps - first) * config.batch_size / train_seconds,
      "input_wait_fraction": wait / train_seconds,
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
        f"{row['entropy_soft']:.4f} exact {row['entropy_exact']:.4f} bits/param"
        f"  {row['examples_per_s']:.0f} ex/s  input wait {row['input_wait_fraction']:.3f}",
        file=sys.stderr,
      )
    if not _finite(state.params):
      raise TrainingDivergedError(f"parameters became non-finite in epoch {epoch + 1}")
    rows.append(row)
    # The checkpoint first (it holds the row and the data position), outputs after.
    _save(mngr, state, epoch, row, position)
    if main:
      _write_metrics(metrics_path, rows)

  codebooks = eval_codebooks(config, state)
  done = max(start_epoch, config.num_epochs)  # epochs the state has trained
  if not rows or rows[-1]["epoch"] != done:  # a checkpoint without its row (older version)
    rows = [r for r in rows if r["epoch"] < done]
    rows.append(_rederived_row(done, state, codebooks, evaluate, quantized, soft_entropy, hk))
  last = rows[-1]
  if not main:  # process 0 writes the model file and the summary
    return {"process_index": jax.process_index(), "epochs": last["epoch"]}
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


def evaluate_model_file(config, path: str) -> float:
  """Test accuracy of the model decoded from a ``.hemp`` file (model/data from config)."""
  graphdef, state, _, pipe = build(config)
  decoded = read_model_file(path, state)
  eval_step, normalize = make_eval_step(graphdef), pipe.normalize
  eval_fn = jax.jit(lambda p, ms, x, y: eval_step(p, ms, normalize(x), y))
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
