"""Small training configs shared by the test files (not a test module itself)."""

import ml_collections


def base_config(**hemp):
  """SGD, N = 4 uniform levels, HEMP order 2 (``hemp`` overrides its fields)."""
  c = ml_collections.ConfigDict()
  c.optimizer = ml_collections.ConfigDict(
    dict(name="sgd", learning_rate=0.05, momentum=0.9, weight_decay=1e-4, schedule="constant")
  )
  c.quantizer = ml_collections.ConfigDict(
    dict(num_levels=4, method="uniform", guard_levels=True, min_size=None)
  )
  c.hemp = ml_collections.ConfigDict(
    dict(
      mode="grad",
      strength=5.0,
      order=2,
      tuples="disjoint",
      rate="block",
      pool="group",
      refresh_every=1,
      lambda_q=0.1,
    )
  )
  c.hemp.update(hemp)
  c.num_epochs = 1
  return c


def digits_run_config(num_epochs=2, **over):
  """A whole `train_and_evaluate` run: LeNet-300-100 on digits, 4 steps per epoch."""
  c = base_config()
  c.model = "lenet_300_100"
  c.model_kwargs = {"in_features": 64}
  c.dataset = "digits"
  c.seed = 0
  c.batch_size = 32
  c.eval_batch_size = 350
  c.num_epochs = num_epochs
  c.max_steps_per_epoch = 4
  c.parallel = "jit"
  c.progress = False
  c.update(over)
  return c
