"""The input of a run: epoch-indexed train batches and the test split, per process."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, NamedTuple
from unittest import mock

import jax

from hemp_jax import data as data_lib

__all__ = ["InputPipeline", "input_pipeline", "in_memory_dataset", "mock_tfds", "OFFLINE_DATASETS"]

# Data sets served from memory as float32 images (no tfds, no preparation).
OFFLINE_DATASETS = ("mnist5k", "digits")


class InputPipeline(NamedTuple):
  """Epoch-indexed batches and what the step needs to read them.

  ``train(epoch, start_batch)`` returns a grain iterator over this process's rows of the
  epoch's global batches (``get_state`` / ``set_state``); ``eval()`` iterates the whole
  test split in this process, ``validation()`` the held-out part of the train split; ``normalize`` maps a (uint8) batch to the model's float
  input and runs inside the jitted steps (identity for the float offline sets).
  """

  train: Callable[[int, int], Iterator]
  eval: Callable[[], Iterator]
  steps_per_epoch: int
  num_classes: int
  image_shape: tuple
  normalize: Callable = data_lib.Normalize(None)
  validation: Callable[[], Iterator] | None = None  # the held-out part of train, if any


def input_pipeline(
  dataset: str,
  *,
  batch_size: int,
  eval_batch_size: int,
  seed: int = 0,
  max_train_examples: int | None = None,
  max_steps_per_epoch: int | None = None,
  validation_size: int = 0,
  data_dir: str | None = None,
  mock_data: bool = False,
  image_size: int | None = None,
  options: data_lib.PipelineOptions | None = None,
) -> InputPipeline:
  """The grain graph (:mod:`hemp_jax.data.pipeline`) over one data set.

  Args:
    dataset: an in-memory set, float32 images: offline (``mnist5k``, ``digits``), IDX
      files (``fashion_mnist``; ``mnist`` when a folder of its IDX files is found, see
      :mod:`hemp_jax.data.files`) or ``npz:PATH``; or a tfds one (``mnist``, ``cifar10``,
      ``imagenet2012`` prepared in ``data_dir``: uint8 images, normalized on the device).
    batch_size: the global train batch; this process reads its ``1 / process_count``
      share of every batch.
    eval_batch_size: the test batch (every process reads the whole test split).
    seed: the shuffling seed.
    max_train_examples: in-memory sets: the first this many train examples (None: all).
    max_steps_per_epoch: shorter epochs (None: full ones).
    validation_size: in-memory sets: this many train examples held out (fixed and
      stratified, :func:`hemp_jax.data.validation_split`; the same for every seed),
      served by ``validation()``. 0: none.
    data_dir: the folder of IDX files, or the tfds data dir (None: the defaults).
    mock_data: random tfds examples (:func:`mock_tfds`; smoke runs).
    image_size: ImageNet crop size (None: the data set's).
    options: how the batches are produced (workers, threads, prefetch; None: the
      defaults of :class:`hemp_jax.data.PipelineOptions`).
  """
  options = options or data_lib.PipelineOptions()
  host = dict(process_index=jax.process_index(), process_count=jax.process_count())
  val_src = None
  ds = in_memory_dataset(dataset, data_dir)
  if ds is not None:
    train_src, val_src = _train_and_validation(ds, max_train_examples, validation_size)
    eval_src = data_lib.ArraySource(ds.test_images, ds.test_labels)
    transform = eval_transform = None
    normalize = data_lib.Normalize(None)
    image_shape = tuple(ds.train_images.shape[1:])
    if dataset.startswith(data_lib.NPZ_PREFIX):  # a user's arrays: labels 0..max
      num_classes = int(max(ds.train_labels.max(), ds.test_labels.max())) + 1
    else:
      num_classes = data_lib.dataset_info(dataset).num_classes
  else:
    if validation_size:
      raise ValueError(
        f"validation_size = {validation_size}: a validation split needs an in-memory data "
        f"set ({', '.join(OFFLINE_DATASETS)}, IDX files or npz:PATH), not tfds {dataset!r}"
      )
    info = data_lib.dataset_info(dataset)
    num_classes = info.num_classes
    with mock_tfds() if mock_data else contextlib.nullcontext():
      base, train_src = data_lib.open_tfds_source(dataset, info.train_split, data_dir)
      _, eval_src = data_lib.open_tfds_source(dataset, info.eval_split, data_dir)
    size = info.image_shape[0]
    if base == "imagenet2012" and image_size:
      size = int(image_size)
    transform = eval_transform = data_lib.ImageTransform(base, size)
    normalize = data_lib.Normalize(base)
    image_shape = (size, size, info.image_shape[2])
  train_pipe = data_lib.GrainPipeline(
    train_src,
    batch_size=batch_size,
    train=True,
    seed=seed,
    transform=transform,
    max_batches=max_steps_per_epoch,
    options=options,
    **host,
  )

  # Evaluation reads the whole split in every process (results are identical).
  def whole(src):
    pipe = data_lib.GrainPipeline(
      src,
      batch_size=eval_batch_size,
      train=False,
      seed=seed,
      transform=eval_transform,
      options=options._replace(worker_count=0),
    )
    return lambda: pipe.epoch(0)

  return InputPipeline(
    lambda epoch, start=0: train_pipe.epoch(epoch, start),
    whole(eval_src),
    len(train_pipe),
    num_classes,
    image_shape,
    normalize,
    None if val_src is None else whole(val_src),
  )


def in_memory_dataset(dataset: str, data_dir: str | None = None) -> data_lib.Dataset | None:
  """The data set held in memory (offline, IDX files, npz), or None for a tfds one.

  ``mnist`` is read from IDX files when a folder of them is found, else from tfds.

  Raises:
    FileNotFoundError: ``fashion_mnist`` or ``npz:PATH`` without its files (one line
      saying where it looked and what to do).
  """
  if dataset == "mnist5k":
    return data_lib.load_mnist5k()
  if dataset == "digits":
    return data_lib.load_digits_dataset()
  if dataset.startswith(data_lib.NPZ_PREFIX):
    return data_lib.load_npz_dataset(dataset[len(data_lib.NPZ_PREFIX) :])
  if dataset == "fashion_mnist" or (
    dataset in data_lib.IDX_DATASETS and data_lib.find_idx_dir(dataset, data_dir)
  ):
    return data_lib.load_idx_dataset(dataset, data_dir)
  return None


def _train_and_validation(ds: data_lib.Dataset, limit: int | None, validation_size: int):
  """Train and validation sources: the fixed validation part first, then ``limit``."""
  images, labels = ds.train_images, ds.train_labels
  if not validation_size:
    return data_lib.ArraySource(images[:limit], labels[:limit]), None
  train_idx, val_idx = data_lib.validation_split(labels, validation_size)
  train_idx = train_idx[:limit]
  return (
    data_lib.ArraySource(images[train_idx], labels[train_idx]),
    data_lib.ArraySource(images[val_idx], labels[val_idx]),
  )


@contextlib.contextmanager
def mock_tfds(num_examples: int = 16) -> Iterator[None]:
  """Random TFDS examples for every dataset (the prepared-data check is skipped).

  Pipelines built inside the context keep working after it (their sources are made
  inside).
  """
  import tensorflow_datasets as tfds

  with (
    mock.patch.object(data_lib.tfds_source, "check_prepared", lambda *args: None),
    tfds.testing.mock_data(num_examples=num_examples),
  ):
    yield
