"""ResNet-18/34/50/101/152 for ImageNet (torchvision definitions).

Stem: 7x7/2 conv -> BN -> ReLU -> 3x3/2 max pool; four stages with
64/128/256/512 base channels; global average pooling; linear classifier.
ResNet-18/34 use basic blocks, ResNet-50/101/152 use bottleneck blocks with
the stride on the 3x3 convolution ("ResNet v1.5", as in torchvision).
Projection shortcuts (1x1 conv + BN) are used where the shape changes. With
1000 classes ResNet-18 has 11,689,512 and ResNet-50 has 25,557,032
trainable parameters.

Inputs are NHWC float32 images, normally ``(N, 224, 224, 3)``; any size
divisible by 32 works thanks to global average pooling.

Train/eval mode is selected per call with ``model(x, train=True)``
(BatchNorm normalizes with batch statistics and updates its running
averages) or ``model(x)`` / ``train=False`` (default: BatchNorm uses the
running averages; nothing is mutated). ``nnx.Module.train()`` / ``.eval()``
have no effect because the flag is always passed explicitly.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
from flax import nnx

from hemp_jax.models.layers import ConvBN

# depth -> (uses bottleneck blocks, blocks per stage).
CONFIGS = types.MappingProxyType(
  {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
  }
)


class BasicBlock(nnx.Module):
  """Two 3x3 conv-BN layers plus shortcut (ResNet-18/34)."""

  expansion = 1

  def __init__(self, in_ch: int, planes: int, stride: int, *, rngs: nnx.Rngs):
    self.layers = nnx.List(
      [ConvBN(in_ch, planes, 3, stride, rngs=rngs), ConvBN(planes, planes, 3, rngs=rngs)]
    )
    self.downsample = (
      ConvBN(in_ch, planes, 1, stride, rngs=rngs) if stride != 1 or in_ch != planes else None
    )

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    return _residual(self, x, train)


class Bottleneck(nnx.Module):
  """1x1 reduce -> 3x3 (strided) -> 1x1 expand (x4) plus shortcut."""

  expansion = 4

  def __init__(self, in_ch: int, planes: int, stride: int, *, rngs: nnx.Rngs):
    out_ch = planes * self.expansion
    self.layers = nnx.List(
      [
        ConvBN(in_ch, planes, 1, rngs=rngs),
        ConvBN(planes, planes, 3, stride, rngs=rngs),
        ConvBN(planes, out_ch, 1, rngs=rngs),
      ]
    )
    self.downsample = (
      ConvBN(in_ch, out_ch, 1, stride, rngs=rngs) if stride != 1 or in_ch != out_ch else None
    )

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    return _residual(self, x, train)


def _residual(block: BasicBlock | Bottleneck, x: jax.Array, train: bool) -> jax.Array:
  """ReLU between the block's conv-BN layers, then ReLU(y + shortcut(x))."""
  y = x
  for i, layer in enumerate(block.layers):
    y = layer(y, train=train)
    if i < len(block.layers) - 1:
      y = nnx.relu(y)
  shortcut = x if block.downsample is None else block.downsample(x, train=train)
  return nnx.relu(y + shortcut)


class ResNet(nnx.Module):
  """ImageNet ResNet of a given depth (torchvision layout)."""

  def __init__(
    self, *, depth: int = 50, num_classes: int = 1000, in_channels: int = 3, rngs: nnx.Rngs
  ):
    """Builds the network.

    Args:
      depth: One of 18, 34, 50, 101, 152.
      num_classes: Number of output logits.
      in_channels: Number of input image channels.
      rngs: Random number streams used for parameter initialization.

    Raises:
      ValueError: If ``depth`` is not a known configuration.
    """
    if depth not in CONFIGS:
      raise ValueError(f"depth must be one of {sorted(CONFIGS)}, got {depth}")
    bottleneck, stage_sizes = CONFIGS[depth]
    block_cls = Bottleneck if bottleneck else BasicBlock
    self.stem = ConvBN(in_channels, 64, 7, 2, rngs=rngs)
    blocks = []
    in_ch = 64
    for stage, n in enumerate(stage_sizes):
      planes = 64 * 2**stage
      for i in range(n):
        stride = 2 if stage > 0 and i == 0 else 1
        blocks.append(block_cls(in_ch, planes, stride, rngs=rngs))
        in_ch = planes * block_cls.expansion
    self.blocks = nnx.List(blocks)
    self.fc = nnx.Linear(in_ch, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Computes logits.

    Args:
      x: Images of shape ``(N, H, W, in_channels)``.
      train: If True, BatchNorm uses batch statistics and updates its
        running averages; otherwise it uses the running averages.

    Returns:
      Logits of shape ``(N, num_classes)``.
    """
    x = nnx.relu(self.stem(x, train=train))
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x, train=train)
    return self.fc(jnp.mean(x, axis=(1, 2)))
