"""The work directory of a run: checks before it starts, the resume guard, the outputs.

Every output (``config.json``, ``metrics.jsonl``, ``summary.json``) is written whole or
not at all (:func:`hemp_jax.fileio.write_atomic`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from hemp_jax.fileio import write_atomic
from hemp_jax.train.checkpoints import first_line
from hemp_jax.train.config import config_diff, with_defaults

__all__ = [
  "ConfigChangedError",
  "RESUME_IGNORED_FIELDS",
  "prepare_workdir",
  "remove_created",
  "check_resume",
  "write_config",
  "invalidate_outputs",
  "read_metrics",
  "write_metrics",
  "resume_rows",
  "write_json",
]

# Fields that change no result: a resume with another value is not a config change.
RESUME_IGNORED_FIELDS = ("progress",)


class ConfigChangedError(ValueError):
  """The workdir holds a run of another config (resume refused; the message lists keys)."""


def _first_missing_ancestor(path: str) -> str | None:
  path = os.path.abspath(path)
  top = None
  while not os.path.exists(path):
    top = path
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return top


def prepare_workdir(workdir: str) -> str | None:
  """Creates ``workdir`` (if missing) and checks it is writable, before anything runs.

  Returns:
    The topmost directory this call created (to remove if the run fails before it
    starts), or None.

  Raises:
    NotADirectoryError: ``workdir`` (or a parent) is a file.
    PermissionError: it cannot be created or written.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(
      f"workdir {workdir} is a file, not a directory: pass a directory path "
      "(it is created if missing)"
    )
  created = _first_missing_ancestor(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except NotADirectoryError:
    parent = os.path.dirname(os.path.abspath(workdir))
    while parent != os.path.dirname(parent) and not os.path.exists(parent):
      parent = os.path.dirname(parent)
    raise NotADirectoryError(
      f"workdir {workdir}: {parent} is a file, not a directory; pass a directory path"
    ) from None
  except OSError as e:
    remove_created(workdir, created)
    raise PermissionError(
      f"cannot create or write the workdir {workdir} ({e.strerror}): pass a writable --workdir"
    ) from None
  return created


def remove_created(workdir: str, created: str | None) -> None:
  """Removes the empty directories :func:`prepare_workdir` created, up to ``created``."""
  if created is None:
    return
  path = os.path.abspath(workdir)
  while True:
    try:
      os.rmdir(path)
    except OSError:
      return
    if path == created:
      return
    path = os.path.dirname(path)


def _has_run(workdir: str) -> bool:
  ckpt = os.path.join(workdir, "checkpoints")
  has_ckpt = os.path.isdir(ckpt) and any(True for _ in os.scandir(ckpt))
  return has_ckpt or os.path.exists(os.path.join(workdir, "metrics.jsonl"))


def check_resume(workdir: str, config, allow_config_change: bool) -> dict:
  """The resume guard: compares ``config`` with the workdir's ``config.json``.

  The recorded config is completed with the defaults first
  (:func:`hemp_jax.train.config.with_defaults`), so the ``config.json`` of an older
  version that left a field out matches a config that has it at its default.

  Returns:
    ``{field: (old, new)}`` of the accepted changes (empty when nothing changed or there
    is nothing to resume).

  Raises:
    ConfigChangedError: the workdir holds a run of another config and
      ``allow_config_change`` is False.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path) or not _has_run(workdir):
    return {}
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    old, diff = None, {"config.json": (f"unreadable ({first_line(e)})", "this config")}
  if old is not None:
    diff = config_diff(with_defaults(old), config, ignore=RESUME_IGNORED_FIELDS)
  if diff and not allow_config_change:
    shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:8])
    more = f" (and {len(diff) - 8} more)" if len(diff) > 8 else ""
    raise ConfigChangedError(
      f"workdir {workdir} holds a run of another config ({len(diff)} field(s) differ: "
      f"{shown}{more}); use a new workdir, or resume with the change knowingly "
      "(hemp-jax train --allow-config-change; it is recorded in config_history.jsonl)"
    )
  return diff


def write_config(workdir: str, config, changes: dict, resumed_epochs: int) -> None:
  """Writes ``config.json``; an accepted change is appended to ``config_history.jsonl``."""
  if changes:
    entry = {
      "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "after_epoch": resumed_epochs,
      "changed": {k: [a, b] for k, (a, b) in changes.items()},
    }
    path = os.path.join(workdir, "config_history.jsonl")
    with open(path, "a") as f:
      f.write(json.dumps(entry) + "\n")
    print(f"config change accepted ({', '.join(changes)}); recorded in {path}", file=sys.stderr)
  write_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2).encode())


def invalidate_outputs(workdir: str) -> None:
  """Removes ``summary.json`` then ``model.hemp`` of an earlier epoch before training on:
  they are written again (last) when the run ends, so they never describe another epoch
  than ``metrics.jsonl``."""
  for name in ("summary.json", "model.hemp"):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      os.remove(path)


def read_metrics(path: str, upto_epoch: int) -> list[dict]:
  """The rows of ``metrics.jsonl`` for epochs ``1..upto_epoch`` (damaged lines skipped)."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue  # a damaged line: the epoch's row is re-derived or recomputed
      if isinstance(row, dict) and isinstance(row.get("epoch"), int):
        rows.append(row)
  by_epoch = {r["epoch"]: r for r in rows if r["epoch"] <= upto_epoch}
  return [by_epoch[e] for e in sorted(by_epoch)]


def write_metrics(path: str, rows: list[dict]) -> None:
  """Writes ``metrics.jsonl``: one JSON line per row."""
  write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def resume_rows(metrics_path: str, epochs_done: int, ckpt_row: dict | None) -> list[dict]:
  """Metrics rows of epochs ``1..epochs_done``: ``metrics.jsonl``'s, completed with the
  restored checkpoint's own row when the run stopped before writing it."""
  rows = read_metrics(metrics_path, epochs_done)
  if epochs_done and (not rows or rows[-1]["epoch"] < epochs_done) and ckpt_row is not None:
    rows = [r for r in rows if r["epoch"] < epochs_done] + [ckpt_row]
  return rows


def write_json(path: str, obj: dict) -> None:
  """Writes ``obj`` as indented JSON (``summary.json``)."""
  write_atomic(path, json.dumps(obj, indent=2).encode())
