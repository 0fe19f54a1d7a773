"""ResNet-20/32/44/56/110 for CIFAR (He et al., 2016, Sec. 4.2).

Three stages of ``n`` basic blocks with 16/32/64 channels, ``depth = 6n + 2``.
Downsampling shortcuts use option A: a strided identity whose missing
channels are zero-padded, so shortcuts have no parameters. The layout matches
akamaster/pytorch_resnet_cifar10 (ResNet-20: 269,722 trainable parameters).

Inputs are NHWC float32 images, e.g. ``(N, 32, 32, 3)``.

Train/eval mode is selected per call with ``model(x, train=True)``
(BatchNorm normalizes with batch statistics and updates its running
averages) or ``model(x)`` / ``train=False`` (default: BatchNorm uses the
running averages; nothing is mutated). ``nnx.Module.train()`` / ``.eval()``
have no effect because the flag is always passed explicitly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hemp_jax.models.layers import CONV_INIT


def _conv3x3(in_ch: int, out_ch: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
  return nnx.Conv(
    in_ch,
    out_ch,
    (3, 3),
    strides=(stride, stride),
    padding=((1, 1), (1, 1)),
    use_bias=False,
    kernel_init=CONV_INIT,
    rngs=rngs,
  )


def _batch_norm(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  # momentum=0.9 / epsilon=1e-5 correspond to PyTorch's BatchNorm2d defaults.
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)


class BasicBlock(nnx.Module):
  """Two 3x3 conv-BN layers with an option-A (parameter-free) shortcut."""

  def __init__(self, in_ch: int, out_ch: int, stride: int, *, rngs: nnx.Rngs):
    """Builds the block.

    Args:
      in_ch: Input channels.
      out_ch: Output channels (``>= in_ch``).
      stride: Stride of the first convolution and of the shortcut.
      rngs: Random number streams used for parameter initialization.
    """
    self.conv1 = _conv3x3(in_ch, out_ch, stride, rngs)
    self.bn1 = _batch_norm(out_ch, rngs)
    self.conv2 = _conv3x3(out_ch, out_ch, 1, rngs)
    self.bn2 = _batch_norm(out_ch, rngs)
    self.stride = stride
    self.pad = out_ch - in_ch

  def _shortcut(self, x: jax.Array) -> jax.Array:
    if self.stride != 1:
      x = x[:, :: self.stride, :: self.stride, :]
    if self.pad:
      lo = self.pad // 2
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (lo, self.pad - lo)))
    return x

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
    y = self.bn2(self.conv2(y), use_running_average=not train)
    return nnx.relu(y + self._shortcut(x))


class ResNetCifar(nnx.Module):
  """CIFAR ResNet of depth ``6n + 2`` with option-A shortcuts."""

  def __init__(
    self, *, depth: int = 20, num_classes: int = 10, in_channels: int = 3, rngs: nnx.Rngs
  ):
    """Builds the network.

    Args:
      depth: Total number of weight layers; must be ``6n + 2``.
      num_classes: Number of output logits.
      in_channels: Number of input image channels.
      rngs: Random number streams used for parameter initialization.

    Raises:
      ValueError: If ``depth`` is not of the form ``6n + 2``.
    """
    if depth < 8 or (depth - 2) % 6:
      raise ValueError(f"depth must be 6n + 2 with n >= 1, got {depth}")
    n = (depth - 2) // 6
    self.conv = _conv3x3(in_channels, 16, 1, rngs)
    self.bn = _batch_norm(16, rngs)
    blocks = []
    in_ch = 16
    for stage, out_ch in enumerate((16, 32, 64)):
      for i in range(n):
        stride = 2 if stage > 0 and i == 0 else 1
        blocks.append(BasicBlock(in_ch, out_ch, stride, rngs=rngs))
        in_ch = out_ch
    self.blocks = nnx.List(blocks)
    self.fc = nnx.Linear(64, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Computes logits.

    Args:
      x: Images of shape ``(N, H, W, in_channels)``.
      train: If True, BatchNorm uses batch statistics and updates its
        running averages; otherwise it uses the running averages.

    Returns:
      Logits of shape ``(N, num_classes)``.
    """
    x = nnx.relu(self.bn(self.conv(x), use_running_average=not train))
    for block in self.blocks:
      x = block(x, train=train)
    return self.fc(jnp.mean(x, axis=(1, 2)))
