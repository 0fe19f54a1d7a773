"""Every experiment config loads, and its smoke variant trains a few steps end to end.

Smoke variants run on offline MNIST-5k (LeNets) or mock TFDS data (CIFAR-10, ImageNet),
a few steps each; every one must finish in well under a minute on CI CPUs.
"""

import glob
import json
import os
import time

import pytest

from hemp_jax import cli
from hemp_jax.errors import UsageError

CONFIG_DIR = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "configs"
)
CONFIGS = sorted(
  os.path.basename(p)[:-3]
  for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
  if not os.path.basename(p).startswith("_") and not p.endswith("default.py")
)
PAPER_SETUPS = {
  "lenet5_mnist": ("lenet5", "mnist"),
  "lenet300_mnist": ("lenet_300_100", "mnist"),
  "resnet32_cifar10": ("resnet32", "cifar10"),
  "mobilenetv2_cifar10": ("mobilenet_v2_cifar", "cifar10"),
  "resnet18_imagenet": ("resnet18", "imagenet2012"),
  "resnet50_imagenet": ("resnet50", "imagenet2012"),
}


def _load(name, arg=""):
  return cli.load_config(os.path.join(CONFIG_DIR, name + ".py") + (":" + arg if arg else ""))


def test_paper_setups_present():
  assert set(PAPER_SETUPS) <= set(CONFIGS)
  for name, (model, dataset) in PAPER_SETUPS.items():
    c = _load(name)
    assert (c.model, c.dataset) == (model, dataset)
    assert c.hemp.mode == "grad" and c.hemp.order == 3
    p = _load(name, "paper")
    assert p.hemp.mode == "paper" and p.optimizer.name == "sgd"
    assert p.optimizer.learning_rate == 0.1 and p.optimizer.weight_decay == 1e-4
    assert p.hemp.strength == 1.0 and p.hemp.lambda_q == 0.1 and p.hemp.refresh_every == 10
    assert p.quantizer.num_levels == 4 and p.quantizer.guard_levels
    s = _load(name, "smoke")
    assert s.num_epochs == 1 and s.max_steps_per_epoch <= 3
    assert s.mock_data == (dataset != "mnist") and s.init_checkpoint is None
    pr = _load(name, "prune_sens")
    assert pr.pruning.method == "sensitivity" and pr.quantizer.zero_level
  assert "init_checkpoint" in _load("resnet50_imagenet")
  with pytest.raises(UsageError, match="unknown config variant") as e:
    _load("lenet5_mnist", "bogus")
  assert "known: bf16, grad, none, offline, paper, prune, prune_sens, smoke" in str(e.value)
  with pytest.raises(UsageError, match="known: bf16, grad, none, paper, prune, prune_sens, smoke"):
    _load("resnet32_cifar10", "offline")  # offline is a variant of the MNIST configs only


def test_every_config_variant_and_sweep_point_passes_validation():
  """The checks of hemp_jax.train.config refuse no config the project ships."""
  from hemp_jax import sweep
  from hemp_jax.train.config import validate_config

  validate_config(cli.load_config(os.path.join(CONFIG_DIR, "default.py")))
  for name in CONFIGS:
    for arg in ["", "paper", "none", "prune", "prune_sens", "smoke", "paper,smoke"]:
      validate_config(_load(name, arg))
  sweeps = os.path.join(os.path.dirname(CONFIG_DIR), "sweeps", "mnist5k_offline.py")
  points = sweep.load_sweep(sweeps).points
  assert len(points) > 50
  for p in points:
    validate_config(p.config)


SMOKE = [(n, "smoke") for n in CONFIGS] + [
  ("lenet5_mnist", "paper,smoke"),
  ("lenet300_mnist", "prune_sens,smoke"),
]


@pytest.mark.parametrize("name,arg", SMOKE, ids=[f"{n}:{a}" for n, a in SMOKE])
def test_smoke_variant_trains(name, arg, tmp_path):
  from hemp_jax import train

  config = _load(name, arg)
  t0, c0 = time.time(), time.process_time()
  summary = train.train_and_evaluate(config, str(tmp_path))
  elapsed, cpu = time.time() - t0, time.process_time() - c0
  print(f"{name}:{arg}: {elapsed:.1f}s wall, {cpu:.1f}s CPU")
  assert summary["epochs"] == 1
  assert 0.0 <= summary["test_accuracy"] <= 1.0
  assert summary["entropy_bits_per_param"] >= 0.0
  with open(tmp_path / "summary.json") as f:
    assert json.load(f)["model"] == config.model
  if "file_bytes" in summary:  # the trainer writes model.hemp
    assert summary["file_bytes"] == os.path.getsize(tmp_path / "model.hemp")
  # Timing is reported (pytest -s), not asserted: the under-a-minute goal of issue #5 is
  # a CI budget, and a shared machine's wall/CPU time measures its neighbours. Measured
  # on the 2-core machine under load (pytest --durations, issue 12): LeNets 11-13 s (24-28 s
  # before their smoke runs quantized two kernels instead of all), ResNet-32 32 s,
  # ResNet-18 48 s, MobileNetV2 75 s, ResNet-50 96 s; most of it is XLA compiling the
  # train step of the whole model (the regularized subset is one or two tensors), then
  # the evaluations and coding the float tensors of the file.


def test_init_checkpoint_finetunes_from_workdir_and_npz(tmp_path):
  """A smoke run's workdir (and an .npz of its params) starts another run."""
  import jax
  import numpy as np

  from hemp_jax import train
  from hemp_jax.groups import path_name

  c = _load("lenet300_mnist", "none,smoke")
  train.train_and_evaluate(c, str(tmp_path / "a"))
  _, final = train.load_final_state(c, str(tmp_path / "a"))
  c2 = _load("lenet300_mnist", "smoke")
  c2.init_checkpoint = str(tmp_path / "a")
  _, state, _, _ = train.build(c2)
  for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(final.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  flat, _ = jax.tree_util.tree_flatten_with_path(final.params)
  np.savez(tmp_path / "p.npz", **{path_name(p): np.asarray(x) for p, x in flat})
  c2.init_checkpoint = str(tmp_path / "p.npz")
  _, state2, _, _ = train.build(c2)
  for x, y in zip(jax.tree.leaves(state2.params), jax.tree.leaves(final.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  np.savez(tmp_path / "bad.npz", **{"fc1/kernel": np.zeros((3, 3), np.float32)})
  c2.init_checkpoint = str(tmp_path / "bad.npz")
  with pytest.raises(ValueError, match="shape"):
    train.build(c2)
  c2.init_checkpoint = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError):
    train.build(c2)
