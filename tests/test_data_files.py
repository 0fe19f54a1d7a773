"""Datasets from local files: the IDX reader, npz datasets and the validation split."""

import gzip
import json
import os

import numpy as np
import pytest

from hemp_jax.data import files


def _idx(array: np.ndarray) -> bytes:
  code = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}[array.dtype.type]
  dims = np.asarray(array.shape, ">u4").tobytes()
  return (
    bytes([0, 0, code, array.ndim]) + dims + array.astype(array.dtype.newbyteorder(">")).tobytes()
  )


def _write_set(folder, n_train=30, n_test=10, gz=True, seed=0):
  rng = np.random.default_rng(seed)
  arrays = {
    ("train", "images"): rng.integers(0, 256, (n_train, 6, 5), dtype=np.uint8),
    ("train", "labels"): np.arange(n_train, dtype=np.uint8) % 3,
    ("test", "images"): rng.integers(0, 256, (n_test, 6, 5), dtype=np.uint8),
    ("test", "labels"): np.arange(n_test, dtype=np.uint8) % 3,
  }
  os.makedirs(folder, exist_ok=True)
  for key, a in arrays.items():
    name = os.path.join(folder, files.IDX_FILES[key] + (".gz" if gz else ""))
    with open(name, "wb") as f:
      f.write(gzip.compress(_idx(a)) if gz else _idx(a))
  return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dataset_from_a_folder(tmp_path, gz):
  arrays = _write_set(tmp_path / "fashion_mnist", gz=gz)
  ds = files.load_idx_dataset("fashion_mnist", str(tmp_path))
  assert ds.train_images.shape == (30, 6, 5, 1) and ds.train_images.dtype == np.float32
  np.testing.assert_array_equal(ds.train_images[..., 0] * 255, arrays[("train", "images")])
  np.testing.assert_array_equal(ds.test_labels, arrays[("test", "labels")])
  assert ds.test_labels.dtype == np.int32


def test_idx_other_types_round_trip(tmp_path):
  a = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
  (tmp_path / "x").write_bytes(_idx(a))
  np.testing.assert_array_equal(files.read_idx(str(tmp_path / "x")), a)


def test_idx_dir_from_environment(tmp_path, monkeypatch):
  _write_set(tmp_path / "mnist")
  monkeypatch.setenv("HEMP_DATA_DIR", str(tmp_path))
  assert files.find_idx_dir("mnist") == str(tmp_path / "mnist")
  assert files.find_idx_dir("mnist", str(tmp_path / "elsewhere")) == str(tmp_path / "mnist")


def test_missing_folder_is_one_line_with_the_command(tmp_path, monkeypatch):
  monkeypatch.delenv("HEMP_DATA_DIR", raising=False)
  monkeypatch.setattr(files, "_SYSTEM_DIRS", (str(tmp_path / "system"),))
  with pytest.raises(FileNotFoundError) as e:
    files.load_idx_dataset("fashion_mnist", str(tmp_path / "nope"))
  msg = str(e.value)
  assert "\n" not in msg and "apt-get install dataset-fashion-mnist" in msg
  assert str(tmp_path / "nope") in msg


@pytest.mark.parametrize(
  "damage,piece",
  [
    (lambda b: b"\x00\x01" + b[2:], "not an IDX file"),
    (lambda b: b[:-7], "truncated"),
    (lambda b: b + b"xx", "longer than its header says"),
    (lambda b: b[:6], "truncated IDX header"),
  ],
)
def test_malformed_idx_names_the_file(tmp_path, damage, piece):
  _write_set(tmp_path, gz=False)
  name = tmp_path / files.IDX_FILES[("train", "images")]
  name.write_bytes(damage(name.read_bytes()))
  with pytest.raises(ValueError) as e:
    files.load_idx_dataset("mnist", str(tmp_path))
  assert str(name) in str(e.value) and piece in str(e.value)


def test_label_count_mismatch(tmp_path):
  _write_set(tmp_path, gz=False)
  name = tmp_path / files.IDX_FILES[("test", "labels")]
  name.write_bytes(_idx(np.zeros(9, np.uint8)))
  with pytest.raises(ValueError, match="9 labels for 10 images"):
    files.load_idx_dataset("mnist", str(tmp_path))


def test_npz_dataset(tmp_path):
  rng = np.random.default_rng(1)
  xtr = rng.integers(0, 256, (20, 4, 4), dtype=np.uint8)
  xte = rng.normal(size=(5, 4, 4, 1)).astype(np.float32)
  np.savez(
    tmp_path / "d.npz",
    x_train=xtr,
    y_train=np.arange(20) % 2,
    x_test=xte,
    y_test=np.zeros(5, np.int64),
  )
  ds = files.load_npz_dataset(str(tmp_path / "d.npz"))
  np.testing.assert_allclose(ds.train_images[..., 0], xtr / 255, rtol=1e-6)
  np.testing.assert_array_equal(ds.test_images, xte)  # float images as they are
  assert ds.train_labels.dtype == np.int32
  np.savez(tmp_path / "bad.npz", x_train=xtr, y_train=np.arange(19), x_test=xte, y_test=np.zeros(5))
  with pytest.raises(ValueError, match="y_train must be integer labels, one per image"):
    files.load_npz_dataset(str(tmp_path / "bad.npz"))
  np.savez(tmp_path / "short.npz", x_train=xtr)
  with pytest.raises(ValueError, match="missing array"):
    files.load_npz_dataset(str(tmp_path / "short.npz"))


def test_validation_split_is_disjoint_fixed_and_stratified():
  labels = np.repeat(np.arange(10), [600, 600, 600, 600, 600, 600, 600, 600, 600, 500])
  labels = np.random.default_rng(3).permutation(labels)
  tr, va = files.validation_split(labels, 590)
  assert len(tr) + len(va) == labels.size and np.intersect1d(tr, va).size == 0
  assert len(va) == 590
  counts = np.bincount(labels[va], minlength=10)
  np.testing.assert_array_equal(counts, [60] * 9 + [50])  # shares 600/5900 and 500/5900
  tr2, va2 = files.validation_split(labels, 590)
  np.testing.assert_array_equal(va, va2)
  assert not np.array_equal(va, files.validation_split(labels, 590, seed=1)[1])
  with pytest.raises(ValueError):
    files.validation_split(labels, labels.size)


# ------------------------------------------------------------- through the trainer


def test_input_pipeline_holds_out_a_fixed_validation_split(tmp_path):
  from hemp_jax.train.input import input_pipeline

  _write_set(tmp_path / "fashion_mnist", n_train=60, n_test=12)
  kw = dict(batch_size=10, eval_batch_size=7, data_dir=str(tmp_path))
  pipes = [input_pipeline("fashion_mnist", validation_size=12, seed=s, **kw) for s in (0, 1)]
  for pipe in pipes:
    assert pipe.steps_per_epoch == 4 and pipe.image_shape == (6, 5, 1)
    val = [np.asarray(b[0]) for b in pipe.validation()]
    assert sum(len(v) for v in val) == 12
  # the same validation images for every seed, none of them in training
  v0, v1 = (np.concatenate([np.asarray(b[0]) for b in p.validation()]) for p in pipes)
  np.testing.assert_array_equal(v0, v1)
  train = np.concatenate([np.asarray(b[0]) for b in pipes[0].train(0, 0)])
  seen = {x.tobytes() for x in train}
  assert not any(x.tobytes() in seen for x in v0)
  assert input_pipeline("fashion_mnist", **kw).validation is None


def test_training_on_npz_data_reports_validation_and_test(tmp_path):
  from hemp_jax import train
  from hemp_jax.train.config import default_config

  rng = np.random.default_rng(0)
  y = np.arange(300) % 3
  x = (rng.normal(size=(300, 8, 8)) + y[:, None, None]).astype(np.float32)
  np.savez(tmp_path / "d.npz", x_train=x[:240], y_train=y[:240], x_test=x[240:], y_test=y[240:])
  c = default_config()
  c.model, c.model_kwargs = "lenet_300_100", {"in_features": 64}
  c.dataset, c.validation_size = f"npz:{tmp_path / 'd.npz'}", 30
  c.batch_size, c.eval_batch_size, c.num_epochs, c.progress = 28, 50, 2, False
  c.optimizer.name, c.optimizer.learning_rate = "adam", 1e-3
  c.hemp.mode = "none"
  summary = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert summary["validation_size"] == 30
  for key in ("validation_accuracy", "validation_accuracy_decoded", "test_accuracy_decoded"):
    assert 0.5 < summary[key] <= 1.0, summary
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert [("validation_accuracy" in r) for r in rows] == [True, True]
