"""Tests for hemp_jax.data (offline datasets, batching, TFDS pipelines)."""

import io
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from hemp_jax import data as D


def _row_hashes(images):
  return {np.ascontiguousarray(r).tobytes() for r in images.reshape(len(images), -1)}


@pytest.fixture(scope="module")
def mnist5k():
  return D.load_mnist5k()


@pytest.fixture(scope="module")
def digits():
  return D.load_digits_dataset()


# ---------------------------------------------------------------- offline data


def test_mnist5k_shapes_range_balance(mnist5k):
  d = mnist5k
  assert d.train_images.shape == (4000, 28, 28, 1)
  assert d.test_images.shape == (1000, 28, 28, 1)
  assert d.train_images.dtype == np.float32 and d.test_images.dtype == np.float32
  assert d.train_labels.dtype == np.int32 and d.test_labels.dtype == np.int32
  for x in (d.train_images, d.test_images):
    assert x.min() == 0.0 and x.max() == 1.0
  np.testing.assert_array_equal(np.bincount(d.train_labels, minlength=10), [400] * 10)
  np.testing.assert_array_equal(np.bincount(d.test_labels, minlength=10), [100] * 10)
  # Not sorted by class.
  assert len(set(d.train_labels[:50].tolist())) > 5


def test_mnist5k_deterministic_and_disjoint(mnist5k):
  again = D.load_mnist5k()
  for a, b in zip(mnist5k, again):
    np.testing.assert_array_equal(a, b)
  train, test = _row_hashes(mnist5k.train_images), _row_hashes(mnist5k.test_images)
  assert len(train) == 4000 and len(test) == 1000
  assert not train & test
  other = D.load_mnist5k(seed=1)
  assert not np.array_equal(other.test_images, mnist5k.test_images)
  assert _row_hashes(other.train_images) | _row_hashes(other.test_images) == train | test


def test_mnist5k_looks_like_mnist(mnist5k):
  # Real digits: mostly dark background, a bright stroke in the middle.
  x = mnist5k.train_images
  assert 0.08 < x.mean() < 0.2
  assert x[:, 10:18, 10:18].mean() > x[:, :3, :3].mean() + 0.1


def test_digits_shapes_range_balance(digits):
  d = digits
  assert d.train_images.shape == (1447, 8, 8, 1)
  assert d.test_images.shape == (350, 8, 8, 1)
  assert d.train_images.dtype == np.float32 and d.train_labels.dtype == np.int32
  assert d.train_images.min() == 0.0 and d.train_images.max() == 1.0
  np.testing.assert_array_equal(np.bincount(d.test_labels, minlength=10), [35] * 10)
  assert np.bincount(d.train_labels, minlength=10).min() >= 139
  again = D.load_digits_dataset()
  for a, b in zip(d, again):
    np.testing.assert_array_equal(a, b)
  train, test = _row_hashes(d.train_images), _row_hashes(d.test_images)
  assert len(train) == 1447 and len(test) == 350 and not train & test


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1, 0.0001, "a"])
def test_bad_test_fraction(frac):
  with pytest.raises(ValueError, match="test_fraction"):
    D.load_mnist5k(test_fraction=frac)


def test_dataset_info():
  assert D.dataset_info("mnist5k").image_shape == (28, 28, 1)
  assert D.dataset_info("digits").image_shape == (8, 8, 1)
  assert D.dataset_info("cifar10").num_classes == 10
  assert D.dataset_info("imagenet2012").num_classes == 1000
  assert D.dataset_info("imagenet2012").eval_split == "validation"
  assert set(D.DATASET_NAMES) == {
    "mnist5k",
    "digits",
    "mnist",
    "fashion_mnist",
    "cifar10",
    "imagenet2012",
  }
  with pytest.raises(ValueError, match="valid names.*mnist5k"):
    D.dataset_info("svhn")


# ------------------------------------------------------------------ batching


def test_iterate_batches_deterministic_and_covering():
  n = 103
  images = np.arange(n, dtype=np.float32)[:, None]
  labels = np.arange(n, dtype=np.int32)

  def run(**kw):
    return [lab for _, lab in D.iterate_batches(images, labels, 10, **kw)]

  a = run(rng_seed=3, epoch=0)
  assert len(a) == D.num_batches(n, 10) == 10
  assert all(len(b) == 10 for b in a)
  seen = np.concatenate(a)
  assert len(np.unique(seen)) == len(seen) == 100  # each example at most once
  np.testing.assert_array_equal(np.concatenate(run(rng_seed=3, epoch=0)), seen)
  assert not np.array_equal(np.concatenate(run(rng_seed=3, epoch=1)), seen)
  assert not np.array_equal(np.concatenate(run(rng_seed=4, epoch=0)), seen)
  # Resume mid-epoch.
  np.testing.assert_array_equal(
    np.concatenate(run(rng_seed=3, epoch=0, start_batch=4)), np.concatenate(a[4:])
  )
  # Images and labels stay aligned.
  for x, y in D.iterate_batches(images, labels, 7, rng_seed=0, epoch=2):
    np.testing.assert_array_equal(x[:, 0], y)
  # Without drop_remainder every example is seen exactly once.
  full = run(rng_seed=3, epoch=0, drop_remainder=False)
  assert len(full) == D.num_batches(n, 10, drop_remainder=False) == 11
  assert sorted(np.concatenate(full).tolist()) == list(range(n))
  ordered = run(rng_seed=3, epoch=0, shuffle=False, drop_remainder=False)
  np.testing.assert_array_equal(np.concatenate(ordered), labels)


def test_iterate_batches_errors():
  x, y = np.zeros((5, 2)), np.zeros(5, np.int32)
  for bs in (0, -1, 2.5):
    with pytest.raises(ValueError, match="batch_size"):
      D.iterate_batches(x, y, bs, rng_seed=0, epoch=0)
  with pytest.raises(ValueError, match="batch_size"):
    D.num_batches(10, 0)
  with pytest.raises(ValueError, match="no batch"):
    D.iterate_batches(x, y, 6, rng_seed=0, epoch=0)
  with pytest.raises(ValueError, match="leading size"):
    D.iterate_batches(x, y[:4], 2, rng_seed=0, epoch=0)
  with pytest.raises(ValueError, match="rng_seed"):
    D.iterate_batches(x, y, 2, rng_seed=-1, epoch=0)


# ----------------------------------------------------------------- image ops


def test_resize_bilinear_matches_jax():
  rng = np.random.default_rng(0)
  img = rng.uniform(0, 255, size=(17, 23, 3)).astype(np.float32)
  for h, w in [(8, 8), (40, 31), (17, 23), (5, 60)]:
    ours = D.resize_bilinear(img, h, w)
    ref = jax.image.resize(jnp.asarray(img), (h, w, 3), "bilinear", antialias=False)
    np.testing.assert_allclose(ours, np.asarray(ref), rtol=1e-5, atol=1e-3)


def test_random_resized_crop_shapes():
  rng = np.random.default_rng(0)
  for shape in [(50, 80, 3), (300, 20, 3), (9, 9, 3)]:
    img = rng.integers(0, 256, size=shape).astype(np.uint8)
    out = D.random_resized_crop(img, 16, rng)
    assert out.shape == (16, 16, 3) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 255


# ---------------------------------------------------------------------- tfds


@pytest.fixture
def mock_tfds(monkeypatch):
  """Random TFDS data (tfds.testing.mock_data) served through data sources.

  `mock_data` patches `DatasetBuilder.as_data_source` but creates no files,
  so skip the on-disk check that `load_tfds` does first (that check is
  covered by the not-prepared and real-ArrayRecord tests).
  """
  monkeypatch.setattr(D.tfds_source, "check_prepared", lambda *args: None)
  with tfds.testing.mock_data(num_examples=20):
    yield


def test_tfds_mnist_mock(mock_tfds):
  p = D.load_tfds("mnist", "train", batch_size=8, train=True, seed=0)
  assert p.num_examples == 20 and len(p) == 2 and p.image_shape == (28, 28, 1)
  batches = list(p)
  assert len(batches) == 2
  x, y = batches[0]
  assert x.shape == (8, 28, 28, 1) and x.dtype == np.float32
  assert y.shape == (8,) and y.dtype == np.int32
  assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
  assert ((0 <= y) & (y < 10)).all()
  source = tfds.data_source("mnist", split="train", download=False)
  idx = p.indices(0)[:8]
  np.testing.assert_allclose(x, np.stack([source[int(i)]["image"] / 255.0 for i in idx]))
  np.testing.assert_array_equal(y, [source[int(i)]["label"] for i in idx])
  # Deterministic per (seed, epoch); epochs differ.
  again = list(p.batches(0))
  for (a, b), (c, d) in zip(batches, again):
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, d)
  assert not np.array_equal(p.indices(0), p.indices(1))
  # Eval: no shuffle, no drop: every example exactly once, in order.
  e = D.load_tfds("mnist", "test", batch_size=8, train=False)
  labels = np.concatenate([lab for _, lab in e])
  assert len(e) == 3 and labels.shape == (20,)
  np.testing.assert_array_equal(e.indices(0), np.arange(20))


def test_tfds_cifar10_mock(mock_tfds):
  source = tfds.data_source("cifar10", split="train", download=False)
  ev = D.load_tfds("cifar10", "train", batch_size=5, train=False)
  x, y = next(iter(ev))
  assert x.shape == (5, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
  raw = np.stack([source[i]["image"] for i in range(5)]).astype(np.float32) / 255.0
  np.testing.assert_allclose(x, (raw - D.CIFAR10_MEAN) / D.CIFAR10_STD, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(x * D.CIFAR10_STD + D.CIFAR10_MEAN, raw, atol=1e-5)

  tr = D.load_tfds("cifar10", "train", batch_size=5, train=True, seed=7)
  batches = list(tr.batches(epoch=3))
  assert len(batches) == 4
  order = tr.indices(3)
  pad_value = (0.0 - D.CIFAR10_MEAN) / D.CIFAR10_STD
  n_changed = 0
  for b, (xb, yb) in enumerate(batches):
    assert xb.shape == (5, 32, 32, 3) and xb.dtype == np.float32
    for j in range(5):
      i = int(order[b * 5 + j])
      assert yb[j] == source[i]["label"]
      img = source[i]["image"].astype(np.float32) / 255.0
      padded = (np.pad(img, ((4, 4), (4, 4), (0, 0))) - D.CIFAR10_MEAN) / D.CIFAR10_STD
      padded[:4], padded[-4:], padded[:, :4], padded[:, -4:] = (pad_value,) * 4
      # The augmented image must be a (possibly flipped) 32x32 window.
      matches = [
        (dy, dx, f)
        for dy in range(9)
        for dx in range(9)
        for f in (False, True)
        if np.allclose(
          (
            padded[dy : dy + 32, dx : dx + 32][:, ::-1] if f else padded[dy : dy + 32, dx : dx + 32]
          ),
          xb[j],
          atol=1e-5,
        )
      ]
      assert matches, "augmented image is not a crop/flip of the padded image"
      n_changed += (4, 4, False) not in matches
  assert n_changed > 5  # augmentation actually happens
  # Deterministic given (seed, epoch).
  np.testing.assert_array_equal(next(iter(tr.batches(epoch=3)))[0], batches[0][0])
  np.testing.assert_array_equal(next(iter(tr.batches(epoch=3, start_batch=2)))[0], batches[2][0])
  # Threads give identical results.
  tr4 = D.load_tfds("cifar10", "train", batch_size=5, train=True, seed=7, num_threads=4)
  np.testing.assert_array_equal(list(tr4.batches(epoch=3))[1][0], batches[1][0])


def test_tfds_imagenet_mock(mock_tfds):
  tr = D.load_tfds("imagenet2012", "train", batch_size=4, train=True, image_size=24)
  x, y = next(iter(tr))
  assert x.shape == (4, 24, 24, 3) and x.dtype == np.float32 and y.dtype == np.int32
  assert np.isfinite(x).all() and ((0 <= y) & (y < 1000)).all()
  ev = D.load_tfds("imagenet2012", "validation", batch_size=4, train=False, image_size=24)
  x, _ = next(iter(ev))
  assert x.shape == (4, 24, 24, 3)
  lo = (0 - D.IMAGENET_MEAN) / D.IMAGENET_STD
  hi = (1 - D.IMAGENET_MEAN) / D.IMAGENET_STD
  assert (x >= lo - 1e-4).all() and (x <= hi + 1e-4).all()


def test_tfds_host_sharding(mock_tfds):
  kw = dict(batch_size=3, train=True, seed=1, process_count=3)
  shards = [D.load_tfds("mnist", "train", process_index=k, **kw) for k in range(3)]
  assert all(s.num_examples == 6 and len(s) == 2 for s in shards)
  idx = [s.indices(5) for s in shards]
  allidx = np.concatenate(idx)
  assert len(np.unique(allidx)) == 18
  ev = [
    D.load_tfds("mnist", "test", batch_size=4, train=False, process_index=k, process_count=3)
    for k in range(3)
  ]
  assert [e.num_examples for e in ev] == [7, 7, 6]
  assert sorted(np.concatenate([e.indices(0) for e in ev]).tolist()) == list(range(20))


def test_tfds_bad_arguments(mock_tfds):
  with pytest.raises(ValueError, match="valid names.*cifar10"):
    D.load_tfds("svhn", "train", batch_size=2, train=True)
  with pytest.raises(ValueError, match="valid names"):
    D.load_tfds("mnist5k", "train", batch_size=2, train=True)
  with pytest.raises(ValueError, match="batch_size"):
    D.load_tfds("mnist", "train", batch_size=0, train=True)
  with pytest.raises(ValueError, match="image_size"):
    D.load_tfds("cifar10", "train", batch_size=2, train=True, image_size=64)
  with pytest.raises(ValueError, match="process_index"):
    D.load_tfds("mnist", "train", batch_size=2, train=True, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="no batch"):
    D.load_tfds("mnist", "train", batch_size=64, train=True)


@pytest.mark.parametrize(
  "name,hint",
  [("mnist", "tfds build mnist"), ("cifar10", "tfds build cifar10"), ("imagenet2012", "manual")],
)
def test_tfds_not_prepared_fails_fast(tmp_path, name, hint):
  start = time.monotonic()
  with pytest.raises(D.DatasetNotPreparedError) as err:
    D.load_tfds(name, "train", data_dir=str(tmp_path), batch_size=8, train=True)
  assert time.monotonic() - start < 10
  msg = str(err.value)
  assert hint in msg and "--file_format=array_record" in msg and str(tmp_path) in msg
  assert isinstance(err.value, FileNotFoundError)
  assert list(tmp_path.iterdir()) == []  # nothing downloaded or created


# ------------------------------------------- real ArrayRecord data (no mocks)


def _encode(image, fmt):
  buf = io.BytesIO()
  Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buf, format=fmt)
  return buf.getvalue()


def _prepare_fake(data_dir, name, version, features, splits):
  """Writes a small ArrayRecord dataset in the on-disk format of `name`.

  Generation is TensorFlow-free because images are passed pre-encoded. The
  registered TFDS builder of `name` then reads it like the real dataset.
  """

  class Fake(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(version)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
      return {k: self._generate_examples(v) for k, v in splits.items()}

    def _generate_examples(self, examples):
      yield from enumerate(examples)

  Fake.name = name
  Fake(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


@pytest.fixture(scope="module")
def real_tfds_dir(tmp_path_factory, mnist5k):
  root = tmp_path_factory.mktemp("tfds")
  d = mnist5k
  to_u8 = lambda x: np.round(x * 255).astype(np.uint8)  # noqa: E731
  _prepare_fake(
    root,
    "mnist",
    "3.0.1",
    tfds.features.FeaturesDict(
      {
        "image": tfds.features.Image(shape=(28, 28, 1)),
        "label": tfds.features.ClassLabel(num_classes=10),
      }
    ),
    {
      "train": [
        {"image": _encode(to_u8(x), "PNG"), "label": int(y)}
        for x, y in zip(d.train_images[:120], d.train_labels[:120])
      ],
      "test": [
        {"image": _encode(to_u8(x), "PNG"), "label": int(y)}
        for x, y in zip(d.test_images[:50], d.test_labels[:50])
      ],
    },
  )
  rng = np.random.default_rng(0)
  imgs = [
    rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    for h, w in [(40, 60), (75, 33), (50, 50), (90, 120)]
  ]
  _prepare_fake(
    root,
    "imagenet2012",
    "5.1.0",
    tfds.features.FeaturesDict(
      {
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(num_classes=1000),
        "file_name": tfds.features.Text(),
      }
    ),
    {
      split: [
        {"image": _encode(x, "JPEG"), "label": 7 * i, "file_name": f"{i}.JPEG"}
        for i, x in enumerate(imgs)
      ]
      for split in ("train", "validation")
    },
  )
  return root, d


def test_tfds_real_arrayrecord_mnist(real_tfds_dir, monkeypatch):
  root, d = real_tfds_dir
  monkeypatch.setenv("TFDS_DATA_DIR", str(root))  # data_dir=None -> $TFDS_DATA_DIR
  ev = D.load_tfds("mnist", "train", batch_size=32, train=False)
  batches = list(ev)
  assert [len(y) for _, y in batches] == [32, 32, 32, 24]
  x = np.concatenate([b[0] for b in batches])
  y = np.concatenate([b[1] for b in batches])
  assert x.dtype == np.float32 and x.shape == (120, 28, 28, 1) and y.dtype == np.int32
  # Exactly the images (and labels) that were written, each once.
  want = {xi.tobytes(): yi for xi, yi in zip(d.train_images[:120], d.train_labels[:120])}
  got = {xi.tobytes(): yi for xi, yi in zip(x, y)}
  assert got == want
  tr = D.load_tfds("mnist", "train", data_dir=str(root), batch_size=32, train=True, num_threads=2)
  assert len(tr) == 3
  xs = [b[0] for b in tr.batches(2)]
  np.testing.assert_array_equal(xs[1], list(tr.batches(2, start_batch=1))[0][0])


def test_tfds_real_arrayrecord_imagenet_jpeg(real_tfds_dir):
  root, _ = real_tfds_dir
  for split, train in [("train", True), ("validation", False)]:
    p = D.load_tfds(
      "imagenet2012", split, data_dir=str(root), batch_size=2, train=train, image_size=32
    )
    for x, y in p:
      assert x.shape == (2, 32, 32, 3) and x.dtype == np.float32 and np.isfinite(x).all()
      assert set(y.tolist()) <= {0, 7, 14, 21}


def test_tfds_real_arrayrecord_incomplete(real_tfds_dir, tmp_path):
  import shutil

  root, _ = real_tfds_dir
  # Prepared in a non random-access format.
  shutil.copytree(root / "mnist", tmp_path / "a" / "mnist")
  info = tmp_path / "a" / "mnist" / "3.0.1" / "dataset_info.json"
  info.write_text(info.read_text().replace('"array_record"', '"tfrecord"'))
  with pytest.raises(D.DatasetNotPreparedError, match="(?s)random-access.*tfds build mnist"):
    D.load_tfds("mnist", "train", data_dir=str(tmp_path / "a"), batch_size=4, train=True)
  # Data files missing (e.g. an incomplete copy).
  shutil.copytree(root / "mnist", tmp_path / "b" / "mnist")
  for f in (tmp_path / "b" / "mnist" / "3.0.1").glob("mnist-train.array_record*"):
    f.unlink()
  with pytest.raises(D.DatasetNotPreparedError, match="(?s)missing.*tfds build mnist"):
    D.load_tfds("mnist", "train", data_dir=str(tmp_path / "b"), batch_size=4, train=True)
  # The test split is still complete.
  assert (
    len(D.load_tfds("mnist", "test", data_dir=str(tmp_path / "b"), batch_size=4, train=False)) == 13
  )


def test_grain_over_real_arrayrecord_sources(real_tfds_dir, tmp_path):
  """The grain graph reads the same prepared sources; mnist batches equal TfdsPipeline's."""
  root, _ = real_tfds_dir
  base, src = D.open_tfds_source("mnist", "train", str(root))
  assert base == "mnist" and len(src) == 120
  pipe = D.GrainPipeline(src, batch_size=32, train=False, transform=D.ImageTransform(base, 28))
  old = D.load_tfds("mnist", "train", data_dir=str(root), batch_size=32, train=False)
  norm = D.Normalize(base)
  got, want = list(pipe.epoch(0)), list(old)
  assert [len(y) for _, y in got] == [32, 32, 32, 24]
  for (gx, gy), (wx, wy) in zip(got, want):
    assert gx.dtype == np.uint8
    np.testing.assert_allclose(norm(gx), wx, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(gy, wy)
  base, src = D.open_tfds_source("imagenet2012", "train", str(root))
  pipe = D.GrainPipeline(
    src, batch_size=2, train=True, seed=1, transform=D.ImageTransform(base, 32)
  )
  for x, y in pipe.epoch(0):
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.uint8
    assert set(y.tolist()) <= {0, 7, 14, 21}
  with pytest.raises(D.DatasetNotPreparedError, match="tfds build cifar10"):
    D.open_tfds_source("cifar10", "train", str(tmp_path))
