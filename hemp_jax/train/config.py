"""The training config: defaults, loading, overrides, checks, and what each part receives.

A config is an ``ml_collections.ConfigDict``. :func:`default_config` holds every field the
trainer reads, at the value it takes when a config leaves the field out (``None`` for the
fields a job must set: model, data set, batch sizes, epochs, optimizer, HEMP mode and
strength); :func:`with_defaults` completes a config with it. :func:`validate_config`
checks names and ranges before anything is compiled or written. Below the trainer no
function sees a config: the adapters at the end of this module turn its sections into
keyword arguments (DESIGN.md §3).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import math
import numbers
import os
import types
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from hemp_jax import budget as budget_lib
from hemp_jax import data as data_lib
from hemp_jax import entropy as ent
from hemp_jax import groups as grp
from hemp_jax import models as models_lib
from hemp_jax import pruning as pruning_lib
from hemp_jax import quantization as q
from hemp_jax import regularizer as reg
from hemp_jax.errors import UsageError
from hemp_jax.train import optimizer as opt_lib
from hemp_jax.train import steps as steps_lib

__all__ = [
  "default_config",
  "with_defaults",
  "load_python_file",
  "load_config",
  "apply_overrides",
  "ConfigError",
  "validate_config",
  "flatten_config",
  "config_diff",
  "quantizer_config",
  "entropy_config",
  "optimizer_kwargs",
  "pruning_kwargs",
  "pipeline_kwargs",
  "codebook_kwargs",
  "loop_kwargs",
]

_LOG_EVERY_STEPS = 50


def _arg_default(fn, name: str):
  """The default of ``fn``'s argument ``name`` (a library default, declared there)."""
  return inspect.signature(fn).parameters[name].default


def default_config() -> ml_collections.ConfigDict:
  """Every field the trainer reads, at the value it takes when a config leaves it out.

  The fields that are ``None`` without a comment saying what None means (``model``,
  ``dataset``, ``batch_size``, ``eval_batch_size``, ``num_epochs``, ``optimizer.name``,
  ``optimizer.learning_rate``, ``hemp.mode``, ``hemp.strength`` unless the mode is
  ``"none"``) have no default: a job sets them (``experiments/configs/default.py``).
  """
  c = ml_collections.ConfigDict()
  c.model = placeholder(str)  # a name of hemp_jax.models.MODELS
  c.model_kwargs = ml_collections.ConfigDict()  # passed to the model's constructor
  c.dataset = placeholder(str)  # a name of hemp_jax.data.DATASET_NAMES, or npz:PATH
  # IDX files (fashion_mnist, mnist; then $HEMP_DATA_DIR, the Debian folders) or the TFDS
  # data dir (None: $TFDS_DATA_DIR or tfds's default)
  c.data_dir = placeholder(str)
  # Training examples held out for validation (fixed, stratified; in-memory sets): every
  # choice is made on them, the test split is only reported. 0: none.
  c.validation_size = 0
  c.mock_data = False  # serve random TFDS examples (tfds.testing.mock_data): smoke runs
  c.image_size = placeholder(int)  # ImageNet crop (None: the data set's, 224)
  c.seed = 0
  c.batch_size = placeholder(int)  # the global batch (all processes and devices)
  c.eval_batch_size = placeholder(int)
  c.num_epochs = placeholder(int)
  c.max_train_examples = placeholder(int)  # offline sets: the first N (None: all)
  c.max_steps_per_epoch = placeholder(int)  # None: full epochs
  # Fine-tuning: a `hemp-jax train` workdir or any checkpoint hemp_jax.codec reads
  # (.npz, .safetensors, orbax, .msgpack, .hemp) to start from. None: random init.
  c.init_checkpoint = placeholder(str)
  # hemp.mode "grad": the last epochs train the quantized net (straight-through), the
  # finish of hemp_jax.hemp
  c.qat_epochs = 0
  c.parallel = "jit"  # "jit" (NamedSharding over a ("data",) mesh) or "pmap"
  c.dtype = "float32"  # or "bfloat16": activations/matmuls in bf16, params float32
  c.progress = True
  c.log_every_steps = _LOG_EVERY_STEPS  # accelerators: host sync interval; CPU: 1
  c.checkpoint_every_steps = placeholder(int)  # mid-epoch saves (None: epoch ends only)

  # How batches are produced (grain workers, reader threads, prefetch).
  c.data = ml_collections.ConfigDict(data_lib.PipelineOptions()._asdict())

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = placeholder(str)  # "sgd" | "adam" (paper mode: SGD)
  c.optimizer.learning_rate = placeholder(float)
  c.optimizer.schedule = "constant"  # or "cosine" (to 0 over the run)
  c.optimizer.momentum = 0.0
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 0.0

  # How codebooks are fitted (hemp_jax.regularizer.QuantizerConfig).
  c.quantizer = ml_collections.ConfigDict(reg.QuantizerConfig()._asdict())
  c.quantizer.min_size = placeholder(int)  # None: 10 N + 1
  c.quantizer.include = placeholder(str)  # regex on leaf names
  c.quantizer.exclude = placeholder(str)
  # Leaves that start constant (zero biases): "defer" (codebook fitted after
  # degenerate_fit_epochs, no entropy gradient before), "keep" (a codebook of the start,
  # +-0.001), "float" (never quantized).
  c.quantizer.degenerate = _arg_default(reg.hemp, "degenerate")
  c.quantizer.degenerate_fit_epochs = 1.0

  # The regularizer; which entropy (hemp_jax.regularizer.EntropyConfig).
  c.hemp = ml_collections.ConfigDict(reg.EntropyConfig()._asdict())
  c.hemp.mode = placeholder(str)  # "none" | "grad" (add_entropy_grad) | "paper"
  c.hemp.strength = placeholder(float)  # lambda (paper mode: see lambda_units)
  c.hemp.refresh_every = _arg_default(reg.add_entropy_grad, "refresh_every")
  c.hemp.refit_every = placeholder(int)  # None: codebooks frozen
  # Mode "grad": the steps on the continuous weights decay (cosine to 0) over the finish.
  c.hemp.finish_decay = _arg_default(reg.hemp, "finish_decay")
  # Paper mode: strength is the authors' lambda_H ("authors") or per parameter.
  c.hemp.lambda_units = _arg_default(reg.paper_recipe, "lambda_units")
  c.hemp.lambda_q = _arg_default(reg.paper_recipe, "lambda_q")
  c.hemp.sensitivity = _arg_default(reg.hemp_second_step, "sensitivity")
  # An accuracy budget instead of a fixed strength (mode "grad"; hemp_jax.budget): the
  # allowed drop, in points, of the validation accuracy below the reference; hemp.strength
  # is the first epoch's. None: the strength stays fixed.
  c.hemp.budget = placeholder(float)
  # The reference: a float run's workdir (its validation accuracy after each epoch: a run
  # from scratch is held against the float run's same epoch; it wins over a number), or an
  # accuracy, or, when both are None, the validation accuracy of the init_checkpoint model
  # it starts from.
  c.hemp.budget_reference = placeholder(float)
  c.hemp.budget_reference_run = placeholder(str)
  c.hemp.budget_gain = _arg_default(budget_lib.budget_update, "gain")
  # The accuracy is held budget_margin standard errors of the validation accuracy above
  # the target (sqrt(t (1 - t) / validation_size) at the target t): the strength steers
  # there and the output must reach it, since a model chosen among epochs, and steered,
  # on the same validation images does worse on unseen ones (experiments/RESULTS.md).
  c.hemp.budget_margin = 1.0

  # Pruning wrapping the optimizer (hemp_jax.pruning.prune); the ramp in epochs.
  c.pruning = ml_collections.ConfigDict()
  c.pruning.method = "none"  # "none" | "magnitude" | "sensitivity"
  c.pruning.sparsity = 0.9  # final fraction of zeros per pruned tensor
  c.pruning.begin_epoch = 0.0
  c.pruning.end_epoch = placeholder(float)  # None: 3/4 of num_epochs
  c.pruning.frequency = 10  # steps between mask updates during the ramp
  c.pruning.min_size = _arg_default(pruning_lib.prune, "min_size")  # smaller: never pruned
  c.pruning.grad_decay = _arg_default(pruning_lib.prune, "grad_decay")  # sensitivity EMA
  c.pruning.include = placeholder(str)  # regex on leaf names
  c.pruning.exclude = placeholder(str)
  return c


def _is_section(v) -> bool:
  return isinstance(v, (dict, ml_collections.ConfigDict))


def _as_dict(node) -> dict:
  if isinstance(node, ml_collections.ConfigDict):
    return node.to_dict()
  return {k: _as_dict(v) if _is_section(v) else v for k, v in dict(node).items()}


def _merge(defaults: dict, values: dict) -> dict:
  out = dict(defaults)
  for k, v in values.items():
    if isinstance(out.get(k), dict) and v is None:
      continue  # a section set to None: its defaults
    if isinstance(out.get(k), dict) and _is_section(v):
      out[k] = _merge(out[k], _as_dict(v))
    else:
      out[k] = v
  return out


def with_defaults(config) -> ml_collections.ConfigDict:
  """A new config: ``config`` completed with the fields of :func:`default_config`.

  A field ``config`` has keeps its value as it is; a section set to None counts as
  absent. Accepts a ``ConfigDict`` or nested dicts (a ``config.json`` read back).
  """
  return ml_collections.ConfigDict(_merge(default_config().to_dict(), _as_dict(config)))


# ---------------------------------------------------------------- loading, overrides


def load_python_file(path: str, module_name: str) -> types.ModuleType:
  """Executes the Python file ``path`` as a fresh module named ``module_name``.

  Config and sweep files are loaded by path, not imported.
  """
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads ``path.py`` or ``path.py:arg`` (its ``get_config``), or a run's ``config.json``.

  Raises:
    UsageError: a missing or unreadable file, a syntax error, no ``get_config``, an
      unknown variant (``:arg``), or any error raised while building the config.
  """
  path, _, arg = spec.partition(":")
  if os.path.isdir(path):
    raise UsageError(
      f"--config {path} is a directory: pass a config file (.py, or a workdir's config.json)"
    )
  if not os.path.isfile(path):
    raise UsageError(f"config file not found: {path}")
  if path.endswith(".json"):
    if arg:
      raise UsageError(f"--config {spec}: a config.json takes no ':variant'")
    try:
      with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))
    except ValueError as e:
      raise UsageError(f"config file {path} is not valid JSON: {e}") from None
  if not path.endswith(".py"):
    raise UsageError(f"config file {path}: expected a .py file with get_config() or a .json")
  try:
    module = load_python_file(path, "hemp_config")
  except SyntaxError as e:
    raise UsageError(
      f"config file {e.filename or path} line {e.lineno}: syntax error: {e.msg}"
    ) from None
  except Exception as e:
    raise UsageError(f"config file {path} failed to load: {type(e).__name__}: {e}") from None
  if not hasattr(module, "get_config"):
    raise UsageError(f"config file {path} has no get_config()")
  try:
    return module.get_config(arg) if arg else module.get_config()
  except TypeError as e:
    if arg and "positional argument" in str(e):
      raise UsageError(f"config file {path} takes no ':variant' (got {arg!r})") from None
    raise UsageError(f"{spec}: get_config() failed: {type(e).__name__}: {e}") from None
  except Exception as e:
    raise UsageError(f"{spec}: {e}") from None


def _parse_value(text: str, current):
  if isinstance(current, bool):
    low = text.lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise ValueError(f"expected a boolean, got {text!r}")
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, str):
    return text
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]):
  """Applies ``--config.a.b=value`` arguments (also ``--config.a.b value``).

  The value is parsed as the type the field already has.

  Raises:
    UsageError: an argument that is not an override, an unknown field, a bad value.
  """
  i = 0
  while i < len(overrides):
    item = overrides[i]
    if not item.startswith("--config."):
      raise UsageError(f"unknown argument {item!r} (overrides look like --config.key=value)")
    key = item[len("--config.") :]
    if "=" in key:
      key, value = key.split("=", 1)
    else:
      if i + 1 >= len(overrides):
        raise UsageError(f"missing value for --config.{key}")
      i += 1
      value = overrides[i]
    node, parts = config, key.split(".")
    for p in parts[:-1]:
      if not isinstance(node, ml_collections.ConfigDict) or p not in node:
        raise UsageError(f"unknown config field {key!r}")
      node = node[p]
    if not isinstance(node, ml_collections.ConfigDict) or parts[-1] not in node:
      fields = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      raise UsageError(f"unknown config field {key!r}; fields here: {fields}")
    current = node[parts[-1]]
    try:
      node[parts[-1]] = _parse_value(value, current)
    except (ValueError, TypeError) as e:
      raise UsageError(f"bad value for --config.{key}: {e}") from None
    i += 1
  return config


# ------------------------------------------------------------------------- checks


class ConfigError(ValueError):
  """A config field has a value the trainer cannot use (the message names it)."""


def _get(config, key: str):
  node = config
  for part in key.split("."):
    node = node[part] if _is_section(node) and part in node else None
  return node


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _fail(key: str, value, what: str):
  raise ConfigError(f"config.{key} = {value!r}: {what} (set it with --config.{key}=...)")


def _value(config, key: str, required: bool, what: str):
  """The field's value (None: not set; an error if the field has no default)."""
  v = _get(config, key)
  if v is None and required:
    raise ConfigError(f"config.{key} is missing{what}")
  return v


def _check_name(config, key: str, known, required: bool = False, allow_none: bool = False):
  v = _value(config, key, required, f"; known values: {', '.join(known)}")
  if v is None and allow_none:
    return
  if v not in known:
    _fail(key, v, f"unknown; known values: {', '.join(known)}")


def _check_int(config, key: str, low: int, required: bool = False, allow_none: bool = False):
  v = _value(config, key, required, f" (an integer >= {low})")
  if v is None and allow_none:
    return
  if not _is_int(v) or v < low:
    _fail(key, v, f"must be an integer >= {low}")


def _check_real(
  config,
  key: str,
  *,
  low: float | None = None,
  high: float | None = None,
  low_open: bool = False,
  high_open: bool = False,
  required: bool = False,
  allow_none: bool = False,
):
  v = _value(config, key, required, "")
  if v is None and allow_none:
    return
  lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
  hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
  want = "a finite number " + " and ".join(s for s in (lo, hi) if s)
  if not _is_real(v) or not math.isfinite(v):
    _fail(key, v, f"must be {want.strip()}")
  if low is not None and (v < low or (low_open and v == low)):
    _fail(key, v, f"must be {want.strip()}")
  if high is not None and (v > high or (high_open and v == high)):
    _fail(key, v, f"must be {want.strip()}")


def validate_config(config) -> None:
  """Raises :class:`ConfigError` on the first field ``hemp-jax train`` cannot use.

  The config is completed with the defaults first (:func:`with_defaults`). Checked: the
  fields without a default are set; known names (``model``, ``dataset``, ``hemp.mode``,
  ``optimizer.name``, ``optimizer.schedule``, ``quantizer.method``,
  ``hemp.tuples/rate/pool``, ``pruning.method``, ``parallel``, ``dtype``, ...) and ranges
  (learning rate > 0, strength >= 0, order >= 1, num_levels >= 2, batch sizes >= 1,
  epochs >= 1, qat_epochs >= 0, fractions in [0, 1]).

  Args:
    config: an ``ml_collections.ConfigDict`` (or nested dicts) of a training run.

  Raises:
    ConfigError: with a message naming the field, its value and what is accepted.
  """
  config = with_defaults(config)
  _check_name(config, "model", sorted(models_lib.MODELS), required=True)
  if not str(config.dataset or "").startswith(data_lib.NPZ_PREFIX):
    known = list(data_lib.DATASET_NAMES) + [data_lib.NPZ_PREFIX + "PATH"]
    _check_name(config, "dataset", known, required=True)
  _check_int(config, "validation_size", 0)
  _check_int(config, "batch_size", 1, required=True)
  _check_int(config, "eval_batch_size", 1, required=True)
  _check_int(config, "num_epochs", 1, required=True)
  _check_int(config, "seed", 0)
  _check_int(config, "max_train_examples", 1, allow_none=True)
  _check_int(config, "max_steps_per_epoch", 1, allow_none=True)
  _check_int(config, "qat_epochs", 0, allow_none=True)
  _check_name(config, "parallel", steps_lib.PARALLEL)
  _check_name(config, "dtype", steps_lib.DTYPES)
  _check_int(config, "log_every_steps", 1, allow_none=True)
  _check_int(config, "checkpoint_every_steps", 1, allow_none=True)
  _check_int(config, "data.worker_count", 0, allow_none=True)
  _check_int(config, "data.num_threads", 0, allow_none=True)
  _check_int(config, "data.prefetch", 0, allow_none=True)
  qat = _get(config, "qat_epochs")  # may exceed num_epochs: then all but the first step

  _check_name(config, "optimizer.name", opt_lib.OPTIMIZERS, required=True)
  _check_real(config, "optimizer.learning_rate", low=0.0, low_open=True, required=True)
  _check_name(config, "optimizer.schedule", opt_lib.SCHEDULES)
  _check_real(config, "optimizer.momentum", low=0.0, high=1.0, high_open=True, allow_none=True)
  _check_real(config, "optimizer.weight_decay", low=0.0, allow_none=True)

  _check_int(config, "quantizer.num_levels", 2, required=True)
  _check_name(config, "quantizer.method", grp.CODEBOOK_METHODS, required=True)
  _check_int(config, "quantizer.min_size", 0, allow_none=True)
  _check_name(config, "quantizer.lloyd_method", q.LLOYD_METHODS)
  _check_name(config, "quantizer.degenerate", reg.DEGENERATE)
  _check_real(config, "quantizer.degenerate_fit_epochs", low=0.0, low_open=True)

  mode = _get(config, "hemp.mode")
  _check_name(config, "hemp.mode", opt_lib.HEMP_MODES, required=True)
  _check_real(config, "hemp.strength", low=0.0, required=mode != "none", allow_none=True)
  _check_int(config, "hemp.order", 1, required=True)
  _check_name(config, "hemp.tuples", ent.TUPLE_MODES, required=True)
  _check_name(config, "hemp.rate", ent.RATES, required=True)
  _check_name(config, "hemp.pool", ent.POOLS)
  _check_int(config, "hemp.refresh_every", 1)
  _check_int(config, "hemp.refit_every", 1, allow_none=True)
  _check_real(config, "hemp.lambda_q", low=0.0)
  _check_real(config, "hemp.budget", low=0.0, high=100.0, allow_none=True)
  _check_real(config, "hemp.budget_reference", low=0.0, high=1.0, allow_none=True)
  _check_real(config, "hemp.budget_gain", low=0.0, low_open=True)
  _check_real(config, "hemp.budget_margin", low=0.0)
  if _get(config, "hemp.budget") is not None:
    if mode != "grad":
      raise ConfigError(
        f"config.hemp.budget adapts the strength of hemp.mode 'grad', not {mode!r}: "
        "set --config.hemp.mode=grad or --config.hemp.budget=None"
      )
    if not _get(config, "validation_size"):
      raise ConfigError(
        "config.hemp.budget is held on a validation split: set --config.validation_size (e.g. 5000)"
      )
    if (
      _get(config, "hemp.budget_reference") is None
      and _get(config, "hemp.budget_reference_run") is None
      and not _get(config, "init_checkpoint")
    ):
      raise ConfigError(
        "config.hemp.budget needs a reference: --config.hemp.budget_reference (an "
        "accuracy), --config.hemp.budget_reference_run (a float run's workdir) or "
        "--config.init_checkpoint (the float model it starts from)"
      )
  _check_name(config, "hemp.lambda_units", reg.LAMBDA_UNITS)
  if _get(config, "hemp.rate") == "conditional" and _get(config, "hemp.tuples") != "sliding":
    raise ConfigError(
      "config.hemp.rate = 'conditional' needs sliding tuples: set --config.hemp.tuples=sliding"
    )
  if _is_int(qat) and qat > 0 and mode != "grad":
    raise ConfigError(
      f"config.qat_epochs = {qat} is the finish of hemp.mode 'grad' (hemp_jax.hemp); "
      f"mode {mode!r} has none: set --config.qat_epochs=0 or --config.hemp.mode=grad"
    )

  _check_name(config, "pruning.method", ("none",) + pruning_lib.PRUNING_METHODS)
  _check_real(config, "pruning.sparsity", low=0.0, high=1.0, high_open=True)
  _check_real(config, "pruning.begin_epoch", low=0.0)
  _check_real(config, "pruning.end_epoch", low=0.0, allow_none=True)
  _check_int(config, "pruning.frequency", 1)
  _check_int(config, "pruning.min_size", 0)
  _check_real(config, "pruning.grad_decay", low=0.0, high=1.0, high_open=True)


def flatten_config(config) -> dict[str, Any]:
  """``{"a.b": value}`` of a ConfigDict / nested dicts, through a JSON round trip.

  The round trip makes a freshly built config comparable with a ``config.json`` read
  back from disk (tuples become lists, placeholders their values).
  """
  if hasattr(config, "to_json_best_effort"):
    tree = json.loads(config.to_json_best_effort())
  else:
    tree = json.loads(json.dumps(config, default=str))
  out: dict[str, Any] = {}

  def walk(node, prefix):
    if isinstance(node, dict) and node:
      for k, v in node.items():
        walk(v, f"{prefix}{k}.")
    else:
      out[prefix[:-1]] = node

  walk(tree, "")
  return out


def config_diff(old, new, ignore=()) -> dict[str, tuple]:
  """``{key: (old value, new value)}`` of the fields that differ (missing: ``"<absent>"``)."""
  a, b = flatten_config(old), flatten_config(new)
  diff = {}
  for k in sorted(set(a) | set(b)):
    if k in ignore:
      continue
    va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
    if va != vb:
      diff[k] = (va, vb)
  return diff


# ----------------------------------------------------------------------- adapters
# Each takes a complete config (with_defaults) and returns what one part receives.


def quantizer_config(config) -> reg.QuantizerConfig:
  """How codebooks are fitted (``config.quantizer``)."""
  return reg.QuantizerConfig(**{k: config.quantizer[k] for k in reg.QuantizerConfig._fields})


def entropy_config(config) -> reg.EntropyConfig:
  """Which entropy is estimated (``config.hemp``: order, tuples, rate, pool)."""
  return reg.EntropyConfig(**{k: config.hemp[k] for k in reg.EntropyConfig._fields})


def _degenerate_kwargs(config, steps_per_epoch: int) -> dict:
  """How leaves that start constant get their codebooks (``quantizer.degenerate``)."""
  mode = config.quantizer.degenerate
  if mode != "defer":
    return dict(degenerate=mode)
  epochs = config.quantizer.degenerate_fit_epochs
  return dict(degenerate=mode, degenerate_fit_step=max(1, round(epochs * steps_per_epoch)))


def _regularizer_kwargs(config, steps_per_epoch: int) -> dict:
  """Arguments of :func:`hemp_jax.hemp` (mode "grad") or ``paper_recipe`` ("paper")."""
  h = config.hemp
  entropy = entropy_config(config)._asdict()
  if h.mode == "paper" and h.lambda_units == "authors":
    entropy["pool"] = "global"  # the authors' entropy: pooled over all quantized tensors
  common = dict(
    refresh_every=h.refresh_every,
    refit_every=h.refit_every,
    **entropy,
    **quantizer_config(config)._asdict(),
    **_degenerate_kwargs(config, steps_per_epoch),
  )
  if h.mode == "grad":
    # hemp(): the warm-up is the deferred fit; the finish the last qat_epochs.
    total = config.num_epochs * steps_per_epoch
    finish = min((config.qat_epochs or 0) * steps_per_epoch, total - 1)
    warmup = common.pop("degenerate_fit_step", None) or 1
    return dict(
      strength=h.strength,
      total_steps=total,
      finish_steps=finish,
      warmup_steps=min(warmup, total - finish),
      finish_decay=h.finish_decay,
      **common,
    )
  if h.mode == "paper":
    return dict(
      lambda_h=h.strength,
      lambda_q=h.lambda_q,
      sensitivity=h.sensitivity,
      lambda_units=h.lambda_units,
      **common,
    )
  return {}


def pruning_kwargs(config, steps_per_epoch: int) -> dict | None:
  """Arguments of :func:`hemp_jax.pruning.prune` (None: no pruning).

  The ramp is given in epochs (fractions allowed; ``end_epoch`` None: 3/4 of
  ``num_epochs``) and turned into steps here.
  """
  pc = config.pruning
  if pc.method in ("none", None):
    return None
  begin = int(round(pc.begin_epoch * steps_per_epoch))
  end_epoch = 0.75 * config.num_epochs if pc.end_epoch is None else pc.end_epoch
  return dict(
    sparsity=pc.sparsity,
    method=pc.method,
    begin_step=begin,
    end_step=max(begin, int(round(end_epoch * steps_per_epoch))),
    frequency=pc.frequency,
    min_size=pc.min_size,
    include=pc.include,
    exclude=pc.exclude,
    grad_decay=pc.grad_decay,
  )


def optimizer_kwargs(config, steps_per_epoch: int) -> dict:
  """Arguments of :func:`hemp_jax.train.optimizer.optimizer_chain`."""
  o = config.optimizer
  total_steps = config.num_epochs * steps_per_epoch
  return dict(
    hemp_mode=config.hemp.mode,
    name=o.name,
    learning_rate=opt_lib.learning_rate(o.learning_rate, o.schedule, total_steps),
    momentum=o.momentum,
    nesterov=o.nesterov,
    weight_decay=o.weight_decay,
    regularizer=_regularizer_kwargs(config, steps_per_epoch),
    pruning=pruning_kwargs(config, steps_per_epoch),
  )


def pipeline_kwargs(config) -> dict:
  """Arguments of :func:`hemp_jax.train.input.input_pipeline`."""
  d = config.data
  return dict(
    dataset=config.dataset,
    batch_size=config.batch_size,
    eval_batch_size=config.eval_batch_size,
    seed=config.seed,
    max_train_examples=config.max_train_examples,
    max_steps_per_epoch=config.max_steps_per_epoch,
    validation_size=config.validation_size,
    data_dir=config.data_dir,
    mock_data=config.mock_data,
    image_size=config.image_size,
    options=data_lib.PipelineOptions(
      worker_count=int(d.worker_count or 0),
      num_threads=int(d.num_threads),
      prefetch=int(d.prefetch),
    ),
  )


def codebook_kwargs(config) -> dict:
  """Arguments of :func:`hemp_jax.train.evaluate.evaluation_codebooks` besides the state."""
  return dict(
    quantizer=quantizer_config(config), order=config.hemp.order, tuples=config.hemp.tuples
  )


def loop_kwargs(config) -> dict:
  """How the loop runs: parallelism, progress, host syncs, mid-epoch saves."""
  return dict(
    parallel=config.parallel,
    progress=config.progress,
    log_every_steps=config.log_every_steps or _LOG_EVERY_STEPS,
    checkpoint_every_steps=config.checkpoint_every_steps or 0,
  )
