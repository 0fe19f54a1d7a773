"""LeNet-5 on full Fashion-MNIST from its IDX files: 55k train, 5k validation, 10k test.

    apt-get install dataset-fashion-mnist      # or put the four IDX files in $HEMP_DATA_DIR
    hemp-jax train --config experiments/configs/lenet5_fmnist.py --workdir runs/fmnist
    hemp-jax train --config experiments/configs/lenet5_fmnist.py:none --workdir runs/fmnist-float

The main job's recipe (``default.py``: HEMP order 3, Adam cosine, the last 8 of 24
epochs quantization-aware) with the library's codebooks (N = 8 uniform levels with an
exact zero, + guards), refitted on the weights after every epoch of the entropy phase,
on the full data set, and an accuracy budget instead of a fixed strength:
``hemp.budget`` = 1 point of validation accuracy below the float model's
(``hemp.budget_reference``: LeNet-5's float validation accuracy on this split, the mean
of 3 seeds of the ``none`` variant; ``--config.hemp.budget_reference_run=W`` steers each
epoch against a float run's same epoch and judges the output against its last). The
strength starts at ``hemp.strength`` and moves after every epoch; ``model.hemp`` is the
smallest decoded model that met the budget on validation, one standard error above it
(``hemp.budget_margin``). 5,000 training images (fixed, stratified) are
held out for it and reported as ``validation_accuracy*`` beside the test accuracy.
Variants as in ``_base.py`` (``none`` is the float model; ``smoke`` runs the plumbing on
the offline MNIST-5k split with 500 validation images).
"""

import os

from hemp_jax.train.config import load_python_file

_base = load_python_file(
  os.path.join(os.path.dirname(os.path.abspath(__file__)), "_base.py"), "hemp_configs_base"
)


def get_config(arg: str | None = None):
  # budget_reference: float LeNet-5, validation, 3 seeds (RESULTS.md)
  c = _base.fashion_mnist(
    "lenet5", arg, budget_reference=0.9205, smoke_include=r"(conv2|fc2)/kernel$"
  )
  return c
