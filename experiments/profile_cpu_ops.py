"""Where a small CNN's CPU training step goes: each op of LeNet-5 and ResNet-20, alone.

For every convolution of the two models (LeNet-5 at batch 100: conv1 and conv2;
ResNet-20 at batch 128: one 3x3 convolution per stage) it times, compiled alone with
``jax.jit``, the forward pass, the input gradient and the weight gradient, in three
formulations: ``lax.conv_general_dilated`` in NHWC (what flax uses), the same in NCHW, and
im2col (the patches cut by slicing, then one matrix product). For LeNet-5's 2x2 max
pooling it times ``reduce_window`` (``nnx.max_pool``; its gradient is XLA's
select-and-scatter) against the reshaped-window reduction of
:func:`hemp_jax.models.layers.max_pool`. Median of 5 repeats, milliseconds.

  python experiments/profile_cpu_ops.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from hemp_jax.models.layers import max_pool


def _ms(fn, *args, n=10):
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(5):
    t0 = time.perf_counter()
    for _ in range(n):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / n)
  return 1e3 * float(np.median(times))


def _patches(x, k, pad):
  if pad:
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
  return jnp.concatenate([x[:, i : i + h, j : j + w, :] for i in range(k) for j in range(k)], -1)


def formulations(k, pad):
  """``{name: (conv(x, w), x layout, w layout)}``; x NHWC and w HWIO are converted."""
  padding = [(pad, pad)] * 2

  def nhwc(x, w):
    return lax.conv_general_dilated(
      x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )

  def nchw(x, w):
    return lax.conv_general_dilated(
      x, w, (1, 1), padding, dimension_numbers=("NCHW", "OIHW", "NCHW")
    )

  def im2col(x, w):
    p = _patches(x, k, pad)
    return (p.reshape(-1, p.shape[-1]) @ w.reshape(-1, w.shape[-1])).reshape(p.shape[:3] + (-1,))

  return {
    "NHWC": (nhwc, lambda x: x, lambda w: w),
    "NCHW": (nchw, lambda x: x.transpose(0, 3, 1, 2), lambda w: w.transpose(3, 2, 0, 1)),
    "im2col": (im2col, lambda x: x, lambda w: w),
  }


def conv_rows(name, batch, hw, cin, cout, k, pad):
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (batch, hw, hw, cin))
  w = 0.1 * jax.random.normal(key, (k, k, cin, cout))
  for form, (conv, fx, fw) in formulations(k, pad).items():
    xx, ww = fx(x), fw(w)
    g = jnp.ones_like(conv(xx, ww))
    fwd = _ms(conv, xx, ww)
    dx = _ms(lambda x, w, g: jax.vjp(conv, x, w)[1](g)[0], xx, ww, g)
    dw = _ms(lambda x, w, g: jax.vjp(conv, x, w)[1](g)[1], xx, ww, g)
    print(f"{name:28s} {form:7s} {fwd:8.2f} {dx:8.2f} {dw:8.2f}", flush=True)


def pool_rows(batch):
  y = jax.random.normal(jax.random.PRNGKey(1), (batch, 24, 24, 20))
  for form, pool in (
    ("reduce_window", lambda y: nnx.max_pool(y, (2, 2), strides=(2, 2))),
    ("reshaped", lambda y: max_pool(y, 2)),
  ):
    g = jnp.ones_like(pool(y))
    fwd = _ms(pool, y)
    bwd = _ms(lambda y, g: jax.vjp(pool, y)[1](g)[0], y, g)
    print(f"{'lenet5 pool1 24x24x20':28s} {form:13s} fwd {fwd:6.2f}  grad {bwd:6.2f}", flush=True)


def main():
  print(f"jax {jax.__version__}, backend {jax.default_backend()}; ms, median of 5")
  print(f"{'op':28s} {'form':7s} {'forward':>8s} {'d input':>8s} {'d weight':>8s}")
  conv_rows("lenet5 conv1 28x28x1->20", 100, 28, 1, 20, 5, 0)
  conv_rows("lenet5 conv2 12x12x20->50", 100, 12, 20, 50, 5, 0)
  pool_rows(100)
  for hw, c in ((32, 16), (16, 32), (8, 64)):
    conv_rows(f"resnet20 3x3 {hw}x{hw}x{c}", 128, hw, c, c, 3, 1)


if __name__ == "__main__":
  main()
