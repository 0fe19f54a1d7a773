"""The grain input pipeline: order, host shards, uint8 transforms, workers, iterator state,
and the training loop's mid-epoch resume and throughput metrics."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from hemp_jax import data as D
from hemp_jax import train
from hemp_jax.train import loop

DEFAULT_CONFIG = os.path.join(
  os.path.dirname(__file__), "..", "experiments", "configs", "default.py"
)


@pytest.fixture(scope="module")
def digits():
  return D.load_digits_dataset()


def test_offline_graph_is_iterate_batches(digits):
  """The grain graph over the in-memory set gives today's batches, bitwise, any epoch."""
  src = D.ArraySource(digits.train_images, digits.train_labels)
  pipe = D.GrainPipeline(src, batch_size=64, train=True, seed=3)
  assert len(pipe) == len(digits.train_labels) // 64
  for epoch in (0, 5):
    got = list(pipe.epoch(epoch))
    want = list(
      D.iterate_batches(digits.train_images, digits.train_labels, 64, rng_seed=3, epoch=epoch)
    )
    assert len(got) == len(want)
    for (gx, gy), (wx, wy) in zip(got, want):
      np.testing.assert_array_equal(gx, wx)
      np.testing.assert_array_equal(gy, wy)
  ev = D.GrainPipeline(src, batch_size=100, train=False, options=D.PipelineOptions(num_threads=0))
  sizes = [len(y) for _, y in ev.epoch(0)]
  assert sizes == [100] * 14 + [47]  # 1447 examples in order, last batch partial


def test_host_shards_assemble_the_single_process_batch():
  n, batch, steps = 103, 12, 8
  one = D.host_indices(n, batch_size=batch, num_batches=steps, seed=1, epoch=2, shuffle=True)
  assert sorted(one) == sorted(set(one)) and len(one) == batch * steps
  for count in (2, 3, 4):
    parts = [
      D.host_indices(
        n,
        batch_size=batch,
        num_batches=steps,
        seed=1,
        epoch=2,
        shuffle=True,
        process_index=p,
        process_count=count,
      ).reshape(steps, batch // count)
      for p in range(count)
    ]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1).reshape(-1), one)
  with pytest.raises(ValueError, match="multiple of 5"):
    D.host_indices(
      n,
      batch_size=12,
      num_batches=2,
      seed=0,
      epoch=0,
      shuffle=False,
      process_index=0,
      process_count=5,
    )


def test_cifar_uint8_transform_plus_normalize_is_the_float_preprocessing():
  from hemp_jax.data.transforms import _preprocess_cifar10

  img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  t, norm = D.ImageTransform("cifar10", 32), D.Normalize("cifar10")
  for seed in range(6):
    out = t(img, np.random.default_rng(seed))
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
    want = _preprocess_cifar10(img, np.random.default_rng(seed), True, 32)
    np.testing.assert_allclose(norm(out[None])[0], want, atol=2e-6)
    got_dev = norm(jnp.asarray(out[None]))  # the same function on the device
    np.testing.assert_allclose(np.asarray(got_dev)[0], want, atol=2e-6)
  np.testing.assert_array_equal(t(img, None), img)


def test_imagenet_uint8_transform_is_an_antialiased_crop_resize():
  """PIL's bilinear resize of the sampled box == jax.image.resize(antialias=True) of it."""
  rng0 = np.random.default_rng(1)
  img = rng0.integers(0, 256, (7, 8, 3)).astype(np.float32)  # smooth: upsampled noise
  img = np.asarray(jax.image.resize(img, (350, 420, 3), "linear"))
  img = np.clip(np.round(img), 0, 255).astype(np.uint8)
  t = D.ImageTransform("imagenet2012", 64)
  for seed in range(3):
    out = t(img, np.random.default_rng(seed))
    r = np.random.default_rng(seed)
    top, left, h, w = D.sample_crop_box(350, 420, r)
    crop = img[top : top + h, left : left + w].astype(np.float32)
    want = np.asarray(jax.image.resize(crop, (64, 64, 3), "bilinear", antialias=True))
    if r.random() < 0.5:
      want = want[:, ::-1]
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    # Inside the border (PIL reads the true neighbours outside the box, jax clamps).
    err = np.abs(out - want)[2:-2, 2:-2]
    assert np.mean(err) < 0.5 and np.max(err) < 2
  ev = t(img, None)  # eval: shorter side to 73, central 64 crop
  assert ev.shape == (64, 64, 3) and ev.dtype == np.uint8
  full = np.asarray(jax.image.resize(img.astype(np.float32), (73, 88, 3), "bilinear"))
  assert np.mean(np.abs(ev - full[4:68, 12:76])) < 2.0


def test_workers_give_the_in_process_batches_and_resume_bitwise(digits):
  src = D.ArraySource(digits.train_images[:640], digits.train_labels[:640])
  make = lambda workers: D.GrainPipeline(  # noqa: E731
    src, batch_size=32, train=True, seed=0, options=D.PipelineOptions(worker_count=workers)
  )
  ref = list(make(0).epoch(1))
  it = make(2).epoch(1)
  got = [next(it) for _ in range(7)]
  state = it.get_state()
  got += list(it)
  it.close()
  assert len(got) == len(ref) == 20
  for (gx, gy), (rx, ry) in zip(got, ref):
    np.testing.assert_array_equal(gx, rx)
    np.testing.assert_array_equal(gy, ry)
  it2 = make(2).epoch(1)
  it2.set_state(state)
  rest = list(it2)
  it2.close()
  assert len(rest) == 13
  for (gx, _), (rx, _) in zip(rest, ref[7:]):
    np.testing.assert_array_equal(gx, rx)


# ------------------------------------------------------------------ the training loop


def _digits_config(**over):
  from hemp_jax.train.config import load_python_file

  c = load_python_file(DEFAULT_CONFIG, "hemp_default_config_t").get_config()
  c.model = "lenet_300_100"
  c.model_kwargs = ml_collections.ConfigDict({"in_features": 64})
  c.dataset = "digits"
  c.batch_size = 32
  c.eval_batch_size = 350
  c.num_epochs = 2
  c.max_steps_per_epoch = 5
  c.qat_epochs = 0
  c.progress = False
  c.hemp.order = 2
  c.checkpoint_every_steps = 2  # mid-epoch saves after batches 2 and 4
  c.update(over)
  return c


class _Stop(Exception):
  pass


_FEED = loop.device_batches


def _recording_feed(seen, stop_after=None):
  def feed(host_iter, put, ahead=2):
    for item in _FEED(host_iter, put, ahead):
      if stop_after is not None and len(seen) == stop_after:
        raise _Stop()
      seen.append(np.asarray(item[0]).copy())
      yield item

  return feed


def test_mid_epoch_resume_reads_the_same_batches_and_ends_equal(tmp_path, monkeypatch):
  config = _digits_config()
  full_seen, first_seen, rest_seen = [], [], []
  monkeypatch.setattr(loop, "device_batches", _recording_feed(full_seen))
  full = train.train_and_evaluate(config, str(tmp_path / "full"))
  assert len(full_seen) == 10
  # Stopped after batch 2 of epoch 2 (7 batches trained, the 8th never reaches the step).
  monkeypatch.setattr(loop, "device_batches", _recording_feed(first_seen, stop_after=7))
  with pytest.raises(_Stop):
    train.train_and_evaluate(config, str(tmp_path / "cut"))
  monkeypatch.setattr(loop, "device_batches", _recording_feed(rest_seen))
  resumed = train.train_and_evaluate(config, str(tmp_path / "cut"))
  assert len(first_seen) == 7 and len(rest_seen) == 3
  for a, b in zip(first_seen + rest_seen, full_seen):
    np.testing.assert_array_equal(a, b)  # the same remaining batches, bitwise
  _, s_full = train.load_final_state(config, str(tmp_path / "full"))
  _, s_cut = train.load_final_state(config, str(tmp_path / "cut"))
  for x, y in zip(jax.tree.leaves(s_full), jax.tree.leaves(s_cut)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert resumed["file_bytes"] == full["file_bytes"]
  # The grain position is in the checkpoints; every metrics line carries the throughput.
  steps = sorted(os.listdir(tmp_path / "cut" / "checkpoints"))
  assert os.path.isfile(
    tmp_path / "cut" / "checkpoints" / steps[-1] / "data" / "process_0-of-1.json"
  )
  with open(tmp_path / "full" / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["epoch"] for r in rows] == [1, 2]
  for r in rows:
    assert r["examples_per_s"] > 0 and 0 <= r["input_wait_fraction"] < 1
