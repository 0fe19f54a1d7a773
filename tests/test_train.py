"""Data-parallel steps against single-device ones; checkpoints, resume, NaN stop, CLI."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from run_configs import base_config, digits_run_config

import hemp_jax as hj
from hemp_jax import cli, train

DEFAULT_CONFIG = os.path.join(
  os.path.dirname(__file__), "..", "experiments", "configs", "default.py"
)


class _SmallBN(nnx.Module):
  """A tiny conv net with BatchNorm, so the model_state path is exercised."""

  def __init__(self, *, num_classes=10, rngs):
    self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.fc = nnx.Linear(8 * 8 * 8, num_classes, rngs=rngs)

  def __call__(self, x, *, train=False):
    x = nnx.relu(self.bn(self.conv(x), use_running_average=not train))
    return self.fc(x.reshape(x.shape[0], -1))


def _digits_batches(n_steps, batch=16):
  ds = hj.data.load_digits_dataset()
  it = hj.data.iterate_batches(ds.train_images, ds.train_labels, batch, rng_seed=0, epoch=0)
  return [next(it) for _ in range(n_steps)]


def _run(step, state, batches):
  for images, labels in batches:
    state, m = step(state, jnp.asarray(images), jnp.asarray(labels))
    float(m["loss"])  # sync every step: CPU collectives deadlock otherwise
  return state


@pytest.mark.parametrize("mode", ["grad", "paper"])
def test_jit_mesh_4_devices_equals_1_device(mode):
  assert jax.device_count() >= 4
  config = base_config(mode=mode)
  model = _SmallBN(rngs=nnx.Rngs(0))
  tx = train.make_optimizer(config)
  graphdef, state0 = train.create_train_state(model, tx)
  step = train.make_train_step(graphdef, tx)
  batches = _digits_batches(4)
  one = _run(
    train.data_parallel_train_step(step, train.make_mesh(jax.devices()[:1])), state0, batches
  )
  _, state0b = train.create_train_state(_SmallBN(rngs=nnx.Rngs(0)), tx)
  four = _run(
    train.data_parallel_train_step(step, train.make_mesh(jax.devices()[:4])), state0b, batches
  )
  for a, b in zip(
    jax.tree.leaves((one.params, one.model_state)), jax.tree.leaves((four.params, four.model_state))
  ):
    np.testing.assert_allclose(a, b, atol=1e-5)
  assert int(four.step) == 4


def test_pmap_4_devices_equals_1_device():
  config = base_config()
  model = hj.models.LeNet300100(in_features=64, rngs=nnx.Rngs(1))
  tx = train.make_optimizer(config)
  graphdef, state0 = train.create_train_state(model, tx)
  batches = _digits_batches(4)
  single = _run(jax.jit(train.make_train_step(graphdef, tx)), state0, batches)
  _, state0b = train.create_train_state(hj.models.LeNet300100(in_features=64, rngs=nnx.Rngs(1)), tx)
  pmapped = _run(train.pmap_train_step(graphdef, tx, jax.devices()[:4]), state0b, batches)
  for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(pmapped.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  assert not np.allclose(single.params["fc1"]["kernel"], state0.params["fc1"]["kernel"])


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
  full = digits_run_config(3)
  s_full = train.train_and_evaluate(full, str(tmp_path / "full"))
  part = digits_run_config(1)
  train.train_and_evaluate(part, str(tmp_path / "resumed"))  # "killed" after epoch 1
  with pytest.raises(train.ConfigChangedError, match="num_epochs: 1 -> 3"):
    train.train_and_evaluate(digits_run_config(3), str(tmp_path / "resumed"))
  s_res = train.train_and_evaluate(
    digits_run_config(3), str(tmp_path / "resumed"), allow_config_change=True
  )
  _, a = train.load_final_state(full, str(tmp_path / "full"))
  _, b = train.load_final_state(full, str(tmp_path / "resumed"))
  assert int(a.step) == int(b.step) == 12
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, atol=1e-6)
  assert s_full["test_accuracy"] == s_res["test_accuracy"]
  rows = [json.loads(line) for line in open(tmp_path / "resumed" / "metrics.jsonl")]
  assert [r["epoch"] for r in rows] == [1, 2, 3]
  history = [json.loads(line) for line in open(tmp_path / "resumed" / "config_history.jsonl")]
  assert [h["changed"] for h in history] == [{"num_epochs": [1, 3]}]


def test_metrics_and_summary_files(tmp_path):
  s = train.train_and_evaluate(digits_run_config(2), str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert len(rows) == 2
  for key in [
    "epoch",
    "train_loss",
    "test_accuracy",
    "test_accuracy_quantized",
    "entropy_soft",
    "entropy_exact",
  ]:
    assert key in rows[0]
  summary = json.load(open(tmp_path / "summary.json"))
  assert summary == s
  for key in ["test_accuracy", "test_accuracy_quantized", "entropy_bits_per_param", "num_params"]:
    assert key in summary
  assert summary["num_params"] == 266610 - 784 * 300 + 64 * 300
  assert 0 < summary["entropy_bits_per_param"] <= np.log2(6)
  # the .hemp file: real size, decodes to the quantized model
  assert summary["file_bytes"] == os.path.getsize(tmp_path / "model.hemp")
  assert summary["compression_ratio"] == pytest.approx(
    4 * summary["num_params"] / summary["file_bytes"]
  )
  assert summary["test_accuracy_decoded"] == summary["test_accuracy_quantized"]
  _, state = train.load_final_state(digits_run_config(2), str(tmp_path))
  decoded = train.read_model_file(str(tmp_path / "model.hemp"), state)
  expected = train.quantize_params(state.params, train.eval_codebooks(digits_run_config(2), state))
  for a, b in zip(jax.tree.leaves(decoded.params), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)


def test_cli_compress_inspect_decompress_evaluate(tmp_path, capsys):
  summary = train.train_and_evaluate(digits_run_config(1), str(tmp_path))
  assert (
    train.evaluate_model_file(digits_run_config(1), str(tmp_path / "model.hemp"))
    == summary["test_accuracy_decoded"]
  )
  out = tmp_path / "again.hemp"
  assert cli.main(["compress", "--workdir", str(tmp_path), "-o", str(out)]) == 0
  assert out.read_bytes() == (tmp_path / "model.hemp").read_bytes()
  assert cli.main(["inspect", str(out)]) == 0
  assert "fc1/kernel" in capsys.readouterr().out
  assert cli.main(["decompress", str(out), "-o", str(tmp_path / "p.npz")]) == 0
  arrays = np.load(tmp_path / "p.npz")
  assert arrays["params/fc1/kernel"].shape == (64, 300)
  damaged = tmp_path / "bad.hemp"
  damaged.write_bytes(out.read_bytes()[:-7])
  assert cli.main(["inspect", str(damaged)]) == 2
  assert "error" in capsys.readouterr().err


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(tmp_path, capsys):
  train.train_and_evaluate(digits_run_config(1), str(tmp_path))
  _, good = train.load_final_state(digits_run_config(1), str(tmp_path))
  # Through the CLI, with the run's own config.json and a learning rate that diverges.
  rc = cli.main(
    [
      "train",
      "--config",
      str(tmp_path / "config.json"),
      "--workdir",
      str(tmp_path),
      "--config.optimizer.learning_rate=1e30",
      "--config.num_epochs=3",
      "--allow-config-change",
    ]
  )
  assert rc == 3
  err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
  assert len(err) == 1 and "Last good checkpoint: step 4" in err[0]
  assert "Lower the learning rate" in err[0]
  _, kept = train.load_final_state(digits_run_config(1), str(tmp_path))
  assert int(kept.step) == 4
  for x, y in zip(jax.tree.leaves(good.params), jax.tree.leaves(kept.params)):
    np.testing.assert_array_equal(x, y)


def test_cli_train_with_overrides(tmp_path, capsys):
  rc = cli.main(
    [
      "train",
      "--config",
      DEFAULT_CONFIG,
      "--workdir",
      str(tmp_path),
      "--config.num_epochs=1",
      "--config.max_train_examples",
      "256",
      "--config.progress=false",
      "--config.hemp.order=1",
      "--config.eval_batch_size=1000",
    ]
  )
  assert rc == 0
  summary = json.load(open(tmp_path / "summary.json"))
  assert summary["model"] == "lenet5" and summary["entropy_order"] == 1
  capsys.readouterr()
  rc = cli.main(
    ["train", "--config", DEFAULT_CONFIG, "--workdir", str(tmp_path), "--config.hemp.nope=1"]
  )
  assert rc == 2 and "unknown config field 'hemp.nope'" in capsys.readouterr().err


# ------------------------------------------------------------------ the config contract


def test_defaults_fill_what_a_config_leaves_out():
  config = train.with_defaults({"hemp": {"mode": "none"}, "pruning": None, "seed": 3})
  assert config.seed == 3 and config.hemp.mode == "none"
  assert config.pruning.method == "none"  # a section set to None: its defaults
  assert config.hemp.order == 3 and config.quantizer.num_levels == 8  # hj.hemp's
  assert config.quantizer.zero_level and config.quantizer.degenerate == "defer"
  assert config.qat_epochs == 0
  with pytest.raises(train.ConfigError, match="config.model is missing; known values"):
    train.validate_config({})
  # What a config sets is kept as it is (an int stays an int).
  assert train.with_defaults({"hemp": {"strength": 5}}).hemp.strength == 5
  assert isinstance(train.with_defaults({"hemp": {"strength": 5}}).hemp.strength, int)
  # The experiment configs build on the package default: nothing to fill.
  job = cli.load_config(DEFAULT_CONFIG)
  assert train.config.config_diff(job, train.with_defaults(job)) == {}


def test_config_json_of_an_older_version_resumes(tmp_path):
  """A config.json without the fields added since (they are at their defaults) is not a
  config change."""
  config = digits_run_config(1)
  train.train_and_evaluate(config, str(tmp_path))
  path = tmp_path / "config.json"
  old = json.loads(path.read_text())
  for key in ("pruning", "data", "init_checkpoint", "mock_data"):
    old.pop(key)
  old["hemp"].pop("sensitivity")
  path.write_text(json.dumps(old))
  summary = train.train_and_evaluate(config, str(tmp_path))  # resumed, not refused
  assert summary["epochs"] == 1
  assert "pruning" in json.loads(path.read_text())  # written again, complete
