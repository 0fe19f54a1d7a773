"""VGG with BatchNorm for CIFAR-10 (kuangliu/pytorch-cifar variant).

Each configuration entry is a 3x3 conv (padding 1, with bias as in the
reference implementation) -> BatchNorm -> ReLU, or ``"M"`` for a 2x2 max
pool. After the fifth pool a 32x32 input is 1x1x512, which feeds a single
``Linear(512, num_classes)``. VGG-16 with 10 classes has 14,728,266
trainable parameters.

Inputs are NHWC float32 images of shape ``(N, 32, 32, 3)``.

Train/eval mode is selected per call with ``model(x, train=True)``
(BatchNorm normalizes with batch statistics and updates its running
averages) or ``model(x)`` / ``train=False`` (default: BatchNorm uses the
running averages; nothing is mutated). ``nnx.Module.train()`` / ``.eval()``
have no effect because the flag is always passed explicitly.
"""

from __future__ import annotations

import types

import jax
from flax import nnx

from hemp_jax.models.layers import CONV_INIT, max_pool

CONFIGS = types.MappingProxyType(
  {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (
      64,
      64,
      "M",
      128,
      128,
      "M",
      256,
      256,
      256,
      256,
      "M",
      512,
      512,
      512,
      512,
      "M",
      512,
      512,
      512,
      512,
      "M",
    ),
  }
)


class ConvBN(nnx.Module):
  """3x3 convolution (with bias) -> BatchNorm -> ReLU."""

  def __init__(self, in_ch: int, out_ch: int, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(
      in_ch, out_ch, (3, 3), padding=((1, 1), (1, 1)), kernel_init=CONV_INIT, rngs=rngs
    )
    self.bn = nnx.BatchNorm(out_ch, momentum=0.9, epsilon=1e-5, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    return nnx.relu(self.bn(self.conv(x), use_running_average=not train))


class VGG(nnx.Module):
  """VGG-11/13/16/19 with BatchNorm and a single linear classifier."""

  def __init__(
    self, *, depth: int = 16, num_classes: int = 10, in_channels: int = 3, rngs: nnx.Rngs
  ):
    """Builds the network.

    Args:
      depth: One of 11, 13, 16, 19.
      num_classes: Number of output logits.
      in_channels: Number of input image channels.
      rngs: Random number streams used for parameter initialization.

    Raises:
      ValueError: If ``depth`` is not a known configuration.
    """
    if depth not in CONFIGS:
      raise ValueError(f"depth must be one of {sorted(CONFIGS)}, got {depth}")
    self.config = CONFIGS[depth]
    layers = []
    for v in self.config:
      if v != "M":
        layers.append(ConvBN(in_channels, v, rngs=rngs))
        in_channels = v
    self.features = nnx.List(layers)
    self.fc = nnx.Linear(in_channels, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Computes logits.

    Args:
      x: Images of shape ``(N, 32, 32, in_channels)``.
      train: If True, BatchNorm uses batch statistics and updates its
        running averages; otherwise it uses the running averages.

    Returns:
      Logits of shape ``(N, num_classes)``.
    """
    layers = iter(self.features)
    for v in self.config:
      if v == "M":
        x = max_pool(x, 2)
      else:
        x = next(layers)(x, train=train)
    return self.fc(x.reshape(x.shape[0], -1))
