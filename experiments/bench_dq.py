"""Dependent quantization (``method="dq"``) against ECSQ and the uniform grid.

    PYTHONPATH=. python experiments/bench_dq.py NPZ                # file bytes at equal error
    PYTHONPATH=. python experiments/bench_dq.py NPZ --slopes 0.5,1,2  # the rate weight
    PYTHONPATH=. python experiments/bench_dq.py --resnet50         # speed at scale

Part 1 (``NPZ``, a checkpoint of '/'-joined float tensors): each method quantizes the
tensors ``ptq.select_leaves`` picks at per-tensor relative errors of ``--errors`` (default
0.200, 0.128, 0.064, 0.033); every file is written, decoded, and every tensor's relative
error checked against its bound; the table gives the file bytes, dq against ECSQ, and the
CPU time of fitting, encoding (``codec.compress`` of the fitted tree) and decoding, per M
quantized parameters.

``--slopes``: dq's rate weight ``lam = m * DQ_SLOPE * delta**2`` for each multiplier
``m``, file bytes at the first error point (the value of ``DQ_SLOPE`` is chosen there).

Part 2 (``--resnet50``): the ResNet-50-shaped tree of ``bench_codec.py`` (25.6M
parameters, Laplacian weights): ECSQ and dq at ``--resnet-error`` (fitting time), then
``compress`` / ``decompress`` CPU time of each and of the tree's uniform 16-level
codebooks of ``bench_codec.py``, measured in the same process.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hemp_jax import codec  # noqa: E402
from hemp_jax.codec import checkpoints, ptq, trellis  # noqa: E402

ERRORS = (0.200, 0.128, 0.064, 0.033)
METHODS = ("uniform", "ecsq", "dq")


def _cpu(fn):
  c = time.process_time()
  out = fn()
  return out, time.process_time() - c


def _flat_of(tree) -> dict:
  return checkpoints.flatten_tree(tree)


def measure(flat: dict, method: str, target: float) -> dict:
  """Quantize at ``target``, write, decode, check every tensor; bytes and CPU seconds."""
  (values, cbs, res), t_fit = _cpu(
    lambda: ptq.quantize_tree(flat, method=method, max_rel_error=target)
  )
  blob, t_enc = _cpu(lambda: codec.compress(values, cbs))
  out, t_dec = _cpu(lambda: codec.decompress(blob))
  dec = _flat_of(out)
  worst = 0.0
  for r in res:
    x = np.asarray(flat[r.path], np.float64)
    d = np.asarray(dec[r.path], np.float64)
    if not r.quantized:
      assert np.array_equal(np.asarray(dec[r.path]), np.asarray(flat[r.path])), r.path
      continue
    assert np.array_equal(np.asarray(dec[r.path]), np.asarray(values[r.path])), r.path
    rel = float(np.linalg.norm(x - d) / np.linalg.norm(x))
    assert rel <= target, (method, r.path, rel, target)
    worst = max(worst, rel)
  nq = sum(math.prod(r.shape) for r in res if r.quantized)
  return {"bytes": len(blob), "fit": t_fit, "enc": t_enc, "dec": t_dec, "worst": worst, "nq": nq}


def part1(flat: dict, errors) -> None:
  rows = []
  for target in errors:
    row = {m: measure(flat, m, target) for m in METHODS}
    rows.append((target, row))
    print(
      f"{target:.3f}: "
      + ", ".join(f"{m} {row[m]['bytes']:,} B (max err {row[m]['worst']:.4f})" for m in METHODS)
      + f"; dq/ecsq {row['dq']['bytes'] / row['ecsq']['bytes']:.4f}",
      flush=True,
    )
  nq = rows[0][1]["dq"]["nq"] / 1e6
  print(
    f"\n{nq * 1e6:,.0f} quantized parameters; every file decoded, every tensor within its bound"
  )
  print("| rel. error | uniform B | ecsq B | dq B | dq / ecsq | dq / uniform |")
  print("|---:|---:|---:|---:|---:|---:|")
  for target, row in rows:
    u, e, d = (row[m]["bytes"] for m in METHODS)
    print(f"| {target:.3f} | {u:,} | {e:,} | {d:,} | {d / e:.4f} | {d / u:.4f} |")
  print("\nCPU seconds per M quantized parameters (fit / encode / decode), mean over the errors:")
  for m in METHODS:
    f, en, de = (np.mean([row[m][k] for _, row in rows]) / nq for k in ("fit", "enc", "dec"))
    print(f"  {m:8s} fit {f:6.3f}  encode {en:6.3f}  decode {de:6.3f}")


def slopes(flat: dict, target: float, mults) -> None:
  chosen = [p for p, r in ptq.select_leaves(flat).items() if r == ""]
  ecsq = measure(flat, "ecsq", target)["bytes"]
  for m in mults:
    values, cbs = dict(flat), {p: None for p in flat}
    for p in chosen:
      x = np.asarray(flat[p])
      if x.min() == x.max():
        continue
      fit = trellis.fit_error(x, target, slope=m * trellis.DQ_SLOPE)
      values[p], cbs[p] = fit.values, fit.spec
    size = len(codec.compress(values, cbs))
    print(f"slope x{m:g}: {size:,} B, dq/ecsq {size / ecsq:.4f}", flush=True)


def part2(target: float, repeats: int) -> None:
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import bench_codec

  params, cbs = bench_codec.synthetic_resnet50()
  flat = _flat_of(params)
  n = sum(np.size(x) for x in flat.values())
  nested = lambda d: checkpoints.unflatten_names(d, "/")  # noqa: E731
  print(f"ResNet-50 shapes, {n:,} params; CPU seconds, best of {repeats}:")
  runs = [("uniform K=18 (bench_codec)", params, cbs, None)]
  for method in ("ecsq", "dq"):
    (values, mcbs, res), t_fit = _cpu(
      lambda m=method: ptq.quantize_tree(flat, method=m, max_rel_error=target)
    )
    nq = sum(math.prod(r.shape) for r in res if r.quantized)
    runs.append((f"{method} at rel. error {target}", nested(values), nested(mcbs), (t_fit, nq)))
  for label, p, c, fit in runs:
    enc = min(_cpu(lambda p=p, c=c: codec.compress(p, c))[1] for _ in range(repeats))
    blob = codec.compress(p, c)
    dec = min(_cpu(lambda blob=blob: codec.decompress(blob))[1] for _ in range(repeats))
    fitted = f"fit {fit[0]:.1f} s = {fit[1] / fit[0] / 1e6:.2f} M/s, " if fit else ""
    print(
      f"  {label:28s} {len(blob):>11,} B, {fitted}encode {enc:.2f} s = {n / enc / 1e6:.1f} M/s, "
      f"decode {dec:.2f} s = {n / dec / 1e6:.1f} M/s",
      flush=True,
    )


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("npz", nargs="?", help="a checkpoint .npz ('/'-joined names)")
  ap.add_argument("--errors", default=",".join(f"{e:.3f}" for e in ERRORS))
  ap.add_argument("--slopes", help="comma-separated multipliers of DQ_SLOPE (with NPZ)")
  ap.add_argument("--resnet50", action="store_true", help="the speed run on ResNet-50 shapes")
  ap.add_argument("--resnet-error", type=float, default=0.064)
  ap.add_argument("--repeats", type=int, default=2)
  args = ap.parse_args(argv)
  errors = [float(e) for e in args.errors.split(",")]
  if args.npz:
    flat = _flat_of(checkpoints.read_checkpoint(args.npz))
    if args.slopes:
      slopes(flat, errors[0], [float(m) for m in args.slopes.split(",")])
    else:
      part1(flat, errors)
  if args.resnet50:
    part2(args.resnet_error, args.repeats)


if __name__ == "__main__":
  main()
