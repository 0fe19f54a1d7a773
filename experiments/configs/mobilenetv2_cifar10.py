"""MobileNetV2 (CIFAR variant) on CIFAR-10 (tensorflow-datasets), HEMP order 3, N = 4 + guards.

Trains from scratch (or fine-tunes: set ``--config.init_checkpoint=<workdir|.npz|.hemp>``)
with SGD + momentum and a cosine schedule; the paper's setup is the ``paper`` variant.

Variants (comma-separated after a colon, see ``_base.py``): ``grad`` (default: lambda * H
with the optimizer below), ``paper`` (the paper's recipe: SGD lr 0.1, gated unscaled
second step, lambda_H 1, lambda_Q 0.1, order 3, N = 4), ``none`` (no regularizer),
``prune`` / ``prune_sens`` (90% magnitude / loss-sensitivity pruning, exact zero level),
``smoke`` (a few steps on mock TFDS data; CI).

    hemp-jax train --config experiments/configs/mobilenetv2_cifar10.py --workdir runs/mobilenetv2_cifar10
    hemp-jax train --config experiments/configs/mobilenetv2_cifar10.py:paper --workdir runs/mobilenetv2_cifar10_paper
    hemp-jax train --config experiments/configs/mobilenetv2_cifar10.py:smoke --workdir /tmp/smoke
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
  c.model = "mobilenet_v2_cifar"
  c.dataset = "cifar10"
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_epochs = 160
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.05
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 4e-5
  c.optimizer.schedule = "cosine"
  c.hemp.mode = "grad"
  c.hemp.strength = 10.0
  c.hemp.order = 3
  c.qat_epochs = 20   # last epochs quantization-aware (straight-through)
  c.hemp.refresh_every = 10
  c = base.apply_variant(c, arg, smoke_dataset="cifar10", smoke_mock=True)
  if "smoke" in (arg or ""):
    # Quantize/regularize/prune one or two tensors only: the smoke run checks the
    # plumbing; the per-tensor compilations of a full model take minutes on a CPU.
    c.quantizer.include = c.pruning.include = r"head/conv/kernel$"
    c.batch_size = c.eval_batch_size = 4
  return c
