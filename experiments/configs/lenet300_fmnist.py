"""LeNet-300-100 on full Fashion-MNIST from its IDX files: 55k train, 5k validation, 10k test.

    hemp-jax train --config experiments/configs/lenet300_fmnist.py:none --workdir runs/l3-float
    hemp-jax train --config experiments/configs/lenet300_fmnist.py --workdir runs/l3 \
        --config.hemp.budget_reference_run=runs/l3-float

The recipe of ``lenet5_fmnist.py`` (HEMP order 3, N = 8 with a zero level + guards, Adam cosine, the last 8 of
24 epochs quantization-aware, a 1-point accuracy budget on 5,000 held-out images) on the
MLP. ``hemp.budget_reference`` is the float model's validation accuracy (the ``none``
variant, seed 0); ``hemp.budget_reference_run`` holds each epoch against a float run's
same epoch instead. Variants as in ``_base.py``.
"""

import os

from hemp_jax.train.config import load_python_file

_base = load_python_file(
  os.path.join(os.path.dirname(os.path.abspath(__file__)), "_base.py"), "hemp_configs_base"
)


def get_config(arg: str | None = None):
  c = _base.default_config()
  c.model = "lenet_300_100"
  c.dataset = "fashion_mnist"
  c.validation_size = 5000
  c.eval_batch_size = 1000
  c.quantizer.num_levels = 8  # the library's codebooks (default.py keeps the main job's 4)
  c.quantizer.zero_level = True
  c.hemp.strength = 1.0  # the first epoch's; the budget moves it
  c.hemp.budget = 1.0
  c.hemp.budget_reference = 0.9076  # float LeNet-300-100, validation, seed 0 (RESULTS.md)
  c = _base.apply_variant(c, arg, smoke_dataset="mnist5k", smoke_mock=False)
  if c.hemp.mode != "grad":
    c.hemp.budget = None
  if "smoke" in (arg or ""):
    c.validation_size = 500
    c.hemp.budget_reference = 0.8
    _base._smoke_subset(c, arg, r"fc2/kernel$", batch_size=8)
  return c
