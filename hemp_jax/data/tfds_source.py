"""TFDS datasets read from prepared ArrayRecord data sources (no TensorFlow, never a
download), and :class:`TfdsPipeline`, the thread-pool numpy pipeline over them."""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any, Iterator, Optional, Sequence, Tuple

import numpy as np

from hemp_jax.data.common import (
  DATASET_INFOS,
  DATASET_NAMES,
  TFDS_DATASET_NAMES,
  check_batch_size,
  check_seed,
)
from hemp_jax.data.offline import epoch_permutation, num_batches
from hemp_jax.data.transforms import PREPROCESSORS


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


def check_prepared(builder, name: str, base: str, split: str) -> None:
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
  check_prepared(builder, name, base, split)
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


def open_tfds_source(name: str, split: str, data_dir: Optional[str] = None):
  """Opens a prepared TFDS split as a random-access source, never downloading.

  Args:
      name: ``'mnist'``, ``'cifar10'`` or ``'imagenet2012'`` (optionally with a version).
      split: TFDS split, e.g. ``'train'`` or ``'train[:90%]'``.
      data_dir: TFDS data directory; defaults to ``$TFDS_DATA_DIR`` or the TFDS default.

  Returns:
      ``(base_name, source)``: the dataset name without version and a sequence of example
      dicts (``image`` uint8 ``(H, W, C)``, ``label``).

  Raises:
      ValueError: On an unknown dataset name.
      DatasetNotPreparedError: If the data is not prepared in ``data_dir``.
  """
  base = _resolve_tfds_name(name)
  if not isinstance(split, str) or not split:
    raise ValueError(f"split must be a non-empty string, got {split!r}.")
  _, source = _open_data_source(name, base, split, data_dir)
  return base, source


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
    self._preprocess = PREPROCESSORS[name]
    info = DATASET_INFOS[name]
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
    epoch = check_seed(epoch, "epoch")
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
    epoch = check_seed(epoch, "epoch")
    start_batch = check_seed(start_batch, "start_batch")
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
  batch_size = check_batch_size(batch_size)
  seed = check_seed(seed, "seed")
  if not isinstance(split, str) or not split:
    raise ValueError(f"split must be a non-empty string, got {split!r}.")
  if not isinstance(num_threads, int) or num_threads < 0:
    raise ValueError(f"num_threads must be a non-negative int, got {num_threads!r}.")
  native = DATASET_INFOS[base].image_shape[0]
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
