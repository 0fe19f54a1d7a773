"""Default job: LeNet-5 on the offline MNIST-5k split, trained with HEMP (order 3).

Runs on CPU in a few minutes: ``hemp-jax train --config experiments/configs/default.py
--workdir runs/default``. 24 epochs of Adam (cosine schedule) in ``hemp_jax.hemp``
(lambda 7, order 3, N = 4 uniform levels + 2 guards); the last 8 epochs train the
quantized network (straight-through), so the quantized model keeps the accuracy. Override any field, e.g. ``--config.hemp.mode=none --config.qat_epochs=0`` for
the no-regularizer baseline or ``--config.num_epochs=5``.
"""

import ml_collections

from hemp_jax.train.config import default_config


def get_config() -> ml_collections.ConfigDict:
  c = default_config()  # every field at the trainer's default; this job's choices below
  c.model = "lenet5"
  c.dataset = "mnist5k"
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_epochs = 24
  c.qat_epochs = 8  # last epochs: task loss on the quantized net (STE)

  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"

  # N = 4 uniform levels over the range + 2 guard levels (the library's default is 8 with
  # an exact zero: this job was tuned with 4). Leaves that start constant (zero biases)
  # get their codebooks after the first epoch, without entropy gradient before.
  c.quantizer.num_levels = 4
  c.quantizer.zero_level = False
  c.quantizer.degenerate = "defer"

  c.hemp.mode = "grad"  # "none" | "grad" (hemp_jax.hemp) | "paper"
  c.hemp.finish_decay = False  # the cosine learning rate already anneals the finish
  c.hemp.strength = 7.0
  c.hemp.order = 3
  return c
