"""The accuracy budget in `hemp-jax train` on a small real problem (LeNet-300-100 on
digits): held against a float run's epochs, the strength rises while the model is above
the target and falls below it, and the output is the smallest decoded model that met it."""

import json
import math
import os

import pytest
from run_configs import digits_run_config

from hemp_jax import train
from hemp_jax.train.config import ConfigError


def _config(**over):
  c = digits_run_config(num_epochs=8, max_steps_per_epoch=None, validation_size=300, **over)
  c.optimizer.learning_rate = 0.05
  c.qat_epochs = 2
  c.hemp.order = 1
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("budget")
  out = {}
  c = _config()
  c.hemp.mode, c.qat_epochs = "none", 0
  out["float"] = train.train_and_evaluate(c, str(root / "float"))
  c = _config()
  c.hemp.strength = 0.05
  c.hemp.budget = 2.0
  c.hemp.budget_margin = 0.5  # standard errors: 0.85 points on 300 images
  c.hemp.budget_reference_run = str(root / "float")
  out["budget"] = train.train_and_evaluate(c, str(root / "budget"))
  out["root"] = root
  return out


def test_budget_output_is_the_smallest_decoded_model_within_the_target(runs):
  s = runs["budget"]
  b = s["budget"]
  assert b["met"] and b["points"] == 2.0
  with open(runs["root"] / "float" / "metrics.jsonl") as f:
    curve = [json.loads(line)["validation_accuracy"] for line in f]
  assert b["reference"] == pytest.approx(curve[-1])
  rows = [json.loads(line) for line in open(runs["root"] / "budget" / "metrics.jsonl")]
  chosen = next(r for r in rows if r["epoch"] == b["epoch"])
  # Held half a standard error of the validation accuracy (300 images) above the target: the
  # output's target is the float run's final accuracy minus the budget.
  t = b["target"]
  assert t == pytest.approx(curve[-1] - 0.02)
  assert b["margin"] == pytest.approx(50 * math.sqrt(t * (1 - t) / 300))
  assert all(r["budget_margin"] == b["margin"] for r in rows)
  output = t + b["margin"] / 100
  assert chosen["validation_accuracy_quantized"] >= output
  assert s["validation_accuracy_decoded"] == pytest.approx(chosen["validation_accuracy_quantized"])
  assert chosen["budget_size"] == s["file_bytes"]
  # Each epoch is steered against the float run's same epoch: the strength moves up above
  # that epoch's target (plus the margin), down below it.
  for r, ref, nxt in zip(rows, curve, rows[1:]):
    assert r["budget_reference"] == pytest.approx(ref)
    assert r["budget_target"] == pytest.approx(ref - 0.02)
    gap = r["validation_accuracy"] - r["budget_target"] - r["budget_margin"] / 100
    if abs(gap) > 1e-9:
      assert (nxt["strength"] > r["strength"]) == (gap > 0)
  assert max(r["strength"] for r in rows) > 0.05  # room to compress was used
  feasible = [r for r in rows if r["validation_accuracy_quantized"] >= output]
  assert [r["epoch"] for r in rows if r["budget_size"] is not None] == [
    r["epoch"] for r in feasible
  ]
  assert s["file_bytes"] == min(r["budget_size"] for r in feasible)
  assert os.path.exists(runs["root"] / "budget" / "budget-best.hemp")


def test_budget_config_errors(tmp_path):
  c = _config()
  c.hemp.budget = 1.0  # no reference, no init checkpoint
  with pytest.raises(ConfigError, match="needs a reference"):
    train.train_and_evaluate(c, str(tmp_path / "a"))
  c = _config()
  c.validation_size, c.hemp.budget, c.hemp.budget_reference = 0, 1.0, 0.9
  with pytest.raises(ConfigError, match="validation"):
    train.train_and_evaluate(c, str(tmp_path / "b"))
  c = _config()
  c.hemp.mode, c.qat_epochs, c.hemp.budget, c.hemp.budget_reference = "paper", 0, 1.0, 0.9
  with pytest.raises(ConfigError, match="mode 'grad'"):
    train.train_and_evaluate(c, str(tmp_path / "c"))
  c = _config()
  c.hemp.budget, c.hemp.budget_reference, c.hemp.budget_margin = 0.5, 0.9, -1.0
  with pytest.raises(ConfigError, match="budget_margin"):
    train.train_and_evaluate(c, str(tmp_path / "e"))
  c = _config()
  c.hemp.budget, c.hemp.budget_reference_run = 1.0, str(tmp_path / "no-such-run")
  with pytest.raises(ValueError, match="not found"):
    train.train_and_evaluate(c, str(tmp_path / "d"))
  assert not os.listdir(tmp_path)
