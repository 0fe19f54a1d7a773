"""experiments/own_loop.py — the flax MNIST example plus the README's HEMP lines — on
sklearn's digits, for nnx.Optimizer and a Linen TrainState: the decoded file is a working
model close to the float one, and much smaller."""

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _own_loop():
  spec = importlib.util.spec_from_file_location(
    "own_loop", os.path.join(ROOT, "experiments", "own_loop.py")
  )
  mod = importlib.util.module_from_spec(spec)
  sys.modules["own_loop"] = mod  # its Linen TrainState is a dataclass: it looks itself up
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.parametrize("api", ["nnx", "linen"])
def test_own_loop_on_digits(api, tmp_path):
  out = tmp_path / "results.jsonl"
  args = [
    f"--api={api}",
    "--dataset=digits",
    "--validation-size=300",
    "--epochs=10",
    "--batch-size=16",
    "--learning-rate=0.03",
    "--strength=0.1",
    "--budget=2",
    f"--out={out}",
    f"--workdir={tmp_path / 'files'}",
  ]
  assert _own_loop().main(args) == 0
  rows = [json.loads(line) for line in open(out)]
  flt, hemp = rows
  assert (flt["method"], hemp["method"]) == ("float", "hemp")
  assert flt["float_test_acc"] > 0.95
  # The decoded file: within a few points of the float model, > 15x smaller than float32.
  assert hemp["decoded_test_acc"] >= flt["float_test_acc"] - 0.08
  assert hemp["file_bytes"] * 15 < flt["float_bytes"]
  path = tmp_path / "files" / f"{api}-seed0.hemp"
  assert os.path.getsize(path) == hemp["file_bytes"]
  # The budget moved the strength, held against the float run's epochs.
  strengths = [t["strength"] for t in hemp["trace"] if "strength" in t]
  assert len(strengths) == 9 and len(set(strengths)) > 1, hemp["decoded_test_acc"]
