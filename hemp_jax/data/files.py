"""Datasets from local files: the IDX files of MNIST / Fashion-MNIST, and a user's ``.npz``.

IDX (the format MNIST ships in): two zero bytes, a type byte (``0x08`` = uint8), the number
of dimensions, each dimension as a big-endian uint32, then the values in C order. The
files may be gzip-compressed (``.gz``) or raw. A folder holds the four standard files
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte`` (each with or without ``.gz``).

Where a folder is looked for (:func:`find_idx_dir`): the ``data_dir`` given, then
``$HEMP_DATA_DIR``, then the folders of the Debian packages (``apt-get install
dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``); in each, the
folder itself and its subfolder named after the dataset.

``npz:PATH``: an ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``; images
uint8 (divided by 255) or float (taken as they are), NHWC or NHW (one channel added).
"""

from __future__ import annotations

import gzip
import os
from typing import Tuple

import numpy as np

from hemp_jax.data.offline import Dataset

__all__ = [
  "NPZ_PREFIX",
  "IDX_DATASETS",
  "IDX_FILES",
  "find_idx_dir",
  "load_idx_dataset",
  "load_npz_dataset",
  "read_idx",
  "validation_split",
]

#: ``dataset = NPZ_PREFIX + path``: a user's arrays (:func:`load_npz_dataset`).
NPZ_PREFIX = "npz:"
#: The dataset names read from IDX files, and the Debian package that installs each.
IDX_DATASETS = {"fashion_mnist": "dataset-fashion-mnist", "mnist": None}
#: The four files of a folder: (split, what) -> base name (``.gz`` or raw).
IDX_FILES = {
  ("train", "images"): "train-images-idx3-ubyte",
  ("train", "labels"): "train-labels-idx1-ubyte",
  ("test", "images"): "t10k-images-idx3-ubyte",
  ("test", "labels"): "t10k-labels-idx1-ubyte",
}
_SYSTEM_DIRS = ("/usr/share/datasets",)
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
  """The array in an IDX file (``.gz`` or raw).

  Raises:
    ValueError: the file is not IDX, is truncated or has bytes beyond its data (the
      message names the file).
  """
  with open(path, "rb") as f:
    data = f.read()
  if data[:2] == b"\x1f\x8b":
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError) as e:
      raise ValueError(f"{path}: damaged gzip file ({e})") from None
  if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_TYPES:
    raise ValueError(f"{path}: not an IDX file (wrong magic number {data[:4].hex()})")
  ndim = data[3]
  head = 4 + 4 * ndim
  if ndim == 0 or len(data) < head:
    raise ValueError(f"{path}: truncated IDX header")
  shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
  dtype = np.dtype(_IDX_TYPES[data[2]])
  size = int(np.prod(shape)) * dtype.itemsize
  if len(data) - head != size:
    what = "truncated" if len(data) - head < size else "longer than its header says"
    raise ValueError(
      f"{path}: {what} (shape {shape} needs {size} bytes of data, found {len(data) - head})"
    )
  return np.frombuffer(data, dtype, offset=head).reshape(shape).astype(dtype.newbyteorder("="))


def _has_files(folder: str) -> bool:
  return all(
    os.path.isfile(os.path.join(folder, base)) or os.path.isfile(os.path.join(folder, base + ".gz"))
    for base in IDX_FILES.values()
  )


def _candidates(name: str, data_dir: str | None) -> list[str]:
  roots = [d for d in (data_dir, os.environ.get("HEMP_DATA_DIR")) if d]
  roots += [os.path.join(d, name.replace("_", "-")) for d in _SYSTEM_DIRS]
  out = []
  for root in roots:
    out += [root, os.path.join(root, name), os.path.join(root, name.replace("_", "-"))]
  return out


def find_idx_dir(name: str, data_dir: str | None = None) -> str | None:
  """The first folder holding the four IDX files of ``name`` (see the module docstring)."""
  return next((d for d in _candidates(name, data_dir) if _has_files(d)), None)


def missing_message(name: str, data_dir: str | None = None) -> str:
  """One line: where the IDX files of ``name`` were looked for and how to get them."""
  where = ", ".join(dict.fromkeys(_candidates(name, data_dir)))
  package = IDX_DATASETS.get(name)
  how = f"`apt-get install {package}`, or " if package else ""
  return (
    f"dataset {name!r}: no folder with its four IDX files (train-images-idx3-ubyte[.gz], "
    f"...) in {where}; {how}put them in a folder and set config.data_dir or $HEMP_DATA_DIR"
  )


def _file(folder: str, split: str, what: str) -> str:
  base = os.path.join(folder, IDX_FILES[(split, what)])
  return base if os.path.isfile(base) else base + ".gz"


def _split_arrays(folder: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
  images = read_idx(_file(folder, split, "images"))
  labels = read_idx(_file(folder, split, "labels"))
  if images.ndim != 3 or labels.ndim != 1:
    raise ValueError(
      f"{_file(folder, split, 'images')}: expected (N, H, W) images and (N,) labels, found "
      f"{images.shape} and {labels.shape}"
    )
  if images.shape[0] != labels.shape[0]:
    raise ValueError(
      f"{_file(folder, split, 'labels')}: {labels.shape[0]} labels for "
      f"{images.shape[0]} images in {_file(folder, split, 'images')}"
    )
  return images, labels


def load_idx_dataset(name: str, data_dir: str | None = None) -> Dataset:
  """The train and test splits of an IDX dataset, images ``float32`` in [0, 1], NHWC.

  Raises:
    FileNotFoundError: no folder with the four files (the message says where it looked
      and what to install).
    ValueError: a file is malformed.
  """
  folder = find_idx_dir(name, data_dir)
  if folder is None:
    raise FileNotFoundError(missing_message(name, data_dir))
  (xtr, ytr), (xte, yte) = _split_arrays(folder, "train"), _split_arrays(folder, "test")
  return Dataset(
    _images(xtr, folder), ytr.astype(np.int32), _images(xte, folder), yte.astype(np.int32)
  )


def _images(x: np.ndarray, where: str) -> np.ndarray:
  """uint8 images / 255, float images as they are; NHW gets a channel axis."""
  if x.dtype == np.uint8:
    x = x.astype(np.float32) / np.float32(255.0)
  elif x.dtype.kind == "f":
    x = x.astype(np.float32)
  else:
    raise ValueError(f"{where}: images must be uint8 or float, found {x.dtype}")
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4:
    raise ValueError(f"{where}: images must be (N, H, W) or (N, H, W, C), found {x.shape}")
  return x


def load_npz_dataset(path: str) -> Dataset:
  """A user's dataset from an ``.npz`` (see the module docstring).

  Raises:
    FileNotFoundError: no file at ``path``.
    ValueError: a missing array, or arrays of the wrong shape or type (named).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"npz:{path}: no such file")
  try:
    z = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ValueError(f"npz:{path}: not a readable .npz file ({e})") from None
  with z:
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
    if missing:
      raise ValueError(f"npz:{path}: missing array(s) {', '.join(missing)} (has {z.files})")
    arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
  out = []
  for split in ("train", "test"):
    x = _images(arrays[f"x_{split}"], f"npz:{path} x_{split}")
    y = arrays[f"y_{split}"]
    if y.ndim != 1 or y.dtype.kind not in "iu" or y.shape[0] != x.shape[0]:
      raise ValueError(
        f"npz:{path}: y_{split} must be integer labels, one per image of x_{split} "
        f"({x.shape[0]}), found {y.dtype} {y.shape}"
      )
    if y.size and y.min() < 0:
      raise ValueError(f"npz:{path}: y_{split} has negative labels")
    out += [x, y.astype(np.int32)]
  if out[0].shape[1:] != out[2].shape[1:]:
    raise ValueError(f"npz:{path}: train images {out[0].shape[1:]} vs test {out[2].shape[1:]}")
  return Dataset(*out)


def validation_split(labels: np.ndarray, size: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
  """A fixed, stratified validation part of a training set: ``(train_idx, val_idx)``.

  Each class gives ``round(size * its share)`` examples (the largest remainders make up
  the total), drawn with ``default_rng((seed, class))``, so the split depends on the
  labels and ``seed`` only — the same for every run, model and method. Both index arrays
  are sorted.

  Raises:
    ValueError: ``size`` is not in ``[0, len(labels))`` or would empty a class.
  """
  labels = np.asarray(labels)
  n = labels.shape[0]
  if not 0 <= int(size) < n:
    raise ValueError(f"validation size must be in [0, {n}), got {size}")
  classes, counts = np.unique(labels, return_counts=True)
  exact = size * counts / n
  take = np.floor(exact).astype(int)
  short = int(size) - int(take.sum())
  take[np.argsort(-(exact - take), kind="stable")[:short]] += 1
  if ((counts - take) < 1).any():
    raise ValueError(f"validation size {size} leaves a class without training examples")
  val = []
  for c, k in zip(classes, take):
    idx = np.flatnonzero(labels == c)
    val.append(np.random.default_rng((seed, int(c))).permutation(idx)[:k])
  val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
  mask = np.ones(n, bool)
  mask[val] = False
  return np.flatnonzero(mask), val
