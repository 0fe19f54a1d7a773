"""hemp_jax: HEMP (high-order entropy minimization) for neural network compression in JAX.

Notebook use needs only ``import hemp_jax as hj`` and the pure functions below.
"""

from hemp_jax.entropy import (
  empirical_entropy,
  soft_entropy,
  tent_assign,
  tree_entropy,
  tree_group_rates,
)
from hemp_jax.groups import (
  fit_codebooks,
  path_name,
  quantized,
  scan_stream,
  select_groups,
  unscan_stream,
)
from hemp_jax.quantization import (
  add_guard_levels,
  dequantize,
  lloyd_max_codebook,
  quantization_mse,
  quantize,
  quantize_indices,
  quantize_ste,
  uniform_codebook,
  validate_codebook,
)

__version__ = "0.1.0"
from hemp_jax import budget, codec, models, pruning
from hemp_jax.codec import (
  FormatError,
  compress,
  decompress,
  format_inspection,
  load_into,
)
from hemp_jax.codec import inspect as inspect_compressed
from hemp_jax.groups import fit_codebook
from hemp_jax.models import MODELS, count_params, create_model, init_model
from hemp_jax.pruning import PruneState, leaf_sparsity, prune, sparsity_schedule
from hemp_jax.pytrees import plain_params
from hemp_jax.regularizer import (
  AddEntropyGradState,
  HempSecondStepState,
  HempState,
  add_entropy_grad,
  authors_entropy_scale,
  codebooks_of,
  codebooks_tree,
  entropy_penalty,
  finalize,
  hemp,
  hemp_second_step,
  is_degenerate,
  paper_recipe,
)
