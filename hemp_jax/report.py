"""``hemp-jax report <results dir>``: markdown table and PNG plots of a sweep's results.

Reads ``points/*.json`` written by :mod:`hemp_jax.sweep` and writes into the results dir
(or ``out_dir``):

* ``report.md`` — per model: the float reference, the best point of each method within
  ``tolerance`` (default 1 percentage point) of the float model's accuracy, the Pareto
  front, and the full table (accuracy of the decoded file, file size, bits/param, ratio,
  LZMA2 sizes, sparsity, exact entropies);
* ``<model>_accuracy_vs_rate.png`` — test accuracy (decoded file) vs bits/param of the
  file, one marker per method, the Pareto front drawn, the float accuracy and the
  tolerance band marked;
* ``<model>_size_vs_order.png`` — file size vs entropy order of the HEMP points, one line
  per strength (and the no-regularizer baseline);
* ``<model>_weight_histograms.png`` — the largest tensor's weights in the float model and
  after the best HEMP (and pruning) points, with the codebook levels marked.

Accuracies are of the decoded ``.hemp`` files; sizes are the files' lengths.
"""

from __future__ import annotations

import math
import os
from typing import Iterable

import numpy as np

from hemp_jax.sweep import load_results
from hemp_jax.train.config import with_defaults

__all__ = ["pareto_front", "best_within", "write_report"]

_METHOD_ORDER = [
  "float",
  "ptq-uniform",
  "ptq-lloyd_max",
  "noreg-uniform",
  "noreg-lloyd_max",
  "prune-magnitude",
  "prune-sensitivity",
  "hemp-uniform",
  "hemp-lloyd_max",
  "hemp-paper",
  "hemp+prune-magnitude",
  "hemp+prune-sensitivity",
]


def _ok(r) -> bool:
  return "file_bytes" in r and not r.get("failed")


def pareto_front(
  records: Iterable[dict], x: str = "file_bytes", y: str = "test_accuracy_decoded"
) -> list[dict]:
  """Points not dominated by another (smaller ``x`` and at least as high ``y``)."""
  pts = sorted((r for r in records if _ok(r)), key=lambda r: (r[x], -r[y]))
  front, best = [], -math.inf
  for r in pts:
    if r[y] > best:
      front.append(r)
      best = r[y]
  return front


def best_within(records: Iterable[dict], reference: float, tolerance: float) -> dict | None:
  """The smallest file whose decoded accuracy is >= ``reference - tolerance``."""
  ok = [
    r for r in records if _ok(r) and r["test_accuracy_decoded"] >= reference - tolerance - 1e-12
  ]
  return min(ok, key=lambda r: r["file_bytes"]) if ok else None


def _axes_text(r) -> str:
  return ", ".join(f"{k}={v}" for k, v in r.get("axes", {}).items())


def _sort_methods(methods):
  rank = {m: i for i, m in enumerate(_METHOD_ORDER)}
  return sorted(methods, key=lambda m: (rank.get(m, len(rank)), m))


def _table(recs: list[dict], front_ids: set) -> list[str]:
  lines = [
    "| point | method | axes | acc float | acc decoded | file bytes | bits/param | "
    "ratio | LZMA2 idx bytes | LZMA2 file bytes | sparsity | H1 | H3/3 | Pareto |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in recs:
    if not _ok(r):
      lines.append(
        f"| {r['id']} | {r.get('method', '')} | {_axes_text(r)} | failed: "
        f"{r.get('failed', '?')} |||||||||||"
      )
      continue
    lines.append(
      f"| {r['id']} | {r['method']} | {_axes_text(r)} | {100 * r['test_accuracy']:.1f} | "
      f"{100 * r['test_accuracy_decoded']:.1f} | {r['file_bytes']} | "
      f"{r['bits_per_param_file']:.3f} | {r['compression_ratio']:.1f} | "
      f"{r['lzma_index_bytes']} | {r['lzma_file_bytes']} | {r['sparsity']:.3f} | "
      f"{r['entropy_order1']:.3f} | {r['entropy_order3']:.3f} | "
      f"{'**yes**' if r['id'] in front_ids else ''} |"
    )
  return lines


def _plot_rate(recs, model, reference, tolerance, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 5.5))
  methods = _sort_methods({r["method"] for r in recs if _ok(r) and r["method"] != "float"})
  markers = "os^vD<>pPX*h"
  cmap = plt.get_cmap("tab20")
  for k, m in enumerate(methods):
    rs = [r for r in recs if _ok(r) and r["method"] == m]
    ax.scatter(
      [r["bits_per_param_file"] for r in rs],
      [100 * r["test_accuracy_decoded"] for r in rs],
      label=m,
      marker=markers[k % len(markers)],
      color=cmap(k % 20),
      s=40,
      zorder=3,
    )
  trained = [r for r in recs if _ok(r) and r["kind"] != "pretrain"]
  if trained:
    n = trained[0]["num_params"]
    ax.scatter(
      [8 * r["lzma_file_bytes"] / n for r in trained],
      [100 * r["test_accuracy_decoded"] for r in trained],
      marker="x",
      color="0.6",
      s=18,
      label="same streams, LZMA2 archive",
      zorder=2,
    )
  front = pareto_front([r for r in recs if r.get("method") != "float"])
  ax.plot(
    [r["bits_per_param_file"] for r in front],
    [100 * r["test_accuracy_decoded"] for r in front],
    "k-",
    lw=1.5,
    zorder=4,
    label="Pareto front (.hemp files)",
  )
  if reference is not None:
    ax.axhline(100 * reference, color="k", ls=":", lw=1, label="float model")
    ax.axhspan(100 * (reference - tolerance), 100 * reference, color="0.9", zorder=0)
  ax.set_xscale("log")
  ax.set_xlabel("bits per parameter of the .hemp file (everything that decodes)")
  ax.set_ylabel("test accuracy of the decoded file (%)")
  accs = [100 * r["test_accuracy_decoded"] for r in recs if _ok(r)]
  if reference is not None and accs:
    lo = max(min(accs), 100 * reference - 15)
    ax.set_ylim(lo - 1, 100 * reference + 1.5)
  ax.set_title(f"{model}: accuracy vs rate")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7, loc="lower right", ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_order(recs, model, path) -> bool:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  hemp = [
    r
    for r in recs
    if _ok(r)
    and r["method"] == "hemp-uniform"
    and r["axes"].get("tuples", "disjoint") == "disjoint"
    and "order" in r["axes"]
    and not r["axes"].get("qat_epochs")
  ]
  if not hemp:
    return False
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
  key = lambda r: (r["axes"].get("levels", 4), r["axes"]["strength"])
  series = sorted(
    k for k in {key(r) for r in hemp} if len({r["axes"]["order"] for r in hemp if key(r) == k}) >= 2
  )
  if not series:
    return False
  for k, (n, s) in enumerate(series):
    rs = sorted(
      (r for r in hemp if (r["axes"].get("levels", 4), r["axes"]["strength"]) == (n, s)),
      key=lambda r: r["axes"]["order"],
    )
    o = [r["axes"]["order"] for r in rs]
    style = "o-" if n == 4 else "s--"
    label = f"N={n}, lambda={s:g}"
    axes[0].plot(o, [r["file_bytes"] / 1024 for r in rs], style, color=f"C{k}", label=label)
    axes[1].plot(
      o, [100 * r["test_accuracy_decoded"] for r in rs], style, color=f"C{k}", label=label
    )
  base = [r for r in recs if _ok(r) and r["method"] == "noreg-uniform"]
  if base:
    axes[0].axhline(base[0]["file_bytes"] / 1024, color="k", ls="--", lw=1, label="no regularizer")
    axes[1].axhline(
      100 * base[0]["test_accuracy_decoded"], color="k", ls="--", lw=1, label="no regularizer"
    )
  axes[0].set_ylabel(".hemp file size (KiB)")
  axes[1].set_ylabel("test accuracy of the decoded file (%)")
  for a in axes:
    a.set_xlabel("entropy order n of the regularizer")
    a.set_xticks([1, 2, 3, 4])
    a.grid(True, alpha=0.3)
    a.legend(fontsize=8)
  fig.suptitle(f"{model}: file size vs entropy order of the regularizer (uniform codebooks)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def _plot_hist(panels, model, path) -> bool:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = [(t, r) for t, r in panels if r is not None and r.get("weight_hist")]
  if not panels:
    return False
  fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.4 * len(panels)), squeeze=False)
  for a, (title, r) in zip(axes[:, 0], panels):
    h = r["weight_hist"]
    edges = np.asarray(h["edges"])
    counts = np.asarray(h["counts"], float)
    a.stairs(np.maximum(counts, 0.5), edges, fill=True, alpha=0.6)
    levels = np.asarray(h["levels"])
    for k, c in enumerate(levels):
      guard = k in (0, len(levels) - 1) and with_defaults(r["config"]).quantizer.guard_levels
      a.axvline(c, color="C3", ls=":" if guard else "-", lw=1)
    a.set_yscale("log")
    a.set_xlim(min(edges[0], levels.min()) - 0.01, max(edges[-1], levels.max()) + 0.01)
    a.set_title(
      f"{title}: {h['leaf']} ({h['size']} weights, {h['exact_zeros']} exact zeros); "
      f"red = codebook levels (dotted = guards)",
      fontsize=8,
    )
  axes[-1, 0].set_xlabel("weight value")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def write_report(results_dir: str, out_dir: str | None = None, *, tolerance: float = 0.01) -> str:
  """Writes ``report.md`` and the PNG plots; returns the path of ``report.md``."""
  out_dir = out_dir or results_dir
  os.makedirs(out_dir, exist_ok=True)
  recs = load_results(results_dir)
  if not recs:
    raise FileNotFoundError(f"no point results in {results_dir}/points")
  models = []
  for r in recs:
    if r["model"] not in models:
      models.append(r["model"])
  lines = [
    f"# Sweep report: {os.path.basename(os.path.abspath(results_dir))}",
    "",
    "Every accuracy is measured on the model decoded from its `.hemp` file; every size "
    "is the length of that file (codebooks, float leaves and headers included). "
    "'LZMA2 idx' is the paper's measure (the uint8 level-index streams under LZMA2, "
    "nothing else); 'LZMA2 file' adds the codebooks and float leaves. H1, H3/3: exact "
    "empirical entropies (order 1, order-3 block rate) of the quantized streams, "
    f"bits per quantized parameter. Tolerance for 'equal accuracy': "
    f"{100 * tolerance:g} percentage point(s) below the float model.",
    "",
  ]
  for model in models:
    mr = [r for r in recs if r["model"] == model]
    ok = [r for r in mr if _ok(r)]
    floats = [r for r in ok if r["kind"] == "pretrain"]
    ref = floats[0]["test_accuracy"] if floats else None
    f32 = ok[0]["float32_bytes"] if ok else None
    lines += [f"## {model} ({ok[0]['dataset'] if ok else ''})", ""]
    if ref is not None:
      lines += [
        f"Float model: test accuracy {100 * ref:.1f}% (continuous weights), float32 "
        f"parameters {f32} bytes ({ok[0]['num_params']} parameters). "
        f"{len(mr)} points. (The float model's own row below is its N=4 "
        "post-training-quantized file; it is left out of the method comparison.)",
        "",
      ]
    if ref is not None:
      lines += [
        f"Best point per method with decoded accuracy >= {100 * (ref - tolerance):.1f}%:",
        "",
        "| method | point | acc decoded | file bytes | bits/param | x smaller than "
        "float32 | LZMA2 file bytes |",
        "|---|---|---|---|---|---|---|",
      ]
      for m in _sort_methods({r["method"] for r in ok if r["method"] != "float"}):
        b = best_within([r for r in ok if r["method"] == m], ref, tolerance)
        if b is None:
          lines.append(f"| {m} | (none within tolerance) ||||||")
        else:
          lines.append(
            f"| {m} | {b['id']} | {100 * b['test_accuracy_decoded']:.1f} | "
            f"{b['file_bytes']} | {b['bits_per_param_file']:.3f} | "
            f"{b['compression_ratio']:.1f} | {b['lzma_file_bytes']} |"
          )
      lines.append("")
    front = pareto_front([r for r in ok if r["method"] != "float"])
    lines += [
      "Pareto front (file bytes vs decoded accuracy): "
      + ", ".join(
        f"{r['id']} ({r['file_bytes']} B, {100 * r['test_accuracy_decoded']:.1f}%)" for r in front
      ),
      "",
    ]
    rate_png = f"{model}_accuracy_vs_rate.png"
    _plot_rate(mr, model, ref, tolerance, os.path.join(out_dir, rate_png))
    lines += [f"![accuracy vs rate]({rate_png})", ""]
    order_png = f"{model}_size_vs_order.png"
    if _plot_order(mr, model, os.path.join(out_dir, order_png)):
      lines += [f"![size vs order]({order_png})", ""]
    panels = [("float model (before)", floats[0] if floats else None)]
    for m in ("hemp-uniform", "hemp+prune-magnitude", "hemp+prune-sensitivity"):
      b = best_within([r for r in ok if r["method"] == m], ref, tolerance) if ref else None
      if b is not None:
        panels.append((f"after: {b['id']}", b))
    hist_png = f"{model}_weight_histograms.png"
    if _plot_hist(panels, model, os.path.join(out_dir, hist_png)):
      lines += [f"![weight histograms]({hist_png})", ""]
    lines += ["### All points", ""] + _table(mr, {r["id"] for r in front}) + [""]
  path = os.path.join(out_dir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path
