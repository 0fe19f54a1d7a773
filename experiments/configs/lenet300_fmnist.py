"""LeNet-300-100 on full Fashion-MNIST from its IDX files: 55k train, 5k validation, 10k test.

    hemp-jax train --config experiments/configs/lenet300_fmnist.py:none --workdir runs/l3-float
    hemp-jax train --config experiments/configs/lenet300_fmnist.py --workdir runs/l3 \
        --config.hemp.budget_reference_run=runs/l3-float

The recipe of ``lenet5_fmnist.py`` (HEMP order 3, N = 8 with a zero level + guards
refitted every epoch, Adam cosine, the last 8 of 24 epochs quantization-aware, a 1-point
accuracy budget on 5,000 held-out images) on the MLP. ``hemp.budget_reference`` is the
float model's validation accuracy (the ``none`` variant, seed 0);
``hemp.budget_reference_run`` holds each epoch against a float run's same epoch instead.
Variants as in ``_base.py``.
"""

import os

from hemp_jax.train.config import load_python_file

_base = load_python_file(
  os.path.join(os.path.dirname(os.path.abspath(__file__)), "_base.py"), "hemp_configs_base"
)


def get_config(arg: str | None = None):
  # budget_reference: float LeNet-300-100, validation, seed 0 (RESULTS.md)
  c = _base.fashion_mnist(
    "lenet_300_100", arg, budget_reference=0.9076, smoke_include=r"fc2/kernel$"
  )
  if "smoke" in (arg or ""):
    c.hemp.budget_reference = 0.8
  return c
