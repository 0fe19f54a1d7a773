"""experiments/device_check.py --cpu: the script's tables at tiny sizes (CI smoke run)."""

import os

from hemp_jax.train.config import load_python_file

SCRIPT = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "device_check.py"
)


def test_device_check_cpu(capsys):
  import jax

  results = load_python_file(SCRIPT, "device_check").main(["--cpu"])
  out = capsys.readouterr().out
  rows = results["train_step"]
  assert [(r["hemp"], r["dtype"]) for r in rows] == [
    ("off", "float32"),
    ("off", "bfloat16"),
    ("o3 r1", "float32"),
    ("o3 r1", "bfloat16"),
  ]
  assert all(r["ms"] > 0 and r["ips"] > 0 for r in rows)
  assert [e["order"] for e in results["estimator"]] == [1, 2, 3, 4]
  assert all(e["ms"] > 0 for e in results["estimator"])
  # All (4 forced CPU) devices against one: the same step.
  dp = results["data_parallel"]
  assert dp["devices"] == len(jax.devices()) == 4
  assert dp["max_abs_diff"] <= 1e-5 and results["ok"]
  assert "| LeNet-5 (MNIST) | 8 | o3 r1 | bfloat16 |" in out and "OK" in out
