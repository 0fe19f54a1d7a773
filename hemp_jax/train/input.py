"""The input of a run: epoch-indexed train batches and the test split, per process."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, NamedTuple
from unittest import mock

import jax

from hemp_jax import data as data_lib

__all__ = ["InputPipeline", "input_pipeline", "mock_tfds", "OFFLINE_DATASETS"]

# Data sets served from memory as float32 images (no tfds, no preparation).
OFFLINE_DATASETS = ("mnist5k", "digits")


class InputPipeline(NamedTuple):
  """Epoch-indexed batches and what the step needs to read them.

  ``train(epoch, start_batch)`` returns a grain iterator over this process's rows of the
  epoch's global batches (``get_state`` / ``set_state``); ``eval()`` iterates the whole
  test split in this process; ``normalize`` maps a (uint8) batch to the model's float
  input and runs inside the jitted steps (identity for the float offline sets).
  """

  train: Callable[[int, int], Iterator]
  eval: Callable[[], Iterator]
  steps_per_epoch: int
  num_classes: int
  image_shape: tuple
  normalize: Callable = data_lib.Normalize(None)


def input_pipeline(
  dataset: str,
  *,
  batch_size: int,
  eval_batch_size: int,
  seed: int = 0,
  max_train_examples: int | None = None,
  max_steps_per_epoch: int | None = None,
  data_dir: str | None = None,
  mock_data: bool = False,
  image_size: int | None = None,
  options: data_lib.PipelineOptions | None = None,
) -> InputPipeline:
  """The grain graph (:mod:`hemp_jax.data.pipeline`) over one data set.

  Args:
    dataset: an offline set (``mnist5k``, ``digits``: float32 images from memory) or a
      tfds one (``mnist``, ``cifar10``, ``imagenet2012`` prepared in ``data_dir``: uint8
      images, normalized on the device).
    batch_size: the global train batch; this process reads its ``1 / process_count``
      share of every batch.
    eval_batch_size: the test batch (every process reads the whole test split).
    seed: the shuffling seed.
    max_train_examples: offline sets: the first this many train examples (None: all).
    max_steps_per_epoch: shorter epochs (None: full ones).
    data_dir: the tfds data dir (None: tfds's default).
    mock_data: random tfds examples (:func:`mock_tfds`; smoke runs).
    image_size: ImageNet crop size (None: the data set's).
    options: how the batches are produced (workers, threads, prefetch; None: the
      defaults of :class:`hemp_jax.data.PipelineOptions`).
  """
  options = options or data_lib.PipelineOptions()
  info = data_lib.dataset_info(dataset)
  host = dict(process_index=jax.process_index(), process_count=jax.process_count())
  if dataset in OFFLINE_DATASETS:
    ds = data_lib.load_mnist5k() if dataset == "mnist5k" else data_lib.load_digits_dataset()
    limit = max_train_examples
    train_src = data_lib.ArraySource(ds.train_images[:limit], ds.train_labels[:limit])
    eval_src = data_lib.ArraySource(ds.test_images, ds.test_labels)
    transform = eval_transform = None
    normalize = data_lib.Normalize(None)
    image_shape = tuple(info.image_shape)
  else:
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
  # Evaluation reads the whole test split in every process (results are identical).
  eval_pipe = data_lib.GrainPipeline(
    eval_src,
    batch_size=eval_batch_size,
    train=False,
    seed=seed,
    transform=eval_transform,
    options=options._replace(worker_count=0),
  )
  return InputPipeline(
    lambda epoch, start=0: train_pipe.epoch(epoch, start),
    lambda: eval_pipe.epoch(0),
    len(train_pipe),
    info.num_classes,
    image_shape,
    normalize,
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
