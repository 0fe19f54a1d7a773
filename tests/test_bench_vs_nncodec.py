"""experiments/bench_vs_nncodec.py: its checks and missing-input exits without NNCodec, and
(where NNCodec's venv exists) one small end-to-end run, every file decoded and checked."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  spec = importlib.util.spec_from_file_location(
    name, os.path.join(ROOT, "experiments", f"{name}.py")
  )
  mod = importlib.util.module_from_spec(spec)
  sys.modules[name] = mod
  spec.loader.exec_module(mod)
  return mod


def _weights(path):
  rng = np.random.default_rng(0)
  np.savez(
    path,
    **{
      "m/conv.w": rng.laplace(0, 0.05, (32, 16, 3, 3)).astype(np.float32),
      "m/fc.w": rng.normal(0, 0.1, (64, 40)).astype(np.float32),
    },
  )
  return str(path)


def test_missing_inputs_exit_2(tmp_path, capsys):
  bench = _load("bench_vs_nncodec")
  with pytest.raises(SystemExit) as e:
    bench.main(["--weights", str(tmp_path / "none.npz")])
  assert e.value.code == 2 and "--build-weights" in capsys.readouterr().err
  w = _weights(tmp_path / "w.npz")
  with pytest.raises(SystemExit) as e:
    bench.main(["--weights", w, "--nncodec-python", str(tmp_path / "no-python")])
  assert e.value.code == 2 and "pip install --no-deps nncodec==2.1.3" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    bench.main(["--build-weights", "--wheel", str(tmp_path / "none.whl")])
  assert e.value.code == 2 and "pip download" in capsys.readouterr().err


def test_checks_and_helpers():
  bench, worker = _load("bench_vs_nncodec"), _load("nncodec_worker")
  w = {"a": np.ones((4, 4), np.float32), "b": np.arange(16, dtype=np.float32).reshape(4, 4)}
  good = {"decoded": {"a": w["a"] * 1.01, "b": w["b"]}}
  bench.check(good, w, 0.02)
  assert good["ok"] and abs(good["max_rel_error"] - 0.01) < 1e-6
  bad = {"decoded": {"a": w["a"] * 1.03}}  # over the target, and "b" missing
  bench.check(bad, w, 0.02)
  assert not bad["ok"] and len(bad["problems"]) == 2
  methods, notes = bench.hemp_methods("uniform,no-such-method,ecsq")
  assert methods == ["uniform", "ecsq"] and "no-such-method" in notes[0]
  assert [bench.tensor_kind(s) for s in [(8, 4), (8, 4, 1, 1), (8, 1, 3, 3), (8, 4, 3, 3)]] == [
    "dense",
    "conv 1x1",
    "depthwise",
    "conv 3x3",
  ]
  # NNR units: a short one (15-bit size), then a long one (flag + 31-bit size)
  bs = bytes([0x00, 0x04, 5 << 2, 0]) + (0x80000000 | 40000).to_bytes(4, "big") + bytes([5 << 2])
  bs += bytes(40000 - 5)
  assert worker.nnr_units(bs) == [(5, 4), (5, 40000)]


@pytest.mark.skipif(
  not os.path.exists(_load("bench_vs_nncodec").DEFAULT_NNC_PYTHON), reason="no NNCodec venv"
)
def test_end_to_end_small(tmp_path, capsys):
  bench = _load("bench_vs_nncodec")
  out = tmp_path / "r.json"
  args = ["--weights", _weights(tmp_path / "w.npz"), "--targets", "0.2,0.05"]
  args += ["--cache", str(tmp_path / "c.json"), "--workdir", str(tmp_path / "wd")]
  args += ["--out", str(out), "--qp-density", "4", "--per-tensor"]
  assert bench.main(args) == 0
  r = json.loads(out.read_text())
  assert len(r["points"]) == 2 * 4  # 2 targets x (hemp uniform, ecsq, NNCodec uniform, DQ)
  for p in r["points"]:
    assert p["ok"] and p["max_rel_error"] <= p["target"] and p["bytes"] > 0
    ext = ".nnr" if p["coder"].startswith("nncodec") else ".hemp"
    assert os.path.getsize(tmp_path / "wd" / f"{p['coder']}-{p['target']:.3f}{ext}") == p["bytes"]
  assert "largest byte gaps" in capsys.readouterr().out
