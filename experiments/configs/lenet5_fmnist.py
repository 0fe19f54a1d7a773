"""LeNet-5 on full Fashion-MNIST from its IDX files: 55k train, 5k validation, 10k test.

    apt-get install dataset-fashion-mnist      # or put the four IDX files in $HEMP_DATA_DIR
    hemp-jax train --config experiments/configs/lenet5_fmnist.py --workdir runs/fmnist
    hemp-jax train --config experiments/configs/lenet5_fmnist.py:none --workdir runs/fmnist-float

The main job's recipe (``default.py``: HEMP order 3, lambda 7, N = 4 + guards, Adam cosine,
the last 8 of 24 epochs quantization-aware) on the full data set; 5,000 training images
(fixed, stratified) are held out and reported as ``validation_accuracy*`` beside the test
accuracy. Variants as in ``_base.py`` (``none`` is the float model; ``smoke`` runs the
plumbing on the offline MNIST-5k split with 500 validation images).
"""

import os

from hemp_jax.train.config import load_python_file

_base = load_python_file(
  os.path.join(os.path.dirname(os.path.abspath(__file__)), "_base.py"), "hemp_configs_base"
)


def get_config(arg: str | None = None):
  c = _base.default_config()
  c.dataset = "fashion_mnist"
  c.validation_size = 5000
  c.eval_batch_size = 1000
  c = _base.apply_variant(c, arg, smoke_dataset="mnist5k", smoke_mock=False)
  if "smoke" in (arg or ""):
    c.validation_size = 500
    _base._smoke_subset(c, arg, r"(conv2|fc2)/kernel$", batch_size=8)
  return c
