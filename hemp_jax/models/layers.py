"""Layers shared by the convolutional models of the zoo."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
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


def _windows(x: jax.Array, k: int) -> jax.Array:
  """``(B, H, W, C)`` -> ``(B, H/k, W/k, C, k*k)``: each k x k window's values, row-major."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // k, k, w // k, k, c).transpose(0, 1, 3, 5, 2, 4)
  return x.reshape(b, h // k, w // k, c, k * k)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tiled_max_pool(x: jax.Array, k: int) -> jax.Array:
  return jnp.max(_windows(x, k), axis=-1)


def _tiled_max_pool_fwd(x, k):
  win = _windows(x, k)
  return jnp.max(win, axis=-1), jnp.argmax(win, axis=-1)


def _tiled_max_pool_bwd(k, first, g):
  # The gradient goes to the first maximum of each window in row-major order, as XLA's
  # select-and-scatter gives it; the windows do not overlap, so this is a gather.
  d = jax.nn.one_hot(first, k * k, dtype=g.dtype) * g[..., None]
  b, hk, wk, c, _ = d.shape
  d = d.reshape(b, hk, wk, c, k, k).transpose(0, 1, 4, 2, 5, 3)
  return (d.reshape(b, hk * k, wk * k, c),)


_tiled_max_pool.defvjp(_tiled_max_pool_fwd, _tiled_max_pool_bwd)


def max_pool(x: jax.Array, k: int) -> jax.Array:
  """``k x k`` max pooling with stride ``k`` (no padding) of NHWC ``x``.

  The same values as ``nnx.max_pool(x, (k, k), strides=(k, k))``. On CPU the windows are
  reshaped and reduced, with a gather for the gradient: XLA's CPU select-and-scatter (the
  gradient of ``reduce_window``) is several times slower than the rest of a small CNN's
  step (``experiments/bench_train_step.py``). Other backends keep ``nnx.max_pool``.
  Rows or columns beyond a multiple of ``k`` are dropped, as VALID pooling drops them.
  """
  h, w = x.shape[1] // k * k, x.shape[2] // k * k
  tiled = lambda x: _tiled_max_pool(x[:, :h, :w], k)
  plain = lambda x: nnx.max_pool(x, (k, k), strides=(k, k))
  return jax.lax.platform_dependent(x, cpu=tiled, default=plain)
