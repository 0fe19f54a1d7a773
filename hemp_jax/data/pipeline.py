"""The grain graph of training and evaluation: source -> epoch order and host shard ->
decode + transform -> batch -> workers -> prefetch.

One :class:`GrainPipeline` serves one split. ``pipeline.epoch(e)`` returns a grain
iterator over the batches of epoch ``e`` on this host:

* **order**: the epoch's permutation :func:`~hemp_jax.data.offline.epoch_permutation`
  ``(N, seed, e)`` (the same on every host; identity without shuffling), cut into
  global batches of ``batch_size``; host ``p`` of ``P`` takes rows ``p * B/P ..
  (p+1) * B/P`` of every global batch. The global batch assembled from all hosts is thus
  the one a single process would read, whatever the process count;
* **transform**: example ``i`` of epoch ``e`` is augmented with
  ``numpy.random.default_rng((seed, e, 1, i))``, so batches do not depend on the number
  of threads, workers or hosts either;
* **batch** on the ``MapDataset`` (each batch is one random-access item: workers of
  ``mp_prefetch`` take whole batches in turn and the output order is the in-process one);
* ``worker_count`` processes (``0``: in-process, ``num_threads`` reader threads) and a
  prefetch buffer.

The iterator has ``get_state()`` / ``set_state()`` (grain's), saved in checkpoints with
``grain.checkpoint.CheckpointSave``: a resumed run continues mid-epoch with the batches
an uninterrupted run would have seen.

Worker processes are spawned: scripts that use ``worker_count > 0`` need an
``if __name__ == "__main__":`` guard. :func:`mark_flags_parsed` works around
google/grain#1355 (workers read an absl flag).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np

from hemp_jax.data.common import check_batch_size, check_seed
from hemp_jax.data.offline import epoch_permutation

__all__ = [
  "ArraySource",
  "GrainPipeline",
  "LoadExample",
  "PipelineOptions",
  "host_indices",
  "mark_flags_parsed",
]


class ArraySource:
  """In-memory random-access source of ``{"image", "label"}`` examples (picklable).

  Args:
      images: ``(N, ...)`` array.
      labels: ``(N,)`` integer array.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels.")
    self.images = np.asarray(images)
    self.labels = np.asarray(labels)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict:
    return {"image": self.images[index], "label": self.labels[index]}

  def __repr__(self) -> str:
    return f"ArraySource({len(self)} x {self.images.shape[1:]} {self.images.dtype})"


def host_indices(
  num_examples: int,
  *,
  batch_size: int,
  num_batches: int,
  seed: int,
  epoch: int,
  shuffle: bool,
  process_index: int = 0,
  process_count: int = 1,
) -> np.ndarray:
  """The example indices host ``process_index`` reads in ``epoch``, in order.

  Global batch ``b`` is ``order[b * batch_size : (b + 1) * batch_size]`` of the epoch's
  order; this host's part of it is the ``process_index``-th of ``process_count`` equal
  slices. A final partial global batch is split the same way (slices may be unequal).

  Args:
      num_examples: Size of the split.
      batch_size: Global batch size (all hosts); a multiple of ``process_count`` when
          ``num_batches * batch_size <= num_examples`` (full batches).
      num_batches: Global batches read this epoch (``ceil`` or ``floor`` of N / B, or
          fewer).
      seed: Shuffle seed.
      epoch: Epoch number.
      shuffle: Whether to permute (else the split order).
      process_index: This host.
      process_count: Number of hosts.

  Returns:
      An ``int64`` array of example indices.
  """
  epoch = check_seed(epoch, "epoch")
  order = epoch_permutation(num_examples, seed, epoch) if shuffle else np.arange(num_examples)
  order = order[: num_batches * batch_size]
  if process_count == 1:
    return order
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} is not a multiple of {process_count} processes.")
  local = batch_size // process_count
  parts = [
    order[b * batch_size + process_index * local : b * batch_size + (process_index + 1) * local]
    for b in range(num_batches)
  ]
  return np.concatenate(parts) if parts else order[:0]


class LoadExample:
  """``index -> (image, label)``: reads ``source[index]`` and applies ``transform``.

  A grain map function (picklable, for worker processes). With a ``seed`` the transform
  gets ``numpy.random.default_rng((seed, epoch, 1, index))`` (training augmentation),
  else ``None``.

  Args:
      source: Random-access source of ``{"image", "label"}`` dicts.
      transform: ``(image, rng) -> image``; ``None`` keeps the image.
      seed: Augmentation seed, or ``None`` for deterministic (eval) transforms.
      epoch: Epoch number (part of the augmentation seed).
  """

  def __init__(self, source, transform: Optional[Callable], seed: Optional[int], epoch: int):
    self.source = source
    self.transform = transform
    self.seed = seed
    self.epoch = epoch

  def __call__(self, index) -> tuple:
    index = int(index)
    example = self.source[index]
    image = example["image"]
    if self.transform is not None:
      rng = None if self.seed is None else np.random.default_rng((self.seed, self.epoch, 1, index))
      image = self.transform(image, rng)
    return image, np.int32(example["label"])


def mark_flags_parsed() -> None:
  """Marks absl flags as parsed (grain workers read one; google/grain#1355)."""
  try:
    from absl import flags

    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
  except ImportError:  # pragma: no cover - absl comes with grain
    pass


def _worker_init(worker_index: int, worker_count: int) -> None:
  del worker_index, worker_count
  mark_flags_parsed()


class PipelineOptions(NamedTuple):
  """How the batches are produced (never what they contain).

  Attributes:
      worker_count: Worker processes (``0``: in-process).
      num_threads: Reader threads per process.
      prefetch: Batches buffered ahead.
  """

  worker_count: int = 0
  num_threads: int = 2
  prefetch: int = 4


class GrainPipeline:
  """Epoch-indexed batches of one split through the grain graph (see the module doc).

  Args:
      source: Random-access source of ``{"image", "label"}`` examples.
      batch_size: Global batch size (all hosts).
      train: Training split: shuffled, augmented, full batches only.
      seed: Seed of the order and of the augmentation.
      transform: ``(image, rng) -> image`` (``rng`` is None for eval); ``None`` keeps
          images as they are.
      max_batches: Optional cap on the batches of an epoch.
      process_index: This host.
      process_count: Number of hosts.
      options: :class:`PipelineOptions` (default: in-process, 2 threads).

  Attributes:
      num_batches: Batches per epoch (``len(pipeline)``).
      local_batch_size: This host's rows of a full batch.
  """

  def __init__(
    self,
    source: Sequence[Any],
    *,
    batch_size: int,
    train: bool,
    seed: int = 0,
    transform: Optional[Callable] = None,
    max_batches: Optional[int] = None,
    process_index: int = 0,
    process_count: int = 1,
    options: Optional[PipelineOptions] = None,
  ):
    self.source = source
    self.batch_size = check_batch_size(batch_size)
    self.train = bool(train)
    self.seed = check_seed(seed, "seed")
    self.transform = transform
    self.process_index = process_index
    self.process_count = process_count
    self.options = PipelineOptions() if options is None else options
    if self.batch_size % process_count:
      raise ValueError(
        f"batch_size {batch_size} must be a multiple of the {process_count} processes."
      )
    self.local_batch_size = self.batch_size // process_count
    n = len(source)
    full = n // self.batch_size if self.train else -(-n // self.batch_size)
    self.num_batches = min(full, max_batches) if max_batches else full
    if self.num_batches == 0:
      raise ValueError(f"{n} examples give no full batch of {batch_size}; lower the batch size.")

  def __len__(self) -> int:
    return self.num_batches

  def dataset(self, epoch: int):
    """The ``grain.MapDataset`` of this host's batches in ``epoch``."""
    import grain  # Local: ~2 s import, only when a pipeline is used.

    idx = host_indices(
      len(self.source),
      batch_size=self.batch_size,
      num_batches=self.num_batches,
      seed=self.seed,
      epoch=epoch,
      shuffle=self.train,
      process_index=self.process_index,
      process_count=self.process_count,
    )
    load = LoadExample(self.source, self.transform, self.seed if self.train else None, epoch)
    ds = grain.MapDataset.source(idx).map(load)
    # Eval on several hosts: a final partial global batch is split unevenly (the last
    # local batches may differ in size between hosts).
    return ds.batch(self.local_batch_size, drop_remainder=self.train)

  def epoch(self, epoch: int = 0, start_batch: int = 0):
    """A grain iterator over the batches of ``epoch`` from ``start_batch`` on.

    Each batch is ``(images, labels)`` numpy arrays with this host's rows.
    """
    import grain

    ds = self.dataset(epoch)
    if start_batch:
      ds = ds[start_batch:]
    o = self.options
    it_ds = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=o.num_threads, prefetch_buffer_size=o.prefetch)
    )
    if o.worker_count > 0:
      mark_flags_parsed()
      it_ds = it_ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=o.worker_count, per_worker_buffer_size=o.prefetch),
        worker_init_fn=_worker_init,
      )
    return iter(it_ds)

  def __iter__(self):
    return self.epoch(0)

  def __repr__(self) -> str:
    return (
      f"GrainPipeline({self.source!r}, batch_size={self.batch_size}, train={self.train}, "
      f"batches={self.num_batches}, host={self.process_index}/{self.process_count}, "
      f"{self.options})"
    )
