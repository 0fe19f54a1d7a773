"""ResNet-18 on ImageNet (tensorflow-datasets imagenet2012): HEMP fine-tuning of a pretrained model.

Fine-tunes from the checkpoint the user provides: ``--config.init_checkpoint=PATH`` where
PATH is a ``hemp-jax train`` workdir, a ``.hemp`` file or an ``.npz`` of the model's
variables keyed by path name (``conv1/kernel``, ``bn1/scale``, ``bn1/mean``, ...; see
``hemp_jax.train.load_init_checkpoint``). Without it the run starts from random
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

import os

from hemp_jax.train.config import load_python_file

_base = load_python_file(
  os.path.join(os.path.dirname(os.path.abspath(__file__)), "_base.py"), "hemp_configs_base"
)


def get_config(arg: str | None = None):
  return _base.imagenet_finetune("resnet18", arg)
