"""Resume guard, checkpoint fallback and consistent outputs after a crash (issue 12).

One uninterrupted 2-epoch run (a LeNet-300-100 on digits, 4 steps per epoch) is the
reference; every other run here is compared with it: a run resumed from a damaged
workdir, or rerun after a crash at a given point, must end with the same state, the same
``metrics.jsonl`` rows, the same ``summary.json`` and the same ``model.hemp`` bytes.
"""

import glob
import json
import os
import shutil
import stat

import jax
import numpy as np
import pytest
from run_configs import digits_run_config

from hemp_jax import train
from hemp_jax.train import loop
from hemp_jax.train.config import ConfigError


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


_TIMINGS = ("seconds", "examples_per_s", "input_wait_fraction")


def _without_seconds(rows):
  """Metrics rows without the wall-clock fields (they differ run to run)."""
  return [{k: v for k, v in r.items() if k not in _TIMINGS} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Workdir of an uninterrupted 2-epoch run (checkpoints at steps 4 and 8)."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  train.train_and_evaluate(digits_run_config(), workdir)
  return workdir


def _assert_same_outputs(workdir, reference):
  """metrics.jsonl, summary.json and model.hemp equal the reference run's."""
  assert _without_seconds(_rows(workdir)) == _without_seconds(_rows(reference))
  s, r = _summary(workdir), _summary(reference)
  s.pop("file"), r.pop("file")
  assert s == r and s["epochs"] == 2
  with (
    open(os.path.join(workdir, "model.hemp"), "rb") as f,
    open(os.path.join(reference, "model.hemp"), "rb") as g,
  ):
    assert f.read() == g.read()


def _assert_same_final_state(workdir, reference):
  _, a = train.load_final_state(digits_run_config(), reference)
  _, b = train.load_final_state(digits_run_config(), workdir)
  assert int(a.step) == int(b.step) == 8
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------------ resume guard


def test_changed_config_is_refused_with_the_differing_keys(tmp_path):
  """Refused before anything is built or written; the flag accepts and records it."""
  workdir = str(tmp_path)
  config = digits_run_config()
  (tmp_path / "config.json").write_text(config.to_json_best_effort(indent=2))
  (tmp_path / "metrics.jsonl").write_text("")  # a run was here
  before = (tmp_path / "config.json").read_text()
  changed = digits_run_config()
  changed.hemp.strength = 9.0
  changed.num_epochs = 3
  changed.progress = True  # changes no result: not reported
  with pytest.raises(train.ConfigChangedError) as e:
    train.train_and_evaluate(changed, workdir)
  msg = str(e.value)
  assert "2 field(s) differ" in msg and "hemp.strength: 5.0 -> 9.0" in msg
  assert "num_epochs: 2 -> 3" in msg and "progress" not in msg
  assert "--allow-config-change" in msg and "\n" not in msg
  assert (tmp_path / "config.json").read_text() == before
  assert sorted(os.listdir(workdir)) == ["config.json", "metrics.jsonl"]


def test_invalid_config_writes_nothing(tmp_path):
  bad = digits_run_config()
  bad.optimizer.learning_rate = -1.0
  with pytest.raises(ConfigError, match="optimizer.learning_rate"):
    train.train_and_evaluate(bad, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_accepted_change_is_recorded_and_epochs_count_from_1(reference, tmp_path, capsys):
  workdir = str(tmp_path / "w")
  shutil.copytree(reference, workdir)
  more = digits_run_config(3)
  train.train_and_evaluate(more, workdir, allow_config_change=True)
  err = capsys.readouterr().err
  assert "resumed after epoch 2 of 3 (step 8)" in err
  assert "compiling the train step" in err and "entropy-coding the weights" in err
  with open(os.path.join(workdir, "config_history.jsonl")) as f:
    (entry,) = [json.loads(line) for line in f]
  assert entry["after_epoch"] == 2 and entry["changed"] == {"num_epochs": [2, 3]}
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["num_epochs"] == 3
  rows = _rows(workdir)
  assert [r["epoch"] for r in rows] == [1, 2, 3]
  assert _without_seconds(rows[:2]) == _without_seconds(_rows(reference))
  assert _summary(workdir)["epochs"] == 3


# -------------------------------------------------------------- checkpoint fallback


def _step_files(step_dir):
  return sorted(p for p in glob.glob(step_dir + "/**", recursive=True) if os.path.isfile(p))


def _garbage(step_dir):
  rng = np.random.default_rng(0)
  for p in _step_files(step_dir):
    size = max(os.path.getsize(p), 16)
    with open(p, "wb") as f:
      f.write(rng.integers(0, 256, size, dtype=np.uint8).tobytes())


def _truncated(step_dir):
  for p in _step_files(step_dir):
    if os.sep + "d" + os.sep in p:  # the array data files
      with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) // 2)


def _missing_metadata(step_dir):
  os.remove(os.path.join(step_dir, "default", "_METADATA"))


def _emptied(step_dir):
  for name in os.listdir(step_dir):
    path = os.path.join(step_dir, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _missing_data(step_dir):
  shutil.rmtree(os.path.join(step_dir, "default", "ocdbt.process_0"))


def _replaced_by_file(step_dir):
  shutil.rmtree(step_dir)
  with open(step_dir, "wb") as f:
    f.write(b"not a checkpoint")


CORRUPTIONS = [_garbage, _truncated, _missing_metadata, _emptied, _missing_data, _replaced_by_file]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=[f.__name__[1:] for f in CORRUPTIONS])
def test_damaged_latest_checkpoint_falls_back_and_finishes(reference, tmp_path, corrupt, capsys):
  workdir = str(tmp_path / "w")
  shutil.copytree(reference, workdir)
  corrupt(os.path.join(workdir, "checkpoints", "8"))
  train.train_and_evaluate(digits_run_config(), workdir)
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if "cannot be restored" in line]
  assert len(lines) == 1 and lines[0].startswith("warning: checkpoint step 8 cannot be restored")
  assert "resumed after epoch 1 of 2 (step 4)" in err
  # Set aside, not deleted: the damaged step is kept under checkpoints.corrupt/.
  assert os.path.exists(os.path.join(workdir, "checkpoints.corrupt", "8"))
  _assert_same_outputs(workdir, reference)
  _assert_same_final_state(workdir, reference)


def test_no_checkpoint_restores_starts_from_scratch(reference, tmp_path, capsys):
  workdir = str(tmp_path / "w")
  shutil.copytree(reference, workdir)
  for step in ("4", "8"):
    _garbage(os.path.join(workdir, "checkpoints", step))
  train.train_and_evaluate(digits_run_config(), workdir)
  err = capsys.readouterr().err
  assert len([line for line in err.splitlines() if "cannot be restored" in line]) == 2
  assert "no checkpoint restores: training starts from scratch" in err
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints.corrupt"))) == ["4", "8"]
  _assert_same_outputs(workdir, reference)  # the run is deterministic
  _assert_same_final_state(workdir, reference)


# ------------------------------------------------------------ crashes and the outputs


class _Crash(Exception):
  pass


def _crash_on_call(monkeypatch, name, n):
  """Makes ``loop.<name>`` (what the loop calls) raise on its ``n``-th call (1-based)."""
  real, calls = getattr(loop, name), []

  def wrapper(*args, **kwargs):
    calls.append(1)
    if len(calls) == n:
      raise _Crash(f"simulated crash in {name}")
    return real(*args, **kwargs)

  monkeypatch.setattr(loop, name, wrapper)


def test_crash_between_checkpoint_and_metrics_gives_consistent_outputs(
  reference, tmp_path, monkeypatch
):
  workdir = str(tmp_path)
  _crash_on_call(monkeypatch, "write_metrics", 2)  # after epoch 2's checkpoint
  with pytest.raises(_Crash):
    train.train_and_evaluate(digits_run_config(), workdir)
  monkeypatch.undo()
  assert [r["epoch"] for r in _rows(workdir)] == [1]  # the crash left metrics behind
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  assert not os.path.exists(os.path.join(workdir, "model.hemp"))
  train.train_and_evaluate(digits_run_config(), workdir)  # nothing to train: outputs re-derived
  _assert_same_outputs(workdir, reference)
  _assert_same_final_state(workdir, reference)


def test_crash_between_model_file_and_summary_gives_consistent_outputs(
  reference, tmp_path, monkeypatch
):
  workdir = str(tmp_path / "w")
  shutil.copytree(reference, workdir)
  more = digits_run_config(3)
  _crash_on_call(monkeypatch, "write_json", 1)  # model.hemp of epoch 3 written, summary not
  with pytest.raises(_Crash):
    train.train_and_evaluate(more, workdir, allow_config_change=True)
  monkeypatch.undo()
  assert not os.path.exists(os.path.join(workdir, "summary.json"))  # the epoch-2 one is gone
  train.train_and_evaluate(more, workdir)
  assert [r["epoch"] for r in _rows(workdir)] == [1, 2, 3]
  summary = _summary(workdir)
  assert summary["epochs"] == 3
  assert summary["file_bytes"] == os.path.getsize(os.path.join(workdir, "model.hemp"))
  assert summary["test_accuracy"] == _rows(workdir)[-1]["test_accuracy"]


def test_output_files_respect_the_umask(reference, tmp_path):
  old = os.umask(0o027)
  try:
    workdir = str(tmp_path / "w")
    shutil.copytree(reference, workdir)
    for name in ("summary.json", "model.hemp", "metrics.jsonl", "config.json"):
      os.remove(os.path.join(workdir, name))
    train.train_and_evaluate(digits_run_config(), workdir)  # re-derives every output
  finally:
    os.umask(old)
  for name in ("summary.json", "model.hemp", "metrics.jsonl", "config.json"):
    assert stat.S_IMODE(os.stat(os.path.join(workdir, name)).st_mode) == 0o640, name
  for name in ("summary.json", "model.hemp", "metrics.jsonl"):
    assert stat.S_IMODE(os.stat(os.path.join(reference, name)).st_mode) == 0o666 & ~old, name
