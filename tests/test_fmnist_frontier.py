"""experiments/fmnist_frontier.py on the smoke configs: every method's plumbing (a float
model per seed, HEMP held against it, QAT/DC/paper fine-tuned from it, PTQ of it), the
report's choice on validation, and a manifest whose files decode."""

import importlib.util
import json
import os
import sys

import numpy as np

import hemp_jax as hj

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _frontier():
  spec = importlib.util.spec_from_file_location(
    "fmnist_frontier", os.path.join(ROOT, "experiments", "fmnist_frontier.py")
  )
  mod = importlib.util.module_from_spec(spec)
  sys.modules["fmnist_frontier"] = mod
  spec.loader.exec_module(mod)
  return mod


def test_frontier_plumbing_on_smoke_configs(tmp_path, capsys):
  fr = _frontier()
  runs, res, man = tmp_path / "runs", tmp_path / "res", tmp_path / "man"
  common = [f"--runs={runs}", f"--results={res}"]
  methods = ["hemp", "qat-N4", "dc", "paper", "ptq"]
  assert fr.main(["run", "--smoke", "--seeds", "0", "--methods", *methods, *common]) == 0
  for m in ["float", "hemp", "qat-N4", "dc", "paper", "ptq"]:
    assert (res / f"lenet5-{m}" / "seed0" / "summary.json").exists(), m
  # HEMP from scratch is held against the float run of its seed; the others start from it.
  hemp = json.load(open(res / "lenet5-hemp" / "seed0" / "summary.json"))
  assert hemp["budget"]["points"] == 1.0
  floats = [
    json.loads(x)["validation_accuracy"] for x in open(res / "lenet5-float/seed0/metrics.jsonl")
  ]
  assert hemp["budget"]["reference"] == floats[-1]
  qat = json.load(open(res / "lenet5-qat-N4" / "seed0" / "config.json"))
  assert qat["init_checkpoint"] == str(runs / "lenet5-float-s0")
  assert qat["hemp"]["strength"] == 0.0 and qat["quantizer"]["num_levels"] == 4
  ptq = json.load(open(res / "lenet5-ptq" / "seed0" / "summary.json"))
  assert [p["num_levels"] for p in ptq["points"]] == list(fr.PTQ_LEVELS)
  # The report: a row per method (and PTQ level); a manifest of 1-seed entries decodes.
  chosen = fr.report(
    fr.argparse.Namespace(
      models=["lenet5"],
      results=str(res),
      runs=str(runs),
      manifest=str(man),
      min_seeds=1,
      plot=str(tmp_path / "frontier.png"),
    )
  )
  assert (tmp_path / "frontier.png").stat().st_size > 1000
  out = capsys.readouterr().out
  assert "| hemp | 1 |" in out and "| ptq-N2 | 1 |" in out
  entries = json.load(open(man / "fashion_mnist.json"))
  # Every chosen method has its entry (PTQ's files re-made from the float model); HEMP's
  # entries say "hemp", those held by the budget "budget".
  assert sorted(e["method"] for e in entries) == sorted(
    fr.MANIFEST_METHOD.get(r["method"], r["method"]) for r in chosen
  )
  assert all("budget" in e["method"] for e in entries if "hemp" in e["method"])
  for e in entries:
    path = man / "fashion_mnist" / f"{e['model']}-{e['candidate']}" / "seed0.hemp"
    assert e["files"][0].endswith(f"{e['model']}-{e['candidate']}/seed0.hemp")
    decoded = hj.decompress(path.read_bytes())
    params = decoded.get("params", decoded)  # PTQ's: the params alone (no model state)
    assert np.isfinite(np.asarray(params["fc2"]["kernel"])).all()
    assert path.stat().st_size == e["file_bytes"][0]
