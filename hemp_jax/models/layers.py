"""Layers shared by the convolutional models of the zoo."""

from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

# He-normal (fan_out) initialization for convolutions, as in torchvision.
CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvBN(nnx.Module):
  """Bias-free convolution -> BatchNorm -> optional activation."""

  def __init__(
    self,
    in_ch: int,
    out_ch: int,
    kernel: int = 1,
    stride: int = 1,
    *,
    groups: int = 1,
    activation: Callable[[jax.Array], jax.Array] | None = None,
    rngs: nnx.Rngs,
  ):
    pad = (kernel - 1) // 2
    self.conv = nnx.Conv(
      in_ch,
      out_ch,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      feature_group_count=groups,
      use_bias=False,
      kernel_init=CONV_INIT,
      rngs=rngs,
    )
    self.bn = nnx.BatchNorm(out_ch, momentum=0.9, epsilon=1e-5, rngs=rngs)
    self.activation = activation

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    x = self.bn(self.conv(x), use_running_average=not train)
    return x if self.activation is None else self.activation(x)
