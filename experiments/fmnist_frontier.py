"""The full-scale frontier on Fashion-MNIST: HEMP beside the methods a user would pick instead.

    python experiments/fmnist_frontier.py run --runs /work/runs/fm --models lenet5 --seeds 0 1 2
    python experiments/fmnist_frontier.py report [--manifest experiments/frontier] [--plot P.png]

Every point is a ``hemp-jax train`` work directory (resumable: a point whose
``summary.json`` exists is done; an interrupted one resumes from its checkpoint), except
PTQ, which quantizes the float model with ``hemp_jax.codec`` at a grid of rates. Each
seed has its own float model (``<model>-float``: the config's ``none`` variant); the
fine-tuning methods start from it (``init_checkpoint``), the from-scratch HEMP runs hold
their accuracy budget against its validation accuracy after the same epoch. The methods:

* ``hemp`` — the config's recipe with a 1-point budget (order 3); ``hemp-o1`` the same at
  order 1 (the paper's claim: order 3 beats order 1 at matched accuracy); ``hemp-m0``
  the budget without its margin (held at the target itself: smaller files, less safety);
* ``hemp-prune`` — the same with loss-sensitivity pruning (90%, an exact zero level);
  ``prune`` — that pruning and the quantization-aware finish without the entropy term;
  ``hemp-prune70`` / ``prune70`` — both at 70%, a sparsity the budget can hold;
* ``ptq`` — post-training quantization of the float model (Lloyd levels, N = 2..16);
* ``qat-N<n>`` — fine-tuning from float with the straight-through finish alone, N levels;
* ``dc`` — Deep-Compression style: 90% magnitude pruning, N = 16 levels, fine-tuned
  quantization-aware from float;
* ``paper`` — the paper code's recipe at the authors' defaults, fine-tuned from float.

Every point's ``summary.json`` and ``metrics.jsonl`` are copied to
``experiments/results/fashion_mnist/<model>-<method>/seed<s>/`` (committed as they finish).
``report`` prints, per method, decoded test accuracy and file bytes (mean +- std over the
seeds present) beside the float models of the same seeds, and chooses per method the
smallest setting whose mean *validation* accuracy is within 1 point of the float models'
(test accuracy is only reported). With ``--manifest`` it writes the chosen files and
``fashion_mnist.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "experiments", "results", "fashion_mnist")
CONFIG = {
  "lenet5": "experiments/configs/lenet5_fmnist.py",
  "lenet_300_100": "experiments/configs/lenet300_fmnist.py",
}
FINE_TUNE_EPOCHS = 10

# method -> (variant tokens, overrides, starts from float)
_PRUNE = {"pruning.min_size": 1000}
_NO_ENTROPY = {"hemp.strength": 0.0, "hemp.budget": None}
# fine-tuned from float, quantization-aware after the first epoch
_FINE_TUNE = {"num_epochs": FINE_TUNE_EPOCHS, "qat_epochs": FINE_TUNE_EPOCHS - 1}
METHODS = {
  "hemp": ("", {}, False),
  "hemp-o1": ("", {"hemp.order": 1}, False),
  "hemp-m0": ("", {"hemp.budget_margin": 0.0}, False),
}
# 70%: a sparsity the 1-point budget can hold (90% costs LeNet-300-100 1.2 points alone)
for _name, _sparsity in (("prune", 0.9), ("prune70", 0.7)):
  _p = dict(_PRUNE, **{"pruning.sparsity": _sparsity})
  METHODS[f"hemp-{_name}"] = ("prune_sens", _p, False)
  METHODS[_name] = ("prune_sens", dict(_p, **_NO_ENTROPY), False)
METHODS["dc"] = (
  "prune",
  dict(
    _PRUNE,
    **_NO_ENTROPY,
    **_FINE_TUNE,
    **{"pruning.sparsity": 0.9, "quantizer.num_levels": 16, "pruning.end_epoch": 3.0},
  ),
  True,
)
METHODS["paper"] = ("paper", {"num_epochs": FINE_TUNE_EPOCHS}, True)
for _n in (2, 3, 4, 8):
  METHODS[f"qat-N{_n}"] = (
    "",
    dict(_NO_ENTROPY, **_FINE_TUNE, **{"quantizer.num_levels": _n}),
    True,
  )
PTQ_LEVELS = (2, 3, 4, 6, 8, 12, 16)
# The methods a user would pick instead of HEMP (with every qat-N<n>): the (a)-(d).
ALTERNATIVES = ("ptq", "dc", "paper")


def _workdir(runs, model, method, seed):
  return os.path.join(runs, f"{model}-{method}-s{seed}")


def _done(workdir):
  return os.path.exists(os.path.join(workdir, "summary.json"))


def _record(results, model, method, seed, workdir):
  """Copies a finished point's summary and metrics into the committed results."""
  dst = os.path.join(results, f"{model}-{method}", f"seed{seed}")
  os.makedirs(dst, exist_ok=True)
  for name in ("summary.json", "metrics.jsonl", "config.json"):
    if os.path.exists(os.path.join(workdir, name)):
      shutil.copyfile(os.path.join(workdir, name), os.path.join(dst, name))


def _train(model, method, seed, args, log):
  from hemp_jax import train
  from hemp_jax.train import config as cfg

  workdir = _workdir(args.runs, model, method, seed)
  float_dir = _workdir(args.runs, model, "float", seed)
  if method == "float":
    variant, overrides, from_float = "none", {}, False
  else:
    variant, overrides, from_float = METHODS[method]
  overrides = dict(overrides, seed=seed, progress=False)
  if from_float:
    overrides["init_checkpoint"] = float_dir
  elif method != "float":
    overrides["hemp.budget_reference_run"] = float_dir
  tokens = [t for t in (variant, "smoke" if args.smoke else "") if t]
  spec = os.path.join(ROOT, CONFIG[model]) + (":" + ",".join(tokens) if tokens else "")
  config = cfg.load_config(spec)
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  if _done(workdir):
    return
  log(f"{model} {method} seed {seed}: {workdir}")
  train.train_and_evaluate(config, workdir)
  _record(args.results, model, method, seed, workdir)


def _ptq_spec(model, smoke: bool) -> str:
  return os.path.join(ROOT, CONFIG[model]) + (":none,smoke" if smoke else ":none")


def _ptq_quantizer(model, seed, runs, spec):
  """The config and state of the float model of ``seed``, and ``blob(n)``: its PTQ file at
  N levels (deterministic: the manifest re-makes the chosen ones)."""
  from hemp_jax import codec, train
  from hemp_jax.train import config as cfg

  config = cfg.load_config(spec)
  config.seed = seed
  graphdef, state = train.load_final_state(config, _workdir(runs, model, "float", seed))
  flat = codec.checkpoints.flatten_tree(state.params)
  nest = lambda flat: codec.checkpoints.unflatten_names(flat, "/")  # noqa: E731

  def blob(n):
    values, codebooks, _ = codec.ptq.quantize_tree(flat, method="lloyd", num_levels=n)
    return codec.compress(nest(values), nest(codebooks))

  return config, graphdef, state, blob


def _ptq(model, seed, args, log):
  """PTQ of the float model at each N: decoded validation/test accuracy and file bytes."""
  from hemp_jax import codec, train
  from hemp_jax.train import config as cfg
  from hemp_jax.train.evaluate import Evaluator

  dst = os.path.join(args.results, f"{model}-ptq", f"seed{seed}", "summary.json")
  if os.path.exists(dst):
    return
  config, graphdef, state, blob = _ptq_quantizer(
    model, seed, args.runs, _ptq_spec(model, args.smoke)
  )
  _, _, _, pipe = train.build(config)
  ev = Evaluator(graphdef, pipe, cfg.entropy_config(cfg.with_defaults(config)))
  points = []
  for n in PTQ_LEVELS:
    data = blob(n)
    decoded = codec.load_into(state.params, codec.decompress(data))
    points.append(
      {
        "num_levels": n,
        "file_bytes": len(data),
        "validation_accuracy_decoded": ev.accuracy(decoded, state.model_state, "validation"),
        "test_accuracy_decoded": ev.accuracy(decoded, state.model_state),
      }
    )
    log(f"{model} ptq seed {seed} N={n}: {points[-1]}")
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  summary = {"model": model, "method": "ptq", "seed": seed, "smoke": args.smoke, "points": points}
  with open(dst, "w") as f:
    json.dump(summary, f, indent=1)


def run(args) -> int:
  log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
  for model in args.models:
    for seed in args.seeds:
      _train(model, "float", seed, args, log)
      _record(args.results, model, "float", seed, _workdir(args.runs, model, "float", seed))
      for method in args.methods:
        if method == "ptq":
          _ptq(model, seed, args, log)
        else:
          _train(model, method, seed, args, log)
  return 0


# ---------------------------------------------------------------------------- report


def _load(results, model, method):
  base = os.path.join(results, f"{model}-{method}")
  out = {}
  if not os.path.isdir(base):
    return out
  for d in sorted(os.listdir(base)):
    path = os.path.join(base, d, "summary.json")
    if d.startswith("seed") and os.path.exists(path):
      with open(path) as f:
        out[int(d[4:])] = json.load(f)
  return out


def _ms(values):
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def candidates(results, model) -> list[dict]:
  """One row per (method, setting) with the seeds it has, against the same seeds' floats."""
  floats = _load(results, model, "float")
  rows = []
  for method in ["ptq"] + list(METHODS):
    runs = _load(results, model, method)
    seeds = sorted(s for s in runs if s in floats)
    if not seeds:
      continue
    settings = {}
    for s in seeds:
      r = runs[s]
      if method == "ptq":
        for p in r["points"]:
          settings.setdefault(f"N{p['num_levels']}", {})[s] = p
      else:
        settings.setdefault("", {})[s] = r
    for name, by_seed in settings.items():
      ss = sorted(by_seed)
      rows.append(
        {
          "model": model,
          "method": method,
          "candidate": f"{method}-{name}" if name else method,
          "seeds": ss,
          "test": [by_seed[s]["test_accuracy_decoded"] for s in ss],
          "validation": [by_seed[s]["validation_accuracy_decoded"] for s in ss],
          "bytes": [by_seed[s]["file_bytes"] for s in ss],
          "float_test": [floats[s]["test_accuracy"] for s in ss],
          "float_validation": [floats[s]["validation_accuracy"] for s in ss],
          "float32_bytes": 4 * floats[ss[0]]["num_params"],
          "ptq": {"num_levels": int(name[1:]), "smoke": runs[ss[0]].get("smoke", False)}
          if method == "ptq"
          else None,
        }
      )
  return rows


def plot(rows, path, min_seeds=3, within=5.0) -> str:
  """The rate-accuracy plot of every method (``frontier.plot``: decoded test accuracy
  against file bytes, mean +- std over the seeds, the float models' mean and the 1-point
  band), settings with ``min_seeds`` seeds that decode within ``within`` points of float."""
  here = os.path.dirname(os.path.abspath(__file__))
  if here not in sys.path:  # a script's own folder is there; an importlib load's is not
    sys.path.insert(0, here)
  import frontier

  points = []
  for r in rows:
    (am, asd), (bm, bsd), (fm, _) = _ms(r["test"]), _ms(r["bytes"]), _ms(r["float_test"])
    if am >= fm - within / 100:
      points.append(dict(r, float_mean=fm, acc_mean=am, acc_std=asd, bytes_mean=bm, bytes_std=bsd))
  return frontier.plot(points, path, min_seeds)


def report(args) -> list:
  chosen, every = [], []
  for model in args.models:
    rows = candidates(args.results, model)
    every += rows
    print(f"\n{model}: decoded accuracy (test; validation) and file, mean ± std over seeds")
    print(
      "| method | seeds | test % | validation % | float test % | file B | × float32 | in 1 pp (val) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    best = {}
    for r in rows:
      (tm, ts), (vm, _), (fm, _), (bm, bs) = (
        _ms(r["test"]),
        _ms(r["validation"]),
        _ms(r["float_test"]),
        _ms(r["bytes"]),
      )
      fv = _ms(r["float_validation"])[0]
      ok = vm >= fv - 0.01
      print(
        f"| {r['candidate']} | {len(r['seeds'])} | {100 * tm:.2f} ± {100 * ts:.2f} | "
        f"{100 * vm:.2f} | {100 * fm:.2f} | {bm:,.0f} ± {bs:,.0f} | "
        f"{r['float32_bytes'] / bm:.0f} | {'yes' if ok else 'no'} |"
      )
      if ok and (r["method"] not in best or bm < _ms(best[r["method"]]["bytes"])[0]):
        best[r["method"]] = r
    chosen += list(best.values())
    mean_bytes = {m: _ms(r["bytes"])[0] for m, r in best.items()}
    ours = {m: b for m, b in mean_bytes.items() if m.startswith("hemp")}
    others = {m: b for m, b in mean_bytes.items() if m in ALTERNATIVES or m.startswith("qat")}
    if ours and others:
      h, a = min(ours, key=ours.get), min(others, key=others.get)
      print(
        f"\nbest HEMP within 1 pp: {best[h]['candidate']} {ours[h]:,.0f} B; best alternative "
        f"(a)-(d): {best[a]['candidate']} {others[a]:,.0f} B; ratio {ours[h] / others[a]:.3f}"
      )
  if args.manifest:
    _manifest(chosen, args.manifest, args.runs, args.min_seeds)
  if args.plot:
    print(plot(every, args.plot, args.min_seeds))
  return chosen


# The manifest's method names: HEMP entries say "hemp", those held by the budget "budget".
MANIFEST_METHOD = {m: m.replace("hemp", "hemp-budget") for m in METHODS if m.startswith("hemp")}


def _manifest(chosen, out_dir, runs, min_seeds=3):
  """Copies the chosen files (a training run's ``model.hemp``; PTQ's re-made from the float
  model, checked to have the recorded size) and writes ``fashion_mnist.json``."""
  entries = []
  for r in chosen:
    if len(r["seeds"]) < min_seeds:
      continue
    files, shas = [], []
    for s, size in zip(r["seeds"], r["bytes"]):
      dst = os.path.join(
        out_dir, "fashion_mnist", f"{r['model']}-{r['candidate']}", f"seed{s}.hemp"
      )
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      if r["ptq"] is None:
        shutil.copyfile(os.path.join(_workdir(runs, r["model"], r["method"], s), "model.hemp"), dst)
      else:  # re-made: checked against the recorded size below
        spec = _ptq_spec(r["model"], r["ptq"]["smoke"])
        blob = _ptq_quantizer(r["model"], s, runs, spec)[-1]
        with open(dst, "wb") as f:
          f.write(blob(r["ptq"]["num_levels"]))
      with open(dst, "rb") as f:
        data = f.read()
      if len(data) != size:
        raise SystemExit(f"{dst}: {len(data)} B, the run recorded {size}")
      shas.append(hashlib.sha256(data).hexdigest())
      files.append(os.path.relpath(dst, ROOT))
    entries.append(
      {
        "model": r["model"],
        "method": MANIFEST_METHOD.get(r["method"], r["method"]),
        "candidate": r["candidate"],
        "config": CONFIG[r["model"]],
        "files": files,
        "sha256": shas,
        "seeds": r["seeds"],
        "float_accuracy": r["float_test"],
        "decoded_accuracy": r["test"],
        "validation_accuracy_decoded": r["validation"],
        "float_validation_accuracy": r["float_validation"],
        "file_bytes": r["bytes"],
        "float32_bytes": r["float32_bytes"],
      }
    )
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "fashion_mnist.json"), "w") as f:
    json.dump(entries, f, indent=1)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  for name in ("run", "report"):
    s = sub.add_parser(name)
    s.add_argument("--runs", default="runs/fashion_mnist", help="work directories")
    s.add_argument("--results", default=RESULTS, help="where summaries are committed")
    s.add_argument("--models", nargs="+", default=["lenet5"], choices=sorted(CONFIG))
    if name == "run":
      s.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
      s.add_argument("--methods", nargs="+", default=["hemp"], choices=["ptq"] + sorted(METHODS))
      s.add_argument("--smoke", action="store_true", help="the configs' smoke variant")
    else:
      s.add_argument("--manifest", default=None, help="e.g. experiments/frontier")
      s.add_argument("--min-seeds", type=int, default=3, help="seeds a manifest entry needs")
      s.add_argument("--plot", default=None, help="PNG of every method's rate and accuracy")
  args = p.parse_args(argv)
  if args.cmd == "run":
    return run(args)
  report(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
