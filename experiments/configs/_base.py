"""Shared pieces of the experiment configs (not a config itself: no get_config).

Every config file in this folder is loaded by path (``hemp-jax train --config
experiments/configs/<file>.py[:variant]``), so each loads this helper by path too
(``hemp_jax.train.config.load_python_file``) and builds its config with the function of
its family (:func:`mnist`, :func:`fashion_mnist`, :func:`cifar10`,
:func:`imagenet_finetune`). Variants are
comma-separated tokens after the colon:

* ``grad`` (default) — :func:`hemp_jax.hemp` around the config's optimizer: ``lambda * H``
  added to the gradients, the last ``qat_epochs`` epochs quantization-aware (the
  network trained is the quantized one, straight-through);
* ``paper`` — the paper's recipe (DESIGN.md §2): SGD lr 0.1, weight decay 1e-4, the gated
  unscaled second step with lambda_H = 1, lambda_Q = 0.1, refresh every 10 batches;
* ``none`` — no regularizer (baseline: the same quantizer and coder);
* ``prune`` / ``prune_sens`` — add 90% magnitude / loss-sensitivity pruning with an exact
  zero level in the (uniform) codebooks;
* ``bf16`` — mixed precision: activations and matmuls in bfloat16 (``config.dtype``);
* ``smoke`` — the runlocal switch: a few steps on offline (MNIST-5k / digits) or mock
  TFDS data, small batches, no progress bar; runs in CI in well under a minute.
"""

import os

import ml_collections

from hemp_jax.train.config import load_python_file

_HERE = os.path.dirname(os.path.abspath(__file__))


def default_config() -> ml_collections.ConfigDict:
  """``default.py``'s config (the package default, :func:`hemp_jax.train.default_config`,
  with the default job's choices)."""
  return load_python_file(os.path.join(_HERE, "default.py"), "hemp_default_config").get_config()


def paper_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The paper code's training update (DESIGN.md §2)."""
  c.hemp.mode = "paper"
  c.hemp.strength = 1.0  # lambda_H, in the authors' units (regularizer.authors_entropy_scale)
  c.hemp.lambda_units = "authors"  # their pooled H_n in bits per tuple ("per_param": ours)
  c.hemp.pool = "global"  # one histogram over all quantized tensors, as their code
  c.hemp.order = 3
  c.hemp.refresh_every = 10
  c.hemp.refit_every = None  # codebooks fitted on the starting model and frozen
  # lambda_Q = 0.1 and the sensitivity gate: the defaults (paper_recipe's).
  c.quantizer.num_levels = 4
  c.quantizer.guard_levels = True
  c.quantizer.zero_level = False
  c.quantizer.method = "lloyd_max"  # the paper's code: Lloyd-Max levels of a Gaussian fit
  c.quantizer.lloyd_method = "gaussian"  # "empirical": Lloyd on the actual weights
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.0
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "constant"
  return c


VARIANTS = ("grad", "paper", "none", "prune", "prune_sens", "smoke", "bf16")


def apply_variant(
  c: ml_collections.ConfigDict,
  arg: str | None,
  *,
  smoke_dataset: str,
  smoke_mock: bool,
  extra_known: tuple = (),
) -> ml_collections.ConfigDict:
  """Applies the comma-separated variant tokens of ``arg`` (see the module docstring).

  ``extra_known``: tokens the family handled itself (listed in the error message).
  """
  tokens = [t for t in (arg or "").split(",") if t]
  known = sorted(set(VARIANTS) | set(extra_known))
  bad = [t for t in tokens if t not in known]
  if bad:
    raise ValueError(
      f"unknown config variant(s) {', '.join(map(repr, bad))}; known: {', '.join(known)} "
      "(comma-separated after the file name, e.g. file.py:paper,smoke)"
    )
  if "paper" in tokens:
    paper_recipe(c)
    c.qat_epochs = 0  # the paper's recipe has no quantization-aware epochs
  elif "none" in tokens:
    c.hemp.mode = "none"
    c.qat_epochs = 0  # needs the HEMP state's codebooks
  if "prune" in tokens or "prune_sens" in tokens:
    c.pruning.method = "sensitivity" if "prune_sens" in tokens else "magnitude"
    c.quantizer.method = "uniform"
    c.quantizer.zero_level = True
  if "bf16" in tokens:
    c.dtype = "bfloat16"  # activations and matmuls in bf16, params/optimizer float32
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


# ------------------------------------------------------------------ config families


def mnist(model: str, arg: str | None) -> ml_collections.ConfigDict:
  """A LeNet on tfds MNIST (Adam, lambda 30); ``offline``: the MNIST-5k split instead."""
  c = default_config()
  c.model = model
  c.dataset = "mnist"
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 30
  c.hemp.mode = "grad"
  c.hemp.strength = 30.0
  c.hemp.order = 3
  c.qat_epochs = 6  # last epochs quantization-aware (straight-through)
  tokens = [t for t in (arg or "").split(",") if t]
  if "offline" in tokens:
    c.dataset = "mnist5k"
    c.eval_batch_size = 500
    tokens.remove("offline")
  c = apply_variant(
    c, ",".join(tokens), smoke_dataset="mnist5k", smoke_mock=False, extra_known=("offline",)
  )
  _smoke_subset(c, arg, r"(conv2|fc2)/kernel$", batch_size=8)
  return c


def fashion_mnist(
  model: str, arg: str | None, *, budget_reference: float, smoke_include: str
) -> ml_collections.ConfigDict:
  """A LeNet on full Fashion-MNIST (IDX files: 55k train, 5k validation, 10k test): the
  main job's schedule with the library's codebooks (N = 8 with an exact zero) and a
  1-point accuracy budget against ``budget_reference`` (the float model's validation
  accuracy); smoke runs use the offline MNIST-5k split with 500 validation images."""
  c = default_config()
  c.model = model
  c.dataset = "fashion_mnist"
  c.validation_size = 5000
  c.eval_batch_size = 1000
  c.quantizer.num_levels = 8  # the library's codebooks (default.py keeps the main job's 4)
  c.quantizer.zero_level = True
  # Codebooks refitted on the weights every epoch (55,000 images at batch 128) of the
  # entropy phase: the quantized model then tracks the continuous one, and the finish
  # starts from a grid that already fits the weights instead of one fitted after warm-up.
  c.hemp.refit_every = 429
  c.hemp.strength = 1.0  # the first epoch's; the budget moves it
  c.hemp.budget = 1.0
  c.hemp.budget_reference = budget_reference
  c = apply_variant(c, arg, smoke_dataset="mnist5k", smoke_mock=False)
  if c.hemp.mode != "grad":
    c.hemp.budget = None
  if "smoke" in (arg or ""):
    c.validation_size = 500
    _smoke_subset(c, arg, smoke_include, batch_size=8)
  return c


def _sgd_hemp(
  c: ml_collections.ConfigDict, *, learning_rate: float, weight_decay: float, qat_epochs: int
) -> None:
  """SGD + momentum 0.9, cosine schedule, lambda 10, order 3, refresh every 10 steps."""
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = learning_rate
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = weight_decay
  c.optimizer.schedule = "cosine"
  c.hemp.mode = "grad"
  c.hemp.strength = 10.0
  c.hemp.order = 3
  c.qat_epochs = qat_epochs  # last epochs quantization-aware (straight-through)
  c.hemp.refresh_every = 10


def _smoke_subset(
  c: ml_collections.ConfigDict, arg: str | None, include: str, batch_size: int = 4
) -> None:
  """Smoke runs quantize/regularize/prune only the leaves matching ``include``: they check
  the plumbing, and the per-tensor compilations of a full model take minutes on a CPU
  (even on LeNet-5 the order-3 entropy gradient of every tensor is most of the compiled
  train step: 14 s of compilation on all four kernels, 5.5 s on two; measured on the
  2-core machine under load)."""
  if "smoke" in (arg or ""):
    c.quantizer.include = c.pruning.include = include
    c.batch_size = c.eval_batch_size = batch_size


def cifar10(
  model: str, arg: str | None, *, learning_rate: float, weight_decay: float, smoke_include: str
) -> ml_collections.ConfigDict:
  """A model trained on tfds CIFAR-10 for 160 epochs (SGD, cosine, lambda 10)."""
  c = default_config()
  c.model = model
  c.dataset = "cifar10"
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_epochs = 160
  _sgd_hemp(c, learning_rate=learning_rate, weight_decay=weight_decay, qat_epochs=20)
  c = apply_variant(c, arg, smoke_dataset="cifar10", smoke_mock=True)
  _smoke_subset(c, arg, smoke_include)
  return c


def imagenet_finetune(model: str, arg: str | None) -> ml_collections.ConfigDict:
  """A ResNet fine-tuned on tfds ImageNet for 10 epochs (SGD 0.01, cosine, lambda 10);
  the smoke run uses random init, mock data and 32x32 crops."""
  c = default_config()
  c.model = model
  c.dataset = "imagenet2012"
  c.batch_size = 256
  c.eval_batch_size = 250
  c.num_epochs = 10
  _sgd_hemp(c, learning_rate=0.01, weight_decay=1e-4, qat_epochs=2)
  c.quantizer.min_size = 1000  # keep BatchNorm/bias vectors in float
  c = apply_variant(c, arg, smoke_dataset="imagenet2012", smoke_mock=True)
  _smoke_subset(c, arg, r"(stem/conv|fc)/kernel$")
  if "smoke" in (arg or ""):
    c.image_size = 32
  return c
