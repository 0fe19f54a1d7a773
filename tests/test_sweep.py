"""A tiny sweep (digits, a few steps): points finish, resume recomputes nothing, report."""

import os

import pytest

from hemp_jax import cli, codec, report, sweep

SWEEP = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  "experiments",
  "sweeps",
  "mnist5k_offline.py",
)


def test_full_sweep_spec_loads():
  s = sweep.load_sweep(SWEEP)
  for model in ("lenet5", "lenet_300_100"):
    pts = [p for p in s.points if p.config.model == model]
    assert len(pts) >= 24
    methods = {p.method for p in pts}
    assert {
      "float",
      "ptq-uniform",
      "ptq-lloyd_max",
      "noreg-uniform",
      "hemp-uniform",
      "hemp-lloyd_max",
      "prune-magnitude",
      "prune-sensitivity",
      "hemp+prune-magnitude",
    } <= methods
    assert {p.axes.get("order") for p in pts if p.method == "hemp-uniform"} >= {1, 2, 3, 4}
    assert all(p.config.dataset == "mnist5k" for p in pts)


def test_tiny_sweep_resumes_and_reports(tmp_path, monkeypatch):
  results, scratch = str(tmp_path / "res"), str(tmp_path / "scratch")
  spec = SWEEP + ":tiny"
  assert cli.main(["sweep", spec, "--results", results, "--scratch", scratch, "--no-progress"]) == 0
  recs = sweep.load_results(results)
  assert [r["id"] for r in recs] == [p.id for p in sweep.load_sweep(spec).points]
  for r in recs:
    path = os.path.join(scratch, r["id"], "model.hemp")
    assert r["file_bytes"] == os.path.getsize(path)
    assert r["compression_ratio"] == r["float32_bytes"] / r["file_bytes"]
    assert 0.0 <= r["test_accuracy_decoded"] <= 1.0
    assert r["lzma_index_bytes"] > 0 and r["lzma_file_bytes"] > r["lzma_index_bytes"]
    with open(path, "rb") as f:
      decoded = codec.decompress(f.read())
    assert decoded
  ptq = next(r for r in recs if r["kind"] == "ptq")
  pruned = next(r for r in recs if r["axes"].get("order") == 2)
  assert pruned["sparsity"] >= 0.5  # 50% pruned: exact zeros on the zero level
  # Second invocation: nothing is recomputed (run_point is never called).
  mtimes = {
    n: os.path.getmtime(os.path.join(results, "points", n))
    for n in os.listdir(os.path.join(results, "points"))
  }
  monkeypatch.setattr(
    sweep,
    "run_point",
    lambda *a, **k: (_ for _ in ()).throw(AssertionError("a finished point was recomputed")),
  )
  assert cli.main(["sweep", spec, "--results", results, "--scratch", scratch, "--no-progress"]) == 0
  assert mtimes == {n: os.path.getmtime(os.path.join(results, "points", n)) for n in mtimes}
  # A deleted point is recomputed, and only that one.
  monkeypatch.undo()
  os.remove(os.path.join(results, "points", ptq["id"] + ".json"))
  calls = []
  real = sweep.run_point
  monkeypatch.setattr(sweep, "run_point", lambda p, *a, **k: calls.append(p.id) or real(p, *a, **k))
  sweep.run_sweep(sweep.load_sweep(spec), results, scratch, progress=True)
  assert calls == [ptq["id"]]
  # Report: markdown + plots.
  out = str(tmp_path / "report")
  assert cli.main(["report", results, "--out", out]) == 0
  files = set(os.listdir(out))
  assert {
    "report.md",
    "lenet_300_100_accuracy_vs_rate.png",
    "lenet_300_100_weight_histograms.png",
  } <= files
  text = open(os.path.join(out, "report.md")).read()
  for r in recs:
    assert r["id"] in text


def test_pareto_and_best_within():
  recs = [
    {"id": "a", "file_bytes": 100, "test_accuracy_decoded": 0.90},
    {"id": "b", "file_bytes": 50, "test_accuracy_decoded": 0.95},
    {"id": "c", "file_bytes": 200, "test_accuracy_decoded": 0.97},
    {"id": "d", "file_bytes": 30, "test_accuracy_decoded": 0.80},
    {"id": "e", "failed": "diverged"},
  ]
  assert [r["id"] for r in report.pareto_front(recs)] == ["d", "b", "c"]
  assert report.best_within(recs, 0.97, 0.01)["id"] == "c"
  assert report.best_within(recs, 0.96, 0.01)["id"] == "b"
  assert report.best_within(recs, 0.99, 0.001) is None


def test_a_bad_point_config_stops_the_sweep_before_training(tmp_path, capsys):
  bad = tmp_path / "bad_sweep.py"
  bad.write_text(
    "from hemp_jax.train.config import load_python_file\n"
    "from hemp_jax.sweep import Point, Sweep\n"
    f"_S = load_python_file({SWEEP!r}, 'base_sweep')\n"
    "def get_sweep(arg=None):\n"
    "  s = _S.get_sweep('tiny')\n"
    "  s.points[-1].config.hemp.order = 0\n"
    "  return s\n"
  )
  rc = cli.main(["sweep", str(bad), "--results", str(tmp_path / "r"), "--scratch", str(tmp_path)])
  err = capsys.readouterr().err
  assert rc == 2 and "config.hemp.order = 0" in err and "point " in err
  assert not (tmp_path / "r").exists()  # nothing written, nothing trained


def test_float_params_files_of_earlier_versions_load(tmp_path):
  """Pretrain points' float.npz: names ``params/<keystr>``, ``state/<keystr>``."""
  import jax
  import numpy as np

  params = {"fc1": {"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)}}
  state = {"bn": {"mean": np.full(3, 0.5, np.float32)}}
  names = {}
  for prefix, tree in (("params", params), ("state", state)):
    for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
      names[f"{prefix}/{jax.tree_util.keystr(p)}"] = x + 1
  np.savez(tmp_path / "float.npz", **names)  # how every version so far wrote them
  p2, s2 = sweep._load_float(str(tmp_path / "float.npz"), params, state)
  np.testing.assert_array_equal(p2["fc1"]["kernel"], 2 * np.ones((2, 3)))
  np.testing.assert_array_equal(s2["bn"]["mean"], np.full(3, 1.5))
  sweep._save_float(str(tmp_path / "again.npz"), p2, s2)
  with np.load(tmp_path / "again.npz") as z:
    assert sorted(z.files) == sorted(names)
  wrong = {"fc1": {"kernel": np.ones((3, 3), np.float32), "bias": np.zeros(3, np.float32)}}
  with pytest.raises(ValueError, match=r"has shape \(2, 3\), expected \(3, 3\)"):
    sweep._load_float(str(tmp_path / "float.npz"), wrong, state)
