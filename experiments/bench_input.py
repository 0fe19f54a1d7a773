"""Input pipeline throughput: the grain graph against today's ``TfdsPipeline``, same run.

Writes two mock data sets as prepared tfds ArrayRecord data (read back by the registered
``imagenet2012`` / ``cifar10`` builders, like real prepared data): ImageNet-like JPEGs of
varying sizes around 400x350, and CIFAR-like 32x32 PNGs. Then, for each, prints the
images/s of ``TfdsPipeline`` (numpy float32 preprocessing, the best of 0/2/4 threads) and
of the grain pipeline (uint8 batches, normalization left to the device) with 0 (in-process,
2 threads), 1 and 2 worker processes. Rates are steady state: from the first batch to the
last, so worker start-up is not counted. The last line is
``grain vs old, imagenet, best: <ratio>x``.

  PYTHONPATH=. python experiments/bench_input.py [--num_images 1600] [--batch_size 128]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

import numpy as np


def _encode(image: np.ndarray, fmt: str) -> bytes:
  from PIL import Image

  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format=fmt, quality=90)
  return buf.getvalue()


def _smooth_image(rng, h: int, w: int) -> np.ndarray:
  """A photo-like image (smooth blobs + noise), so JPEG sizes are realistic."""
  from PIL import Image

  small = rng.integers(0, 256, (max(2, h // 24), max(2, w // 24), 3), dtype=np.uint8)
  img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.int16)
  img = img + rng.integers(-12, 13, img.shape, dtype=np.int16)
  return np.clip(img, 0, 255).astype(np.uint8)


def prepare(data_dir: str, name: str, version: str, features, splits: dict) -> None:
  """Writes ``splits`` (lists of feature dicts, images pre-encoded) as prepared ArrayRecord
  data of the tfds dataset ``name`` (TensorFlow-free)."""
  import tensorflow_datasets as tfds

  class Mock(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(version)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
      return {k: self._generate_examples(v) for k, v in splits.items()}

    def _generate_examples(self, examples):
      yield from enumerate(examples)

  Mock.name = name
  Mock(data_dir=data_dir, file_format="array_record").download_and_prepare()


def write_mock_data(data_dir: str, num_images: int, seed: int = 0) -> None:
  """The ImageNet-like (JPEG, 300-500 x 250-450) and CIFAR-like (32x32 PNG) sets."""
  import tensorflow_datasets as tfds

  rng = np.random.default_rng(seed)
  imagenet = []
  for i in range(num_images):
    h, w = int(rng.integers(250, 451)), int(rng.integers(300, 501))
    imagenet.append(
      {
        "image": _encode(_smooth_image(rng, h, w), "JPEG"),
        "label": int(rng.integers(0, 1000)),
        "file_name": f"{i}.JPEG",
      }
    )
  prepare(
    data_dir,
    "imagenet2012",
    "5.1.0",
    tfds.features.FeaturesDict(
      {
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(num_classes=1000),
        "file_name": tfds.features.Text(),
      }
    ),
    {"train": imagenet},
  )
  cifar = [
    {
      "image": _encode(_smooth_image(rng, 32, 32), "PNG"),
      "label": int(rng.integers(0, 10)),
      "id": f"train_{i}",
    }
    for i in range(4 * num_images)
  ]
  prepare(
    data_dir,
    "cifar10",
    "3.0.2",
    tfds.features.FeaturesDict(
      {
        "image": tfds.features.Image(shape=(32, 32, 3)),
        "label": tfds.features.ClassLabel(num_classes=10),
        "id": tfds.features.Text(),
      }
    ),
    {"train": cifar},
  )


def _rate(batches, batch_size: int, max_batches: int) -> float:
  """Images/s from the first batch to the last (start-up excluded)."""
  it = iter(batches)
  next(it)
  t0, n = time.perf_counter(), 0
  for _ in range(max_batches - 1):
    try:
      next(it)
    except StopIteration:
      break
    n += 1
  dt = time.perf_counter() - t0
  close = getattr(it, "close", None)
  if close is not None:
    close()
  return n * batch_size / dt


def bench(name: str, data_dir: str, batch_size: int, image_size: int, max_batches: int) -> dict:
  from hemp_jax import data as D

  rates = {}
  for threads in (0, 2, 4):
    old = D.load_tfds(
      name,
      "train",
      batch_size=batch_size,
      train=True,
      data_dir=data_dir,
      num_threads=threads,
      process_index=0,
      process_count=1,
      **({"image_size": image_size} if name == "imagenet2012" else {}),
    )
    rates[f"old, {threads} threads"] = _rate(old.batches(0), batch_size, max_batches)
    print(f"  {name:12s} old   {threads} threads   {rates[f'old, {threads} threads']:8.0f} img/s")
  base, source = D.open_tfds_source(name, "train", data_dir)
  size = image_size if name == "imagenet2012" else 32
  for workers in (0, 1, 2):
    pipe = D.GrainPipeline(
      source,
      batch_size=batch_size,
      train=True,
      transform=D.ImageTransform(base, size),
      options=D.PipelineOptions(worker_count=workers, num_threads=2, prefetch=4),
    )
    key = f"grain, {workers} workers"
    rates[key] = _rate(pipe.epoch(0), batch_size, max_batches)
    print(f"  {name:12s} grain {workers} workers   {rates[key]:8.0f} img/s")
  return rates


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_images", type=int, default=1600)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--data_dir", default=None, help="reuse/keep the mock data here")
  args = parser.parse_args()
  data_dir = args.data_dir or tempfile.mkdtemp(prefix="bench_input_")
  if not os.path.isdir(os.path.join(data_dir, "imagenet2012")):
    t0 = time.time()
    write_mock_data(data_dir, args.num_images)
    print(f"wrote the mock data sets in {data_dir} ({time.time() - t0:.0f} s)")
  max_batches = args.num_images // args.batch_size
  results = {}
  for name in ("imagenet2012", "cifar10"):
    results[name] = bench(name, data_dir, args.batch_size, args.image_size, max_batches)
  print("\n| data set | pipeline | images/s |\n|---|---|---|")
  for name, rates in results.items():
    for key, rate in rates.items():
      print(f"| {name} | {key} | {rate:.0f} |")
  for name, rates in results.items():
    old = max(v for k, v in rates.items() if k.startswith("old"))
    new = max(v for k, v in rates.items() if k.startswith("grain"))
    short = "imagenet" if name == "imagenet2012" else "cifar"
    if short == "cifar":
      print(f"grain vs old, {short}, best: {new / old:.2f}x")
  rates = results["imagenet2012"]
  old = max(v for k, v in rates.items() if k.startswith("old"))
  new = max(v for k, v in rates.items() if k.startswith("grain"))
  print(f"grain 2 workers vs old, imagenet: {rates['grain, 2 workers'] / old:.2f}x")
  print(f"grain vs old, imagenet, best: {new / old:.2f}x")


if __name__ == "__main__":  # grain workers are spawned: keep the guard
  main()
