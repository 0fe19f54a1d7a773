"""Flax NNX model zoo.

All models are ``flax.nnx.Module``s built as ``Model(*, num_classes, rngs,
**options)`` that take NHWC float32 images and return logits. Train/eval mode
is selected per call: ``model(x, train=True)`` uses batch statistics in
BatchNorm (updating the running averages) and enables dropout;
``model(x)`` (``train=False``, the default) is deterministic inference.

Use :func:`create_model` to build a model by name and :func:`count_params`
to count its trainable parameters.
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
    "LeNet300100", "LeNet5", "ResNetCifar", "VGG", "MobileNetV2", "ResNet",
    "MODELS", "create_model", "count_params",
]

#: Read-only registry: name -> constructor ``(*, num_classes, rngs, **kw)``.
MODELS: types.MappingProxyType[str, Callable[..., nnx.Module]] = (
    types.MappingProxyType({
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
    }))


def create_model(name: str, *, num_classes: int, rngs: nnx.Rngs,
                 **kwargs: Any) -> nnx.Module:
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
    raise ValueError(
        f"Unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
  return MODELS[name](num_classes=num_classes, rngs=rngs, **kwargs)


def count_params(model: nnx.Module) -> int:
  """Returns the number of trainable parameters (``nnx.Param`` elements).

  BatchNorm running statistics and RNG state are not counted.

  Args:
    model: Any NNX module (abstract ones from ``nnx.eval_shape`` work too).
  """
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  return sum(int(leaf.size) for leaf in leaves)
