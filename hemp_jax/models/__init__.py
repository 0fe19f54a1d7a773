"""Flax NNX model zoo.

All models are ``flax.nnx.Module``s built as ``Model(*, num_classes, rngs,
**options)`` that take NHWC float32 images and return logits. Train/eval mode
is selected per call: ``model(x, train=True)`` uses batch statistics in
BatchNorm (updating the running averages) and enables dropout;
``model(x)`` (``train=False``, the default) is deterministic inference.

Use :func:`create_model` to build a model by name (eagerly, op by op),
:func:`init_model` to build it with one compiled initialization (much faster for
deep models on CPU), and :func:`count_params` to count its trainable parameters.
"""

from __future__ import annotations

import functools
import types
from typing import Any, Callable

import jax
from flax import nnx

from hemp_jax.models.lenet import LeNet5, LeNet300100
from hemp_jax.models.mobilenet_v2 import MobileNetV2
from hemp_jax.models.resnet_cifar import ResNetCifar
from hemp_jax.models.resnet_imagenet import ResNet
from hemp_jax.models.vgg import VGG

__all__ = [
  "LeNet300100",
  "LeNet5",
  "ResNetCifar",
  "VGG",
  "MobileNetV2",
  "ResNet",
  "MODELS",
  "create_model",
  "init_model",
  "count_params",
  "set_dtype",
]

#: Read-only registry: name -> constructor ``(*, num_classes, rngs, **kw)``.
MODELS: types.MappingProxyType[str, Callable[..., nnx.Module]] = types.MappingProxyType(
  {
    "lenet_300_100": LeNet300100,
    "lenet5": LeNet5,
    "resnet20": functools.partial(ResNetCifar, depth=20),
    "resnet32": functools.partial(ResNetCifar, depth=32),
    "resnet56": functools.partial(ResNetCifar, depth=56),
    "vgg16": functools.partial(VGG, depth=16),
    "mobilenet_v2": functools.partial(MobileNetV2, variant="imagenet"),
    "mobilenet_v2_cifar": functools.partial(MobileNetV2, variant="cifar"),
    "resnet18": functools.partial(ResNet, depth=18),
    "resnet50": functools.partial(ResNet, depth=50),
  }
)


def create_model(name: str, *, num_classes: int, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
  """Builds a registered model.

  Args:
    name: A key of :data:`MODELS`.
    num_classes: Number of output logits.
    rngs: Random number streams used for parameter initialization.
    **kwargs: Extra model options forwarded to the constructor.

  Returns:
    The freshly initialized model.

  Raises:
    ValueError: If ``name`` is not registered.
  """
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
  return MODELS[name](num_classes=num_classes, rngs=rngs, **kwargs)


def set_dtype(model: nnx.Module, dtype: Any) -> nnx.Module:
  """Sets the computation dtype of every layer (mixed precision), in place.

  Every submodule with a ``dtype`` attribute (``nnx.Conv``, ``nnx.Linear``,
  ``nnx.BatchNorm``, ...) computes in ``dtype``: inputs and parameters are cast to it for
  the matmuls and convolutions, activations flow in it. Parameters stay stored in their
  ``param_dtype`` (float32), so gradients, optimizer state and the entropy estimate are
  float32; BatchNorm keeps its statistics and reductions in float32.

  Args:
    model: Any NNX module.
    dtype: e.g. ``jnp.bfloat16``, ``"bfloat16"``; ``None`` or ``"float32"`` restores the
      default (compute in the parameters' dtype).

  Returns:
    ``model`` (modified in place).
  """
  import jax.numpy as jnp

  dtype = None if dtype in (None, "float32", jnp.float32) else jnp.dtype(dtype)
  for _, module in nnx.iter_modules(model):
    if hasattr(module, "dtype") and hasattr(module, "param_dtype"):
      module.dtype = dtype
  return model


def init_model(name: str, *, num_classes: int, seed: int = 0, **kwargs: Any) -> nnx.Module:
  """Builds a registered model with its initialization compiled as one XLA program.

  Eager construction (:func:`create_model`) compiles every random initializer once per
  distinct parameter shape: ~50 small compilations for a ResNet-50 or a MobileNetV2.
  This traces the constructor once and compiles it with XLA's
  backend optimizations off on CPU (the program runs once; its compile time is what
  counts). The values come from the same random streams as ``create_model(...,
  rngs=nnx.Rngs(seed))``; they can differ from the eager ones in the last float bit.

  Args:
    name: A key of :data:`MODELS`.
    num_classes: Number of output logits.
    seed: Seed of the ``nnx.Rngs`` used for initialization.
    **kwargs: Extra model options forwarded to the constructor.

  Returns:
    The freshly initialized model.

  Raises:
    ValueError: If ``name`` is not registered.
  """
  graphdefs = []

  def initial_state():
    graphdef, state = nnx.split(
      create_model(name, num_classes=num_classes, rngs=nnx.Rngs(seed), **kwargs)
    )
    graphdefs.append(graphdef)  # static structure, recorded by the one trace below
    return state

  lowered = jax.jit(initial_state).lower()
  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return nnx.merge(graphdefs[0], lowered.compile(compiler_options=options)())


def count_params(model: nnx.Module) -> int:
  """Returns the number of trainable parameters (``nnx.Param`` elements).

  BatchNorm running statistics and RNG state are not counted.

  Args:
    model: Any NNX module (abstract ones from ``nnx.eval_shape`` work too).
  """
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  return sum(int(leaf.size) for leaf in leaves)
