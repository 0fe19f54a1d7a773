"""Benchmark of the .hemp codec against its entropy bound and general-purpose coders.

Issue #4 acceptance. Two models:

(a) LeNet-5 (Caffe variant, the shapes of ``hemp_jax.models.LeNet5``): the params given
    with ``--params`` (an ``.npz`` of '/'-joined leaf names, or an orbax checkpoint
    directory), quantized with ``--codebooks`` (an ``.npz`` of codebooks by leaf name) or
    with codebooks fitted by ``fit_codebooks(--num-levels, --method, guard levels)``.
    Without ``--params``: a synthetic HEMP-like tree: N=4 levels + 2 guards (K=6), a zero
    level holding ~80% of the weights, 10-30% of output units and 20% of the fc inputs
    pruned to zero, and live weights following a Markov chain along the fan-in (so
    consecutive weights of the scan order are correlated, as order-n training makes
    them). Biases are kept in float.
(b) ResNet-18 (torchvision shapes, (kh, kw, in, out) layout, 11,689,512 params):
    synthetic Laplacian weights, Kaiming scale with a log-normal per-output-channel
    spread, quantized with uniform codebooks of N=16 levels + 2 guards (K=18); batch-norm
    scales/biases and the fc bias are kept in float.

For each model the script prints: our file size (every byte needed to decode); the
entropy bound of what our coder did, i.e. the file with each quantized payload replaced by
the exact empirical entropy of its index stream at the order the coder chose
(``hemp_jax.empirical_entropy(scan_stream(idx), K, order=m+1, sliding, conditional)``,
order 0: ``order=1``), tables, codebooks, float tensors and header included; the same
uint8 index streams (scan order, concatenated, no codebooks or float tensors) under LZMA2
(xz -9e), zstd -19 and brotli -11; and encode/decode throughput of ``compress`` (with
the codebooks given) and ``decompress``, in M params/s (best of ``--repeats``).

(c) Speed at scale (issue #11): a ResNet-50-shaped tree (torchvision shapes in Flax
    layout, 25,557,032 params, Laplacian weights, uniform codebooks of N=16 levels + 2
    guards fitted in numpy, BN and biases in float): compress / decompress CPU time in M
    params/s (best of ``--repeats``), the largest traced allocation during each in units
    of the float32 model's size (tracemalloc: numpy and Python memory), and the (2^20, 32)
    two-level leaf with constant columns (file size, decode time). ``--scale-only`` runs
    just this part, ``--skip-scale`` skips it.

Usage::

  python experiments/bench_codec.py
  python experiments/bench_codec.py --scale-only --repeats 3
  python experiments/bench_codec.py --params lenet5_hemp.npz [--codebooks cbs.npz]
"""

from __future__ import annotations

import argparse
import lzma
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import brotli  # noqa: E402
import numpy as np  # noqa: E402
import zstandard  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import hemp_jax as hj  # noqa: E402
from hemp_jax import groups  # noqa: E402
from hemp_jax.codec import compress, decompress, format_inspection, inspect  # noqa: E402
from hemp_jax.codec.records import quantize_indices_np  # noqa: E402

# --------------------------------------------------------------------------- models


def _nest(flat: dict) -> dict:
  tree: dict = {}
  for key, value in flat.items():
    parts = key.split("/")
    node = tree
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = np.asarray(value)
  return tree


def load_params(path: str):
  """Params from an .npz ('/'-joined names) or an orbax checkpoint directory."""
  if os.path.isdir(path):
    import orbax.checkpoint as ocp

    tree = ocp.PyTreeCheckpointer().restore(os.path.abspath(path))
    if isinstance(tree, dict) and "params" in tree:
      tree = tree["params"]
    return _to_numpy(tree)
  with np.load(path) as z:
    return _nest({k: z[k] for k in z.files})


def _to_numpy(tree):
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items() if v is not None}
  return np.asarray(tree)


def codebooks_from_npz(params, path):
  with np.load(path) as z:
    found = {k: z[k] for k in z.files}

  def pick(p, x):
    return found.get(groups.path_name(p))

  import jax

  return jax.tree_util.tree_map_with_path(pick, params)


def synthetic_lenet5(seed: int = 0):
  """HEMP-like quantized LeNet-5 (see the module docstring) and its codebooks."""
  rng = np.random.default_rng(seed)
  shapes = {"conv1": (5, 5, 1, 20), "conv2": (5, 5, 20, 50), "fc1": (800, 500), "fc2": (500, 10)}
  dead_cols = {"conv1": 0.1, "conv2": 0.1, "fc1": 0.3, "fc2": 0.0}
  p_live = np.array([0.0, 0.05, 0.10, 0.70, 0.15, 0.0])  # K=6: guard, 4 real, guard
  zero = 3
  params, cbs = {}, {}
  for name, shape in shapes.items():
    s = 0.05
    cb = (s * np.array([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0])).astype(np.float32)
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    idx = np.empty((rows, cols), np.int64)
    idx[0] = rng.choice(6, cols, p=p_live)
    for r in range(1, rows):
      stay = rng.random(cols) < 0.6
      idx[r] = np.where(stay, idx[r - 1], rng.choice(6, cols, p=p_live))
    idx[:, rng.random(cols) < dead_cols[name]] = zero
    if name == "fc1":
      idx[rng.random(rows) < 0.2, :] = zero
    w = cb[idx] + rng.uniform(-0.3, 0.3, idx.shape).astype(np.float32) * s
    params[name] = {
      "kernel": w.reshape(shape).astype(np.float32),
      "bias": (0.01 * rng.standard_normal(cols)).astype(np.float32),
    }
    cbs[name] = {"kernel": cb, "bias": None}
  return params, cbs


def _resnet18_shapes():
  convs = [("conv1", (7, 7, 3, 64))]
  bns = [("bn1", 64)]
  cin = 64
  for stage, cout in enumerate((64, 128, 256, 512), start=1):
    for block in range(2):
      pre = f"layer{stage}/{block}"
      stride_in = cin if block == 0 else cout
      convs += [(f"{pre}/conv1", (3, 3, stride_in, cout)), (f"{pre}/conv2", (3, 3, cout, cout))]
      bns += [(f"{pre}/bn1", cout), (f"{pre}/bn2", cout)]
      if block == 0 and stride_in != cout:
        convs.append((f"{pre}/downsample/conv", (1, 1, stride_in, cout)))
        bns.append((f"{pre}/downsample/bn", cout))
    cin = cout
  return convs, bns


def synthetic_resnet18(seed: int = 0, num_levels: int = 16):
  rng = np.random.default_rng(seed)
  convs, bns = _resnet18_shapes()
  flat = {}
  for name, shape in convs + [("fc/kernel", (512, 1000))]:
    fan_in = int(np.prod(shape[:-1]))
    scale = np.sqrt(2.0 / fan_in) / np.sqrt(2.0)  # Laplace(b) has std b*sqrt(2)
    spread = np.exp(0.3 * rng.standard_normal(shape[-1]))
    w = rng.laplace(0.0, 1.0, shape) * scale * spread
    key = name if name.endswith("kernel") else name + "/kernel"
    flat[key] = w.astype(np.float32)
  for name, c in bns:
    flat[name + "/scale"] = (1.0 + 0.1 * rng.standard_normal(c)).astype(np.float32)
    flat[name + "/bias"] = (0.05 * rng.standard_normal(c)).astype(np.float32)
  flat["fc/bias"] = (0.01 * rng.standard_normal(1000)).astype(np.float32)
  params = _nest(flat)
  cbs = groups.fit_codebooks(
    params, num_levels, method="uniform", guard_levels=True, exclude=r"bn|bias|scale"
  )
  return params, cbs


def _resnet50_shapes(width: int = 64):
  """torchvision ResNet-50 conv shapes in Flax layout (kh, kw, in, out), and BN widths."""
  convs = [("conv1", (7, 7, 3, width))]
  bns = [("bn1", width)]
  cin = width
  for stage, (blocks, mid) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
    mid = mid * width // 64
    cout = 4 * mid
    for block in range(blocks):
      pre = f"layer{stage}/{block}"
      convs += [
        (f"{pre}/conv1", (1, 1, cin, mid)),
        (f"{pre}/conv2", (3, 3, mid, mid)),
        (f"{pre}/conv3", (1, 1, mid, cout)),
      ]
      bns += [(f"{pre}/bn1", mid), (f"{pre}/bn2", mid), (f"{pre}/bn3", cout)]
      if block == 0:
        convs.append((f"{pre}/downsample/conv", (1, 1, cin, cout)))
        bns.append((f"{pre}/downsample/bn", cout))
      cin = cout
  return convs, bns, cin


def synthetic_resnet50(seed: int = 0, num_levels: int = 16, width: int = 64):
  """ResNet-50-shaped tree (25,557,032 params at width 64): Laplacian weights, Kaiming
  scale, log-normal per-output-channel spread; uniform codebooks of N levels over each
  tensor's range plus two guard levels (K = N + 2), fitted in numpy; BN and biases float."""
  rng = np.random.default_rng(seed)
  convs, bns, feat = _resnet50_shapes(width)
  flat, cbs = {}, {}
  for name, shape in convs + [("fc/kernel", (feat, 1000))]:
    fan_in = int(np.prod(shape[:-1]))
    scale = np.sqrt(2.0 / fan_in) / np.sqrt(2.0)
    spread = np.exp(0.3 * rng.standard_normal(shape[-1])).astype(np.float32)
    w = (rng.laplace(0.0, 1.0, shape).astype(np.float32) * np.float32(scale)) * spread
    key = name if name.endswith("kernel") else name + "/kernel"
    flat[key] = w
    lo, hi = float(w.min()), float(w.max())
    step = (hi - lo) / (num_levels - 1)
    cbs[key] = (lo + step * np.arange(-1, num_levels + 1)).astype(np.float32)
  for name, c in bns:
    flat[name + "/scale"] = (1.0 + 0.1 * rng.standard_normal(c)).astype(np.float32)
    flat[name + "/bias"] = (0.05 * rng.standard_normal(c)).astype(np.float32)
  flat["fc/bias"] = (0.01 * rng.standard_normal(1000)).astype(np.float32)
  tree = _nest(flat)
  cb_tree = _nest({k: np.zeros(0) for k in flat})
  for key in flat:
    node = cb_tree
    *parents, last = key.split("/")
    for part in parents:
      node = node[part]
    node[last] = cbs.get(key)
  return tree, cb_tree


def measure_scale(params, codebooks, repeats: int = 1) -> dict:
  """Encode/decode CPU throughput and peak traced memory of compress/decompress."""
  import tracemalloc

  n = sum(np.size(x) for x in _leaves_flat(params))
  float_bytes = 4 * n
  blob, _, c_enc = _timed(lambda: compress(params, codebooks), repeats)
  _, _, c_dec = _timed(lambda: decompress(blob), repeats)
  tracemalloc.start()
  compress(params, codebooks)
  _, peak_enc = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  tracemalloc.start()
  decompress(blob)
  _, peak_dec = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  orders = {}
  for leaf in inspect(blob).leaves:
    if leaf.model:
      key = f"{leaf.model}/o{leaf.order}"
      orders[key] = orders.get(key, 0) + 1
  return {
    "params": n,
    "file": len(blob),
    "enc_cpu": n / c_enc / 1e6,
    "dec_cpu": n / c_dec / 1e6,
    "t_enc": c_enc,
    "t_dec": c_dec,
    "peak_enc": peak_enc / float_bytes,
    "peak_dec": peak_dec / float_bytes,
    "models": orders,
  }


def _leaves_flat(tree):
  import jax

  return jax.tree_util.tree_leaves(tree)


def measure_tall_leaf(repeats: int = 3) -> dict:
  """The (2^20, 32) two-level leaf with constant columns: file size, encode/decode time."""
  cb = np.array([-1.0, 1.0], np.float32)
  x = np.ascontiguousarray(np.broadcast_to(cb[np.arange(32) % 2], (1 << 20, 32)))
  blob, _, c_enc = _timed(lambda: compress({"w": x}, {"w": cb}), repeats)
  out, t_dec, c_dec = _timed(lambda: decompress(blob), repeats)
  assert np.array_equal(out["w"], x)
  return {"file": len(blob), "t_enc": c_enc, "t_dec": t_dec, "c_dec": c_dec}


def print_scale(label, r, tall):
  print(f"\n== speed at scale: {label} ==")
  head = (
    f"{'params':>10} {'file B':>10} {'bits/p':>7} {'enc cpu s':>9} {'enc M/s':>8} "
    f"{'dec cpu s':>9} {'dec M/s':>8} {'peak enc':>9} {'peak dec':>9}"
  )
  print(head)
  print("-" * len(head))
  print(
    f"{r['params']:>10} {r['file']:>10} {8 * r['file'] / r['params']:>7.4f} "
    f"{r['t_enc']:>9.2f} {r['enc_cpu']:>8.1f} {r['t_dec']:>9.2f} {r['dec_cpu']:>8.1f} "
    f"{r['peak_enc']:>8.2f}x {r['peak_dec']:>8.2f}x"
  )
  print(f"models used: {dict(sorted(r['models'].items()))}")
  print(
    "peak = largest traced (numpy + Python) allocation during compress / decompress, in "
    "units of the float32 model's size; M/s = params per second of this process's CPU time"
  )
  print(
    f"(2^20, 32) two-level leaf, constant columns: {tall['file']} B, encode "
    f"{tall['t_enc']:.2f} s CPU, decode {tall['t_dec']:.3f} s wall ({tall['c_dec']:.3f} s CPU)"
  )


# ------------------------------------------------------------------------ measuring


def _leaves(params, codebooks):
  import jax

  cb_flat, treedef = jax.tree_util.tree_flatten_with_path(codebooks, is_leaf=lambda v: v is None)
  return [
    (groups.path_name(p), np.asarray(x), cb)
    for (p, cb), x in zip(cb_flat, treedef.flatten_up_to(params))
  ]


def _timed(fn, repeats):
  """(result, best wall seconds, best CPU seconds of this process) over ``repeats``."""
  best, best_cpu, out = float("inf"), float("inf"), None
  for _ in range(repeats):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    best = min(best, time.perf_counter() - t)
    best_cpu = min(best_cpu, time.process_time() - c)
  return out, best, best_cpu


def measure(label, params, codebooks, repeats, show_leaves):
  leaves = _leaves(params, codebooks)
  num_params = sum(x.size for _, x, _ in leaves)
  blob, t_enc, c_enc = _timed(lambda: compress(params, codebooks), repeats)
  out, t_dec, c_dec = _timed(lambda: decompress(blob), repeats)
  del out
  report = inspect(blob)
  by_path = {l.path: l for l in report.leaves}

  streams, bound_gap_bytes, payload_total, entropy_total = [], 0.0, 0, 0.0
  for name, x, cb in leaves:
    if cb is None or x.size == 0:
      continue
    idx = quantize_indices_np(x, np.asarray(cb))
    k = int(np.shape(cb)[0])
    stream = np.asarray(groups.scan_stream(idx))
    streams.append(stream.astype(np.uint8) if k <= 256 else stream.astype("<u2"))
    leaf = by_path[name]
    if leaf.order is None:
      h_bytes = 0.0
    elif leaf.order == 0:
      h_bytes = float(hj.empirical_entropy(stream, k, order=1)) * x.size / 8
    else:
      h_bytes = (
        float(
          hj.empirical_entropy(
            stream, k, order=leaf.order + 1, tuples="sliding", rate="conditional"
          )
        )
        * x.size
        / 8
      )
    payload_total += leaf.payload_bytes
    entropy_total += h_bytes
    bound_gap_bytes += leaf.payload_bytes - h_bytes
  bound = report.file_bytes - bound_gap_bytes
  raw = b"".join(s.tobytes() for s in streams)

  coders = [
    (
      "LZMA2 -9e",
      lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME),
    ),
    ("zstd -19", lambda d: zstandard.ZstdCompressor(level=19).compress(d)),
    ("brotli -11", lambda d: brotli.compress(d, quality=11)),
  ]

  def run(fn):
    t = time.perf_counter()
    return len(fn(raw)), time.perf_counter() - t

  general = {name: run(fn) for name, fn in coders}

  if show_leaves:
    print(f"\n== {label}: per-leaf inspection ==")
    print(format_inspection(report))
  orders = {}
  for l in report.leaves:
    if l.kind == "quantized" and l.order is not None:
      orders[l.order] = orders.get(l.order, 0) + 1
  return {
    "label": label,
    "params": num_params,
    "quantized": report.quantized_params,
    "file": report.file_bytes,
    "bound": bound,
    "payload": payload_total,
    "entropy": entropy_total,
    "general": general,
    "index_bytes": len(raw),
    "enc": num_params / t_enc / 1e6,
    "dec": num_params / t_dec / 1e6,
    "enc_cpu": num_params / c_enc / 1e6,
    "dec_cpu": num_params / c_dec / 1e6,
    "t_enc": t_enc,
    "t_dec": t_dec,
    "orders": orders,
    "tables": report.totals()["tables"],
    "codebooks": report.totals()["codebooks"],
    "floats": report.totals()["float"],
    "header": report.header_bytes,
  }


def print_table(results):
  print("\n== .hemp codec benchmark ==")
  head = (
    f"{'model':<24} {'params':>10} {'ours B':>9} {'bits/p':>7} {'bound B':>9} "
    f"{'gap':>6} {'LZMA2-9e':>9} {'zstd-19':>9} {'brotli-11':>9} {'vs best':>8} "
    f"{'enc M/s':>8} {'dec M/s':>8} {'enc cpu':>8} {'dec cpu':>8}"
  )
  print(head)
  print("-" * len(head))
  for r in results:
    g = {k: v[0] for k, v in r["general"].items()}
    best = min(g.values())
    print(
      f"{r['label']:<24} {r['params']:>10} {r['file']:>9} "
      f"{8 * r['file'] / r['params']:>7.4f} {r['bound']:>9.0f} "
      f"{100 * (r['file'] / r['bound'] - 1):>5.2f}% {g['LZMA2 -9e']:>9} "
      f"{g['zstd -19']:>9} {g['brotli -11']:>9} "
      f"{100 * (r['file'] / best - 1):>+7.1f}% {r['enc']:>8.2f} {r['dec']:>8.2f} "
      f"{r['enc_cpu']:>8.2f} {r['dec_cpu']:>8.2f}"
    )
  print()
  for r in results:
    gtimes = ", ".join(f"{k} {v[1]:.1f}s" for k, v in r["general"].items())
    print(
      f"{r['label']}: {r['quantized']} quantized params; coder orders used "
      f"{dict(sorted(r['orders'].items()))}; payload {r['payload']} B vs entropy "
      f"{r['entropy']:.0f} B ({100 * (r['payload'] / max(r['entropy'], 1e-9) - 1):+.2f}%); "
      f"tables {r['tables']} B, codebooks {r['codebooks']} B, float tensors "
      f"{r['floats']} B, header {r['header']} B; index streams {r['index_bytes']} B "
      f"raw; encode {r['t_enc']:.2f}s, decode {r['t_dec']:.2f}s; {gtimes}"
    )
  print(
    "\ngap = ours / bound - 1, bound = our file with every payload at the exact "
    "empirical entropy of the order used;\nvs best = ours against the smallest "
    "general-purpose coder of the bare index streams (no codebooks, no floats);\n"
    "enc/dec M/s = params / best wall time of compress (codebooks given) / decompress; "
    "enc/dec cpu = the same over this process's CPU time\n(single-threaded code: what "
    "an unloaded core gives when other jobs share the machine)."
  )


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--params", help="LeNet-5 params: .npz or orbax checkpoint directory")
  ap.add_argument("--codebooks", help=".npz of codebooks by leaf name (with --params)")
  ap.add_argument("--num-levels", type=int, default=4, help="N for fitted codebooks")
  ap.add_argument("--method", default="uniform", choices=["uniform", "lloyd_max"])
  ap.add_argument("--no-guard-levels", action="store_true")
  ap.add_argument("--min-size", type=int, default=None)
  ap.add_argument("--resnet-levels", type=int, default=16)
  ap.add_argument("--skip-resnet", action="store_true")
  ap.add_argument("--skip-scale", action="store_true", help="skip the ResNet-50 speed run")
  ap.add_argument("--scale-width", type=int, default=64, help="ResNet-50 base width (64)")
  ap.add_argument("--scale-only", action="store_true", help="only the ResNet-50 speed run")
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)

  start = time.perf_counter()
  if not args.skip_scale:
    params, cbs = synthetic_resnet50(args.seed, args.resnet_levels, args.scale_width)
    r = measure_scale(params, cbs, args.repeats)
    del params, cbs
    label = f"ResNet-50 shapes (width {args.scale_width}), Laplace, K={args.resnet_levels + 2}"
    print_scale(label, r, measure_tall_leaf(args.repeats))
    if args.scale_only:
      return
  results = []
  if args.params:
    params = load_params(args.params)
    if args.codebooks:
      cbs = codebooks_from_npz(params, args.codebooks)
    else:
      cbs = groups.fit_codebooks(
        params,
        args.num_levels,
        method=args.method,
        guard_levels=not args.no_guard_levels,
        min_size=args.min_size,
      )
    label = "LeNet-5 (" + os.path.basename(os.path.normpath(args.params)) + ")"
  else:
    params, cbs = synthetic_lenet5(args.seed)
    label = "LeNet-5 synthetic HEMP"
  results.append(measure(label, params, cbs, args.repeats, show_leaves=True))
  if not args.skip_resnet:
    params, cbs = synthetic_resnet18(args.seed, args.resnet_levels)
    results.append(
      measure(
        f"ResNet-18 Laplace K={args.resnet_levels + 2}",
        params,
        cbs,
        args.repeats,
        show_leaves=False,
      )
    )
  print_table(results)
  print(f"\ntotal run time {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
  main()
