"""HEMP in a researcher's own training loop: flax's MNIST example, as written, plus our lines.

The model and loop are the Flax MNIST tutorial's (CNN: conv 32 3x3 -> BatchNorm -> dropout
0.025 -> avg-pool -> conv 64 -> BatchNorm -> avg-pool -> dense 256 -> dense 10; SGD 0.1,
momentum 0.9, batch 128), in NNX (``nnx.Optimizer``) or Linen (``TrainState``). The lines
marked ``# HEMP`` are all that a HEMP run adds (the README's "In your own training loop"
shows them as a diff); everything else is the plain example and runs unchanged for the
float baseline.

    python experiments/own_loop.py --api nnx --seed 0             # float, then HEMP
    python experiments/own_loop.py --api linen --seed 1 --method hemp

Data: Fashion-MNIST from its IDX files (``apt-get install dataset-fashion-mnist``), 55,000
train / 5,000 validation (fixed, stratified) / 10,000 test; ``--dataset digits`` runs the
same on sklearn's 8x8 digits (the CI test). The HEMP run's strength is held by the accuracy
budget (:mod:`hemp_jax.budget`): after every epoch the validation accuracy of the model as
it trains (continuous before the finish, the decoded model during it) moves it, measured
against the float run's validation accuracy; the file written is the decoded model of the
end of training. One JSON line per run is appended to ``--out``
(``experiments/own_loop/results.jsonl``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import nnx
from flax.training import train_state

import hemp_jax as hj
from hemp_jax.data import files as data_files

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "own_loop", "results.jsonl")


# ------------------------------------------------------------------ data


def load_data(name: str, validation_size: int):
  """``{split: (images NHWC float32 in [0, 1], labels int32)}`` for train/validation/test."""
  if name == "digits":
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int32)
    test = np.random.default_rng(0).permutation(len(y))[:360]
    rest = np.setdiff1d(np.arange(len(y)), test)
    xtr, ytr, xte, yte = x[rest], y[rest], x[test], y[test]
  else:
    ds = data_files.load_idx_dataset(name)
    xtr, ytr, xte, yte = ds
  tr, va = data_files.validation_split(ytr, validation_size)
  return {"train": (xtr[tr], ytr[tr]), "validation": (xtr[va], ytr[va]), "test": (xte, yte)}


def batches(split, batch_size: int, rng):
  x, y = split
  perm = rng.permutation(len(y))[: len(y) // batch_size * batch_size]
  for idx in perm.reshape(-1, batch_size):
    yield x[idx], y[idx]


# ------------------------------------------------------------------ NNX flavour


class CNN(nnx.Module):
  """The Flax MNIST tutorial's CNN."""

  def __init__(self, hw: int, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
    self.batch_norm1 = nnx.BatchNorm(32, rngs=rngs)
    self.dropout1 = nnx.Dropout(rate=0.025, rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
    self.batch_norm2 = nnx.BatchNorm(64, rngs=rngs)
    self.avg_pool = functools.partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
    self.linear1 = nnx.Linear((hw // 4) ** 2 * 64, 256, rngs=rngs)
    self.dropout2 = nnx.Dropout(rate=0.025, rngs=rngs)
    self.linear2 = nnx.Linear(256, 10, rngs=rngs)

  def __call__(self, x):
    x = self.avg_pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x)))))
    x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(self.dropout2(self.linear1(x)))
    return self.linear2(x)


def nnx_loss_fn(model, images, labels):
  logits = model(images)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, logits


@nnx.jit
def nnx_train_step(model, optimizer, images, labels):
  grad_fn = nnx.value_and_grad(nnx_loss_fn, has_aux=True)
  (loss, _), grads = grad_fn(model, images, labels)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def nnx_eval_step(model, images, labels):
  return jnp.sum(jnp.argmax(model(images), -1) == labels)


class NnxRun:
  """The NNX example: model, ``nnx.Optimizer``, train and eval steps."""

  def __init__(self, seed, hw, tx_fn, lr=0.1):
    self.hw = hw
    self.model = CNN(hw, rngs=nnx.Rngs(seed))
    self.optimizer = nnx.Optimizer(self.model, tx_fn(optax.sgd(lr, 0.9)), wrt=nnx.Param)

  def train_step(self, images, labels):
    self.model.train()
    return nnx_train_step(self.model, self.optimizer, images, labels)

  def accuracy(self, split, batch_size=1000):
    self.model.eval()
    return _accuracy(lambda x, y: nnx_eval_step(self.model, x, y), split, batch_size)

  def set_strength(self, strength):
    hj.budget.set_strength(self.optimizer.opt_state, strength)  # HEMP (budget)

  def finalize(self, path):
    return hj.finalize(self.model, self.optimizer.opt_state, path)  # HEMP

  def load(self, blob):
    """A fresh model holding the decoded file (what a user of the file gets)."""
    fresh = CNN(self.hw, rngs=nnx.Rngs(0))
    template = nnx.state(fresh, nnx.Not(nnx.RngState))
    nnx.update(fresh, hj.load_into(template, hj.decompress(blob)))
    run = object.__new__(NnxRun)
    run.hw, run.model = self.hw, fresh
    return run


# ------------------------------------------------------------------ Linen flavour


class LinenCNN(nn.Module):
  """The same CNN in Linen."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(32, kernel_size=(3, 3))(x)
    x = nn.Dropout(0.025, deterministic=not train)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.avg_pool(nn.relu(x), window_shape=(2, 2), strides=(2, 2))
    x = nn.Conv(64, kernel_size=(3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.avg_pool(nn.relu(x), window_shape=(2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dropout(0.025, deterministic=not train)(nn.Dense(256)(x)))
    return nn.Dense(10)(x)


class LinenState(train_state.TrainState):
  batch_stats: dict
  key: jax.Array


@jax.jit
def linen_train_step(state, images, labels):
  key = jax.random.fold_in(state.key, state.step)

  def loss_fn(params):
    logits, updates = state.apply_fn(
      {"params": params, "batch_stats": state.batch_stats},
      images,
      train=True,
      rngs={"dropout": key},
      mutable=["batch_stats"],
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, updates

  (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
  return state, loss


@jax.jit
def linen_eval_step(state, images, labels):
  logits = state.apply_fn(
    {"params": state.params, "batch_stats": state.batch_stats}, images, train=False
  )
  return jnp.sum(jnp.argmax(logits, -1) == labels)


class LinenRun:
  """The Linen example: ``TrainState`` with batch statistics."""

  def __init__(self, seed, hw, tx_fn, lr=0.1):
    key = jax.random.key(seed)
    variables = LinenCNN().init(key, jnp.ones([1, hw, hw, 1]), train=False)
    self.state = LinenState.create(
      apply_fn=LinenCNN().apply,
      params=variables["params"],
      tx=tx_fn(optax.sgd(lr, 0.9)),
      batch_stats=variables["batch_stats"],
      key=jax.random.fold_in(key, 1),
    )

  def train_step(self, images, labels):
    self.state, loss = linen_train_step(self.state, images, labels)
    return loss

  def accuracy(self, split, batch_size=1000):
    return _accuracy(lambda x, y: linen_eval_step(self.state, x, y), split, batch_size)

  def set_strength(self, strength):
    opt_state = hj.budget.set_strength(self.state.opt_state, strength)  # HEMP (budget)
    self.state = self.state.replace(opt_state=opt_state)

  def finalize(self, path):
    variables = {"params": self.state.params, "batch_stats": self.state.batch_stats}
    return hj.finalize(variables, self.state.opt_state, path)  # HEMP

  def load(self, blob):
    template = {"params": self.state.params, "batch_stats": self.state.batch_stats}
    decoded = hj.load_into(template, hj.decompress(blob))
    run = object.__new__(LinenRun)
    run.state = self.state.replace(params=decoded["params"], batch_stats=decoded["batch_stats"])
    return run


# ------------------------------------------------------------------ the run


def _accuracy(step, split, batch_size):
  x, y = split
  correct = 0
  for i in range(0, len(y), batch_size):
    correct += int(step(x[i : i + batch_size], y[i : i + batch_size]))
  return correct / len(y)


def train(args, data, method: str, reference: list | None) -> dict:
  """One run of the example; ``method`` "hemp" adds the HEMP lines."""
  hw = data["train"][0].shape[1]
  steps_per_epoch = len(data["train"][1]) // args.batch_size
  total = args.epochs * steps_per_epoch
  hemp = method == "hemp"

  def tx_fn(tx):
    if not hemp:
      return tx
    return hj.hemp(tx, args.strength, total_steps=total)  # HEMP

  run = (NnxRun if args.api == "nnx" else LinenRun)(args.seed, hw, tx_fn, args.learning_rate)
  budget = None
  if hemp and reference is not None:
    # HEMP (budget): held against the float run's validation accuracy after each epoch.
    budget = hj.budget.budget_init(args.strength, reference=reference[-1], drop=args.budget)
  rng = np.random.default_rng(args.seed)
  trace, t0 = [], time.time()
  for epoch in range(1, args.epochs + 1):
    te = time.time()
    losses = [run.train_step(x, y) for x, y in batches(data["train"], args.batch_size, rng)]
    row = {"epoch": epoch, "loss": float(np.mean(jax.device_get(losses)))}
    row["validation_acc"] = run.accuracy(data["validation"])
    row["epoch_s"] = round(time.time() - te, 1)
    if hemp:
      blob = run.finalize(None)
      row["validation_acc_decoded"] = run.load(blob).accuracy(data["validation"])
      row["file_bytes"] = len(blob)
      if budget is not None and epoch < args.epochs:
        row["strength"] = budget.strength
        # The model as trained: continuous before the finish, the decoded one in it.
        budget = hj.budget.budget_update(
          budget,
          epoch=epoch,
          accuracy=row["validation_acc"],
          size=len(blob),
          reference=reference[epoch - 1],
        )
        run.set_strength(budget.strength)
    trace.append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
  result = {
    "api": args.api,
    "seed": args.seed,
    "method": method,
    "dataset": args.dataset,
    "epochs": args.epochs,
    "train_s": round(time.time() - t0, 1),
    "trace": trace,
  }
  if hemp:
    os.makedirs(args.workdir, exist_ok=True)
    path = os.path.join(args.workdir, f"{args.api}-seed{args.seed}.hemp")
    blob = run.finalize(path)
    decoded = run.load(blob)
    result.update(
      file_bytes=len(blob),
      validation_acc_decoded=decoded.accuracy(data["validation"]),
      decoded_test_acc=decoded.accuracy(data["test"]),
      strength_start=args.strength,
      budget_points=args.budget if budget is not None else None,
      reference_validation_acc=None if reference is None else reference[-1],
    )
  else:
    result.update(
      float_validation_acc=run.accuracy(data["validation"]),
      float_test_acc=run.accuracy(data["test"]),
      float_bytes=4 * sum(x.size for x in jax.tree.leaves(_params(run))),
    )
  return result


def _float_curve(args) -> list:
  """The validation accuracy per epoch of the float run of this api/seed in ``--out``."""
  want = dict(api=args.api, seed=args.seed, dataset=args.dataset, epochs=args.epochs)
  rows = []
  if args.out and os.path.exists(args.out):
    with open(args.out) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  rows = [r for r in rows if r["method"] == "float" and all(r.get(k) == v for k, v in want.items())]
  if not rows:
    raise SystemExit(
      f"no float run of {want} in {args.out}: run --method float first (or --method both, "
      "or --budget none for a fixed strength)"
    )
  return [row["validation_acc"] for row in rows[-1]["trace"]]


def _params(run):
  return hj.plain_params(run.model) if isinstance(run, NnxRun) else run.state.params


def summarize(path: str) -> str:
  """A markdown table of ``results.jsonl``: per API, float and HEMP, mean +- std over seeds
  (the last run of each api/seed/method)."""
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  last = {(r["api"], r["seed"], r["method"]): r for r in rows if r["dataset"] == "fashion_mnist"}
  ms = lambda v: f"{100 * np.mean(v):.2f} ± {100 * np.std(v, ddof=1) if len(v) > 1 else 0:.2f}"
  out = [
    "| API | seeds | float test % | HEMP decoded test % | HEMP decoded val. % | file B | × float32 |",
    "|---|---|---|---|---|---|---|",
  ]
  for api in ("nnx", "linen"):
    seeds = sorted(s for (a, s, m) in last if a == api and m == "hemp" and (a, s, "float") in last)
    if not seeds:
      continue
    flt = [last[(api, s, "float")] for s in seeds]
    hemp = [last[(api, s, "hemp")] for s in seeds]
    size = [h["file_bytes"] for h in hemp]
    out.append(
      f"| {api} | {', '.join(map(str, seeds))} | {ms([r['float_test_acc'] for r in flt])} | "
      f"{ms([h['decoded_test_acc'] for h in hemp])} | "
      f"{ms([h['validation_acc_decoded'] for h in hemp])} | "
      f"{np.mean(size):,.0f} ± {np.std(size, ddof=1) if len(size) > 1 else 0:,.0f} | "
      f"{flt[0]['float_bytes'] / np.mean(size):.0f} |"
    )
  return "\n".join(out)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--api", choices=("nnx", "linen"), default="nnx")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--method", choices=("both", "float", "hemp"), default="both")
  p.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist, mnist or digits")
  p.add_argument("--epochs", type=int, default=10)
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--learning-rate", type=float, default=0.1, help="of optax.sgd (momentum 0.9)")
  p.add_argument("--validation-size", type=int, default=5000)
  p.add_argument("--strength", type=float, default=1.0, help="the HEMP run's first strength")
  p.add_argument(
    "--budget",
    type=lambda v: None if v == "none" else float(v),
    default=0.5,
    help="allowed validation drop in points against the float run ('none': fixed strength)",
  )
  p.add_argument("--out", default=DEFAULT_OUT)
  p.add_argument("--workdir", default=os.path.join(HERE, "own_loop", "files"))
  p.add_argument("--summary", action="store_true", help="print the table of --out and exit")
  args = p.parse_args(argv)
  if args.summary:
    print(summarize(args.out))
    return 0
  data = load_data(args.dataset, args.validation_size)
  methods = ("float", "hemp") if args.method == "both" else (args.method,)
  reference = None
  if methods == ("hemp",) and args.budget is not None:
    reference = _float_curve(args)
  for method in methods:
    result = train(args, data, method, reference)
    if method == "float":
      reference = [row["validation_acc"] for row in result["trace"]]
    print(json.dumps({k: v for k, v in result.items() if k != "trace"}), flush=True)
    if args.out:
      os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
      with open(args.out, "a") as f:
        f.write(json.dumps(result) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
