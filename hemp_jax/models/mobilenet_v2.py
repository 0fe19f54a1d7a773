"""MobileNetV2 (Sandler et al., 2018) in ImageNet and CIFAR variants.

* ``variant="imagenet"`` follows torchvision's ``mobilenet_v2``: stride-2
  stem, ReLU6, no expansion conv in ``t=1`` blocks, residuals only where the
  shape is preserved, Dropout(0.2) before the classifier. Width 1.0 with 1000
  classes has 3,504,872 trainable parameters. Inputs are ``(N, 224, 224, 3)``
  (any size works thanks to global average pooling).
* ``variant="cifar"`` follows kuangliu/pytorch-cifar ``MobileNetV2``: stride 1
  in the stem and in the second stage, ReLU, an expansion conv in every block,
  a 1x1 conv+BN projection shortcut on stride-1 blocks whose channel count
  changes, no dropout. With 10 classes it has 2,296,922 trainable parameters.
  Inputs are ``(N, 32, 32, 3)``.

Train/eval mode is selected per call with ``model(x, train=True)``
(BatchNorm normalizes with batch statistics and updates its running
averages; Dropout is active and draws from the ``dropout`` stream of the
``rngs`` given at construction) or ``model(x)`` / ``train=False`` (default:
BatchNorm uses the running averages, Dropout is the identity, nothing is
mutated). ``nnx.Module.train()`` / ``.eval()`` have no effect because the
flag is always passed explicitly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hemp_jax.models.layers import ConvBN

# (expansion t, output channels c, repeats n, first stride s).
_IMAGENET_CFG = (
  (1, 16, 1, 1),
  (6, 24, 2, 2),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)
_CIFAR_CFG = (
  (1, 16, 1, 1),
  (6, 24, 2, 1),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
  """Rounds ``value`` to a multiple of ``divisor`` (torchvision rule)."""
  new = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if new < 0.9 * value:
    new += divisor
  return new


class InvertedResidual(nnx.Module):
  """Expand (1x1) -> depthwise (3x3) -> linear projection (1x1) block."""

  def __init__(
    self, in_ch: int, out_ch: int, expansion: int, stride: int, *, cifar: bool, rngs: nnx.Rngs
  ):
    """Builds the block.

    Args:
      in_ch: Input channels.
      out_ch: Output channels.
      expansion: Expansion factor ``t`` of the hidden width.
      stride: Stride of the depthwise convolution.
      cifar: Use the kuangliu CIFAR block (ReLU, always expand, projection
        shortcut) instead of the torchvision one.
      rngs: Random number streams used for parameter initialization.
    """
    act = nnx.relu if cifar else jax.nn.relu6
    hidden = in_ch * expansion
    self.expand = (
      ConvBN(in_ch, hidden, activation=act, rngs=rngs) if cifar or expansion != 1 else None
    )
    self.depthwise = ConvBN(hidden, hidden, 3, stride, groups=hidden, activation=act, rngs=rngs)
    self.project = ConvBN(hidden, out_ch, rngs=rngs)
    if cifar:
      self.residual = stride == 1
      self.shortcut = ConvBN(in_ch, out_ch, rngs=rngs) if stride == 1 and in_ch != out_ch else None
    else:
      self.residual = stride == 1 and in_ch == out_ch
      self.shortcut = None

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    y = x if self.expand is None else self.expand(x, train=train)
    y = self.project(self.depthwise(y, train=train), train=train)
    if not self.residual:
      return y
    return y + (x if self.shortcut is None else self.shortcut(x, train=train))


class MobileNetV2(nnx.Module):
  """MobileNetV2 classifier; see the module docstring for the variants."""

  def __init__(
    self,
    *,
    num_classes: int = 1000,
    variant: str = "imagenet",
    width_mult: float = 1.0,
    dropout_rate: float | None = None,
    in_channels: int = 3,
    rngs: nnx.Rngs,
  ):
    """Builds the network.

    Args:
      num_classes: Number of output logits.
      variant: ``"imagenet"`` (torchvision) or ``"cifar"`` (kuangliu).
      width_mult: Channel width multiplier (channels rounded to multiples
        of 8; the 1280-wide head is never narrowed).
      dropout_rate: Dropout before the classifier; defaults to 0.2 for
        ``"imagenet"`` and 0.0 for ``"cifar"``.
      in_channels: Number of input image channels.
      rngs: Random number streams for initialization (and dropout).

    Raises:
      ValueError: If ``variant`` is unknown.
    """
    if variant not in ("imagenet", "cifar"):
      raise ValueError(f"variant must be 'imagenet' or 'cifar', got {variant!r}")
    cifar = variant == "cifar"
    act = nnx.relu if cifar else jax.nn.relu6
    cfg = _CIFAR_CFG if cifar else _IMAGENET_CFG
    if dropout_rate is None:
      dropout_rate = 0.0 if cifar else 0.2

    ch = make_divisible(32 * width_mult)
    last = make_divisible(1280 * max(1.0, width_mult))
    self.stem = ConvBN(in_channels, ch, 3, 1 if cifar else 2, activation=act, rngs=rngs)
    blocks = []
    for t, c, n, s in cfg:
      out_ch = make_divisible(c * width_mult)
      for i in range(n):
        blocks.append(InvertedResidual(ch, out_ch, t, s if i == 0 else 1, cifar=cifar, rngs=rngs))
        ch = out_ch
    self.blocks = nnx.List(blocks)
    self.head = ConvBN(ch, last, activation=act, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs) if dropout_rate > 0 else None
    self.fc = nnx.Linear(last, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Computes logits.

    Args:
      x: Images of shape ``(N, H, W, in_channels)``.
      train: If True, BatchNorm uses batch statistics (updating its running
        averages) and dropout is active; otherwise inference behaviour.

    Returns:
      Logits of shape ``(N, num_classes)``.
    """
    x = self.stem(x, train=train)
    for block in self.blocks:
      x = block(x, train=train)
    x = jnp.mean(self.head(x, train=train), axis=(1, 2))
    if self.dropout is not None:
      x = self.dropout(x, deterministic=not train)
    return self.fc(x)
