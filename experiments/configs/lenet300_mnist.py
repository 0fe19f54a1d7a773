"""LeNet-300-100 on MNIST (tensorflow-datasets), HEMP order 3, N = 4 uniform levels + guards.

    hemp-jax train --config experiments/configs/lenet300_mnist.py --workdir runs/lenet300
    hemp-jax train --config experiments/configs/lenet300_mnist.py:paper --workdir runs/l3p
    hemp-jax train --config experiments/configs/lenet300_mnist.py:offline --workdir runs/l3o

Variants (comma-separated, see ``_base.py``): ``grad`` (default, lambda * H with Adam),
``paper`` (the paper's recipe), ``none``, ``prune``, ``prune_sens``, ``smoke`` (a few steps
on the offline MNIST-5k), ``offline`` (the whole run on the offline MNIST-5k split).
"""

import os

from hemp_jax.train.config import load_python_file

_base = load_python_file(
  os.path.join(os.path.dirname(os.path.abspath(__file__)), "_base.py"), "hemp_configs_base"
)


def get_config(arg: str | None = None):
  return _base.mnist("lenet_300_100", arg)
