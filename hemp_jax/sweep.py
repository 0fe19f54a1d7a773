"""Resumable rate–accuracy sweeps: every point trains, writes a ``.hemp`` file, decodes it.

A sweep is a list of :class:`Point` s (see ``experiments/sweeps/*.py``: a Python file with
``get_sweep(arg=None) -> Sweep``). Three kinds of point:

* ``"pretrain"`` — trains a float model from scratch (the reference accuracy); its final
  float params are kept in the scratch dir for the points that start from it;
* ``"train"`` — trains (usually fine-tunes from a ``pretrain`` point, ``init=<id>``) with
  ``config`` (HEMP mode, quantizer, pruning...);
* ``"ptq"`` — no training: post-training quantization of the ``init`` point's float
  params with ``config.quantizer``.

Every point then quantizes its params with the codebooks of the run (the HEMP state's, or
fitted post-training), writes ``<scratch>/<id>/model.hemp`` with :mod:`hemp_jax.codec`,
decodes the file, loads it into the model and evaluates it: the recorded accuracy is the
decoded file's and the size is the file's length. (The file holds the params; BatchNorm
statistics, which the LeNets of the offline sweep do not have, are taken from the run.) The paper's own size measure is recorded
alongside: the uint8 level-index streams under LZMA2 (``lzma_index_bytes``, no codebooks,
no float leaves) and an LZMA2 archive of everything the file holds (``lzma_file_bytes``).

Results: ``<results>/points/<id>.json`` (one per point, written atomically when the point
is finished) and ``<results>/sweep.json`` (the sweep's description). A point whose JSON
exists is never recomputed, so an interrupted sweep resumes where it stopped; a point whose
dependency's float params are gone from the scratch dir retrains that dependency first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import lzma
import os
import sys
import time
from typing import Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hemp_jax import codec, train
from hemp_jax import groups as grp
from hemp_jax import quantization as q
from hemp_jax.fileio import atomic_output, write_atomic
from hemp_jax.pytrees import fill_tree
from hemp_jax.train import config as cfg
from hemp_jax.train import loop

__all__ = ["Point", "Sweep", "load_sweep", "run_sweep", "run_point", "load_results", "lzma_sizes"]


@dataclasses.dataclass
class Point:
  """One sweep point.

  Attributes:
    id: unique, filesystem-safe name (the results file is ``points/<id>.json``).
    kind: ``"pretrain"``, ``"train"`` or ``"ptq"``.
    config: the full training config (``experiments/configs/default.py`` schema).
    method: label the report groups points by (e.g. ``"hemp"``, ``"ptq"``).
    init: id of the ``pretrain`` point whose float params this point starts from.
    axes: the sweep coordinates of the point (recorded and shown in tables).
  """

  id: str
  kind: str
  config: ml_collections.ConfigDict
  method: str
  init: str | None = None
  axes: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Sweep:
  name: str
  points: list
  description: str = ""


def load_sweep(spec: str) -> Sweep:
  """Loads ``file.py`` or ``file.py:arg`` by calling its ``get_sweep``.

  Every point's config is checked (:func:`hemp_jax.train.config.validate_config`) before
  the sweep is returned, so a bad field stops the sweep before anything trains.
  """
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"sweep file not found: {path}")
  module = cfg.load_python_file(path, "hemp_sweep")
  sweep = module.get_sweep(arg) if arg else module.get_sweep()
  ids = [p.id for p in sweep.points]
  if len(set(ids)) != len(ids):
    raise ValueError(f"duplicate point ids in {spec}")
  known = set(ids)
  for p in sweep.points:
    if p.kind not in ("pretrain", "train", "ptq"):
      raise ValueError(f"point {p.id}: unknown kind {p.kind!r}")
    if p.init is not None and p.init not in known:
      raise ValueError(f"point {p.id}: init {p.init!r} is not a point of the sweep")
    if p.kind == "ptq" and p.init is None:
      raise ValueError(f"ptq point {p.id} needs init")
  for p in sweep.points:  # before any point trains: a typo fails in a second, not hours in
    try:
      cfg.validate_config(p.config)
    except cfg.ConfigError as e:
      raise ValueError(f"point {p.id}: {e}") from None
  return sweep


# ----------------------------------------------------------------------- measurements


def lzma_sizes(params, codebooks) -> dict:
  """LZMA2 (xz, preset 9e) sizes: index streams alone, and everything a file needs.

  ``lzma_index_bytes``: the quantized leaves' level indices as one uint8 stream (scan
  order), what the HEMP paper measured. ``lzma_file_bytes``: that stream plus the
  codebooks and the float leaves as raw little-endian bytes, i.e. a decodable archive.
  """
  from hemp_jax.codec import records

  cbs, leaves, _, _ = grp.codebook_leaves(codebooks, params)
  idx_parts, extra = [], []
  for cb, x in zip(cbs, leaves):
    if cb is None:
      for leaf in jax.tree.leaves(x):
        extra.append(np.asarray(leaf).astype("<f4").tobytes())
      continue
    cb_np = np.asarray(cb)
    stream = np.asarray(grp.scan_stream(jnp.asarray(x)))
    idx = records.quantize_indices_np(stream, cb_np)
    idx_parts.append(idx.astype(np.uint8).tobytes())
    extra.append(cb_np.astype("<f4").tobytes())
  filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
  indices = b"".join(idx_parts)
  only = lzma.compress(indices, format=lzma.FORMAT_RAW, filters=filters)
  full = lzma.compress(indices + b"".join(extra), format=lzma.FORMAT_XZ, filters=filters)
  return {"lzma_index_bytes": len(only), "lzma_file_bytes": len(full)}


def _quantized_sparsity(params, codebooks) -> float:
  cbs, leaves, _, _ = grp.codebook_leaves(codebooks, params)
  zeros = total = 0
  for cb, x in zip(cbs, leaves):
    if cb is None:
      continue
    zeros += int(np.sum(np.asarray(q.quantize(x, cb)) == 0))
    total += int(np.size(x))
  return zeros / max(total, 1)


def measure(config, graphdef, params, model_state, codebooks, pipe, path: str) -> dict:
  """Writes ``path`` (.hemp), decodes it, evaluates the decoded model; returns metrics."""
  tuples = cfg.entropy_config(cfg.with_defaults(config)).tuples
  eval_fn = train.make_eval_fn(graphdef, pipe.normalize)
  params = jax.tree.map(np.asarray, params)
  blob = codec.compress(params, codebooks)
  write_atomic(path, blob)
  with open(path, "rb") as f:
    raw = f.read()
  decoded = codec.load_into(params, codec.decompress(raw))
  num_params = int(sum(np.size(x) for x in jax.tree.leaves(params)))
  out = {
    "file_bytes": len(raw),
    "file_sha256": hashlib.sha256(raw).hexdigest(),
    "num_params": num_params,
    "num_quantized_params": train.evaluate.quantized_size(params, codebooks),
    "float32_bytes": 4 * num_params,
    "bits_per_param_file": 8.0 * len(raw) / num_params,
    "compression_ratio": 4.0 * num_params / len(raw),
    "test_accuracy": train.evaluate_accuracy(eval_fn, params, model_state, pipe.eval()),
    "test_accuracy_decoded": train.evaluate_accuracy(
      eval_fn, jax.tree.map(jnp.asarray, decoded), model_state, pipe.eval()
    ),
    "sparsity": _quantized_sparsity(params, codebooks),
  }
  for order in (1, 2, 3):
    out[f"entropy_order{order}"] = train.exact_entropy(
      params, codebooks, order=order, tuples=tuples, rate="block"
    )
  out.update(lzma_sizes(params, codebooks))
  out["weight_hist"] = weight_histogram(params, codebooks)
  return out


def weight_histogram(params, codebooks, bins: int = 150) -> dict:
  """Histogram of the largest quantized tensor's (continuous) weights and its codebook."""
  cbs, leaves, names, _ = grp.codebook_leaves(codebooks, params)
  best = max(
    (k for k, cb in enumerate(cbs) if cb is not None),
    key=lambda k: np.size(leaves[k]),
    default=None,
  )
  if best is None:
    return {}
  x = np.asarray(leaves[best], np.float64).reshape(-1)
  counts, edges = np.histogram(x, bins=bins)
  return {
    "leaf": names[best],
    "size": int(x.size),
    "edges": edges.tolist(),
    "counts": counts.tolist(),
    "levels": np.asarray(cbs[best]).tolist(),
    "exact_zeros": int(np.sum(x == 0)),
  }


# Float params of a pretrain point: an .npz named "params/<keystr>" and "state/<keystr>"
# (jax.tree_util.keystr of the leaf's key path), the names of every version so far.
_FLOAT_PARTS = ("params", "state")


def _save_float(path: str, params, model_state):
  flat = {}
  for prefix, tree in zip(_FLOAT_PARTS, (params, model_state)):
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    for p, x in leaves:
      flat[prefix + "/" + jax.tree_util.keystr(p)] = np.asarray(x)
  with atomic_output(path) as tmp, open(tmp, "wb") as f:
    np.savez(f, **flat)


def _load_float(path: str, params, model_state):
  arrays = codec.read_checkpoint(path)  # {"params": {keystr: array}, "state": {...}}
  out = []
  for prefix, tree in zip(_FLOAT_PARTS, (params, model_state)):
    part = arrays[prefix] if prefix in arrays else {}
    try:
      filled, _, missing = fill_tree(tree, part, name=jax.tree_util.keystr)
    except ValueError as e:
      raise ValueError(f"{path}: {e}") from None
    if missing:
      raise ValueError(f"{path}: {prefix}/{missing[0]} is missing")
    out.append(filled)
  return out


def _train_point(config, graphdef, state, tx, pipe, log) -> tuple[train.TrainState, list]:
  """The epochs of a point (:func:`hemp_jax.train.train_epochs`; no checkpoints: a
  point is short and its record is written when it is finished)."""
  config = cfg.with_defaults(config)
  opts = cfg.loop_kwargs(config)
  mesh = loop.data_mesh(config.batch_size)
  stepper = loop.compile_steps(graphdef, tx, pipe.normalize, parallel=opts["parallel"], mesh=mesh)
  history = []
  epochs = loop.train_epochs(
    stepper.place(state),
    stepper,
    pipe,
    num_epochs=config.num_epochs,
    sync_every=loop.sync_interval(opts["log_every_steps"]),
  )
  for ep in epochs:
    state = ep.state
    history.append(
      {
        "epoch": ep.index + 1,
        "train_loss": float(np.mean(ep.losses)),
        "seconds": time.time() - ep.started,
      }
    )
    log(
      f"  epoch {ep.index + 1}/{config.num_epochs} loss {history[-1]['train_loss']:.4f} "
      f"({history[-1]['seconds']:.1f}s)"
    )
  return state, history


def _identity(point: Point) -> dict:
  """What names a point in ``sweep.json`` and at the head of its record."""
  return {
    "id": point.id,
    "kind": point.kind,
    "method": point.method,
    "init": point.init,
    "axes": point.axes,
    "model": point.config.model,
  }


def _write_record(path: str, record: dict, indent: int = 1) -> None:
  write_atomic(path, json.dumps(record, indent=indent).encode())


def run_point(point: Point, scratch_dir: str, log=print) -> dict:
  """Runs one point (its ``init`` point's float params must be in ``scratch_dir``)."""
  t_start = time.time()
  config = point.config
  workdir = os.path.join(scratch_dir, point.id)
  os.makedirs(workdir, exist_ok=True)
  graphdef, state, tx, pipe = train.build(config)
  if point.init is not None:
    params, model_state = _load_float(
      os.path.join(scratch_dir, point.init, "float.npz"), state.params, state.model_state
    )
    state = train.TrainState(jnp.zeros([], jnp.int32), params, model_state, tx.init(params))
  history = []
  if point.kind in ("pretrain", "train"):
    state, history = _train_point(config, graphdef, state, tx, pipe, log)
  if point.kind == "pretrain":
    _save_float(os.path.join(workdir, "float.npz"), state.params, state.model_state)
  codebooks = train.eval_codebooks(config, state)
  record = {**_identity(point), "dataset": config.dataset}
  record.update(
    measure(
      config,
      graphdef,
      state.params,
      state.model_state,
      codebooks,
      pipe,
      os.path.join(workdir, "model.hemp"),
    )
  )
  record["history"] = history
  record["seconds"] = time.time() - t_start
  record["config"] = json.loads(config.to_json_best_effort())
  return record


def _backfill_histogram(point: Point, path: str, scratch_dir: str):
  with open(path) as f:
    rec = json.load(f)
  npz = os.path.join(scratch_dir, point.id, "float.npz")
  if rec.get("weight_hist") or not os.path.exists(npz):
    return
  graphdef, state, _, _ = train.build(point.config)
  params, model_state = _load_float(npz, state.params, state.model_state)
  codebooks = train.eval_codebooks(
    point.config, state._replace(params=params, model_state=model_state)
  )
  rec["weight_hist"] = weight_histogram(params, codebooks)
  _write_record(path, rec)


def run_sweep(
  sweep: Sweep,
  results_dir: str,
  scratch_dir: str,
  *,
  progress: bool = True,
  only: Iterable[str] | None = None,
  log=None,
) -> list[dict]:
  """Runs every unfinished point of ``sweep`` (dependencies first); returns all records.

  Args:
    sweep: the points.
    results_dir: where ``points/<id>.json`` and ``sweep.json`` go (commit this).
    scratch_dir: float params of pretrain points and the ``.hemp`` files (not committed).
    progress: show a tqdm bar over the points.
    only: optional ids (or id prefixes) to restrict the run to (dependencies are added).
    log: ``log(str)``; default prints to stderr when ``progress`` is off.
  """
  os.makedirs(os.path.join(results_dir, "points"), exist_ok=True)
  os.makedirs(scratch_dir, exist_ok=True)
  if log is None:
    log = (lambda s: None) if progress else (lambda s: print(s, file=sys.stderr, flush=True))
  _write_record(
    os.path.join(results_dir, "sweep.json"),
    {
      "name": sweep.name,
      "description": sweep.description,
      "points": [_identity(p) for p in sweep.points],
    },
    indent=2,
  )
  by_id = {p.id: p for p in sweep.points}
  wanted = [
    p for p in sweep.points if only is None or any(p.id == o or p.id.startswith(o) for o in only)
  ]
  for p in list(wanted):
    if p.init is not None and by_id[p.init] not in wanted:
      wanted.append(by_id[p.init])
  order = sorted(wanted, key=lambda p: 0 if p.kind == "pretrain" else 1)
  done_path = lambda p: os.path.join(results_dir, "points", p.id + ".json")
  todo = [p for p in order if not os.path.exists(done_path(p))]
  for p in order:  # records written before histograms were recorded
    if p.kind == "pretrain" and p not in todo:
      _backfill_histogram(p, done_path(p), scratch_dir)
  bar = None
  if progress:
    from tqdm.auto import tqdm

    bar = tqdm(
      total=len(order),
      initial=len(order) - len(todo),
      desc=sweep.name,
      unit="pt",
      dynamic_ncols=True,
      file=sys.stderr,
    )
  for p in todo:
    if os.path.exists(done_path(p)):  # finished meanwhile by another sweep process
      if bar is not None:
        bar.update(1)
      continue
    if bar is not None:
      bar.set_postfix_str(p.id)
    if p.init is not None and not os.path.exists(os.path.join(scratch_dir, p.init, "float.npz")):
      log(f"[{p.init}] float params missing from {scratch_dir}: retraining it")
      run_point(by_id[p.init], scratch_dir, log)
    log(f"[{p.id}] {p.kind} {p.method} {p.axes}")
    try:
      rec = run_point(p, scratch_dir, log)
    except train.TrainingDivergedError as e:  # recorded as a finished, failed point
      rec = {
        **_identity(p),
        "dataset": p.config.dataset,
        "failed": str(e),
        "config": json.loads(p.config.to_json_best_effort()),
      }
      _write_record(done_path(p), rec)
      log(f"[{p.id}] FAILED: {e}")
      if bar is not None:
        bar.update(1)
      continue
    _write_record(done_path(p), rec)
    log(
      f"[{p.id}] acc {rec['test_accuracy']:.4f} decoded {rec['test_accuracy_decoded']:.4f} "
      f"file {rec['file_bytes']} B ({rec['bits_per_param_file']:.3f} bit/param, "
      f"x{rec['compression_ratio']:.1f}) sparsity {rec['sparsity']:.3f} "
      f"in {rec['seconds']:.0f}s"
    )
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  return load_results(results_dir)


def load_results(results_dir: str) -> list[dict]:
  """All finished point records of a results dir, in sweep order when known."""
  pdir = os.path.join(results_dir, "points")
  recs = {}
  if os.path.isdir(pdir):
    for name in os.listdir(pdir):
      if name.endswith(".json"):
        with open(os.path.join(pdir, name)) as f:
          rec = json.load(f)
        recs[rec["id"]] = rec
  order = []
  meta = os.path.join(results_dir, "sweep.json")
  if os.path.exists(meta):
    with open(meta) as f:
      order = [p["id"] for p in json.load(f)["points"]]
  ranked = {i: k for k, i in enumerate(order)}
  return sorted(recs.values(), key=lambda r: (ranked.get(r["id"], len(ranked)), r["id"]))
