"""How the train step, the estimator and the data-parallel step behave on this device.

One command prints three tables (as markdown):

1. train-step ms and images/s on synthetic batches: ResNet-20 (CIFAR shapes, 32x32x3) and
   ResNet-50 (ImageNet shapes, 224x224x3); HEMP off / order 3 refreshed every step /
   every 10 steps (``add_entropy_grad``, the simple mode); float32 and bfloat16
   (``config.dtype``: activations and matmuls in bf16, params float32);
2. the soft-entropy estimator's ``value_and_grad`` on 25M parameters (N = 4 uniform
   levels + 2 guards, disjoint tuples) at orders 1-4;
3. one data-parallel train step on all devices against the same step on one device
   (max |difference| of the updated params).

Times are medians over ``--steps`` timed steps after two warm-up (compiling) ones; the
step output is blocked on only at the end of each timed stretch, as the training loop
does off CPU. ``--cpu`` runs on CPU at tiny sizes (a LeNet-5 row, HEMP off / order 3,
100k parameters for the estimator, 2 timed steps): a smoke test of the script itself, in
CI.

  python experiments/device_check.py            # on a GPU/TPU host, < 5 min on one GPU
  python experiments/device_check.py --cpu      # tiny, CPU
"""

from __future__ import annotations

import argparse
import os
import sys
import time


class Sizes:
  """What is run: ``(label, model, image shape, batch)`` rows, estimator size, steps."""

  def __init__(self, cpu: bool, steps: int | None):
    if cpu:
      self.models = [("LeNet-5 (MNIST)", "lenet5", (28, 28, 1), 8)]
      self.estimator_params = 100_000
      self.steps = steps or 2
      self.variants = [("off", None), ("o3 r1", 1)]
    else:
      self.models = [
        ("ResNet-20 (CIFAR)", "resnet20", (32, 32, 3), 128),
        ("ResNet-50 (ImageNet)", "resnet50", (224, 224, 3), 128),
      ]
      self.estimator_params = 25_000_000
      self.steps = steps or 10
      self.variants = [("off", None), ("o3 r1", 1), ("o3 r10", 10)]


def _config(model: str, refresh: int | None, dtype: str):
  from hemp_jax.train.config import load_python_file

  here = os.path.dirname(os.path.abspath(__file__))
  c = load_python_file(os.path.join(here, "configs", "default.py"), "device_check_cfg").get_config()
  c.model = model
  c.dtype = dtype
  c.optimizer.name = "sgd"
  c.optimizer.momentum = 0.9
  c.optimizer.schedule = "constant"
  c.optimizer.learning_rate = 0.01
  c.quantizer.min_size = 1000  # BatchNorm/bias vectors stay float, as in the ImageNet runs
  c.hemp.mode = "none" if refresh is None else "grad"
  c.hemp.order = 3
  c.hemp.refresh_every = refresh or 1
  c.hemp.strength = 1.0
  return c


def _setup(model: str, shape, batch: int, refresh, dtype: str, devices):
  import jax
  import numpy as np

  from hemp_jax import models, train

  config = _config(model, refresh, dtype)
  net = models.init_model(model, num_classes=1000 if model == "resnet50" else 10, seed=0)
  models.set_dtype(net, dtype)
  tx = train.make_optimizer(config, steps_per_epoch=100)
  graphdef, state = train.create_train_state(net, tx)
  mesh = train.make_mesh(devices)
  step = train.data_parallel_train_step(train.make_train_step(graphdef, tx), mesh)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(batch,) + tuple(shape)).astype(np.float32)
  labels = rng.integers(0, 10, size=(batch,)).astype(np.int32)
  put = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  x, y = jax.device_put(images, put), jax.device_put(labels, put)
  return step, jax.device_put(state, rep), x, y


def time_train_step(model, shape, batch, refresh, dtype, steps, on_cpu) -> tuple[float, float]:
  """(median ms per step, images/s) of the jitted data-parallel step on all devices."""
  import jax
  import numpy as np

  step, state, x, y = _setup(model, shape, batch, refresh, dtype, jax.devices())
  for _ in range(2):  # compile + one more warm-up
    state, m = step(state, x, y)
  jax.block_until_ready(m)
  times = []
  for _ in range(3 if not on_cpu else 1):
    t0 = time.perf_counter()
    for _ in range(steps):
      state, m = step(state, x, y)
      if on_cpu:
        float(m["loss"])  # CPU: sync every step (DESIGN.md §4)
    jax.block_until_ready(m)
    times.append((time.perf_counter() - t0) / steps)
  if not np.isfinite(float(m["loss"])):
    raise RuntimeError(f"{model} {dtype} HEMP {refresh}: non-finite loss")
  ms = 1000 * float(np.median(times))
  return ms, batch / (ms / 1000)


def time_estimator(num_params: int, order: int, repeats: int = 3) -> tuple[float, float]:
  """(median ms, compile s) of value_and_grad of the order-n soft entropy on one tensor."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  import hemp_jax as hj

  w = jax.random.normal(jax.random.key(0), (num_params,), jnp.float32) * 0.05
  cb = hj.quantization.uniform_codebook(w, 4, guard_levels=True)
  f = jax.jit(jax.value_and_grad(lambda v: hj.soft_entropy(v, cb, order)))
  t0 = time.perf_counter()
  exe = f.lower(w).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(exe(w))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(exe(w))
    times.append(time.perf_counter() - t0)
  return 1000 * float(np.median(times)), compile_s


def check_data_parallel(model, shape, batch) -> tuple[int, float]:
  """(devices, max |params(all devices) - params(one device)|) after one HEMP step."""
  import jax
  import numpy as np

  devices = jax.devices()
  batch = max(batch, len(devices)) // len(devices) * len(devices)
  out = []
  for devs in (devices, devices[:1]):
    step, state, x, y = _setup(model, shape, batch, 1, "float32", devs)
    state, m = step(state, x, y)
    out.append(jax.tree.map(np.asarray, state.params))
  diffs = [float(np.max(np.abs(a - b))) for a, b in zip(*(jax.tree.leaves(t) for t in out))]
  return len(devices), max(diffs)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cpu", action="store_true", help="tiny sizes on CPU (CI smoke test)")
  parser.add_argument("--steps", type=int, default=None, help="timed steps per row")
  parser.add_argument(
    "--models", default=None, help="comma-separated subset of the models, e.g. resnet20"
  )
  parser.add_argument("--skip_estimator", action="store_true", help="no estimator table")
  args = parser.parse_args(argv)
  if args.cpu:
    os.environ["JAX_PLATFORMS"] = "cpu"
  import jax

  sizes = Sizes(args.cpu, args.steps)
  if args.models:
    keep = set(args.models.split(","))
    sizes.models = [m for m in sizes.models if m[1] in keep]
    if not sizes.models:
      raise SystemExit(
        f"--models {args.models}: none of {[m[1] for m in Sizes(args.cpu, 1).models]}"
      )
  on_cpu = jax.default_backend() == "cpu"
  dev = jax.devices()[0]
  print(f"# device check: {len(jax.devices())} x {dev.device_kind} ({jax.default_backend()})")
  print(f"jax {jax.__version__}\n", flush=True)
  results = {"train_step": [], "estimator": [], "data_parallel": None}
  t_start = time.time()

  print("| model | batch | HEMP | dtype | step ms | images/s |\n|---|---|---|---|---|---|")
  for label, model, shape, batch in sizes.models:
    for hemp, refresh in sizes.variants:
      for dtype in ("float32", "bfloat16"):
        ms, ips = time_train_step(model, shape, batch, refresh, dtype, sizes.steps, on_cpu)
        results["train_step"].append(dict(model=model, hemp=hemp, dtype=dtype, ms=ms, ips=ips))
        print(f"| {label} | {batch} | {hemp} | {dtype} | {ms:.2f} | {ips:.0f} |", flush=True)

  n = sizes.estimator_params
  print(f"\n| estimator value+grad, {n:,} params | ms | compile s |\n|---|---|---|")
  for order in () if args.skip_estimator else (1, 2, 3, 4):
    ms, cs = time_estimator(n, order)
    results["estimator"].append(dict(order=order, ms=ms, compile_s=cs))
    print(f"| order {order} | {ms:.2f} | {cs:.1f} |", flush=True)

  label, model, shape, batch = sizes.models[0]
  ndev, diff = check_data_parallel(model, shape, batch)
  results["data_parallel"] = dict(devices=ndev, max_abs_diff=diff)
  ok = diff <= 1e-5
  print(
    f"\n{label}, one HEMP step: {ndev} device(s) vs 1 device, max |params diff| = "
    f"{diff:.2e} ({'OK' if ok else 'MISMATCH'})"
  )
  print(f"total {time.time() - t_start:.0f} s")
  results["ok"] = ok
  return results


if __name__ == "__main__":
  sys.exit(0 if main()["ok"] else 1)
