"""The ``hemp-jax`` command line.

``hemp-jax train --config experiments/configs/default.py --workdir runs/default
[--config.key=value ...]``. A config file is a Python file with ``get_config()``
(optionally ``get_config(arg)``, selected as ``file.py:arg``) returning an
``ml_collections.ConfigDict``; ``--config.a.b=value`` overrides a field, the value parsed
as the type the field already has.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import sys

import ml_collections

__all__ = ["main", "load_config", "apply_overrides"]


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads ``path.py`` or ``path.py:arg`` by calling its ``get_config``."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise SystemExit(f"config file not found: {path}")
  module_spec = importlib.util.spec_from_file_location("hemp_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise SystemExit(f"{path} has no get_config()")
  return module.get_config(arg) if arg else module.get_config()


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
  """Applies ``--config.a.b=value`` arguments (also ``--config.a.b value``)."""
  i = 0
  while i < len(overrides):
    item = overrides[i]
    if not item.startswith("--config."):
      raise SystemExit(f"unknown argument {item!r} (overrides look like --config.key=value)")
    key = item[len("--config."):]
    if "=" in key:
      key, value = key.split("=", 1)
    else:
      if i + 1 >= len(overrides):
        raise SystemExit(f"missing value for --config.{key}")
      i += 1
      value = overrides[i]
    node, parts = config, key.split(".")
    for p in parts[:-1]:
      if p not in node:
        raise SystemExit(f"unknown config field {key!r}")
      node = node[p]
    if parts[-1] not in node:
      raise SystemExit(f"unknown config field {key!r}; fields here: {sorted(node.keys())}")
    current = node[parts[-1]]
    try:
      node[parts[-1]] = _parse_value(value, current)
    except (ValueError, TypeError) as e:
      raise SystemExit(f"bad value for --config.{key}: {e}") from None
    i += 1
  return config


def _cmd_train(args, rest):
  config = apply_overrides(load_config(args.config), rest)
  from hemp_jax import train
  try:
    summary = train.train_and_evaluate(config, args.workdir)
  except train.TrainingDivergedError as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  print(json.dumps(summary, indent=2))
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="hemp-jax", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("train", help="train a model with HEMP (config + overrides)")
  p.add_argument("--config", required=True, help="config file (file.py or file.py:arg)")
  p.add_argument("--workdir", required=True, help="output directory (resumed if it exists)")
  p.set_defaults(func=_cmd_train, takes_overrides=True)
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args, rest = parser.parse_known_args(argv)
  if rest and not getattr(args, "takes_overrides", False):
    parser.error(f"unrecognized arguments: {' '.join(rest)}")
  return args.func(args, rest) or 0


if __name__ == "__main__":
  sys.exit(main())
