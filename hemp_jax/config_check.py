"""Checks a training config before anything is compiled or written.

:func:`validate_config` looks at every field ``hemp-jax train`` reads (names and ranges)
and raises :class:`ConfigError` naming the field, the bad value and what is accepted,
so a typo fails in a fraction of a second instead of after the first compile (or, for a
negative learning rate or strength, not at all). :func:`config_diff` lists the fields
that differ between two configs (the resume guard of :func:`hemp_jax.train.train_and_evaluate`).

Fields a config may leave out (the tests build small configs by hand) are checked only
when present; the ones the trainer always reads are required.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any

__all__ = ["ConfigError", "validate_config", "config_diff", "flatten_config"]

HEMP_MODES = ("none", "grad", "paper")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")
QUANTIZER_METHODS = ("uniform", "lloyd_max")
TUPLES = ("disjoint", "sliding")
RATES = ("block", "conditional")
POOLS = ("group", "global")
PRUNING_METHODS = ("none", "magnitude", "sensitivity")
PARALLEL = ("jit", "pmap")
DTYPES = ("float32", "bfloat16")
LLOYD_METHODS = ("empirical", "gaussian")


class ConfigError(ValueError):
  """A config field has a value the trainer cannot use (the message names it)."""


_MISSING = object()


def _get(config, key: str):
  node = config
  for part in key.split("."):
    try:
      if part not in node:
        return _MISSING
      node = node[part]
    except TypeError:
      return _MISSING
  return node


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _fail(key: str, value, what: str):
  raise ConfigError(f"config.{key} = {value!r}: {what} (set it with --config.{key}=...)")


def _check_name(config, key: str, known, required: bool = True, allow_none: bool = False):
  v = _get(config, key)
  if v is _MISSING:
    if required:
      raise ConfigError(f"config.{key} is missing; known values: {', '.join(known)}")
    return
  if v is None and allow_none:
    return
  if v not in known:
    _fail(key, v, f"unknown; known values: {', '.join(known)}")


def _check_int(config, key: str, low: int, required: bool = False, allow_none: bool = False):
  v = _get(config, key)
  if v is _MISSING:
    if required:
      raise ConfigError(f"config.{key} is missing (an integer >= {low})")
    return
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
  v = _get(config, key)
  if v is _MISSING:
    if required:
      raise ConfigError(f"config.{key} is missing")
    return
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

  Checked: known names (``model``, ``dataset``, ``hemp.mode``, ``optimizer.name``,
  ``optimizer.schedule``, ``quantizer.method``, ``hemp.tuples/rate/pool``,
  ``pruning.method``, ``parallel``) and ranges (learning rate > 0, strength >= 0, order
  >= 1, num_levels >= 2, batch sizes >= 1, epochs >= 1, qat_epochs >= 0, fractions in
  [0, 1]).

  Args:
    config: an ``ml_collections.ConfigDict`` (or nested dicts) of a training run.

  Raises:
    ConfigError: with a message naming the field, its value and what is accepted.
  """
  from hemp_jax import models
  from hemp_jax.data import DATASET_NAMES
  from hemp_jax.regularizer import DEGENERATE, LAMBDA_UNITS

  _check_name(config, "model", sorted(models.MODELS))
  _check_name(config, "dataset", list(DATASET_NAMES))
  _check_int(config, "batch_size", 1, required=True)
  _check_int(config, "eval_batch_size", 1)
  _check_int(config, "num_epochs", 1, required=True)
  _check_int(config, "seed", 0)
  _check_int(config, "max_train_examples", 1, allow_none=True)
  _check_int(config, "max_steps_per_epoch", 1, allow_none=True)
  _check_int(config, "qat_epochs", 0, allow_none=True)
  _check_name(config, "parallel", PARALLEL, required=False)
  _check_name(config, "dtype", DTYPES, required=False)
  _check_int(config, "log_every_steps", 1, allow_none=True)
  _check_int(config, "checkpoint_every_steps", 1, allow_none=True)
  _check_int(config, "data.worker_count", 0, allow_none=True)
  _check_int(config, "data.num_threads", 0, allow_none=True)
  _check_int(config, "data.prefetch", 0, allow_none=True)
  qat = _get(config, "qat_epochs")  # may exceed num_epochs: then every epoch is QAT

  _check_name(config, "optimizer.name", OPTIMIZERS)
  _check_real(config, "optimizer.learning_rate", low=0.0, low_open=True, required=True)
  _check_name(config, "optimizer.schedule", SCHEDULES, required=False)
  _check_real(config, "optimizer.momentum", low=0.0, high=1.0, high_open=True, allow_none=True)
  _check_real(config, "optimizer.weight_decay", low=0.0, allow_none=True)

  _check_int(config, "quantizer.num_levels", 2, required=True)
  _check_name(config, "quantizer.method", QUANTIZER_METHODS)
  _check_int(config, "quantizer.min_size", 0, allow_none=True)
  _check_name(config, "quantizer.lloyd_method", LLOYD_METHODS, required=False)
  _check_name(config, "quantizer.degenerate", DEGENERATE, required=False)
  _check_real(config, "quantizer.degenerate_fit_epochs", low=0.0, low_open=True)

  _check_name(config, "hemp.mode", HEMP_MODES)
  _check_real(config, "hemp.strength", low=0.0, required=_get(config, "hemp.mode") != "none")
  _check_int(config, "hemp.order", 1, required=True)
  _check_name(config, "hemp.tuples", TUPLES)
  _check_name(config, "hemp.rate", RATES)
  _check_name(config, "hemp.pool", POOLS, required=False)
  _check_int(config, "hemp.refresh_every", 1)
  _check_int(config, "hemp.refit_every", 1, allow_none=True)
  _check_real(config, "hemp.lambda_q", low=0.0)
  _check_name(config, "hemp.lambda_units", LAMBDA_UNITS, required=False)
  if _get(config, "hemp.rate") == "conditional" and _get(config, "hemp.tuples") != "sliding":
    raise ConfigError(
      "config.hemp.rate = 'conditional' needs sliding tuples: set --config.hemp.tuples=sliding"
    )
  if _is_int(qat) and qat > 0 and _get(config, "hemp.mode") == "none":
    raise ConfigError(
      f"config.qat_epochs = {qat} needs hemp.mode 'grad' or 'paper' (their codebooks): "
      "set --config.qat_epochs=0 or another --config.hemp.mode"
    )

  _check_name(config, "pruning.method", PRUNING_METHODS, required=False)
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
