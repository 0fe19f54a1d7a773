"""Dataset descriptions, normalization constants and argument checks shared by the data modules."""

from __future__ import annotations

from typing import Any, NamedTuple, Tuple

import numpy as np

# Per-channel statistics of the CIFAR-10 training set, for pixels in [0, 1].
CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)
# Standard ImageNet per-channel statistics, for pixels in [0, 1].
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Shorter-side size used before the evaluation center crop, relative to the
# crop size (the classic 256 -> 224 ratio).
IMAGENET_EVAL_RESIZE_RATIO = 256 / 224


class DatasetInfo(NamedTuple):
  """Static description of a supported dataset.

  Attributes:
      name: Dataset name as accepted by this module.
      num_classes: Number of label classes.
      image_shape: ``(height, width, channels)`` of the images produced by
          this module (for ImageNet, the default crop size).
      train_split: Name of the training split.
      eval_split: Name of the split used for evaluation.
      source: ``'offline'`` (bundled with an installed package), ``'files'``
          (IDX files in a local folder, :mod:`hemp_jax.data.files`) or ``'tfds'``
          (needs data prepared with TensorFlow Datasets; ``mnist`` is read from IDX
          files instead when a folder of them is found).
  """

  name: str
  num_classes: int
  image_shape: Tuple[int, int, int]
  train_split: str
  eval_split: str
  source: str


DATASET_INFOS = {
  "mnist5k": DatasetInfo("mnist5k", 10, (28, 28, 1), "train", "test", "offline"),
  "digits": DatasetInfo("digits", 10, (8, 8, 1), "train", "test", "offline"),
  "mnist": DatasetInfo("mnist", 10, (28, 28, 1), "train", "test", "tfds"),
  "fashion_mnist": DatasetInfo("fashion_mnist", 10, (28, 28, 1), "train", "test", "files"),
  "cifar10": DatasetInfo("cifar10", 10, (32, 32, 3), "train", "test", "tfds"),
  "imagenet2012": DatasetInfo("imagenet2012", 1000, (224, 224, 3), "train", "validation", "tfds"),
}

#: All dataset names known to this module.
DATASET_NAMES: Tuple[str, ...] = tuple(DATASET_INFOS)
#: Dataset names served by :func:`load_tfds`.
TFDS_DATASET_NAMES: Tuple[str, ...] = tuple(
  n for n, i in DATASET_INFOS.items() if i.source == "tfds"
)


def dataset_info(name: str) -> DatasetInfo:
  """Returns the static description of a dataset.

  Args:
      name: One of :data:`DATASET_NAMES` (``'mnist5k'``, ``'digits'``,
          ``'mnist'``, ``'cifar10'``, ``'imagenet2012'``).

  Returns:
      The :class:`DatasetInfo` (number of classes, image shape, split names).

  Raises:
      ValueError: If ``name`` is not a known dataset.
  """
  try:
    return DATASET_INFOS[name]
  except (KeyError, TypeError):
    raise ValueError(f"Unknown dataset {name!r}; valid names are {list(DATASET_NAMES)}.") from None


def check_seed(value: Any, what: str) -> int:
  """Validates a non-negative integer seed/epoch and returns it as ``int``."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{what} must be a non-negative integer, got {value!r}.")
  if value < 0:
    raise ValueError(f"{what} must be a non-negative integer, got {value}.")
  return int(value)


def check_batch_size(batch_size: Any) -> int:
  """Validates a positive integer batch size and returns it as ``int``."""
  if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)):
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
  if batch_size <= 0:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
  return int(batch_size)
