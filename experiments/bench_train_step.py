"""Training-step time with and without the HEMP transform, side by side in one run.

Same model, optimizer (SGD + momentum) and batch; the HEMP runs add
``hj.add_entropy_grad`` in front of it. All settings of a model are compiled first, then
timed in interleaved rounds (every step synced), so that load on a shared machine hits
them alike; prints the median round's seconds per step (compile excluded) and the
overhead relative to the plain step.

  python experiments/bench_train_step.py                   # LeNet-5 and ResNet-20
  python experiments/bench_train_step.py --models lenet5 --rounds 5
  python experiments/bench_train_step.py --before-after --rounds 7   # the CPU pooling path
"""

from __future__ import annotations

import argparse
import contextlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from hemp_jax import models, train
from hemp_jax.models import lenet as lenet_mod
from hemp_jax.models import vgg as vgg_mod

SHAPES = {
  "lenet5": (28, 28, 1),
  "lenet_300_100": (28, 28, 1),
  "resnet20": (32, 32, 3),
  "resnet32": (32, 32, 3),
}


def _config(mode, order, refresh):
  c = ml_collections.ConfigDict()
  c.num_epochs = 1
  c.optimizer = ml_collections.ConfigDict(
    dict(name="sgd", learning_rate=0.01, momentum=0.9, weight_decay=0.0, schedule="constant")
  )
  c.quantizer = ml_collections.ConfigDict(
    dict(num_levels=4, method="uniform", guard_levels=True, min_size=None)
  )
  c.hemp = ml_collections.ConfigDict(
    dict(
      mode=mode,
      strength=1.0,
      order=order,
      tuples="disjoint",
      rate="block",
      pool="group",
      refresh_every=refresh,
    )
  )
  return c


def make_runner(model_name, batch, config, seed=0):
  """Compiles one setting; returns ``run(k) -> seconds for k steps`` and compile seconds."""
  rng = np.random.default_rng(seed)
  shape = SHAPES[model_name]
  images = jnp.asarray(rng.normal(size=(batch,) + shape), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, size=batch))
  model = models.create_model(model_name, num_classes=10, rngs=nnx.Rngs(seed))
  tx = train.make_optimizer(config)
  graphdef, state = train.create_train_state(model, tx)
  step = jax.jit(train.make_train_step(graphdef, tx), donate_argnums=(0,))
  holder = {"state": state}
  t0 = time.perf_counter()
  holder["state"], m = step(holder["state"], images, labels)
  jax.block_until_ready(m["loss"])
  compile_s = time.perf_counter() - t0

  def run(k):
    t0 = time.perf_counter()
    for _ in range(k):
      holder["state"], m = step(holder["state"], images, labels)
      jax.block_until_ready(m["loss"])
    return time.perf_counter() - t0

  return run, compile_s


# ---------------------------------------------------------------- before / after


@contextlib.contextmanager
def _pooling(kind):
  """``after``: the zoo as it is; ``before``: its max pooling through ``nnx.max_pool``
  (``reduce_window``, whose gradient is XLA's select-and-scatter), as before the CPU path."""
  saved = {m: m.max_pool for m in (lenet_mod, vgg_mod)}
  if kind == "before":
    for m in saved:
      m.max_pool = lambda x, k: nnx.max_pool(x, (k, k), strides=(k, k))
  try:
    yield
  finally:
    for m, f in saved.items():
      m.max_pool = f


def before_after(cases, steps, rounds):
  """The plain training step (SGD + momentum, no HEMP) before and after, per case."""
  header = f"{'model':10s} {'batch':>5s} {'before ms':>10s} {'after ms':>9s} {'after/before':>12s}"
  print(header)
  print("-" * len(header))
  for name, batch in cases:
    runners = {}
    for kind in ("before", "after"):
      with _pooling(kind):  # the step is traced (and the choice fixed) inside
        runners[kind] = make_runner(name, batch, _config("none", 1, 1))[0]
    times = {k: [] for k in runners}
    for _ in range(rounds):
      for k, run in runners.items():
        times[k].append(run(steps) / steps)
    b, a = (float(np.median(times[k])) for k in ("before", "after"))
    print(f"{name:10s} {batch:5d} {b * 1e3:10.2f} {a * 1e3:9.2f} {a / b:12.3f}", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="lenet5,resnet20")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--orders", default="1,2,3")
  parser.add_argument("--refresh", default="1,10")
  parser.add_argument(
    "--steps",
    type=int,
    default=10,
    help="steps per setting per round (a multiple of the refresh period)",
  )
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument(
    "--before-after",
    action="store_true",
    help="only the plain step of LeNet-5 (b100, b128) and ResNet-20 (b128) with the max "
    "pooling before (nnx.max_pool) and after (models.layers.max_pool)",
  )
  args = parser.parse_args()
  if args.before_after:
    print(
      f"jax {jax.__version__}, backend {jax.default_backend()}; plain SGD step, "
      f"{args.rounds} interleaved rounds of {args.steps} steps (median round, per step)"
    )
    before_after([("lenet5", 100), ("lenet5", 128), ("resnet20", 128)], args.steps, args.rounds)
    return
  print(
    f"jax {jax.__version__}, backend {jax.default_backend()}, "
    f"{jax.device_count()} device(s), batch {args.batch}; settings timed in "
    f"{args.rounds} interleaved rounds of {args.steps} steps (median round, per step), "
    "so machine-load drift hits all settings alike"
  )
  header = f"{'model':10s} {'HEMP':22s} {'ms/step':>9s} {'overhead':>9s} {'compile s':>9s}"
  for name in args.models.split(","):
    settings = [("none", _config("none", 1, 1))]
    for order in [int(o) for o in args.orders.split(",")]:
      for refresh in [int(r) for r in args.refresh.split(",")]:
        settings.append((f"order {order}, refresh {refresh:>2d}", _config("grad", order, refresh)))
    runners = [(label,) + make_runner(name, args.batch, cfg) for label, cfg in settings]
    times = {label: [] for label, _, _ in runners}
    for _ in range(args.rounds):
      for label, run, _ in runners:
        times[label].append(run(args.steps) / args.steps)
    print(header)
    print("-" * len(header))
    base = float(np.median(times["none"]))
    for label, _, comp in runners:
      t = float(np.median(times[label]))
      over = "" if label == "none" else f"{100 * (t / base - 1):8.1f}%"
      print(f"{name:10s} {label:22s} {t * 1e3:9.2f} {over:>9s} {comp:9.1f}", flush=True)


if __name__ == "__main__":
  main()
