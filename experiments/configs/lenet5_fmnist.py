"""LeNet-5 on full Fashion-MNIST from its IDX files: 55k train, 5k validation, 10k test.

    apt-get install dataset-fashion-mnist      # or put the four IDX files in $HEMP_DATA_DIR
    hemp-jax train --config experiments/configs/lenet5_fmnist.py --workdir runs/fmnist
    hemp-jax train --config experiments/configs/lenet5_fmnist.py:none --workdir runs/fmnist-float

The main job's recipe (HEMP order 3, lambda 7, N = 4 + guards, Adam cosine, the last 8 of
24 epochs quantization-aware) on the full data set; 5,000 training images (fixed,
stratified) are held out, reported as ``validation_accuracy*`` beside the test accuracy.
Variants: ``none`` (the float model: no regularizer, no quantization-aware epochs),
``smoke`` (two short epochs).
"""

import ml_collections

from hemp_jax.train.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = default_config()
  c.model = "lenet5"
  c.dataset = "fashion_mnist"
  c.validation_size = 5000
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 24
  c.qat_epochs = 8

  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"

  c.quantizer.degenerate = "defer"
  c.hemp.mode = "grad"
  c.hemp.strength = 7.0
  c.hemp.order = 3
  for variant in filter(None, (arg or "").split(",")):
    if variant == "none":
      c.hemp.mode, c.qat_epochs = "none", 0
    elif variant == "smoke":
      c.num_epochs, c.qat_epochs, c.max_steps_per_epoch = 2, 1, 5
    else:
      raise ValueError(f"unknown variant {variant!r}; known: none, smoke")
  return c
