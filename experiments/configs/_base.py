"""Shared pieces of the experiment configs (not a config itself: no get_config).

Every config file in this folder is loaded by path (``hemp-jax train --config
experiments/configs/<file>.py[:variant]``), so this helper is loaded by path too
(:func:`load_base`). Variants are comma-separated tokens after the colon:

* ``grad`` (default) — the simple mode: ``lambda * H`` added through ``add_entropy_grad``
  in front of the config's optimizer, the last ``qat_epochs`` epochs quantization-aware
  (task loss on the quantized network, straight-through);
* ``paper`` — the paper's recipe (DESIGN §2): SGD lr 0.1, weight decay 1e-4, the gated
  unscaled second step with lambda_H = 1, lambda_Q = 0.1, refresh every 10 batches;
* ``none`` — no regularizer (baseline: the same quantizer and coder);
* ``prune`` / ``prune_sens`` — add 90% magnitude / loss-sensitivity pruning with an exact
  zero level in the (uniform) codebooks;
* ``smoke`` — the runlocal switch: a few steps on offline (MNIST-5k / digits) or mock
  TFDS data, small batches, no progress bar; runs in CI in well under a minute.
"""

import importlib.util
import os

import ml_collections

_HERE = os.path.dirname(os.path.abspath(__file__))


def default_config() -> ml_collections.ConfigDict:
  """``default.py``'s config, plus the fields the experiment configs add."""
  spec = importlib.util.spec_from_file_location("hemp_default_config",
                                                os.path.join(_HERE, "default.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.data_dir = ml_collections.config_dict.placeholder(str)    # TFDS data dir (None: default)
  c.mock_data = False       # serve random TFDS examples (tfds.testing.mock_data): smoke runs
  c.image_size = ml_collections.config_dict.placeholder(int)  # ImageNet crop (None: 224)
  # Fine-tuning: a `hemp-jax train` workdir, a .hemp file or an .npz of params to start
  # from (see hemp_jax.finetune.load_init_checkpoint). None: random init.
  c.init_checkpoint = ml_collections.config_dict.placeholder(str)
  c.pruning = ml_collections.ConfigDict()
  c.pruning.method = "none"          # "none" | "magnitude" | "sensitivity"
  c.pruning.sparsity = 0.9           # final fraction of zeros per pruned tensor
  c.pruning.begin_epoch = 0.0
  c.pruning.end_epoch = ml_collections.config_dict.placeholder(float)  # None: 3/4 of epochs
  c.pruning.frequency = 10           # steps between mask updates during the ramp
  c.pruning.min_size = 100           # smaller tensors (biases) are never pruned
  c.pruning.grad_decay = 0.9         # EMA of |dL/dw| for the sensitivity score
  c.pruning.include = ml_collections.config_dict.placeholder(str)   # regex on leaf names
  c.quantizer.include = ml_collections.config_dict.placeholder(str)  # regex on leaf names
  return c


def paper_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The paper code's training update (DESIGN §2)."""
  c.hemp.mode = "paper"
  c.hemp.strength = 1.0        # lambda_H
  c.hemp.lambda_q = 0.1
  c.hemp.order = 3
  c.hemp.refresh_every = 10
  c.hemp.sensitivity = True
  c.quantizer.num_levels = 4
  c.quantizer.guard_levels = True
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.0
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "constant"
  return c


def apply_variant(c: ml_collections.ConfigDict, arg: str | None, *, smoke_dataset: str,
                  smoke_mock: bool) -> ml_collections.ConfigDict:
  """Applies the comma-separated variant tokens of ``arg`` (see the module docstring)."""
  tokens = [t for t in (arg or "").split(",") if t]
  known = {"grad", "paper", "none", "prune", "prune_sens", "smoke"}
  bad = [t for t in tokens if t not in known]
  if bad:
    raise ValueError(f"unknown config variant(s) {bad}; known: {sorted(known)}")
  if "paper" in tokens:
    paper_recipe(c)
    c.qat_epochs = 0          # the paper's recipe has no quantization-aware epochs
  elif "none" in tokens:
    c.hemp.mode = "none"
    c.qat_epochs = 0          # needs the HEMP state's codebooks
  if "prune" in tokens or "prune_sens" in tokens:
    c.pruning.method = "sensitivity" if "prune_sens" in tokens else "magnitude"
    c.quantizer.method = "uniform"
    c.quantizer.zero_level = True
  if "smoke" in tokens:
    c.dataset = smoke_dataset
    c.mock_data = smoke_mock
    c.init_checkpoint = None
    c.num_epochs = 1
    c.max_steps_per_epoch = 3
    c.batch_size = 8
    c.eval_batch_size = 8
    c.progress = False
    if not smoke_mock:
      c.max_train_examples = 64
    c.pruning.frequency = 1
  return c
