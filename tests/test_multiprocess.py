"""Two processes on localhost (gloo CPU collectives) train like one with the same global
batch; only process 0 writes the outputs."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from hemp_jax import cli, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "lenet5_mnist.py") + ":smoke"
# The smoke run, evaluated in big batches (the test's time is in the processes' startup).
OVERRIDES = ["--config.eval_batch_size=500", "--config.checkpoint_every_steps=2"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _summary(stdout: str) -> dict:
  return json.loads(stdout[stdout.index("{\n") :])  # gloo logs a line to stdout first


def test_two_processes_match_one(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  port = _free_port()
  procs = [
    subprocess.Popen(
      [sys.executable, "-m", "hemp_jax.cli", "train", "--config", CONFIG]
      + ["--workdir", str(tmp_path / "two"), "--coordinator_address", f"127.0.0.1:{port}"]
      + ["--num_processes", "2", "--process_id", str(i)]
      + OVERRIDES,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  # Meanwhile, the same job in this process (one process, the same global batch of 8).
  config = cli.apply_overrides(cli.load_config(CONFIG), OVERRIDES)
  one = train.train_and_evaluate(config, str(tmp_path / "one"))
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  summary0, summary1 = (_summary(out) for out, _ in outs)
  assert summary1 == {"process_index": 1, "epochs": 1}  # process 1 writes none
  assert summary0["file_bytes"] == os.path.getsize(tmp_path / "two" / "model.hemp")
  assert summary0["test_accuracy"] == one["test_accuracy"]
  assert sorted(os.listdir(tmp_path / "two")) == [
    "checkpoints",
    "config.json",
    "metrics.jsonl",
    "model.hemp",
    "summary.json",
  ]
  # Each process saved its own grain position in the (shared) checkpoint.
  last = max(os.listdir(tmp_path / "two" / "checkpoints"), key=int)
  data = tmp_path / "two" / "checkpoints" / last / "data"
  assert sorted(os.listdir(data)) == ["process_0-of-2.json", "process_1-of-2.json"]
  _, s_one = train.load_final_state(config, str(tmp_path / "one"))
  _, s_two = train.load_final_state(config, str(tmp_path / "two"))
  leaves_one, leaves_two = jax.tree.leaves(s_one.params), jax.tree.leaves(s_two.params)
  assert len(leaves_one) == len(leaves_two) == 8
  for a, b in zip(leaves_one, leaves_two):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)
  assert int(s_two.step) == int(s_one.step) == 3


def test_train_process_flags_and_environment(monkeypatch, tmp_path):
  import pytest

  from hemp_jax.errors import UsageError

  args = cli.build_parser().parse_args(["train", "--config", "c.py", "--workdir", "w"])
  assert (args.coordinator_address, args.num_processes, args.process_id) == (None, None, None)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  args = cli.build_parser().parse_args(["train", "--config", "c.py", "--workdir", "w"])
  assert (args.coordinator_address, args.num_processes, args.process_id) == (
    "10.0.0.1:1234",
    4,
    3,
  )
  monkeypatch.delenv("JAX_NUM_PROCESSES")
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
  # One of the pair alone is a usage error, raised before anything is initialized.
  args = cli.build_parser().parse_args(
    ["train", "--config", os.path.join(ROOT, "experiments", "configs", "default.py")]
    + ["--workdir", str(tmp_path)]
  )
  with pytest.raises(UsageError, match="give both --num_processes and --process_id"):
    cli._cmd_train(args, [])  # (cli.main prints it as one line, exit code 2)
  with pytest.raises(ValueError, match=r"--process_id 2 is not in \[0, 2\)"):
    train.initialize_distributed("127.0.0.1:1", 2, 2)
