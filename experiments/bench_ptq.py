"""Post-training quantization of checkpoints: ECSQ against nearest-level, and the 4M tree.

    PYTHONPATH=. python experiments/bench_ptq.py                    # synthetic parts only
    PYTHONPATH=. python experiments/bench_ptq.py --lenet FLOAT.npz  # + the float LeNet-5

Part 1 (rate at equal error): every quantized tensor of a tree is quantized with the
uniform grid (nearest level) and with ECSQ over a range of steps; each file is written
with the same coder (``hemp_jax.codec.compress``) and its bytes counted. The byte count of
the nearest-level files at the MSE of each ECSQ file is interpolated (log bytes against
log MSE, between neighbouring nearest-level files); the table prints the ECSQ saving.
Trees: a synthetic Laplace tree, and (``--lenet``) the float LeNet-5 of the offline sweep
(``hemp-jax sweep experiments/sweeps/mnist5k_offline.py --results R --scratch S --only
lenet5-float`` writes ``S/lenet5-float/float.npz``, ~1 CPU minute; pass it as is, or any
``.npz`` of the LeNet-5 params with '/'-joined keys such as ``params/conv1/kernel``).

Part 2 (``--lenet``): decoded test accuracy on MNIST-5k of PTQ (uniform) and PTQ + ECSQ
at equal file size (``--bits-per-param`` targets), through ``hemp_jax.train``.

``--levels``: ``hemp-jax compress --levels N`` (Lloyd-Max levels refined for rate) against
the uniform N-level grid (``--method uniform --levels N``, the only N-level fit before),
relative error at equal file size, on the Laplace tree and part 3's 4M tree.

Part 3: a synthetic 4M-parameter tree of ~1,000 tensors (conv and dense kernels with
Laplacian weights and 0.1% outliers at 50 sigma, batch-norm scales, biases, running means
and variances, integer step counters): ``hemp-jax compress TREE.npz --bits-per-param 3``
in a child process; its CPU time (user + system, imports included) and the in-process
time of ``compress_checkpoint`` (reading, fitting, coding), the largest relative error of
a quantized tensor, whether every normalization statistic decodes bit-exact, and the
header's share of the file.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from hemp_jax import codec
from hemp_jax.codec import checkpoints, ptq

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def laplace_tree(seed: int = 0) -> dict:
  """A small tree of Laplacian kernels (conv and dense shapes), about 0.6M weights."""
  rng = np.random.default_rng(seed)
  shapes = {"conv1": (3, 3, 16, 64), "conv2": (3, 3, 64, 128), "fc1": (2048, 256), "fc2": (256, 10)}
  return {
    k: {"kernel": rng.laplace(0, math.sqrt(1 / np.prod(s[:-1])), s).astype(np.float32)}
    for k, s in shapes.items()
  }


def _kernel_shape(kind: str, ci: int, co: int) -> tuple:
  return {
    "expand": (1, 1, ci, co),
    "depthwise": (3, 3, 1, co),
    "project": (1, 1, co, co),
    "conv3": (3, 3, co, co),
  }[kind]


def synthetic_checkpoint(seed: int = 0, target_params: int = 4_000_000) -> dict:
  """A ResNet-like flat checkpoint: ~200 kernels with batch norm, ~1,000 tensors.

  Kernels: 3x3 and 1x1 convolutions, depthwise 3x3 and a final dense layer, Laplacian
  with the He scale; 0.1% of each kernel's weights (a binomial count) replaced by
  +-50 standard deviations. Per convolution a batch norm with ``scale``, ``bias`` (params)
  and ``mean``, ``var`` (batch_stats); one int64 ``num_batches_tracked`` per stage.
  """
  rng = np.random.default_rng(seed)
  flat = {}
  widths = [32, 64, 128, 256, 384]
  blocks = []
  cin = 3
  for stage, w in enumerate(widths):
    for b in range(10):
      for kind in ("expand", "depthwise", "project", "conv3"):
        blocks.append((stage, b, kind, cin, w))
        cin = w
  n_params = 0
  for stage, b, kind, ci, co in blocks:
    shape = _kernel_shape(kind, ci, co)
    n_params += int(np.prod(shape))
  scale = math.sqrt(target_params / n_params)
  for stage, b, kind, ci, co in blocks:
    ci, co = max(1, int(round(ci * scale))), max(8, int(round(co * scale)))
    shape = _kernel_shape(kind, ci, co)
    fan_in = int(np.prod(shape[:-1]))
    sigma = math.sqrt(2.0 / fan_in)
    k = rng.laplace(0, sigma / math.sqrt(2), shape).astype(np.float32)
    n = k.size
    m = rng.binomial(n, 0.001)
    pos = rng.choice(n, m, replace=False)
    k.reshape(-1)[pos] = (50 * sigma * rng.choice([-1.0, 1.0], m)).astype(np.float32)
    name = f"stage{stage}/block{b}/{kind}"
    flat[f"params/{name}/kernel"] = k
    flat[f"params/{name}/bn/scale"] = rng.normal(1, 0.1, co).astype(np.float32)
    flat[f"params/{name}/bn/bias"] = rng.normal(0, 0.1, co).astype(np.float32)
    flat[f"batch_stats/{name}/bn/mean"] = rng.normal(0, 1, co).astype(np.float32)
    flat[f"batch_stats/{name}/bn/var"] = rng.gamma(2.0, 0.5, co).astype(np.float32)
  for stage in range(len(widths)):
    flat[f"batch_stats/stage{stage}/num_batches_tracked"] = np.array(123456, np.int64)
  flat["params/head/kernel"] = rng.laplace(0, 0.02, (int(widths[-1] * scale), 1000)).astype(
    np.float32
  )
  flat["params/head/bias"] = np.zeros(1000, np.float32)
  return flat


# ------------------------------------------------------------------------- part 1


def _write(flat, values, codebooks) -> int:
  vtree = checkpoints.unflatten_names(values, "/")
  ctree = checkpoints.unflatten_names(codebooks, "/")
  return len(codec.compress(vtree, ctree))


def _mse(flat, values, names) -> float:
  num = sum(float(((flat[p].astype(np.float64) - values[p]) ** 2).sum()) for p in names)
  return num / sum(flat[p].size for p in names)


def rate_at_equal_error(flat: dict, rel_steps=None) -> list[dict]:
  """(MSE, bytes) of nearest-level and ECSQ files over a range of steps."""
  sel = ptq.select_leaves(flat, quantize_vectors=False)
  names = [p for p in flat if sel[p] == ""]
  scales = {p: ptq.sorted_stats(flat[p]).scale for p in names}
  rel_steps = rel_steps if rel_steps is not None else 2.0 ** np.arange(-3.5, 1.01, 0.25)
  curves = {}
  for method in ("uniform", "ecsq"):
    pts = []
    for r in rel_steps:
      values, codebooks = dict(flat), {p: None for p in flat}
      for p in names:
        st = ptq.sorted_stats(flat[p])
        fn = ptq.fit_uniform if method == "uniform" else ptq.fit_ecsq
        f = fn(st, r * scales[p])
        values[p], codebooks[p] = ptq._apply(flat[p], f)
      pts.append((_mse(flat, values, names), _write(flat, values, codebooks), r))
    curves[method] = sorted(pts)
  um = np.log([p[0] for p in curves["uniform"]])
  ub = np.log([p[1] for p in curves["uniform"]])
  rows = []
  for mse, size, r in curves["ecsq"]:
    lm = math.log(mse)
    if not um[0] <= lm <= um[-1]:
      continue
    ref = math.exp(np.interp(lm, um, ub))
    n = sum(flat[p].size for p in names)
    rows.append(
      {
        "step/scale": r,
        "mse": mse,
        "bits_per_param_ecsq": 8 * size / n,
        "bytes_nearest": ref,
        "bytes_ecsq": size,
        "saving": 1 - size / ref,
      }
    )
  return rows


def levels_at_equal_size(flat: dict, counts=(4, 6, 8, 12, 16, 24, 32, 48, 64, 96)) -> list[dict]:
  """N-level fits (``--levels N``): the default (Lloyd-Max + entropy-constrained
  refinement) against the uniform N-level grid (``--method uniform``), at equal file size.

  Each file is written with the same coder. The error is the relative L2 error over all
  quantized tensors, ``sqrt(sum ||w - q||^2 / sum ||w||^2)``, and the mean of the
  per-tensor relative errors; the uniform grid's errors at the default's file size are
  interpolated (log error against log bytes) between uniform files.
  """
  sel = ptq.select_leaves(flat)
  names = [p for p in flat if sel[p] == ""]
  energy = sum(float(np.square(flat[p].astype(np.float64)).sum()) for p in names)
  curves = {}
  for method in ("uniform", None):
    pts = []
    for n in counts:
      values, codebooks, res = ptq.quantize_tree(flat, method=method, num_levels=n, selection=sel)
      size = _write(flat, values, codebooks)
      sq = sum(float(((flat[p].astype(np.float64) - values[p]) ** 2).sum()) for p in names)
      mean_rel = float(np.mean([r.rel_error for r in res if r.quantized]))
      pts.append((size, math.sqrt(sq / energy), mean_rel, n))
    curves[method] = sorted(pts)
  ub = np.log([p[0] for p in curves["uniform"]])
  rows = []
  for size, err, mean_rel, n in curves[None]:
    if not ub[0] <= math.log(size) <= ub[-1]:
      continue
    at = lambda k: math.exp(
      np.interp(math.log(size), ub, np.log([p[k] for p in curves["uniform"]]))
    )
    rows.append(
      {
        "N": n,
        "bytes": size,
        "err": err,
        "err_uniform": at(1),
        "mean": mean_rel,
        "mean_uniform": at(2),
      }
    )
  return rows


def print_levels(title, rows):
  print(f"\n{title}")
  print(f"{'N':>4} {'bytes':>9} {'error':>7} {'uniform':>8} {'mean err':>8} {'uniform':>8}")
  for r in rows:
    print(
      f"{r['N']:4d} {r['bytes']:9d} {r['err']:7.4f} {r['err_uniform']:8.4f} "
      f"{r['mean']:8.4f} {r['mean_uniform']:8.4f}"
    )


def print_rows(title, rows):
  print(f"\n{title}")
  print(
    f"{'step/scale':>10} {'MSE':>10} {'bits/param':>10} {'nearest B':>11} {'ECSQ B':>9} {'saving':>7}"
  )
  for r in rows:
    print(
      f"{r['step/scale']:10.3f} {r['mse']:10.3e} {r['bits_per_param_ecsq']:10.3f} "
      f"{r['bytes_nearest']:11.0f} {r['bytes_ecsq']:9d} {100 * r['saving']:6.1f}%"
    )


# ------------------------------------------------------------------------- part 2


def lenet_accuracy(npz: str, targets=(0.75, 1.0, 1.5, 2.0, 3.0)) -> list[dict]:
  """Decoded test accuracy of PTQ (uniform) and PTQ + ECSQ at equal file size.

  For each bits/param target the uniform file is written first; the ECSQ target is then
  rescaled (twice) so that its file has the same size, within a fraction of a percent.
  """
  import jax
  import jax.numpy as jnp

  from hemp_jax import train
  from hemp_jax.train.config import load_python_file

  config = load_python_file(
    os.path.join(_ROOT, "experiments", "configs", "lenet5_mnist.py"), "cfg"
  ).get_config("offline")
  graphdef, state, _, pipe = train.build(config)
  eval_fn = jax.jit(train.make_eval_step(graphdef))

  def run(method, b, zero_level=True):
    res = ptq.compress_checkpoint(
      npz, method=method, bits_per_param=b, zero_level=zero_level, progress=False
    )
    tree = codec.decompress(res.blob)
    params = jax.tree.map(jnp.asarray, codec.load_into(state.params, tree["params"]))
    acc = train.evaluate_accuracy(eval_fn, params, state.model_state, pipe.eval())
    q = [r for r in res.results if r.quantized]
    return {
      "target": b,
      "method": method + ("" if zero_level else " (no zero level)"),
      "bytes": len(res.blob),
      "accuracy": acc,
      "max_rel_error": max(r.rel_error for r in q),
    }

  rows = []
  print(f"  {'target':>6} {'method':26s} {'bytes':>8} {'accuracy':>8} {'max rel err':>11}")
  for b in targets:
    for zero_level in (True, False):
      if not zero_level and b > 1.0:
        continue
      u = run("uniform", b, zero_level)
      e, be = None, b
      for _ in range(3):
        e = run("ecsq", be, zero_level)
        if abs(e["bytes"] / u["bytes"] - 1) < 0.003:
          break
        be *= u["bytes"] / e["bytes"]
      for r in (u, e):
        rows.append(r)
        print(
          f"  {r['target']:6.3f} {r['method']:26s} {r['bytes']:8d} {r['accuracy']:8.3f} "
          f"{r['max_rel_error']:11.3f}",
          flush=True,
        )
  return rows


def float_accuracy(npz: str) -> float:
  import jax
  import jax.numpy as jnp

  from hemp_jax import train
  from hemp_jax.train.config import load_python_file

  config = load_python_file(
    os.path.join(_ROOT, "experiments", "configs", "lenet5_mnist.py"), "cfg"
  ).get_config("offline")
  graphdef, state, _, pipe = train.build(config)
  tree = checkpoints.read_checkpoint(npz)
  params = jax.tree.map(jnp.asarray, codec.load_into(state.params, tree["params"]))
  return train.evaluate_accuracy(
    jax.jit(train.make_eval_step(graphdef)), params, state.model_state, pipe.eval()
  )


# ------------------------------------------------------------------------- part 3


def big_tree(out_dir: str, bits: float = 3.0, method: str = "uniform") -> dict:
  flat = synthetic_checkpoint()
  src = os.path.join(out_dir, "synthetic4m.npz")
  dst = os.path.join(out_dir, "synthetic4m.hemp")
  if not os.path.exists(src):
    np.savez(src, **flat)
  env = dict(os.environ, PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.time()
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "hemp_jax.cli",
      "compress",
      src,
      "-o",
      dst,
      "--bits-per-param",
      str(bits),
      "--method",
      method,
      "--no-progress",
    ],
    env=env,
    capture_output=True,
    text=True,
  )
  wall = time.time() - t0
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if proc.returncode:
    raise RuntimeError(proc.stderr)
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  in_process = float(proc.stdout.strip().splitlines()[-1].split("(")[-1].split(" s CPU")[0])
  dec = checkpoints.flatten_tree(codec.decompress_file(dst))
  res = ptq.select_leaves(flat)
  q = [p for p in flat if res[p] == ""]
  errs = {
    p: math.sqrt(
      ((flat[p].astype(np.float64) - dec[p]) ** 2).sum() / (flat[p].astype(np.float64) ** 2).sum()
    )
    for p in q
  }
  stats = [p for p in flat if p.startswith("batch_stats/")]
  exact = all(
    dec[p].dtype == flat[p].dtype and dec[p].tobytes() == flat[p].tobytes() for p in stats
  )
  floats_exact = all(dec[p].tobytes() == flat[p].tobytes() for p in flat if res[p])
  with open(dst, "rb") as f:
    rep = codec.inspect(f.read())
  nq = sum(flat[p].size for p in q)
  qbytes = sum(l.record_bytes for l in rep.leaves if l.kind == "quantized")
  return {
    "tensors": len(flat),
    "params": sum(x.size for x in flat.values()),
    "quantized_tensors": len(q),
    "quantized_params": nq,
    "outliers": int(sum((np.abs(flat[p]) > 20 * ptq.sorted_stats(flat[p]).scale).sum() for p in q)),
    "cli_cpu_s": cpu,
    "cli_wall_s": wall,
    "compress_checkpoint_cpu_s": in_process,
    "max_rel_error": max(errs.values()),
    "min_rel_error": min(errs.values()),
    "norm_stats_bit_exact": exact,
    "float_leaves_bit_exact": floats_exact,
    "file_bytes": rep.file_bytes,
    "header_bytes": rep.header_bytes,
    "header_share": rep.header_bytes / rep.file_bytes,
    "bits_per_quantized_param": 8 * qbytes / nq,
    "codebook_bytes": rep.totals()["codebooks"],
    "tables_bytes": rep.totals()["tables"],
    "context_coded": sum(1 for l in rep.leaves if l.kind == "quantized" and (l.order or 0) > 0),
  }


def sweep_float_to_npz(src: str, dst: str) -> str:
  """The sweep's ``float.npz`` (keys like ``params/['conv1']['kernel']``) with '/' keys."""
  import re

  with np.load(src) as z:
    flat = {}
    for k in z.files:
      prefix, _, rest = k.partition("/")
      parts = re.findall(r"\['([^']*)'\]", rest)
      flat["/".join([prefix] + parts) if parts else k] = z[k]
  np.savez(dst, **flat)
  return dst


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--lenet", help="float LeNet-5 params .npz ('params/conv1/kernel', ...)")
  ap.add_argument("--skip-big", action="store_true")
  ap.add_argument("--levels", action="store_true", help="only the --levels N comparison")
  args = ap.parse_args(argv)
  if args.levels:
    for title, tree in (
      ("Laplace tree (0.6M weights)", laplace_tree()),
      ("synthetic 4M checkpoint (part 3's tree)", synthetic_checkpoint()),
    ):
      rows = levels_at_equal_size(checkpoints.flatten_tree(tree))
      print_levels(f"{title}: --levels N (default) vs --method uniform --levels N", rows)
    return
  print_rows(
    "Laplace tree (0.6M weights): ECSQ vs nearest level, same coder",
    rate_at_equal_error(checkpoints.flatten_tree(laplace_tree())),
  )
  if args.lenet:
    with np.load(args.lenet) as z:
      sweep_keys = any("['" in k for k in z.files)
    if sweep_keys:  # the sweep's float.npz: convert its keys once
      args.lenet = sweep_float_to_npz(args.lenet, os.path.join(tempfile.mkdtemp(), "lenet5.npz"))
    flat = checkpoints.flatten_tree(checkpoints.read_checkpoint(args.lenet))
    print_rows("float LeNet-5: ECSQ vs nearest level, same coder", rate_at_equal_error(flat))
    print(f"\nfloat LeNet-5 test accuracy {float_accuracy(args.lenet):.3f}; PTQ decoded:")
    lenet_accuracy(args.lenet)
  if not args.skip_big:
    with tempfile.TemporaryDirectory() as d:
      for method in ("uniform", "ecsq"):
        r = big_tree(d, 3.0, method)
        print(f"\nsynthetic 4M tree, hemp-jax compress --bits-per-param 3 --method {method}:")
        for k, v in r.items():
          print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")


if __name__ == "__main__":
  main()
