"""ResNet-18 on ImageNet (tensorflow-datasets imagenet2012): HEMP fine-tuning of a pretrained model.

Fine-tunes from the checkpoint the user provides: ``--config.init_checkpoint=PATH`` where
PATH is a ``hemp-jax train`` workdir, a ``.hemp`` file or an ``.npz`` of the model's
variables keyed by path name (``conv1/kernel``, ``bn1/scale``, ``bn1/mean``, ...; see
``hemp_jax.experiment.load_init_checkpoint``). Without it the run starts from random
weights (a warning-free but long from-scratch training). ImageNet must be prepared as
ArrayRecord in ``--config.data_dir`` (the loader says how when it is not). The smoke
variant uses random init, mock data and 32x32 crops.

Variants (comma-separated after a colon, see ``_base.py``): ``grad`` (default: lambda * H
with the optimizer below), ``paper`` (the paper's recipe: SGD lr 0.1, gated unscaled
second step, lambda_H 1, lambda_Q 0.1, order 3, N = 4), ``none`` (no regularizer),
``prune`` / ``prune_sens`` (90% magnitude / loss-sensitivity pruning, exact zero level),
``smoke`` (a few steps on mock TFDS data; CI).

    hemp-jax train --config experiments/configs/resnet18_imagenet.py --workdir runs/resnet18_imagenet
    hemp-jax train --config experiments/configs/resnet18_imagenet.py:paper --workdir runs/resnet18_imagenet_paper
    hemp-jax train --config experiments/configs/resnet18_imagenet.py:smoke --workdir /tmp/smoke
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
  c.model = "resnet18"
  c.dataset = "imagenet2012"
  c.batch_size = 256
  c.eval_batch_size = 250
  c.num_epochs = 10
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "cosine"
  c.hemp.mode = "grad"
  c.hemp.strength = 10.0
  c.hemp.order = 3
  c.qat_epochs = 2   # last epochs quantization-aware (straight-through)
  c.hemp.refresh_every = 10
  c.quantizer.min_size = 1000   # keep BatchNorm/bias vectors in float
  c = base.apply_variant(c, arg, smoke_dataset="imagenet2012", smoke_mock=True)
  if "smoke" in (arg or ""):
    # Quantize/regularize/prune one or two tensors only: the smoke run checks the
    # plumbing; the per-tensor compilations of a full model take minutes on a CPU.
    c.quantizer.include = c.pruning.include = r"(stem/conv|fc)/kernel$"
    c.image_size = 32
    c.batch_size = c.eval_batch_size = 4
  return c
