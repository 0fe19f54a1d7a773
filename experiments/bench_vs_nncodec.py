"""hemp-jax against NNCodec (the MPEG-7 NNR reference coder) at equal per-tensor error.

    PYTHONPATH=. python experiments/bench_vs_nncodec.py --build-weights   # once: the .npz
    PYTHONPATH=. python experiments/bench_vs_nncodec.py --per-tensor      # the benchmark
    PYTHONPATH=. python experiments/bench_vs_nncodec.py --fixtures        # + lossless part

Weights: the three ONNX models shipped in the PyPI wheel ``rapidocr-onnxruntime==1.4.4``
(PP-OCRv4 text detection and recognition, PP-OCR v2.0 mobile direction classifier;
``pip download --no-deps rapidocr-onnxruntime==1.4.4`` gets it). ``--build-weights``
extracts their weight tensors into one ``.npz`` (keys ``MODEL/TENSOR``): every float
tensor of rank >= 2 with >= 1000 values (``--min-size``) among the graph initializers and
the values of Constant nodes (these models keep their weights there): the conv, depthwise
conv, transposed conv and dense kernels; 115 tensors, 3,940,648 parameters. Biases and
batch-norm vectors are left out (both coders would keep them near float precision).

For each error target E (default 0.200, 0.128, 0.064, 0.033: about 2 to 5 bits/param),
every tensor goes through

- hemp-jax: ``codec.compress_checkpoint(weights.npz, method=M, max_rel_error=E)`` for
  each method of ``--methods`` (default ``uniform,ecsq``; any name ``compress_checkpoint``
  accepts, e.g. a future ``dq``; names the installed hemp_jax does not know are skipped
  with a note): the coarsest quantizer per tensor with ``||w - q(w)|| / ||w|| <= E``.
- NNCodec 2.1.3 (``nnc.compress`` of the numpy dict), uniform reconstruction
  (``use_dq=False``) and dependent (trellis-coded) quantization (``use_dq=True``), both at
  NNCodec's default ``lambda_scale=0`` (no rate term in the quantizer): per tensor the
  coarsest quantization parameter (qp; step ``2^(qp / 2^d)`` on a grid of ``2^d`` qps per
  octave, ``d = --qp-density``, default 7, the finest NNR allows, so that NNCodec gets as
  close to each target as hemp-jax's continuous step) whose reconstruction meets E, found
  by bisection on that tensor alone (NNCodec quantizes every tensor independently), then
  one bitstream of all tensors with those per-tensor qps (``qp_per_tensor``).

Every file is decoded (``codec.decompress``; NNCodec's ``nnc.decompress`` of the written
bitstream) and each tensor's relative error recomputed here, in float64, and checked
``<= E``. Sizes are whole files: every byte of the ``.hemp`` file / NNR bitstream (both
hold the tensor names and shapes). Times are CPU seconds (``time.process_time`` around the
call, in-process): hemp-jax encode = ``compress_checkpoint`` (reading, fitting with its
error search, coding), NNCodec encode = ``nnc.compress`` at the qps found (its qp search,
done by this harness, is reported separately), decode = ``decompress``.

NNCodec runs in its own venv (it pins numpy<2 and imports torchvision; never a project
dependency) through ``experiments/nncodec_worker.py``; its per-tensor qp search is cached
in ``--cache`` (JSON, keyed by tensor content and settings), so reruns only encode.

``--per-tensor``: where NNCodec-DQ beats hemp-jax ``ecsq`` (``--gap-method``): the tensors
with the largest byte gaps and the gap by tensor kind, in bits/param (hemp-jax: the leaf's
record, i.e. codebook + coder tables + payload; NNCodec: the tensor's NNR unit).

``--fixtures``: this project's ``tests/fixtures/*.hemp`` (already quantized), losslessly:
hemp-jax re-encoding against NNCodec coding the same symbols (each quantized leaf's
indices into its sorted levels as an int32 tensor, which NNCodec codes losslessly, 0 at
the level nearest zero; its levels and the float leaves counted at 4 bytes per value, plus
2 bytes per level count, outside NNCodec's bitstream). Decoded values checked bit-exact.

Exit status: 0 when every file decodes within its target, 1 otherwise, 2 when something
to run it is missing (one line says how to get it).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings

import jax  # noqa: F401  (imported before timing: compress_checkpoint imports it)
import numpy as np

from hemp_jax import codec
from hemp_jax.codec import checkpoints, ptq

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
WORKER = os.path.join(_HERE, "nncodec_worker.py")

RUNS = "/work/runs/w22"
DEFAULT_WHEEL = f"{RUNS}/rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
DEFAULT_WEIGHTS = f"{RUNS}/rapidocr.npz"
DEFAULT_NNC_PYTHON = "/work/runs/nnc-venv/bin/python"
TARGETS = (0.200, 0.128, 0.064, 0.033)
# hemp-jax methods, passed through to compress_checkpoint(method=...); a new method is
# one more name here (or in --methods)
HEMP_METHODS = ("uniform", "ecsq")
# NNCodec settings per row: dependent quantization on/off, lambda_scale (0: no rate term)
NNC_CONFIGS = {
  "nncodec-uniform": {"dq": 0, "lambda_scale": 0.0},
  "nncodec-dq": {"dq": 1, "lambda_scale": 0.0},
}
REFERENCE = "nncodec-dq"  # the ratio column divides by this row's bytes
INSTALL = (
  "python3 -m venv /work/runs/nnc-venv && /work/runs/nnc-venv/bin/pip install 'numpy<2' "
  "pybind11 setuptools wheel onnx && /work/runs/nnc-venv/bin/pip install --no-deps "
  "nncodec==2.1.3"
)


def missing(message: str) -> None:
  """One line saying what is missing and how to get it; exit status 2."""
  print(message, file=sys.stderr)
  sys.exit(2)


# --------------------------------------------------------------------- NNCodec side


def check_nncodec(python: str, need_onnx: bool = False) -> None:
  """Exit 2 (with the install commands) unless ``python`` imports nncodec (and onnx)."""
  mods = "nncodec, onnx" if need_onnx else "nncodec"
  ok = os.path.exists(python) and (
    subprocess.run([python, "-c", f"import {mods}"], capture_output=True).returncode == 0
  )
  if not ok:
    missing(f"NNCodec venv not usable ({python} cannot import {mods}); install it: {INSTALL}")


def run_worker(python: str, args: list) -> dict:
  """Runs ``nncodec_worker.py ARGS`` with NNCodec's python; its JSON result."""
  with tempfile.TemporaryDirectory() as d:
    out = os.path.join(d, "result.json")
    p = subprocess.run([python, WORKER, *args, "--result", out], capture_output=True, text=True)
    if p.returncode != 0:
      tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
      raise SystemExit(f"nncodec_worker.py {args[0]} failed:\n" + "\n".join(tail))
    with open(out) as f:
      return json.load(f)


def _coder_args(args, settings) -> list:
  """The worker's NNCodec settings: quantizer (``dq``), qp grid and rate weight."""
  return [
    "--dq",
    str(settings["dq"]),
    "--qp-density",
    str(args.qp_density),
    "--lambda-scale",
    str(settings["lambda_scale"]),
  ]


def nncodec_point(args, name, settings, target, found, tensors) -> dict:
  """One NNCodec bitstream at the qps ``found`` for ``target``, decoded and checked."""
  qps = {t: found[t]["qp"] for t in tensors}
  stem = os.path.join(args.workdir, f"{name}-{target:.3f}")
  with open(stem + ".qps.json", "w") as f:
    json.dump(qps, f, indent=1)
  res = run_worker(
    args.nncodec_python,
    [
      "encode",
      "--weights",
      args.weights,
      "--qps",
      stem + ".qps.json",
      "--bitstream",
      stem + ".nnr",
      "--decoded",
      stem + ".decoded.npz",
      *_coder_args(args, settings),
    ],
  )
  if os.path.getsize(stem + ".nnr") != res["bytes"]:
    raise SystemExit(f"{stem}.nnr: size differs from what the worker reported")
  with np.load(stem + ".decoded.npz") as z:
    decoded = {k: z[k] for k in z.files}
  ndu = res["ndu_bytes"] or {}
  return {
    "coder": name,
    "bytes": res["bytes"],
    "encode_cpu_s": res["encode_cpu_s"],
    "decode_cpu_s": res["decode_cpu_s"],
    "search_cpu_s": sum(found[t].get("cpu_s", 0.0) for t in tensors),
    "header_bytes": res["bytes"] - sum(ndu.values()),
    "tensor_bytes": ndu,
    "qp": qps,
    "decoded": decoded,
  }


# ------------------------------------------------------------------------ hemp side


def hemp_point(args, method, target) -> dict:
  """``compress_checkpoint(weights, method, max_rel_error=target)``, written and decoded."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", codec.QuantizationWarning)  # errors are checked below
    res = codec.compress_checkpoint(args.weights, method=method, max_rel_error=target)
  path = os.path.join(args.workdir, f"hemp-{method}-{target:.3f}.hemp")
  with open(path, "wb") as f:
    f.write(res.blob)
  with open(path, "rb") as f:
    blob = f.read()
  t0 = time.process_time()
  tree = codec.decompress(blob)
  dec_s = time.process_time() - t0
  report = codec.inspect(blob)
  return {
    "coder": f"hemp-{method}",
    "bytes": len(blob),
    "encode_cpu_s": res.seconds,
    "decode_cpu_s": dec_s,
    "header_bytes": report.header_bytes,
    "tensor_bytes": {leaf.path: leaf.record_bytes for leaf in report.leaves},
    # the part of each record that is not range-coder payload: levels and coder tables
    "side_bytes": {leaf.path: leaf.codebook_bytes + leaf.table_bytes for leaf in report.leaves},
    "quantized": sum(r.quantized for r in res.results),
    "decoded": checkpoints.flatten_tree(tree),
  }


# --------------------------------------------------------------------------- checks


def rel_error(w: np.ndarray, q: np.ndarray) -> float:
  """``||w - q|| / ||w||`` in float64."""
  a = np.asarray(w, np.float64)
  d = a - np.asarray(q, np.float64)
  e = float(np.square(a).sum())
  return math.sqrt(float(np.square(d).sum()) / e) if e > 0 else float(np.any(d != 0))


def check(point: dict, weights: dict, target: float) -> None:
  """Per-tensor errors of the decoded arrays; ``point["ok"]`` iff all tensors are
  present, of the right shape, and within ``target``."""
  decoded = point.pop("decoded")
  errs, problems = {}, []
  for name, w in weights.items():
    q = decoded.get(name)
    if q is None or q.shape != w.shape:
      problems.append(f"{name}: {'missing' if q is None else f'shape {q.shape}'}")
      continue
    errs[name] = rel_error(w, q)
    if not errs[name] <= target:
      problems.append(f"{name}: error {errs[name]:.5f} > {target}")
  point["rel_error"] = errs
  point["max_rel_error"] = max(errs.values(), default=float("nan"))
  point["problems"] = problems
  point["ok"] = not problems


# --------------------------------------------------------------------------- tables


def table(rows: list) -> str:
  """A markdown table (first row: header); numbers right-aligned."""
  out = ["| " + " | ".join(rows[0]) + " |"]
  out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(rows[0]))) + "|")
  out += ["| " + " | ".join(map(str, r)) + " |" for r in rows[1:]]
  return "\n".join(out)


def main_table(points: list, n_params: int) -> str:
  ref = {p["target"]: p["bytes"] for p in points if p["coder"] == REFERENCE}
  rows = [
    (
      "max rel. error",
      "coder",
      "bytes",
      "bits/param",
      f"× {REFERENCE}",
      "max achieved",
      "encode CPU s",
      "decode CPU s",
      "qp search CPU s",
    )
  ]
  for p in points:
    r = ref.get(p["target"])
    rows.append(
      (
        f"{p['target']:.3f}",
        p["coder"],
        f"{p['bytes']:,}",
        f"{8 * p['bytes'] / n_params:.3f}",
        f"{p['bytes'] / r:.3f}" if r else "-",
        f"{p['max_rel_error']:.4f}" + ("" if p["ok"] else " FAIL"),
        f"{p['encode_cpu_s']:.2f}",
        f"{p['decode_cpu_s']:.2f}",
        f"{p['search_cpu_s']:.1f}" if "search_cpu_s" in p else "-",
      )
    )
  return table(rows)


def summary_table(points: list, targets: list) -> str:
  """Bytes per coder (rows) and target (columns)."""
  coders = list(dict.fromkeys(p["coder"] for p in points))
  by = {(p["coder"], p["target"]): p["bytes"] for p in points}
  rows = [("coder", *(f"≤ {t:.3f}" for t in targets))]
  for c in coders:
    rows.append((c, *(f"{by[c, t]:,}" if (c, t) in by else "-" for t in targets)))
  return table(rows)


def tensor_kind(shape: tuple) -> str:
  """conv kernels in ONNX layout (O, I/groups, kh, kw); rank 2: dense (MatMul)."""
  if len(shape) == 2:
    return "dense"
  if len(shape) == 4:
    o, i, kh, kw = shape
    if kh * kw == 1:
      return "conv 1x1"
    return "depthwise" if i == 1 else f"conv {kh}x{kw}"
  return f"rank {len(shape)}"


def per_tensor(points: list, weights: dict, gap_method: str, top: int) -> tuple[str, dict]:
  """Tables of where NNCodec-DQ beats hemp ``gap_method``; the rows for the JSON."""
  hemp, nnc = f"hemp-{gap_method}", REFERENCE
  by = {(p["coder"], p["target"]): p for p in points}
  lines, out = [], {}
  for t in sorted({p["target"] for p in points}, reverse=True):
    if (hemp, t) not in by or (nnc, t) not in by:
      continue
    h, d = by[hemp, t]["tensor_bytes"], by[nnc, t]["tensor_bytes"]
    side = by[hemp, t]["side_bytes"]
    u = by.get(("nncodec-uniform", t), {}).get("tensor_bytes", {})
    hu = by.get(("hemp-uniform", t), {}).get("tensor_bytes", {})
    rows = []
    for name, w in weights.items():
      if name not in h or name not in d:
        continue
      n = w.size
      rows.append(
        {
          "tensor": name,
          "shape": list(w.shape),
          "kind": tensor_kind(w.shape),
          "params": n,
          "hemp_bpp": 8 * h[name] / n,
          "hemp_side_bpp": 8 * side[name] / n,
          "hemp_uniform_bpp": 8 * hu[name] / n if name in hu else None,
          "nnc_uniform_bpp": 8 * u[name] / n if name in u else None,
          "nnc_dq_bpp": 8 * d[name] / n,
          "gap_bytes": h[name] - d[name],
          "hemp_err": by[hemp, t]["rel_error"][name],
          "nnc_dq_err": by[nnc, t]["rel_error"][name],
        }
      )
    out[f"{t:.3f}"] = rows
    rows_sorted = sorted(rows, key=lambda r: -r["gap_bytes"])[:top]
    lines.append(f"\n{hemp} against {nnc} at error ≤ {t:.3f}: the {top} largest byte gaps")
    opt = lambda v: "-" if v is None else f"{v:.3f}"
    tab = [
      ("tensor", "shape", "params", "hemp-uniform", "nnc-uniform", hemp, "of which side", "nnc-dq")
      + ("gap B", "errors")
    ]
    for r in rows_sorted:
      tab.append(
        (
          r["tensor"],
          "x".join(map(str, r["shape"])),
          f"{r['params']:,}",
          opt(r["hemp_uniform_bpp"]),
          opt(r["nnc_uniform_bpp"]),
          f"{r['hemp_bpp']:.3f}",
          f"{r['hemp_side_bpp']:.3f}",
          f"{r['nnc_dq_bpp']:.3f}",
          f"{r['gap_bytes']:+,}",
          f"{r['hemp_err']:.4f} / {r['nnc_dq_err']:.4f}",
        )
      )
    lines.append(table(tab))
    # per kind: bits/param of each coder (summed bytes over summed params)
    cols = ("hemp_uniform_bpp", "nnc_uniform_bpp", "hemp_bpp", "hemp_side_bpp", "nnc_dq_bpp")
    kinds = {}
    for r in rows:
      k = kinds.setdefault(r["kind"], {"tensors": 0, "params": 0, "wins": 0})
      k["tensors"] += 1
      k["params"] += r["params"]
      k["wins"] += r["gap_bytes"] > 0
      for c in cols:
        k[c] = k.get(c, 0.0) + (r[c] or 0.0) * r["params"]
    tab = [
      ("kind", "tensors", "params", "hemp-uniform", "nnc-uniform", hemp, "of which side")
      + ("nnc-dq", "gap bits/param", "gap B", "nnc-dq wins")
    ]
    for kind, k in sorted(kinds.items(), key=lambda kv: -kv[1]["params"]):
      n = k["params"]
      gap = (k["hemp_bpp"] - k["nnc_dq_bpp"]) / n
      tab.append(
        (
          kind,
          str(k["tensors"]),
          f"{n:,}",
          *(f"{k[c] / n:.3f}" for c in cols),
          f"{gap:+.3f}",
          f"{gap * n / 8:+,.0f}",
          f"{k['wins']}/{k['tensors']}",
        )
      )
    lines.append(
      f"\nby tensor kind, error ≤ {t:.3f}: bits/param of the tensors' records (side: "
      f"{hemp}'s levels + coder tables)"
    )
    lines.append(table(tab))
  return "\n".join(lines), out


# ------------------------------------------------------------------------- fixtures


def fixtures(args) -> tuple[str, list]:
  """Lossless: hemp-jax re-encode vs NNCodec on the same symbols (module docstring)."""
  rows, out = [], []
  paths = sorted(glob.glob(os.path.join(_ROOT, "tests", "fixtures", "*.hemp")))
  for path in paths:
    with open(path, "rb") as f:
      orig = f.read()
    ref = checkpoints.flatten_tree(codec.decompress(orig))
    res = codec.compress_checkpoint(path)
    hemp_tree = checkpoints.flatten_tree(codec.decompress(res.blob))
    hemp_ok = ref.keys() == hemp_tree.keys() and all(
      np.array_equal(ref[k], hemp_tree[k]) and ref[k].dtype == hemp_tree[k].dtype for k in ref
    )
    report = codec.inspect(res.blob)
    ints, levels, side = {}, {}, 0
    for leaf in report.leaves:
      x = ref[leaf.path]
      if leaf.kind == "quantized":
        lv, idx = np.unique(x.reshape(-1), return_inverse=True)
        zero = int(np.argmin(np.abs(lv.astype(np.float64))))
        ints[leaf.path] = (idx.astype(np.int32) - zero).reshape(x.shape)
        levels[leaf.path] = (lv, zero)
        side += 4 * lv.size + 2
      else:
        side += x.nbytes
    stem = os.path.join(args.workdir, "fixture-" + os.path.basename(path)[: -len(".hemp")])
    np.savez(stem + ".ints.npz", **ints)
    enc = run_worker(
      args.nncodec_python,
      [
        "encode",
        "--weights",
        stem + ".ints.npz",
        "--bitstream",
        stem + ".nnr",
        "--decoded",
        stem + ".decoded.npz",
      ],
    )
    with np.load(stem + ".decoded.npz") as z:
      nnc_ok = all(
        k in z.files
        and np.array_equal(
          levels[k][0][z[k].reshape(-1).astype(np.int64) + levels[k][1]].reshape(ref[k].shape),
          ref[k],
        )
        for k in ints
      )
    total = enc["bytes"] + side
    out.append(
      {
        "fixture": os.path.basename(path),
        "original_bytes": len(orig),
        "hemp_bytes": len(res.blob),
        "hemp_ok": hemp_ok,
        "nncodec_bitstream_bytes": enc["bytes"],
        "nncodec_side_bytes": side,
        "nncodec_bytes": total,
        "nncodec_ok": nnc_ok,
      }
    )
    rows.append(
      (
        os.path.basename(path),
        f"{len(orig):,}",
        f"{len(res.blob):,}" + ("" if hemp_ok else " FAIL"),
        f"{enc['bytes']:,} + {side:,} = {total:,}" + ("" if nnc_ok else " FAIL"),
        f"{len(res.blob) / total:.3f}",
      )
    )
  head = ("fixture", "file", "hemp-jax re-encode", "NNCodec ints + levels/floats", "hemp / NNCodec")
  return table([head, *rows]), out


# ----------------------------------------------------------------------------- main


def build_weights(args) -> None:
  if not os.path.exists(args.wheel):
    missing(
      f"{args.wheel}: not found; get it with: pip download --no-deps "
      f"rapidocr-onnxruntime==1.4.4 -d {os.path.dirname(args.wheel) or '.'}"
    )
  check_nncodec(args.nncodec_python, need_onnx=True)
  res = run_worker(
    args.nncodec_python,
    [
      "extract",
      "--wheel",
      args.wheel,
      "--out",
      args.weights,
      "--min-size",
      str(args.min_size),
    ],
  )
  rows = [("model", "float tensors found", "kept (rank >= 2, >= min size)", "params")]
  for m in res["models"]:
    rows.append((m["model"], m["candidates"], m["tensors"], f"{m['params']:,}"))
  rows.append(("all", "", res["tensors"], f"{res['params']:,}"))
  print(table(rows))
  print(f"\nwrote {args.weights}")


def parse_args(argv=None):
  ap = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--weights", default=DEFAULT_WEIGHTS, help="the .npz of weight tensors")
  ap.add_argument(
    "--build-weights", action="store_true", help="extract --weights from --wheel and exit"
  )
  ap.add_argument("--wheel", default=DEFAULT_WHEEL)
  ap.add_argument("--min-size", type=int, default=1000, help="--build-weights: fewest values")
  ap.add_argument("--nncodec-python", default=DEFAULT_NNC_PYTHON)
  ap.add_argument("--targets", default=",".join(f"{t:.3f}" for t in TARGETS))
  ap.add_argument("--methods", default=",".join(HEMP_METHODS), help="hemp-jax methods")
  ap.add_argument("--nncodec", default=",".join(NNC_CONFIGS), help="NNCodec rows")
  ap.add_argument("--qp-density", type=int, default=7, help="NNCodec qps per octave: 2^d")
  ap.add_argument("--cache", default=f"{RUNS}/nncodec_qp_cache.json")
  ap.add_argument("--workdir", default=f"{RUNS}/bench", help="files written (kept)")
  ap.add_argument("--out", default=f"{RUNS}/bench_vs_nncodec.json", help="JSON results")
  ap.add_argument("--per-tensor", action="store_true")
  ap.add_argument("--gap-method", default="ecsq", help="hemp-jax method of --per-tensor")
  ap.add_argument("--top", type=int, default=12, help="--per-tensor: tensors listed")
  ap.add_argument("--fixtures", action="store_true", help="also the lossless fixture part")
  return ap.parse_args(argv)


def hemp_methods(names: str) -> tuple[list, list]:
  """The methods of a comma-separated list that this hemp_jax knows, and a note for each
  one it does not (skipped, so that a method still under development elsewhere can be
  listed before it lands)."""
  methods, notes = [], []
  for m in (m.strip() for m in names.split(",")):
    if m in ptq.METHODS:
      methods.append(m)
    elif m:
      notes.append(
        f"hemp-jax method {m!r} skipped: not in this hemp_jax ({', '.join(ptq.METHODS)})"
      )
  return methods, notes


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.build_weights:
    build_weights(args)
    return 0
  if not os.path.exists(args.weights):
    missing(
      f"{args.weights}: not found; build it with: PYTHONPATH=. python "
      f"experiments/bench_vs_nncodec.py --build-weights --weights {args.weights}"
    )
  check_nncodec(args.nncodec_python)
  os.makedirs(args.workdir, exist_ok=True)
  targets = [float(t) for t in args.targets.split(",")]
  methods, notes = hemp_methods(args.methods)
  configs = {}
  for c in [c for c in args.nncodec.split(",") if c]:
    if c not in NNC_CONFIGS:
      raise SystemExit(f"--nncodec {c!r}: one of {', '.join(NNC_CONFIGS)}")
    configs[c] = NNC_CONFIGS[c]

  with np.load(args.weights) as z:
    weights = {k: z[k] for k in z.files}
  n_params = sum(w.size for w in weights.values())
  print(f"{args.weights}: {len(weights)} tensors, {n_params:,} parameters")
  for note in notes:
    print(note)

  points = []
  for name, settings in configs.items():
    found = run_worker(
      args.nncodec_python,
      [
        "search",
        "--weights",
        args.weights,
        *_coder_args(args, settings),
        "--cache",
        args.cache,
        *(a for t in targets for a in ("--target", str(t))),
      ],
    )
    for t in targets:
      p = nncodec_point(args, name, settings, t, found[f"{t:.6g}"], list(weights))
      p["target"] = t
      check(p, weights, t)
      points.append(p)
      print(f"  {name} ≤ {t:.3f}: {p['bytes']:,} B", flush=True)
  for m in methods:
    for t in targets:
      p = hemp_point(args, m, t)
      p["target"] = t
      check(p, weights, t)
      points.append(p)
      print(f"  hemp-{m} ≤ {t:.3f}: {p['bytes']:,} B", flush=True)

  order = [f"hemp-{m}" for m in methods] + list(configs)
  points.sort(key=lambda p: (-p["target"], order.index(p["coder"])))
  print(
    f"\n{len(weights)} tensors, {n_params:,} parameters; every tensor's relative error ≤ target"
  )
  print(summary_table(points, targets))
  print()
  print(main_table(points, n_params))
  result = {
    "weights": os.path.abspath(args.weights),
    "tensors": len(weights),
    "params": n_params,
    "targets": targets,
    "nncodec": {"qp_density": args.qp_density, "configs": configs},
    "notes": notes,
    "points": points,
  }
  if args.per_tensor:
    text, rows = per_tensor(points, weights, args.gap_method, args.top)
    print(text)
    result["per_tensor"] = rows
  if args.fixtures:
    text, rows = fixtures(args)
    print("\nLossless, this project's fixtures (bytes)")
    print(text)
    result["fixtures"] = rows
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"\nwrote {args.out}")
  bad = [p for p in points if not p["ok"]]
  bad += [f for f in result.get("fixtures", []) if not (f["hemp_ok"] and f["nncodec_ok"])]
  for p in bad:
    what = p.get("problems", [])[:3] if "coder" in p else p
    print(f"FAILED: {p.get('coder', 'fixture')} {p.get('target', '')}: {what}", file=sys.stderr)
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
