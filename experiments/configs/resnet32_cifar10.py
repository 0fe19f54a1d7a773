"""ResNet-32 on CIFAR-10 (tensorflow-datasets), HEMP order 3, N = 4 uniform levels + guards.

Trains from scratch (or fine-tunes: set ``--config.init_checkpoint=<workdir|.npz|.hemp>``)
with SGD + momentum and a cosine schedule; the paper's setup is the ``paper`` variant.

Variants (comma-separated after a colon, see ``_base.py``): ``grad`` (default: lambda * H
with the optimizer below), ``paper`` (the paper's recipe: SGD lr 0.1, gated unscaled
second step, lambda_H 1, lambda_Q 0.1, order 3, N = 4), ``none`` (no regularizer),
``prune`` / ``prune_sens`` (90% magnitude / loss-sensitivity pruning, exact zero level),
``smoke`` (a few steps on mock TFDS data; CI).

    hemp-jax train --config experiments/configs/resnet32_cifar10.py --workdir runs/resnet32_cifar10
    hemp-jax train --config experiments/configs/resnet32_cifar10.py:paper --workdir runs/resnet32_cifar10_paper
    hemp-jax train --config experiments/configs/resnet32_cifar10.py:smoke --workdir /tmp/smoke
"""

import os

from hemp_jax.train.config import load_python_file

_base = load_python_file(
  os.path.join(os.path.dirname(os.path.abspath(__file__)), "_base.py"), "hemp_configs_base"
)


def get_config(arg: str | None = None):
  return _base.cifar10(
    "resnet32", arg, learning_rate=0.1, weight_decay=5e-4, smoke_include=r"blocks/14/conv2/kernel$"
  )
