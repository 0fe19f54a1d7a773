"""Seed statistics of a frontier sweep, and the manifest of files anyone can check.

    python experiments/frontier.py experiments/results/frontier \
        [--scratch /tmp/hemp_frontier --manifest experiments/frontier CANDIDATE ...]

Prints, per candidate of ``experiments/sweeps/frontier.py``: the seeds run, the decoded
accuracy and the file size (mean +- sample std over seeds), the float models' accuracy
over the same seeds, the gap in percentage points and the compression ratio against
float32. With ``--manifest DIR`` it copies the ``.hemp`` files of the named candidates
(all three seeds) from the sweep's scratch dir to ``DIR/<candidate>/seed<s>.hemp``,
re-encoded with the current coder (lossless), re-evaluates every copied file exactly as ``hemp-jax evaluate FILE --config CONFIG`` does
(the accuracy must equal the sweep's record) and writes ``DIR/frontier.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The config spec `hemp-jax evaluate` needs for each model (the offline MNIST-5k split).
CONFIG_SPEC = {
  "lenet5": "experiments/configs/lenet5_mnist.py:offline",
  "lenet_300_100": "experiments/configs/lenet300_mnist.py:offline",
}
_SEED = re.compile(r"^(?P<name>.+)-seed(?P<seed>\d+)$")


def load_records(results_dir: str) -> dict:
  """``{candidate or '<model>-float': {seed: record}}`` of the finished points."""
  out: dict = {}
  pdir = os.path.join(results_dir, "points")
  for fname in sorted(os.listdir(pdir)):
    if not fname.endswith(".json"):
      continue
    with open(os.path.join(pdir, fname)) as f:
      rec = json.load(f)
    m = _SEED.match(rec["id"])
    if m is None or "failed" in rec:
      continue
    out.setdefault(m["name"], {})[int(m["seed"])] = rec
  return out


def _ms(values) -> tuple[float, float]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def summarize(records: dict, tolerance_pp: float = 1.0) -> list[dict]:
  """One row per candidate: seed means/stds against the float models of the same seeds."""
  rows = []
  for name, by_seed in sorted(records.items()):
    if name.endswith("-float"):
      continue
    first = next(iter(by_seed.values()))
    model = first["model"]
    # the float models of the same seeds: the points each seed fine-tuned from
    init = _SEED.match(first.get("init") or "")
    floats = records.get(init["name"] if init else f"{model}-float", {})
    seeds = sorted(s for s in by_seed if s in floats)
    if not seeds:
      continue
    acc = [by_seed[s]["test_accuracy_decoded"] for s in seeds]
    size = [by_seed[s]["file_bytes"] for s in seeds]
    facc = [floats[s]["test_accuracy"] for s in seeds]
    f32 = by_seed[seeds[0]]["float32_bytes"]
    (am, asd), (bm, bsd), (fm, fsd) = _ms(acc), _ms(size), _ms(facc)
    rows.append(
      {
        "candidate": name,
        "model": model,
        "seeds": seeds,
        "decoded_accuracy": acc,
        "file_bytes": size,
        "float_accuracy": facc,
        "acc_mean": am,
        "acc_std": asd,
        "bytes_mean": bm,
        "bytes_std": bsd,
        "float_mean": fm,
        "float_std": fsd,
        "gap_pp": 100 * (fm - am),
        "ratio": f32 / bm,
        "float32_bytes": f32,
        "within_band": 100 * (fm - am) <= tolerance_pp,
      }
    )
  return rows


def format_table(rows: list[dict]) -> str:
  head = (
    "| candidate | seeds | decoded acc % | float acc % | gap pp | file bytes | x float32 | "
    "within 1 pp |\n|---|---|---|---|---|---|---|---|"
  )
  lines = [head]
  for r in rows:
    lines.append(
      f"| {r['candidate']} | {','.join(map(str, r['seeds']))} | "
      f"{100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f} | "
      f"{100 * r['float_mean']:.2f} ± {100 * r['float_std']:.2f} | {r['gap_pp']:+.2f} | "
      f"{r['bytes_mean']:,.0f} ± {r['bytes_std']:,.0f} | {r['ratio']:.0f} | "
      f"{'yes' if r['within_band'] else 'no'} |"
    )
  return "\n".join(lines)


def plot(rows: list[dict], path: str, min_seeds: int = 3) -> str:
  """Decoded accuracy vs file bytes per model, mean +- std over seeds (error bars both
  ways), with the float models' seed mean and the 1-pp band below it."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = [r for r in rows if len(r["seeds"]) >= min_seeds]
  models = sorted({r["model"] for r in rows})
  fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
  for ax, model in zip(axes[0], models):
    mine = [r for r in rows if r["model"] == model]
    fm = float(np.mean([r["float_mean"] for r in mine]))
    ax.axhspan(100 * fm - 1, 100 * fm, color="0.9", label="float mean - 1 pp")
    ax.axhline(100 * fm, color="0.5", lw=1, label=f"float mean {100 * fm:.2f}%")
    for r in mine:
      ax.errorbar(
        r["bytes_mean"],
        100 * r["acc_mean"],
        xerr=r["bytes_std"],
        yerr=100 * r["acc_std"],
        fmt="o",
        capsize=3,
        label=r["candidate"],
      )
    ax.set_xscale("log")
    ax.set_xlabel("file bytes (mean of seeds)")
    ax.set_ylabel("decoded test accuracy % (mean +- std)")
    ax.set_title(f"{model}, {min_seeds}+ seeds")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return path


def write_manifest(rows: list[dict], names: list[str], scratch: str, out_dir: str) -> str:
  """Copies the named candidates' files, re-evaluates them, writes ``frontier.json``."""
  from hemp_jax import cli, codec, train

  by_name = {r["candidate"]: r for r in rows}
  missing = [n for n in names if n not in by_name]
  if missing:
    raise SystemExit(f"no finished seeds for {missing}; finished: {sorted(by_name)}")
  entries = []
  for name in names:
    r = by_name[name]
    spec = CONFIG_SPEC[r["model"]]
    config = cli.load_config(os.path.join(_ROOT, spec))
    files = []
    for seed, acc in zip(r["seeds"], r["decoded_accuracy"]):
      src = os.path.join(scratch, f"{name}-seed{seed}", "model.hemp")
      dst = os.path.join(out_dir, name, f"seed{seed}.hemp")
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      with open(src, "rb") as f:  # with the current coder (lossless: same decoded values)
        codec.write_bytes_atomic(dst, codec.reencode(f.read()))
      got = train.evaluate_model_file(config, dst)
      if abs(got - acc) > 1e-9:
        raise SystemExit(f"{dst}: evaluates to {got}, the sweep recorded {acc}")
      print(f"{dst}: {os.path.getsize(dst)} B, decoded accuracy {got:.4f} (checked)")
      with open(dst, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
      files.append((os.path.relpath(os.path.abspath(dst), _ROOT), digest, os.path.getsize(dst)))
    sizes = [n for _, _, n in files]
    print(
      f"{name}: mean {np.mean(sizes):,.0f} B ({r['float32_bytes'] / np.mean(sizes):.0f}x), "
      f"decoded {100 * np.mean(r['decoded_accuracy']):.2f}% vs float "
      f"{100 * np.mean(r['float_accuracy']):.2f}%"
    )
    entries.append(
      {
        "model": r["model"],
        "candidate": name,
        "config": spec,
        "files": [f for f, _, _ in files],
        "sha256": [d for _, d, _ in files],
        "seeds": r["seeds"],
        "float_accuracy": r["float_accuracy"],
        "decoded_accuracy": r["decoded_accuracy"],
        "file_bytes": [n for _, _, n in files],
        "sweep_file_bytes": r["file_bytes"],
        "float32_bytes": r["float32_bytes"],
      }
    )
  path = os.path.join(out_dir, "frontier.json")
  with open(path, "w") as f:
    json.dump(entries, f, indent=2)
  return path


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("results", help="results dir of the frontier sweep")
  p.add_argument("--scratch", help="the sweep's scratch dir (holds the .hemp files)")
  p.add_argument("--manifest", help="output dir of the manifest and the copied files")
  p.add_argument("--plot", help="PNG of accuracy vs bytes with error bars (3-seed rows)")
  p.add_argument("candidates", nargs="*", help="candidates to put in the manifest")
  args = p.parse_intermixed_args(argv)
  rows = summarize(load_records(args.results))
  print(format_table(rows))
  if args.plot:
    print(plot(rows, args.plot))
  if args.manifest:
    if not (args.scratch and args.candidates):
      p.error("--manifest needs --scratch and the candidates to include")
    print(write_manifest(rows, args.candidates, args.scratch, args.manifest))
  return 0


if __name__ == "__main__":
  sys.exit(main())
