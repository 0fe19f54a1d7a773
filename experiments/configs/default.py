"""Default job: LeNet-5 on the offline MNIST-5k split, trained with HEMP (order 3).

Runs on CPU in a few minutes: ``hemp-jax train --config experiments/configs/default.py
--workdir runs/default``. 24 epochs of Adam (cosine schedule) with ``add_entropy_grad``
(lambda 7, order 3, N = 4 uniform levels + 2 guards); the last 8 epochs compute the task
loss on the quantized network (straight-through), so the quantized model keeps the
accuracy. Override any field, e.g. ``--config.hemp.mode=none --config.qat_epochs=0`` for
the no-regularizer baseline or ``--config.num_epochs=5``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = "lenet5"
  c.dataset = "mnist5k"
  c.seed = 0
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_epochs = 24
  c.max_train_examples = ml_collections.config_dict.placeholder(int)  # None: all 4000
  c.max_steps_per_epoch = ml_collections.config_dict.placeholder(int)  # None: full epochs
  c.qat_epochs = 8  # last epochs: task loss on the quantized net (STE)
  c.parallel = "jit"  # "jit" (NamedSharding over a ("data",) mesh) or "pmap"
  c.progress = True
  c.dtype = "float32"  # or "bfloat16": activations/matmuls in bf16, params float32
  c.log_every_steps = 50  # accelerators: host sync (metrics, NaN check) interval; CPU: 1
  c.checkpoint_every_steps = ml_collections.config_dict.placeholder(int)  # mid-epoch saves

  c.data = ml_collections.ConfigDict()
  c.data.worker_count = 0  # grain worker processes (0: in-process); keep it when resuming
  c.data.num_threads = 2  # reader threads per process
  c.data.prefetch = 4  # batches buffered ahead

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "cosine"
  c.optimizer.momentum = 0.0
  c.optimizer.weight_decay = 0.0

  c.quantizer = ml_collections.ConfigDict()
  c.quantizer.num_levels = 4  # N real levels (+2 guard levels)
  c.quantizer.method = "uniform"  # or "lloyd_max"
  c.quantizer.lloyd_method = "empirical"  # lloyd_max: "empirical" or "gaussian" (the paper)
  c.quantizer.guard_levels = True
  c.quantizer.zero_level = False
  c.quantizer.min_size = ml_collections.config_dict.placeholder(int)  # None: 10 N + 1
  # Leaves that start constant (zero biases): "keep" (a codebook of the start, +-0.001),
  # "defer" (codebook fitted after degenerate_fit_epochs, no entropy gradient before),
  # "float" (never quantized).
  c.quantizer.degenerate = "defer"
  c.quantizer.degenerate_fit_epochs = 1.0

  c.hemp = ml_collections.ConfigDict()
  c.hemp.mode = "grad"  # "none" | "grad" (add_entropy_grad) | "paper"
  c.hemp.strength = 7.0
  c.hemp.order = 3
  c.hemp.tuples = "disjoint"
  c.hemp.rate = "block"
  c.hemp.pool = "group"
  c.hemp.refresh_every = 1
  c.hemp.refit_every = ml_collections.config_dict.placeholder(int)  # None: codebooks frozen
  c.hemp.lambda_q = 0.1
  c.hemp.lambda_units = "authors"  # paper mode: strength is the authors' lambda_H
  return c
