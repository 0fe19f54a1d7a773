"""The frontier tools: seed statistics and files of params alone that `evaluate` reads."""

import json
import os
import sys

import jax
import numpy as np
import pytest

import hemp_jax as hj
from hemp_jax import cli, codec, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import frontier  # noqa: E402


def _write(pdir, rid, model, acc, dec, size, f32=1000):
  seed = rid.rsplit("-seed", 1)[1]
  rec = {
    "id": rid,
    "init": None if "float" in rid else f"lenet5-float-seed{seed}",
    "model": model,
    "test_accuracy": acc,
    "test_accuracy_decoded": dec,
    "file_bytes": size,
    "float32_bytes": f32,
  }
  with open(os.path.join(pdir, rid + ".json"), "w") as f:
    json.dump(rec, f)


def test_summarize_seed_statistics(tmp_path):
  pdir = tmp_path / "points"
  pdir.mkdir()
  for s, a in enumerate([0.96, 0.97, 0.95]):
    _write(pdir, f"lenet5-float-seed{s}", "lenet5", a, a - 0.01, 900)
  for s, (d, b) in enumerate([(0.955, 10), (0.953, 12), (0.950, 14)]):
    _write(pdir, f"cand-a-seed{s}", "lenet5", 0.0, d, b)
  _write(pdir, "cand-b-seed0", "lenet5", 0.0, 0.90, 5)
  _write(pdir, "cand-b-seed7", "lenet5", 0.0, 0.99, 5)  # no float model of seed 7: ignored
  rows = {r["candidate"]: r for r in frontier.summarize(frontier.load_records(str(tmp_path)))}
  a = rows["cand-a"]
  assert a["seeds"] == [0, 1, 2]
  np.testing.assert_allclose(a["acc_mean"], np.mean([0.955, 0.953, 0.950]))
  np.testing.assert_allclose(a["acc_std"], np.std([0.955, 0.953, 0.950], ddof=1))
  np.testing.assert_allclose(a["bytes_mean"], 12.0)
  np.testing.assert_allclose(a["bytes_std"], 2.0)
  np.testing.assert_allclose(a["gap_pp"], 100 * (0.96 - np.mean([0.955, 0.953, 0.950])))
  np.testing.assert_allclose(a["ratio"], 1000 / 12)
  assert a["within_band"]  # 0.96 - 0.9527: 0.73 pp
  b = rows["cand-b"]
  assert b["seeds"] == [0] and b["acc_std"] == 0.0 and not b["within_band"]  # 6 pp
  assert "cand-a" in frontier.format_table(list(rows.values()))
  png = frontier.plot(list(rows.values()), str(tmp_path / "f.png"))  # 3-seed rows only
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_evaluate_reads_a_file_of_params_alone(tmp_path):
  """Sweep points store the params tree alone; `hemp-jax evaluate` reads those too."""
  config = cli.load_config(os.path.join(ROOT, "experiments/configs/default.py"))
  graphdef, state, _, pipe = train.build(config)
  path = str(tmp_path / "p.hemp")
  params = jax.tree.map(np.asarray, state.params)
  codebooks = hj.fit_codebooks(params, 4)
  codec.compress_file(params, path, codebooks=codebooks)
  quantized = train.quantize_params(state.params, codebooks)
  eval_step = train.make_eval_step(graphdef)
  eval_fn = jax.jit(lambda p, ms, x, y: eval_step(p, ms, pipe.normalize(x), y))
  direct = train.evaluate_accuracy(eval_fn, quantized, state.model_state, pipe.eval())
  assert train.evaluate_model_file(config, path) == pytest.approx(direct, abs=0)


MANIFEST = os.path.join(ROOT, "experiments", "frontier", "frontier.json")


def _manifest():
  with open(MANIFEST) as f:
    return json.load(f)


def test_manifest_files_are_the_recorded_ones():
  """Every committed frontier file exists with its recorded size and digest, and each
  entry meets the rule it was chosen by: mean decoded accuracy >= mean float - 1 pp."""
  import hashlib

  entries = _manifest()
  assert entries
  for e in entries:
    assert len(e["files"]) == len(e["float_accuracy"]) == len(e["decoded_accuracy"]) == 3
    for path, digest, size in zip(e["files"], e["sha256"], e["file_bytes"]):
      with open(os.path.join(ROOT, path), "rb") as f:
        blob = f.read()
      assert hashlib.sha256(blob).hexdigest() == digest and len(blob) == size
    assert np.mean(e["decoded_accuracy"]) >= np.mean(e["float_accuracy"]) - 0.01
  sizes = {e["model"]: np.mean(e["file_bytes"]) / e["float32_bytes"] for e in entries}
  assert sizes["lenet_300_100"] <= 1 / 150  # >= 150x smaller than float32
  assert sizes["lenet5"] <= 1 / 300


def test_manifest_file_evaluates_to_its_recorded_accuracy(capsys):
  """One file per entry through `hemp-jax evaluate FILE --config CONFIG`, as a user would."""
  for e in _manifest():
    path, acc = os.path.join(ROOT, e["files"][0]), e["decoded_accuracy"][0]
    spec = os.path.join(ROOT, e["config"])
    assert cli.main(["evaluate", path, "--config", spec]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["test_accuracy_decoded"] == pytest.approx(acc, abs=0)
