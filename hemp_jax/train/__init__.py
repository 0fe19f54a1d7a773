"""Data-parallel training with HEMP: config, optimizer, steps, evaluation, checkpoints, loop.

=================  ==================================================================
``config``         the default config, loading, overrides, checks, adapters
``optimizer``      the optax chain (plain, ``add_entropy_grad``, the paper's recipe)
``steps``          train state, pure train/eval steps, jit over a mesh or pmap
``evaluate``       accuracy, quantized accuracy, soft and exact entropy
``input``          the grain input of a run
``checkpoints``    orbax checkpoints with fallback; weights to start from
``workdir``        checks before a run, the resume guard, the outputs
``model_file``     the ``.hemp`` file of a trained model
``build``          from a config to model, optimizer, state and input
``loop``           the epoch loop and :func:`train_and_evaluate`
=================  ==================================================================
"""

from hemp_jax.train.build import (
  build,
  eval_codebooks,
  evaluate_model_file,
  load_final_state,
  make_optimizer,
)
from hemp_jax.train.checkpoints import load_init_checkpoint, read_checkpoint_arrays
from hemp_jax.train.config import (
  ConfigError,
  default_config,
  validate_config,
  with_defaults,
)
from hemp_jax.train.evaluate import (
  Evaluator,
  evaluate_accuracy,
  exact_entropy,
  make_eval_fn,
  quantize_params,
)
from hemp_jax.train.input import InputPipeline, input_pipeline
from hemp_jax.train.loop import (
  TrainingDivergedError,
  compile_steps,
  train_and_evaluate,
  train_epochs,
)
from hemp_jax.train.model_file import read_model_file, write_model_file
from hemp_jax.train.steps import (
  TrainState,
  create_train_state,
  data_parallel_train_step,
  forward,
  initialize_distributed,
  is_main_process,
  make_eval_step,
  make_mesh,
  make_train_step,
  pmap_train_step,
)
from hemp_jax.train.workdir import ConfigChangedError

__all__ = [
  "TrainState",
  "TrainingDivergedError",
  "ConfigChangedError",
  "ConfigError",
  "make_mesh",
  "make_optimizer",
  "create_train_state",
  "make_train_step",
  "make_eval_step",
  "data_parallel_train_step",
  "pmap_train_step",
  "quantize_params",
  "exact_entropy",
  "train_and_evaluate",
  "train_epochs",
  "compile_steps",
  "default_config",
  "with_defaults",
  "validate_config",
  "build",
  "input_pipeline",
  "InputPipeline",
  "eval_codebooks",
  "Evaluator",
  "evaluate_accuracy",
  "make_eval_fn",
  "forward",
  "initialize_distributed",
  "is_main_process",
  "load_final_state",
  "evaluate_model_file",
  "read_model_file",
  "write_model_file",
  "load_init_checkpoint",
  "read_checkpoint_arrays",
]
