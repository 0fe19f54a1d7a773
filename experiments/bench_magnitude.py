"""The scale-conditioned magnitude model (``hemp_jax.codec.magnitude``) against today's
coder on the same integers.

Each float tensor of an ``.npz`` is quantized uniformly, ``k = round(w / step)``, with the
step (bisection) that gives a relative L2 error of each target; then, per tensor:

* today: the version-3 coder (``model_selection.encode``) on the compact symbols (the
  ranks of the levels in use), bytes of its model section + payload;
* magnitude: ``magnitude.encode_matrix`` of the levels in either layout of
  ``context_models.layouts`` (the smaller), model section + payload, decoded back and
  compared;
* H0: the order-0 empirical entropy of the levels (no table counted), a reference.

Usage::

  python experiments/bench_magnitude.py /work/runs/w22/rapidocr.npz [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from hemp_jax.codec import context_models, magnitude, model_selection
from hemp_jax.codec.context_models import layouts, matrix
from hemp_jax.codec.wire import Reader

TARGETS = (0.200, 0.128, 0.064, 0.033)


def quantize(w: np.ndarray, target: float) -> np.ndarray:
  """Levels ``round(w / step)`` whose relative L2 error is ``target`` (bisection)."""
  w = w.astype(np.float64)
  norm = np.linalg.norm(w)
  lo, hi = 1e-12, float(np.abs(w).max()) * 4 + 1e-12
  for _ in range(60):
    step = np.sqrt(lo * hi)
    if np.linalg.norm(w - step * np.rint(w / step)) > target * norm:
      hi = step
    else:
      lo = step
  return np.rint(w / lo).astype(np.int32)


def entropy_bytes(k: np.ndarray) -> float:
  c = np.bincount((k - k.min()).reshape(-1))
  c = c[c > 0]
  return float(-(c * np.log2(c / k.size)).sum()) / 8


def today_bytes(k: np.ndarray) -> tuple[int, float]:
  """(bytes, decode CPU s) of today's coder on the compact symbols of ``k``."""
  levels, compact = np.unique(k, return_inverse=True)
  if levels.size < 2:
    return 0, 0.0
  coded = model_selection.encode(compact.reshape(k.shape).astype(np.int32), levels.size)
  t0 = time.process_time()
  context_models.decode(Reader(coded.model + coded.payload), k.shape, levels.size)
  return len(coded.model) + len(coded.payload), time.process_time() - t0


def magnitude_bytes(k: np.ndarray, check: bool = True):
  """(bytes, layout, estimated bytes, encode s, decode s) of the best layout."""
  best = None
  t_enc = t_dec = 0.0
  for lay, (rows, cols) in enumerate(layouts(k.shape)):
    x = matrix(k.reshape(-1), rows, cols, lay)
    t0 = time.process_time()
    enc = magnitude.encode_matrix(x)
    t1 = time.process_time()
    t_enc += t1 - t0
    size = len(enc.model) + len(enc.payload)
    if best is None or size < best[0]:
      best = (size, lay, enc.estimated_bits / 8 + len(enc.model), enc, x)
  size, lay, est, enc, x = best
  if check:
    t0 = time.process_time()
    got = magnitude.decode_matrix(enc.model, enc.payload, *x.shape)
    t_dec = time.process_time() - t0
    if not np.array_equal(got, x):
      raise AssertionError("magnitude round trip failed")
  return size, lay, est, t_enc, t_dec


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("npz")
  ap.add_argument("--json", help="per-tensor results")
  ap.add_argument("--targets", default=",".join(str(t) for t in TARGETS))
  args = ap.parse_args()
  data = np.load(args.npz)
  targets = [float(t) for t in args.targets.split(",")]
  rows = []
  for target in targets:
    tot = dict(n=0, today=0, mag=0, best=0, h0=0.0, est=0.0, enc=0.0, dec=0.0, wins=0, loses=0)
    tot["today_dec"] = 0.0
    for name in data.files:
      k = quantize(data[name], target)
      today, t_today = today_bytes(k)
      tot["today_dec"] += t_today
      mag, lay, est, t_enc, t_dec = magnitude_bytes(k)
      h0 = entropy_bytes(k)
      rows.append(dict(target=target, name=name, n=k.size, today=today, mag=mag, layout=lay, h0=h0))
      tot["n"] += k.size
      tot["today"] += today
      tot["mag"] += mag
      tot["best"] += min(today, mag)
      tot["h0"] += h0
      tot["est"] += est
      tot["enc"] += t_enc
      tot["dec"] += t_dec
      tot["wins"] += mag < today
      tot["loses"] += mag > today
    n = tot["n"]
    print(
      f"err {target:.3f}: {8 * tot['today'] / n:.3f} bits/param | today {tot['today']:,} B"
      f" | magnitude {tot['mag']:,} B ({100 * (1 - tot['mag'] / tot['today']):+.2f}%)"
      f" | min {tot['best']:,} B ({100 * (1 - tot['best'] / tot['today']):+.2f}%)"
      f" | H0 {tot['h0']:,.0f} B ({100 * (1 - tot['h0'] / tot['today']):+.2f}%)"
      f" | est/real {tot['est'] / tot['mag']:.4f} | wins {tot['wins']} loses {tot['loses']}"
      f" | encode {n / tot['enc'] / 1e6:.1f} M/s (both layouts), decode {n / tot['dec'] / 1e6:.1f} M/s"
      f" (today's decoder {n / tot['today_dec'] / 1e6:.1f} M/s)",
      flush=True,
    )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=0)


if __name__ == "__main__":
  main()
