"""Where a small CNN's CPU training step goes: each op of LeNet-5 and ResNet-20, alone.

For every convolution of the two models (LeNet-5 at batch 100: conv1 and conv2;
ResNet-20 at batch 128: one 3x3 convolution per stage) it times, compiled alone with
``jax.jit``, the forward pass, the input gradient and the weight gradient, in three
formulations: ``lax.conv_general_dilated`` in NHWC (what flax uses), the same in NCHW, and
im2col (the patches cut by slicing, then one matrix product). For LeNet-5's 2x2 max
pooling it times ``reduce_window`` (``nnx.max_pool``; its gradient is XLA's
select-and-scatter) against the reshaped-window reduction of
:func:`hemp_jax.models.layers.max_pool`. Median of 5 repeats, milliseconds.

``--step``: a whole LeNet-5 SGD step (batch 100 and 128) written in raw JAX, with the
pooling and convolution formulations combined (``nnx.max_pool``'s ``reduce_window`` or
the reshaped pooling; ``lax`` convolutions, im2col for conv2 or both, or ``lax`` forward
with an im2col input gradient as a custom VJP), timed in interleaved rounds, as ratios to
the first.

  python experiments/profile_cpu_ops.py
  python experiments/profile_cpu_ops.py --step
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


def _lax_valid(x, w):
  return formulations(w.shape[0], 0)["NHWC"][0](x, w)


def _im2col_valid(x, w):
  return formulations(w.shape[0], 0)["im2col"][0](x, w)


@jax.custom_vjp
def _lax_with_im2col_dx(x, w):
  return _lax_valid(x, w)


def _dx_fwd(x, w):
  return _lax_valid(x, w), (x, w)


def _dx_bwd(res, g):
  x, w = res
  dx = jax.vjp(lambda x: _im2col_valid(x, w), x)[1](g)[0]
  dw = jax.vjp(lambda w: _lax_valid(x, w), w)[1](g)[0]
  return dx, dw


_lax_with_im2col_dx.defvjp(_dx_fwd, _dx_bwd)

STEP_VARIANTS = {  # (conv1, conv2, pool)
  "reduce_window pooling (before)": (_lax_valid, _lax_valid, "rw"),
  "reshaped pooling (after)": (_lax_valid, _lax_valid, "reshaped"),
  "  + im2col conv2": (_lax_valid, _im2col_valid, "reshaped"),
  "  + im2col conv1 and conv2": (_im2col_valid, _im2col_valid, "reshaped"),
  "reduce_window + im2col input grads": (_lax_with_im2col_dx, _lax_with_im2col_dx, "rw"),
}


def _lenet5_step(conv1, conv2, pool_kind):
  def pool(y):
    return max_pool(y, 2) if pool_kind == "reshaped" else nnx.max_pool(y, (2, 2), strides=(2, 2))

  def logits(p, x):
    x = pool(conv1(x, p["w1"]) + p["b1"])
    x = pool(conv2(x, p["w2"]) + p["b2"])
    x = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w3"] + p["b3"])
    return x @ p["w4"] + p["b4"]

  tx = optax.sgd(0.1, 0.9)

  def step(p, s, x, y):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y).mean()
    value, g = jax.value_and_grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, value

  return jax.jit(step, donate_argnums=(0, 1)), tx


def step_rows(batch, rounds=7, steps=10):
  k = jax.random.split(jax.random.PRNGKey(0), 6)
  shapes = {"w1": (5, 5, 1, 20), "w2": (5, 5, 20, 50), "w3": (800, 500), "w4": (500, 10)}
  p0 = {n: 0.05 * jax.random.normal(k[i], s) for i, (n, s) in enumerate(shapes.items())}
  p0 |= {"b1": jnp.zeros(20), "b2": jnp.zeros(50), "b3": jnp.zeros(500), "b4": jnp.zeros(10)}
  x = jax.random.normal(k[4], (batch, 28, 28, 1))
  x = jnp.where(x > 1, x, 0.0)  # mostly zero, like MNIST's background (ties in the pools)
  y = jax.random.randint(k[5], (batch,), 0, 10)
  runs = {}
  for name, variant in STEP_VARIANTS.items():
    step, tx = _lenet5_step(*variant)
    p = jax.tree.map(jnp.array, p0)
    s = tx.init(p)
    p, s, loss = step(p, s, x, y)
    loss.block_until_ready()
    runs[name] = [step, p, s, []]
  for _ in range(rounds):
    for run in runs.values():
      step, p, s, times = run
      t0 = time.perf_counter()
      for _ in range(steps):
        p, s, loss = step(p, s, x, y)
        loss.block_until_ready()
      run[1], run[2] = p, s
      times.append((time.perf_counter() - t0) / steps)
  base = float(np.median(next(iter(runs.values()))[3]))
  for name, run in runs.items():
    t = float(np.median(run[3]))
    print(f"b{batch:<4d} {name:36s} {1e3 * t:8.2f} ms  {t / base:6.3f}", flush=True)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--step", action="store_true", help="whole LeNet-5 steps, variants combined")
  if ap.parse_args().step:
    print(f"jax {jax.__version__}, backend {jax.default_backend()}; median of 7 rounds")
    for batch in (100, 128):
      step_rows(batch)
    return
  print(f"jax {jax.__version__}, backend {jax.default_backend()}; ms, median of 5")
  print(f"{'op':28s} {'form':7s} {'forward':>8s} {'d input':>8s} {'d weight':>8s}")
  conv_rows("lenet5 conv1 28x28x1->20", 100, 28, 1, 20, 5, 0)
  conv_rows("lenet5 conv2 12x12x20->50", 100, 12, 20, 50, 5, 0)
  pool_rows(100)
  for hw, c in ((32, 16), (16, 32), (8, 64)):
    conv_rows(f"resnet20 3x3 {hw}x{hw}x{c}", 128, hw, c, c, 3, 1)


if __name__ == "__main__":
  main()
