"""The train state, the pure train and eval steps, and how they run on devices.

The main path is one pure step compiled with ``jax.jit`` over a 1-D ``("data",)`` mesh:
the state is replicated, the batch is sharded along its leading axis and the compiler
inserts the gradient all-reduce, so the same step runs on 1 CPU, N GPUs or a TPU slice
(:func:`data_parallel_train_step`). :func:`pmap_train_step` runs it under ``jax.pmap``
and averages the per-device gradients with ``pmean`` (why that is right there and not
under ``shard_map``: DESIGN.md §4). BatchNorm statistics under pmap are averaged over
devices after a step on per-device batches; under jit they are over the global batch.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
  "TrainState",
  "PARALLEL",
  "DTYPES",
  "make_mesh",
  "initialize_distributed",
  "is_main_process",
  "create_train_state",
  "forward",
  "make_train_step",
  "make_eval_step",
  "data_parallel_train_step",
  "pmap_train_step",
]

# How the train step runs on several devices: jit over a mesh, or jax.pmap.
PARALLEL = ("jit", "pmap")
# Compute dtypes of the forward pass (params and optimizer state stay float32).
DTYPES = ("float32", "bfloat16")


class TrainState(NamedTuple):
  """Everything a step changes. ``params``/``model_state`` are pure nested dicts."""

  step: jax.Array
  params: Any  # nnx.Param values
  model_state: Any  # other variables (BatchNorm statistics)
  opt_state: Any


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """1-D ``("data",)`` mesh over ``devices`` (default: all devices of all processes).

  The axis is ``AxisType.Auto`` (jax's default is now Explicit; DESIGN.md §4).
  """
  devices = list(jax.devices() if devices is None else devices)
  return jax.sharding.Mesh(np.asarray(devices), ("data",), axis_types=(AxisType.Auto,))


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Joins a multi-process JAX job (``jax.distributed.initialize``) before any backend use.

  On CPU the cross-process collectives are gloo's (set here, DESIGN.md §4). Arguments
  left ``None`` are detected by ``jax.distributed.initialize``
  (``$JAX_COORDINATOR_ADDRESS``, SLURM, Open MPI, TPU pods, ...).

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


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation):
  """Splits an NNX model into ``(graphdef, TrainState)`` with pure-dict params."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = nnx.to_pure_dict(params)
  rest = nnx.to_pure_dict(rest)
  return graphdef, TrainState(jnp.zeros([], jnp.int32), params, rest, tx.init(params))


def forward(graphdef, params, model_state, images, train: bool):
  """``(logits, new model_state)`` of the model ``graphdef`` on ``images``."""
  model = nnx.merge(graphdef, params, model_state)
  logits = model(images, train=train)
  _, _, new_state = nnx.split(model, nnx.Param, ...)
  return logits, nnx.to_pure_dict(new_state)


def make_train_step(
  graphdef,
  tx: optax.GradientTransformation,
  *,
  axis_name: str | None = None,
) -> Callable:
  """Pure ``step(state, images, labels) -> (state, metrics)``.

  Args:
    graphdef: the model's NNX graph definition.
    tx: the optimizer.
    axis_name: inside ``pmap``: gradients, metrics and BatchNorm statistics are averaged
      over this axis with ``pmean``.
  """

  def step(state: TrainState, images, labels):
    def loss_fn(params):
      logits, new_ms = forward(graphdef, params, state.model_state, images, True)
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
    logits, _ = forward(graphdef, params, model_state, images, False)
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


def pmap_train_step(graphdef, tx, devices=None) -> Callable:
  """The train step under ``jax.pmap``: state replicated (not stacked), batch split.

  Returns ``step(state, images, labels)`` taking a global batch whose leading size is a
  multiple of the device count; it reshapes the batch to ``(devices, per_device, ...)``.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  inner = jax.pmap(
    make_train_step(graphdef, tx, axis_name="data"),
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
