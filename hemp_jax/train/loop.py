"""The training loop: one epoch loop, and the run behind ``hemp-jax train``.

:func:`train_epochs` trains epoch after epoch and yields after each one; both
:func:`train_and_evaluate` and the sweep (:mod:`hemp_jax.sweep`) run it.
:func:`train_and_evaluate` evaluates the continuous and the quantized model every epoch,
writes ``metrics.jsonl``, checkpoints with orbax at every epoch end, resumes from the
last checkpoint, and stops with :class:`TrainingDivergedError` on a non-finite loss,
keeping the last good checkpoint.
"""

from __future__ import annotations

import collections
import functools
import math
import os
import sys
import time
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from hemp_jax import budget as budget_lib
from hemp_jax.fileio import write_atomic
from hemp_jax.train import config as cfg
from hemp_jax.train.build import build
from hemp_jax.train.checkpoints import (
  DataPosition,
  checkpoint_manager,
  restore_with_fallback,
  save_checkpoint,
)
from hemp_jax.train.evaluate import Evaluator, evaluation_codebooks, quantized_size
from hemp_jax.train.input import InputPipeline
from hemp_jax.train.model_file import model_file_bytes, read_model_file, write_model_file
from hemp_jax.train.steps import (
  TrainState,
  data_parallel_train_step,
  is_main_process,
  make_mesh,
  make_train_step,
  pmap_train_step,
)
from hemp_jax.train.workdir import (
  check_resume,
  invalidate_outputs,
  prepare_workdir,
  read_metrics,
  remove_created,
  resume_rows,
  write_config,
  write_json,
  write_metrics,
)

__all__ = [
  "TrainingDivergedError",
  "Stepper",
  "Epoch",
  "data_mesh",
  "compile_steps",
  "sync_interval",
  "device_batches",
  "train_epochs",
  "train_and_evaluate",
]


class TrainingDivergedError(RuntimeError):
  """The loss became NaN/Inf; the last good checkpoint is kept."""


class Stepper(NamedTuple):
  """The compiled train steps of a run and how their inputs get onto the devices."""

  step: Callable  # ``(state, images, labels) -> (state, metrics)``
  put: Callable  # a host batch -> the step's input array
  place: Callable  # a state -> the step's state (replicated on the mesh)


def data_mesh(batch_size: int) -> jax.sharding.Mesh:
  """The mesh over all devices, after checking ``batch_size`` splits over it.

  Raises:
    ValueError: ``batch_size`` is not a multiple of the device count.
  """
  mesh = make_mesh()
  n_dev = mesh.devices.size
  if batch_size % n_dev:
    raise ValueError(
      f"batch_size {batch_size} must be a multiple of the {n_dev} local devices "
      f"(set --config.batch_size to a multiple of {n_dev})"
    )
  return mesh


def compile_steps(graphdef, tx, normalize: Callable, *, parallel: str, mesh) -> Stepper:
  """The train step of ``parallel`` (``"jit"``/``"pmap"``).

  ``normalize`` maps a host batch to the model's input inside the step.
  """
  if parallel == "pmap":
    if jax.process_count() > 1:
      raise ValueError("parallel='pmap' is single-process; use 'jit' with several processes")
    pmapped = pmap_train_step(graphdef, tx)
    step = lambda s, x, y: pmapped(s, normalize(jnp.asarray(x)), y)
    return Stepper(step, np.asarray, lambda state: jax.tree.map(jnp.asarray, state))

  def with_input(state, images, labels):
    return train_step(state, normalize(images), labels)

  train_step = make_train_step(graphdef, tx)
  step = data_parallel_train_step(with_input, mesh)
  put = functools.partial(jax.make_array_from_process_local_data, NamedSharding(mesh, P("data")))
  # Every array the compiled step sees lives on the mesh, replicated: uncommitted inputs
  # give the same shapes another type (no mesh), and the step would be compiled twice.
  place = functools.partial(jax.device_put, device=NamedSharding(mesh, P()))
  return Stepper(step, put, place)


def sync_interval(log_every_steps: int) -> int:
  """Steps between host syncs: 1 on CPU (queued CPU collectives deadlock, DESIGN.md §4)."""
  return 1 if jax.default_backend() == "cpu" else max(1, int(log_every_steps))


def _progress(total: int, desc: str, enabled: bool):
  try:
    from tqdm.auto import tqdm
  except ImportError:  # pragma: no cover - tqdm is a dependency
    return None
  return tqdm(
    total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True, file=sys.stderr
  )


def device_batches(host_iter, put: Callable, ahead: int = 2):
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


def _finite(tree) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


class Epoch(NamedTuple):
  """What :func:`train_epochs` yields after an epoch."""

  index: int  # 0-based
  state: TrainState
  losses: list  # per trained batch
  accuracies: list
  first_batch: int  # > 0: a resumed epoch, batches before it trained earlier
  started: float  # time.time() at the start of the epoch
  train_seconds: float
  input_wait: float  # seconds the loop waited for batches
  progress: Any  # the epoch's tqdm bar (or None); closed when the loop goes on


def train_epochs(
  state: TrainState,
  stepper: Stepper,
  pipe: InputPipeline,
  *,
  num_epochs: int,
  start_epoch: int = 0,
  start_batch: int = 0,
  position: DataPosition | None = None,
  sync_every: int = 1,
  checkpoint_every: int = 0,
  on_checkpoint: Callable | None = None,
  progress: bool = False,
) -> Iterator[Epoch]:
  """Trains epochs ``start_epoch .. num_epochs - 1``, yielding an :class:`Epoch` after each.

  A state sent back into the generator (``gen.send(state)``) is the one the next epoch
  trains (an accuracy budget sets the strength between epochs this way).

  Args:
    state: the state to train (placed for the steps, :attr:`Stepper.place`).
    stepper: the compiled steps (:func:`compile_steps`).
    pipe: the input.
    num_epochs: the run's epochs.
    start_epoch, start_batch: where a resumed run goes on.
    position: updated after every batch with the grain iterator state that follows it;
      a resumed epoch starts from it (bitwise the batches an uninterrupted run reads).
    sync_every: steps between host syncs (loss check, progress).
    checkpoint_every, on_checkpoint: mid-epoch, every this many steps,
      ``on_checkpoint(state, last complete epoch index)``.
    progress: a tqdm bar per epoch.

  Raises:
    TrainingDivergedError: a non-finite loss, or non-finite params at an epoch's end.
  """
  steps = pipe.steps_per_epoch
  host_it = None
  try:
    for epoch in range(start_epoch, num_epochs):
      t0 = time.time()
      first = start_batch if epoch == start_epoch else 0
      if host_it is None:
        host_it = pipe.train(epoch, 0)
      if first:
        if position is not None and position.state is not None:
          host_it.set_state(position.state)  # bitwise the batches an uninterrupted run reads
        else:
          _close(host_it)
          host_it = pipe.train(epoch, first)
      bar = _progress(steps, f"epoch {epoch + 1}/{num_epochs}", progress)
      try:
        if bar is not None and first:
          bar.update(first)
        state, losses, accs, wait = _run_epoch(
          state,
          stepper.step,
          device_batches(host_it, stepper.put),
          range(first, steps),
          epoch=epoch,
          position=position,
          sync_every=sync_every,
          checkpoint_every=checkpoint_every,
          on_checkpoint=on_checkpoint,
          bar=bar,
        )
        train_seconds = time.time() - t0
        _close(host_it)
        # The next epoch's iterator starts prefetching while this one is evaluated.
        host_it = pipe.train(epoch + 1, 0) if epoch + 1 < num_epochs else None
        if not _finite(state.params):
          raise TrainingDivergedError(f"parameters became non-finite in epoch {epoch + 1}")
        sent = yield Epoch(epoch, state, losses, accs, first, t0, train_seconds, wait, bar)
        if sent is not None:  # the consumer changed the state (e.g. the strength)
          state = sent
      finally:
        if bar is not None:
          bar.close()
  finally:
    if host_it is not None:
      _close(host_it)


def _run_epoch(
  state,
  train_step,
  feed,
  batches: range,
  *,
  epoch,
  position,
  sync_every,
  checkpoint_every,
  on_checkpoint,
  bar,
):
  """The batches of one epoch: ``(state, losses, accuracies, input wait seconds)``."""
  steps = batches.stop
  losses, accs, pending = [], [], []
  wait = 0.0
  for i in batches:
    tw = time.perf_counter()
    images, labels, data_state = next(feed)
    wait += time.perf_counter() - tw
    state, m = train_step(state, images, labels)
    pending.append(m)
    if position is not None:
      position.state = data_state
    at_checkpoint = checkpoint_every and (i + 1) % checkpoint_every == 0 and i + 1 < steps
    if (i + 1) % sync_every and i + 1 < steps and not at_checkpoint:
      continue
    fetched = jax.device_get(pending)  # the only host sync of the loop
    for j, mj in enumerate(fetched):
      loss = float(mj["loss"])
      if not math.isfinite(loss):
        raise TrainingDivergedError(
          f"loss became {loss} at epoch {epoch + 1}, batch {i + 2 - len(fetched) + j} (step "
          f"{int(state.step) - len(fetched) + j + 1}); stopped"
        )
      losses.append(loss)
      accs.append(float(mj["accuracy"]))
    if bar is not None:
      bar.update(len(fetched))
      bar.set_postfix(loss=f"{losses[-1]:.4f}", acc=f"{accs[-1]:.3f}")
    pending = []
    if at_checkpoint and on_checkpoint is not None:
      on_checkpoint(state, epoch - 1)  # epoch - 1: the last complete one (no metrics row yet)
  return state, losses, accs, wait


# ------------------------------------------------------------------------ the run


class _Run(NamedTuple):
  config: ml_collections.ConfigDict
  workdir: str
  changes: dict  # accepted config changes
  graphdef: Any
  state: TrainState
  tx: Any
  pipe: InputPipeline
  mesh: Any


def _start(config, workdir: str, allow_config_change: bool) -> _Run:
  """The checks before anything is compiled or written (a failed start leaves nothing)."""
  created = prepare_workdir(workdir)
  try:
    changes = check_resume(workdir, config, allow_config_change)
    graphdef, state, tx, pipe = build(config)
    mesh = data_mesh(config.batch_size)
  except BaseException:
    remove_created(workdir, created)
    raise
  return _Run(config, workdir, changes, graphdef, state, tx, pipe, mesh)


def _local(tree):
  """This process's copy of replicated (possibly multi-process) arrays."""

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x.addressable_data(0)
    return x

  return jax.tree.map(one, tree)


def _evaluator(run: _Run) -> Evaluator:
  """Evaluation in every process on its own devices (the whole test split each)."""
  on_local = functools.partial(
    jax.device_put, device=NamedSharding(make_mesh(jax.local_devices()), P())
  )
  return Evaluator(
    run.graphdef, run.pipe, cfg.entropy_config(run.config), place=lambda t: on_local(_local(t))
  )


class _Resumed(NamedTuple):
  state: TrainState
  start_epoch: int
  start_batch: int
  rows: list  # metrics rows of the epochs done


def _resume(run: _Run, restored, main: bool) -> _Resumed:
  """Where the run goes on; writes ``config.json`` and drops outputs of an earlier epoch."""
  config, workdir = run.config, run.workdir
  if main:
    write_config(workdir, config, run.changes, 0 if restored is None else restored[1] + 1)
  state, start_epoch, start_batch, ckpt_row = run.state, 0, 0, None
  if restored is not None:
    state, last_epoch, ckpt_row = restored
    start_epoch = last_epoch + 1
    steps = run.pipe.steps_per_epoch
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
  rows = resume_rows(os.path.join(workdir, "metrics.jsonl"), start_epoch, ckpt_row)
  if start_epoch < config.num_epochs:
    if main:  # summary/model of an earlier epoch: written again at the end
      invalidate_outputs(workdir)
    print("compiling the train step (the first step takes a while)...", file=sys.stderr)
  return _Resumed(state, start_epoch, start_batch, rows)


def _epoch_row(ep: Epoch, evaluator: Evaluator, codebooks, batch_size: int) -> dict:
  """An epoch's line of ``metrics.jsonl``."""
  return {
    "epoch": ep.index + 1,
    "train_loss": float(np.mean(ep.losses)),
    "train_accuracy": float(np.mean(ep.accuracies)),
    **evaluator.row(ep.state.params, ep.state.model_state, codebooks),
    "seconds": time.time() - ep.started,
    "examples_per_s": len(ep.losses) * batch_size / ep.train_seconds,
    "input_wait_fraction": ep.input_wait / ep.train_seconds,
  }


def _with_last_row(rows: list, done: int, state, codebooks, evaluator: Evaluator) -> list:
  """``rows`` ending with the row of epoch ``done``: a checkpoint of an older version may
  lack it; its evaluation part is recomputed (the epoch's training loss is lost)."""
  if rows and rows[-1]["epoch"] == done:
    return rows
  row = evaluator.row(state.params, state.model_state, codebooks)
  return [r for r in rows if r["epoch"] < done] + [
    {
      "epoch": done,
      "train_loss": None,
      "train_accuracy": None,
      **row,
      "seconds": None,
      "rederived": True,
    }
  ]


def _show_epoch(ep: Epoch, row: dict, show: bool) -> None:
  if ep.progress is not None:
    ep.progress.close()  # the bar stays up during the evaluation, then the line below
  if show:
    print(
      f"epoch {ep.index + 1:3d}  loss {row['train_loss']:.4f}  test {row['test_accuracy']:.4f}"
      f"  quantized {row['test_accuracy_quantized']:.4f}"
      + (f"  validation {row['validation_accuracy']:.4f}" if "validation_accuracy" in row else "")
      + "  H soft "
      f"{row['entropy_soft']:.4f} exact {row['entropy_exact']:.4f} bits/param"
      f"  {row['examples_per_s']:.0f} ex/s  input wait {row['input_wait_fraction']:.3f}",
      file=sys.stderr,
    )


def _send(gen, value):
  """The generator's next item after sending ``value`` (None at its end)."""
  try:
    return gen.send(value)
  except StopIteration:
    return None


class _Budget(NamedTuple):
  """The accuracy budget of a run (``config.hemp.budget``)."""

  state: budget_lib.BudgetState
  reference: float  # the fixed reference (the last one of a moving curve)
  curve: tuple  # per-epoch references (a float run's), or ()
  gain: float
  path: str  # the smallest decoded model within the budget so far
  margin: float  # points above the output's target (hemp.budget_margin standard errors)


def _reference_curve(workdir: str) -> tuple:
  """The validation accuracy after each epoch of a float run's ``metrics.jsonl``."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise ValueError(f"hemp.budget_reference_run: {path} not found (a float run's workdir?)")
  curve = tuple(r.get("validation_accuracy") for r in read_metrics(path, sys.maxsize))
  if not curve or any(v is None for v in curve):
    raise ValueError(
      f"hemp.budget_reference_run: {path} has no validation_accuracy per epoch "
      "(train the float run with --config.validation_size)"
    )
  return curve


def _budget_start(
  run: _Run, evaluator: Evaluator, resumed: "_Resumed", workdir: str, curve: tuple
) -> _Budget:
  """The budget's reference and controller state (rebuilt from the rows on a resume).

  ``curve``: the float run's per-epoch validation accuracy (:func:`_reference_curve`, read
  before the workdir is touched), or ().
  """
  h = run.config.hemp
  if curve:  # a float run, if named, over a number
    reference = curve[-1]
  elif h.budget_reference is not None:
    reference = float(h.budget_reference)
  elif resumed.rows and "budget_reference" in resumed.rows[-1]:
    reference = resumed.rows[-1]["budget_reference"]  # measured when the run started
  else:  # the model it starts from (init_checkpoint)
    reference = evaluator.accuracy(resumed.state.params, resumed.state.model_state, "validation")
  state = budget_lib.budget_init(h.strength, reference=reference, drop=h.budget)
  for r in resumed.rows:  # a resumed run: the trace, the best and the strength go on
    if "strength" in r:
      state = state._replace(
        trace=state.trace
        + (
          (
            r["epoch"],
            r["strength"],
            r["validation_accuracy_quantized"],
            math.inf if r["budget_size"] is None else r["budget_size"],
          ),
        ),
      )
      if r.get("budget_best"):
        state = state._replace(best=state.trace[-1])
  if resumed.rows and "strength" in resumed.rows[-1]:
    strength = optax.tree_utils.tree_get(resumed.state.opt_state, "strength")
    state = state._replace(strength=float(strength))
  # budget_margin standard errors of the validation accuracy at the output's target
  t = min(max(state.target, 0.0), 1.0)
  margin = 100.0 * h.budget_margin * math.sqrt(t * (1.0 - t) / run.config.validation_size)
  path = os.path.join(workdir, "budget-best.hemp")
  return _Budget(state, reference, curve, h.budget_gain, path, margin)


def _budget_epoch(control: _Budget, index: int, row: dict, state, codebooks, main: bool):
  """After epoch ``index``: the row gets the budget's columns, the smallest decoded model
  within the budget is kept (``budget-best.hemp``), the strength moves for the next epoch.

  The strength steers the validation accuracy of the model as trained (continuous
  before the quantization-aware finish, the decoded model in it) to this epoch's target
  (``budget_target``: a float run's same epoch, or the fixed reference, minus the drop)
  plus ``control.margin`` points; a candidate for the output must reach the output's
  target (the final reference minus the drop) plus that margin with its decoded
  validation accuracy, and the smallest file wins.
  """
  b = control.state
  reference = control.curve[index] if index < len(control.curve) else control.reference
  target = reference - b.drop / 100.0  # this epoch's, which the strength steers to
  margin = control.margin
  decoded = row["validation_accuracy_quantized"]
  size = math.inf
  if budget_lib.meets(b, decoded, margin):
    blob_bytes = model_file_bytes(state, codebooks)
    size = float(len(blob_bytes))
    if b.best is None or size < b.best[3]:
      if main:
        write_atomic(control.path, blob_bytes)
      row["budget_best"] = True
  row.update(
    strength=b.strength,
    budget_reference=reference,
    budget_target=target,
    budget_size=size if math.isfinite(size) else None,
    budget_margin=margin,
  )
  b = budget_lib.budget_update(
    b,
    epoch=index + 1,
    accuracy=row["validation_accuracy"],
    decoded=decoded,
    size=size,
    gain=control.gain,
    reference=reference,
    margin=margin,
  )
  opt_state = budget_lib.set_strength(state.opt_state, b.strength)
  return control._replace(state=b), state._replace(opt_state=opt_state)


def _diverged(e: TrainingDivergedError, mngr, workdir: str) -> TrainingDivergedError:
  last = mngr.latest_step()
  return TrainingDivergedError(
    f"{e}. Last good checkpoint: {'none' if last is None else f'step {last}'} in "
    f"{workdir}/checkpoints. Lower the learning rate or the HEMP strength and resume "
    "(hemp-jax train --allow-config-change)."
  )


def _summary(
  run: _Run, state: TrainState, codebooks, last: dict, evaluator, path: str, source=None
) -> dict:
  """Writes the model file (or copies ``source``, a model file of the epoch of ``last``),
  decodes it to check it; the run's summary."""
  if source is None:
    print(f"entropy-coding the weights into {path}...", file=sys.stderr)
    file_bytes = write_model_file(path, state, codebooks)
  else:
    with open(source, "rb") as f:
      blob = f.read()
    write_atomic(path, blob)
    file_bytes = len(blob)
  print(f"decoding {path} to check it...", file=sys.stderr)
  decoded = read_model_file(path, state)
  test_accuracy_decoded = evaluator.accuracy(decoded.params, decoded.model_state)
  num_values = int(sum(np.size(x) for x in jax.tree.leaves((state.params, state.model_state))))
  summary = {
    "model": run.config.model,
    "dataset": run.config.dataset,
    "hemp_mode": run.config.hemp.mode,
    "epochs": last["epoch"],
    "test_accuracy": last["test_accuracy"],
    "test_accuracy_quantized": last["test_accuracy_quantized"],
    "entropy_bits_per_param": last["entropy_exact"],
    "entropy_soft_bits_per_param": last["entropy_soft"],
    "entropy_order": run.config.hemp.order,
    "num_params": int(sum(np.size(x) for x in jax.tree.leaves(state.params))),
    "num_quantized_params": quantized_size(state.params, codebooks),
    "file": path,
    "file_bytes": file_bytes,
    "bits_per_param_file": 8.0 * file_bytes / num_values,
    "compression_ratio": 4.0 * num_values / file_bytes,
    "test_accuracy_decoded": test_accuracy_decoded,
  }
  if evaluator.has_validation:
    summary["validation_size"] = run.config.validation_size
    summary["validation_accuracy"] = last["validation_accuracy"]
    summary["validation_accuracy_quantized"] = last["validation_accuracy_quantized"]
    summary["validation_accuracy_decoded"] = evaluator.accuracy(
      decoded.params, decoded.model_state, "validation"
    )
  return summary


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> dict:
  """Trains ``config`` in ``workdir``; returns the summary (also ``summary.json``).

  Files (written by process 0): ``config.json`` (the config completed with the
  defaults), ``metrics.jsonl`` (one line per epoch: epoch, train_loss, train_accuracy,
  test_accuracy, test_accuracy_quantized, entropy_soft, entropy_exact, with a validation
  split validation_accuracy and validation_accuracy_quantized, seconds, examples_per_s,
  input_wait_fraction), ``checkpoints/`` (orbax, every process; the last
  two: every epoch end and, with ``config.checkpoint_every_steps``, mid-epoch; each holds
  the grain iterator position), ``model.hemp`` and ``summary.json``.

  Several processes (after :func:`~hemp_jax.train.steps.initialize_distributed`) train
  data-parallel: ``config.batch_size`` is the global batch, each process reads its share
  and the batch is assembled on the global mesh. On CPU the loop syncs on the loss every
  step (DESIGN.md §4); on accelerators only every ``config.log_every_steps`` steps.

  The config is validated before anything is compiled or written
  (:func:`~hemp_jax.train.config.validate_config`). A workdir holding a run is resumed
  from its newest checkpoint that restores (damaged ones are moved to
  ``checkpoints.corrupt/``), if its ``config.json`` equals ``config`` (fields that
  change no result, like ``progress``, aside); ``allow_config_change`` accepts a changed
  config and appends the change to ``config_history.jsonl``. ``metrics.jsonl``,
  ``model.hemp`` and ``summary.json`` are written atomically after the checkpoint, the
  summary last; a rerun after a crash re-derives them, so they describe the same epoch.

  Raises:
    hemp_jax.train.config.ConfigError: a bad config field (nothing written).
    hemp_jax.train.workdir.ConfigChangedError: the workdir holds a run of another config.
    NotADirectoryError, PermissionError: the workdir cannot be used.
    TrainingDivergedError: the loss became NaN/Inf (the last good checkpoint is kept).
  """
  config = cfg.with_defaults(config)
  cfg.validate_config(config)
  curve = ()
  if config.hemp.budget is not None and config.hemp.budget_reference_run:
    curve = _reference_curve(config.hemp.budget_reference_run)  # a bad path writes nothing
  run = _start(config, workdir, allow_config_change)
  opts, main = cfg.loop_kwargs(config), is_main_process()
  stepper = compile_steps(
    run.graphdef, run.tx, run.pipe.normalize, parallel=opts["parallel"], mesh=run.mesh
  )
  evaluator = _evaluator(run)
  codebook_kwargs = cfg.codebook_kwargs(config)
  codebooks_of = lambda s: evaluation_codebooks(s.params, s.opt_state, **codebook_kwargs)
  position = DataPosition()
  mngr, restored = restore_with_fallback(checkpoint_manager(workdir), run.state, workdir, position)
  resumed = _resume(run, restored, main)
  rows, metrics_path = resumed.rows, os.path.join(workdir, "metrics.jsonl")
  show = opts["progress"] and main
  state = stepper.place(resumed.state)
  epochs = train_epochs(
    state,
    stepper,
    run.pipe,
    num_epochs=config.num_epochs,
    start_epoch=resumed.start_epoch,
    start_batch=resumed.start_batch,
    position=position,
    sync_every=sync_interval(opts["log_every_steps"]),
    checkpoint_every=opts["checkpoint_every_steps"],
    on_checkpoint=lambda s, last_epoch: save_checkpoint(mngr, s, last_epoch, None, position),
    progress=show,
  )
  control = (
    _budget_start(run, evaluator, resumed, workdir, curve)
    if config.hemp.budget is not None
    else None
  )
  try:
    ep = next(epochs, None)
    while ep is not None:
      state = ep.state
      row = _epoch_row(ep, evaluator, codebooks_of(state), config.batch_size)
      if control is not None:
        control, state = _budget_epoch(control, ep.index, row, state, codebooks_of(state), main)
        state = stepper.place(state)
      _show_epoch(ep, row, show)
      rows.append(row)
      # The checkpoint first (it holds the row and the data position), outputs after.
      save_checkpoint(mngr, state, ep.index, row, position)
      if main:
        write_metrics(metrics_path, rows)
      ep = _send(epochs, state if control is not None else None)
  except TrainingDivergedError as e:
    raise _diverged(e, mngr, workdir) from None

  codebooks = codebooks_of(state)
  done = max(resumed.start_epoch, config.num_epochs)  # epochs the state has trained
  rows = _with_last_row(rows, done, state, codebooks, evaluator)
  if not main:  # process 0 writes the model file and the summary
    return {"process_index": jax.process_index(), "epochs": rows[-1]["epoch"]}
  # Outputs: metrics.jsonl, model.hemp, then summary.json (each atomic, the summary last).
  write_metrics(metrics_path, rows)
  model_path = os.path.join(workdir, "model.hemp")
  last, source, budget = rows[-1], None, None
  if control is not None:
    best = control.state.best
    budget = {
      "points": config.hemp.budget,
      "reference": rows[-1].get("budget_reference", control.reference),
      "target": control.state.target,  # the output's: the final reference minus the drop
      "margin": control.margin,  # points above the target it was held to
      "met": best is not None,
      "epoch": None if best is None else best[0],
    }
    if best is not None and os.path.exists(control.path):
      # The output is the smallest decoded model that met the budget.
      last, source = next(r for r in rows if r["epoch"] == best[0]), control.path
  summary = _summary(run, state, codebooks, last, evaluator, model_path, source)
  if budget is not None:
    summary["budget"] = budget
  write_json(os.path.join(workdir, "summary.json"), summary)
  return summary
