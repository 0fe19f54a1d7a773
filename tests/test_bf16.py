"""Mixed precision: bf16 activations and matmuls, float32 params / optimizer / entropy."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hemp_jax import cli, models, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "lenet5_mnist.py") + ":smoke,bf16"


class _ConvBN(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.fc = nnx.Linear(8 * 8 * 8, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv(x), use_running_average=True))
    return self.fc(x.reshape(x.shape[0], -1))


def test_set_dtype_computes_in_bf16_with_float32_params():
  model = _ConvBN(nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  ref = model(x)
  models.set_dtype(model, "bfloat16")
  out = model(x)
  assert ref.dtype == jnp.float32 and out.dtype == jnp.bfloat16
  params = nnx.state(model, nnx.Param)
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  # The same network, rounded: bf16 has an 8-bit mantissa.
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), rtol=0.1, atol=0.1)
  models.set_dtype(model, "float32")
  np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(ref))


def test_bf16_smoke_trains_and_its_file_decodes(tmp_path):
  config = cli.apply_overrides(
    cli.load_config(CONFIG),
    ["--config.num_epochs=3", "--config.max_steps_per_epoch=4", "--config.eval_batch_size=500"],
  )
  assert config.dtype == "bfloat16"
  config.optimizer.learning_rate = 3e-3
  summary = train.train_and_evaluate(config, str(tmp_path))
  graphdef, state = train.load_final_state(config, str(tmp_path))
  assert {x.dtype for x in jax.tree.leaves((state.params, state.opt_state))} <= {
    jnp.dtype(jnp.float32),
    jnp.dtype(jnp.int32),
    jnp.dtype(bool),  # flags of codebooks waiting for the warm-up (degenerate="defer")
  }
  with open(tmp_path / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  losses = [r["train_loss"] for r in rows]
  assert losses[-1] < losses[0] - 0.3, losses  # the loss falls
  assert summary["test_accuracy_decoded"] > 0.2  # chance: 0.1
  # The model file decodes and evaluates (`hemp-jax evaluate`), in bf16 as trained.
  acc = train.evaluate_model_file(config, str(tmp_path / "model.hemp"))
  assert acc == summary["test_accuracy_decoded"]
  logits, _ = train.forward(
    graphdef, state.params, state.model_state, jnp.ones((1, 28, 28, 1)), False
  )
  assert logits.dtype == jnp.bfloat16
