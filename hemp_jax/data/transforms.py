"""Image transforms of the tfds pipelines.

Two families: the numpy float32 ops of :class:`~hemp_jax.data.tfds_source.TfdsPipeline`
(hand-written bilinear resampling, normalization on the host; kept as the reference and as
the benchmark's "old" pipeline), and the uint8 PIL ops of the grain graph
(:mod:`hemp_jax.data.pipeline`): crop and resize with PIL's antialiased bilinear filter,
flips with numpy, and normalization left to the device (:func:`normalize_fn`).
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from hemp_jax.data.common import (
  CIFAR10_MEAN,
  CIFAR10_STD,
  IMAGENET_EVAL_RESIZE_RATIO,
  IMAGENET_MEAN,
  IMAGENET_STD,
)


def _axis_weights(in_size: int, out_size: int):
  """Source indices and weights of 1-D bilinear resampling (half-pixel centers)."""
  src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
  src = np.clip(src, 0.0, in_size - 1)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, in_size - 1)
  w = (src - lo).astype(np.float32)
  return lo, hi, w


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes an ``(H, W, C)`` image with bilinear interpolation.

  Uses half-pixel centers and edge clamping, i.e. the same result as
  ``jax.image.resize(image, (height, width, C), 'bilinear', antialias=False)``
  and ``tf.image.resize(..., 'bilinear')`` (no anti-aliasing).

  Args:
      image: Array of shape ``(H, W, C)`` (any real dtype).
      height: Output height (positive).
      width: Output width (positive).

  Returns:
      The resized ``float32`` image of shape ``(height, width, C)``.

  Raises:
      ValueError: If the image is not 3-D or a size is not positive.
  """
  if image.ndim != 3:
    raise ValueError(f"image must have shape (H, W, C), got {image.shape}.")
  if height <= 0 or width <= 0:
    raise ValueError(f"Output size must be positive, got {(height, width)}.")
  image = np.asarray(image, np.float32)
  h, w, _ = image.shape
  if (h, w) == (height, width):
    return image
  y0, y1, wy = _axis_weights(h, height)
  x0, x1, wx = _axis_weights(w, width)
  wy = wy[:, None, None]
  rows = image[y0] * (1.0 - wy) + image[y1] * wy
  wx = wx[None, :, None]
  return rows[:, x0] * (1.0 - wx) + rows[:, x1] * wx


def random_resized_crop(
  image: np.ndarray,
  size: int,
  rng: np.random.Generator,
  *,
  area_range: Tuple[float, float] = (0.08, 1.0),
  aspect_ratio_range: Tuple[float, float] = (3 / 4, 4 / 3),
  max_attempts: int = 10,
) -> np.ndarray:
  """Inception-style random crop, resized to ``size x size``.

  Samples a crop covering a random fraction of the image area (in
  ``area_range``) with a log-uniform aspect ratio (in
  ``aspect_ratio_range``); if no valid crop is found in ``max_attempts``
  tries, falls back to the largest central crop with a valid aspect ratio.

  Args:
      image: ``(H, W, C)`` image.
      size: Output height and width.
      rng: Random generator.
      area_range: Range of the crop area relative to the image area.
      aspect_ratio_range: Range of the crop width / height.
      max_attempts: Number of sampling attempts before the fallback.

  Returns:
      The ``float32`` crop of shape ``(size, size, C)``.
  """
  top, left, ch, cw = sample_crop_box(
    image.shape[0],
    image.shape[1],
    rng,
    area_range=area_range,
    aspect_ratio_range=aspect_ratio_range,
    max_attempts=max_attempts,
  )
  return resize_bilinear(image[top : top + ch, left : left + cw], size, size)


def sample_crop_box(
  h: int,
  w: int,
  rng: np.random.Generator,
  *,
  area_range: Tuple[float, float] = (0.08, 1.0),
  aspect_ratio_range: Tuple[float, float] = (3 / 4, 4 / 3),
  max_attempts: int = 10,
) -> Tuple[int, int, int, int]:
  """The crop box of :func:`random_resized_crop`: ``(top, left, height, width)``.

  Args:
      h: Image height.
      w: Image width.
      rng: Random generator (the draws are the same as :func:`random_resized_crop`'s).
      area_range: Range of the crop area relative to the image area.
      aspect_ratio_range: Range of the crop width / height.
      max_attempts: Number of sampling attempts before the central fallback.

  Returns:
      ``(top, left, crop_height, crop_width)`` inside the image.
  """
  area = h * w
  log_lo, log_hi = math.log(aspect_ratio_range[0]), math.log(aspect_ratio_range[1])
  for _ in range(max_attempts):
    target_area = area * rng.uniform(*area_range)
    ratio = math.exp(rng.uniform(log_lo, log_hi))
    cw = int(round(math.sqrt(target_area * ratio)))
    ch = int(round(math.sqrt(target_area / ratio)))
    if 0 < cw <= w and 0 < ch <= h:
      top = int(rng.integers(0, h - ch + 1))
      left = int(rng.integers(0, w - cw + 1))
      return top, left, ch, cw
  in_ratio = w / h
  if in_ratio < aspect_ratio_range[0]:
    cw, ch = w, min(h, int(round(w / aspect_ratio_range[0])))
  elif in_ratio > aspect_ratio_range[1]:
    ch, cw = h, min(w, int(round(h * aspect_ratio_range[1])))
  else:
    cw, ch = w, h
  return (h - ch) // 2, (w - cw) // 2, ch, cw


def _resize_shorter_center_crop(image: np.ndarray, resize: int, crop: int) -> np.ndarray:
  """Aspect-preserving resize of the shorter side to ``resize``, then center crop."""
  h, w = image.shape[:2]
  scale = resize / min(h, w)
  nh, nw = max(crop, int(round(h * scale))), max(crop, int(round(w * scale)))
  image = resize_bilinear(image, nh, nw)
  top, left = (nh - crop) // 2, (nw - crop) // 2
  return image[top : top + crop, left : left + crop]


def _preprocess_mnist(image, rng, train, image_size):
  del rng, train, image_size
  return np.asarray(image, np.float32) / 255.0


def _pad_crop_flip(image: np.ndarray, rng) -> np.ndarray:
  """Zero ("black") padding by 4, a random 32x32 crop and a random horizontal flip (as
  torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip``), any dtype."""
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  top, left = (int(v) for v in rng.integers(0, 9, size=2))
  image = padded[top : top + 32, left : left + 32]
  if rng.random() < 0.5:
    image = image[:, ::-1]
  return image


def _preprocess_cifar10(image, rng, train, image_size):
  del image_size
  image = np.asarray(image, np.float32) / 255.0
  if train:
    image = _pad_crop_flip(image, rng)
  return (image - CIFAR10_MEAN) / CIFAR10_STD


def _preprocess_imagenet(image, rng, train, image_size):
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  if train:
    image = random_resized_crop(image, image_size, rng)
    if rng.random() < 0.5:
      image = image[:, ::-1]
  else:
    resize = int(round(image_size * IMAGENET_EVAL_RESIZE_RATIO))
    image = _resize_shorter_center_crop(image, resize, image_size)
  return (image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


PREPROCESSORS = {
  "mnist": _preprocess_mnist,
  "cifar10": _preprocess_cifar10,
  "imagenet2012": _preprocess_imagenet,
}


# ---------------------------------------------------------------------------
# uint8 transforms of the grain graph (PIL resampling; normalization on the device).
# ---------------------------------------------------------------------------


def _rgb(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return image


def _pil_resize(image: np.ndarray, box: Tuple[int, int, int, int], height: int, width: int):
  """Crops ``box`` = ``(top, left, h, w)`` (floats allowed) of a uint8 ``(H, W, 3)`` image and resizes it
  to ``(height, width)`` with PIL's antialiased bilinear filter, in one PIL call."""
  from PIL import Image  # Local: only the grain transforms need PIL.

  top, left, h, w = box
  pil = Image.fromarray(np.ascontiguousarray(image))
  out = pil.resize((width, height), Image.BILINEAR, box=(left, top, left + w, top + h))
  return np.asarray(out)


class ImageTransform:
  """Per-example uint8 transform of a tfds dataset for the grain graph (picklable).

  Produces the same geometry as :class:`~hemp_jax.data.tfds_source.TfdsPipeline`'s numpy
  preprocessing (the same random draws from ``rng``) but keeps pixels ``uint8``; the
  per-channel normalization is :func:`normalize_fn`, applied on the device.

  * ``'mnist'``: unchanged.
  * ``'cifar10'``: train: 4-pixel zero padding, random 32x32 crop, random flip.
  * ``'imagenet2012'``: train: random resized crop (:func:`sample_crop_box`) to
    ``image_size`` with PIL bilinear resampling, random flip; eval: shorter side to
    ``image_size * 256 / 224`` and central crop, in one PIL resize.

  Args:
      name: ``'mnist'``, ``'cifar10'`` or ``'imagenet2012'``.
      image_size: Output height and width.
  """

  def __init__(self, name: str, image_size: int):
    if name not in PREPROCESSORS:
      raise ValueError(f"no image transform for dataset {name!r}; known: {list(PREPROCESSORS)}")
    self.name = name
    self.image_size = int(image_size)

  def __call__(self, image: np.ndarray, rng) -> np.ndarray:
    """Transforms one image; ``rng`` is a numpy Generator (train) or None (eval)."""
    train = rng is not None
    if self.name == "mnist":
      return np.asarray(image, np.uint8)
    if self.name == "cifar10":
      image = np.asarray(image, np.uint8)
      if train:
        image = _pad_crop_flip(image, rng)
      return np.ascontiguousarray(image)
    image = _rgb(image)
    h, w = image.shape[:2]
    size = self.image_size
    if train:
      out = _pil_resize(image, sample_crop_box(h, w, rng), size, size)
      if rng.random() < 0.5:
        out = out[:, ::-1]
      return np.ascontiguousarray(out)
    resize = int(round(size * IMAGENET_EVAL_RESIZE_RATIO))
    scale = resize / min(h, w)
    nh, nw = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
    # The central size x size window of the (nh, nw) resized image, mapped back to
    # source pixels: one PIL resize of that box instead of resizing the whole image.
    top, left = (nh - size) // 2, (nw - size) // 2
    box = (top * h / nh, left * w / nw, size * h / nh, size * w / nw)
    return _pil_resize(image, box, size, size)

  def __repr__(self) -> str:
    return f"ImageTransform({self.name!r}, image_size={self.image_size})"


class Normalize:
  """Maps the uint8 batches of :class:`ImageTransform` to the model's float input.

  Works on numpy and on jax arrays (use it inside the jitted step: the host then ships
  uint8, 4x fewer bytes, and does no float work). ``'mnist'``: ``x / 255``; ``'cifar10'``
  and ``'imagenet2012'``: ``(x / 255 - mean) / std`` with :data:`CIFAR10_MEAN` /
  :data:`IMAGENET_MEAN` statistics.

  Args:
      name: Dataset name; ``None`` is the identity (already-float offline data).
  """

  def __init__(self, name: str | None):
    self.name = name
    stats = {
      "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
      "imagenet2012": (IMAGENET_MEAN, IMAGENET_STD),
    }.get(name)
    self._mean, self._std = stats if stats else (None, None)

  def __call__(self, images):
    """Returns float32 model inputs for a batch of images."""
    if self.name is None:
      return images
    x = images.astype("float32") * np.float32(1 / 255)
    if self._mean is None:
      return x
    return (x - self._mean) / self._std

  def __repr__(self) -> str:
    return f"Normalize({self.name!r})"
