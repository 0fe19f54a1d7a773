"""LeNet-300-100 on MNIST (tensorflow-datasets), HEMP order 3, N = 4 uniform levels + guards.

    hemp-jax train --config experiments/configs/lenet300_mnist.py --workdir runs/lenet300
    hemp-jax train --config experiments/configs/lenet300_mnist.py:paper --workdir runs/l3p
    hemp-jax train --config experiments/configs/lenet300_mnist.py:offline --workdir runs/l3o

Variants (comma-separated, see ``_base.py``): ``grad`` (default, lambda * H with Adam),
``paper`` (the paper's recipe), ``none``, ``prune``, ``prune_sens``, ``smoke`` (a few steps
on the offline MNIST-5k), ``offline`` (the whole run on the offline MNIST-5k split).
"""

import importlib.util
import os


def _base():
  spec = importlib.util.spec_from_file_location(
      "hemp_configs_base", os.path.join(os.path.dirname(os.path.abspath(__file__)), "_base.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None):
  base = _base()
  c = base.default_config()
  c.model = "lenet_300_100"
  c.dataset = "mnist"
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 30
  c.hemp.mode = "grad"
  c.hemp.strength = 30.0
  c.hemp.order = 3
  c.qat_epochs = 6   # last epochs quantization-aware (straight-through)
  tokens = [t for t in (arg or "").split(",") if t]
  if "offline" in tokens:
    c.dataset = "mnist5k"
    c.eval_batch_size = 500
    tokens.remove("offline")
  return base.apply_variant(c, ",".join(tokens), smoke_dataset="mnist5k", smoke_mock=False)
