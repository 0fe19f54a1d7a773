"""Tests for the Flax NNX model zoo (hemp_jax.models)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hemp_jax.models import MODELS, count_params, create_model, init_model

# name -> (num_classes, input shape for a batch of 2, published param count).
#
# Parameter counts are trainable parameters only (conv/dense weights and
# biases, BatchNorm scale and bias; no running statistics), i.e. what
# ``sum(p.numel() for p in model.parameters())`` gives for the PyTorch
# reference implementations:
# * LeNet-300-100 / LeNet-5 (Caffe): 266,610 / 431,080, the figures used in
#   the pruning literature (e.g. Han et al. 2015, Tables 2 and 3).
# * ResNet-20/32/56: akamaster/pytorch_resnet_cifar10 (option A shortcuts);
#   its ``test()`` prints 269,722 / 464,154 / 853,018 ("0.27M / 0.46M /
#   0.85M" in its README). The sometimes quoted 272,474 / 466,906 / 855,770
#   do not correspond to this architecture.
# * VGG-16: kuangliu/pytorch-cifar ``VGG('VGG16')`` (BN, conv biases, single
#   Linear(512, 10)): 14,728,266.
# * MobileNetV2 CIFAR: kuangliu/pytorch-cifar ``MobileNetV2()``: 2,296,922.
# * MobileNetV2 / ResNet-18 / ResNet-50 ImageNet: torchvision
#   ``mobilenet_v2()`` / ``resnet18()`` / ``resnet50()``: 3,504,872 /
#   11,689,512 / 25,557,032.
# ImageNet models run on 64x64 inputs here to keep the CPU time low; they end
# in global average pooling, so the logits shape does not depend on it (the
# 224x224 shape is checked abstractly below).
MNIST = (2, 28, 28, 1)
CIFAR = (2, 32, 32, 3)
IMAGENET_SMALL = (2, 64, 64, 3)
SPECS = {
  "lenet_300_100": (10, MNIST, 266_610),
  "lenet5": (10, MNIST, 431_080),
  "resnet20": (10, CIFAR, 269_722),
  "resnet32": (10, CIFAR, 464_154),
  "resnet56": (10, CIFAR, 853_018),
  "vgg16": (10, CIFAR, 14_728_266),
  "mobilenet_v2": (1000, IMAGENET_SMALL, 3_504_872),
  "mobilenet_v2_cifar": (10, CIFAR, 2_296_922),
  "resnet18": (1000, IMAGENET_SMALL, 11_689_512),
  "resnet50": (1000, IMAGENET_SMALL, 25_557_032),
}
IMAGENET_MODELS = ("mobilenet_v2", "resnet18", "resnet50")


def _fast_rngs(seed=0):
  """Rngs on the RngBitGenerator PRNG.

  Same code paths as the default threefry key, but the random kernels
  (parameter init, dropout masks) compile several times faster on CPU.
  """
  return nnx.Rngs(jax.random.key(seed, impl="unsafe_rbg"))


@functools.lru_cache(maxsize=None)
def _abstract(name, num_classes, **kwargs):
  """Model with shape-only leaves (runs the real constructor, no compute).

  Cached because tracing a constructor is not free; callers never mutate it.
  """
  return nnx.eval_shape(
    lambda: create_model(name, num_classes=num_classes, rngs=_fast_rngs(), **kwargs)
  )


def _materialize(abstract_model, seed=0):
  """Fills an abstract model with NumPy-generated values.

  Equivalent in distribution to a He-normal init with BatchNorm at its
  initial state, but it avoids compiling one XLA RNG kernel per parameter
  shape, which dominates the CPU time of a real init of the larger models.
  The real initializers are exercised by ``_abstract`` and the tests that
  build small models normally.
  """
  graphdef, state = nnx.split(abstract_model)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      return jax.random.key(seed, impl="unsafe_rbg")
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      return jnp.zeros(leaf.shape, leaf.dtype)
    if len(leaf.shape) >= 2:  # conv / dense kernel
      fan_in = int(np.prod(leaf.shape[:-1]))
      value = rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape)
    elif path[-2].key in ("scale", "var"):
      value = np.ones(leaf.shape)
    else:
      value = np.zeros(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def test_registry_is_complete():
  assert set(MODELS) == set(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_param_count(name):
  num_classes, _, expected = SPECS[name]
  assert count_params(_abstract(name, num_classes)) == expected


@pytest.mark.parametrize("name", sorted(SPECS))
def test_forward_shape(name):
  num_classes, shape, _ = SPECS[name]
  model = _materialize(_abstract(name, num_classes))
  x = jax.random.normal(jax.random.key(1), shape, jnp.float32)
  y = nnx.jit(lambda m, x: m(x))(model, x)
  assert y.shape == (shape[0], num_classes)
  assert y.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.parametrize("name", IMAGENET_MODELS)
def test_imagenet_resolution_shape(name):
  model = _abstract(name, 1000)
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  y = nnx.eval_shape(lambda m, x: m(x), model, x)
  assert y.shape == (2, 1000)


def test_real_init_forward():
  model = create_model("lenet5", num_classes=10, rngs=_fast_rngs())
  y = model(jnp.ones(MNIST))
  assert y.shape == (2, 10)
  assert bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.parametrize("name", ["lenet5", "lenet_300_100"])
def test_compiled_init_equals_eager_init(name):
  # Same random streams, same structure; values equal up to float rounding.
  eager = nnx.state(create_model(name, num_classes=10, rngs=nnx.Rngs(3)))
  compiled = nnx.state(init_model(name, num_classes=10, seed=3))
  assert jax.tree.structure(compiled) == jax.tree.structure(eager)
  for a, b in zip(jax.tree.leaves(compiled), jax.tree.leaves(eager)):
    assert a.shape == b.shape and a.dtype == b.dtype
    if jnp.issubdtype(a.dtype, jnp.floating):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
  other = nnx.state(init_model(name, num_classes=10, seed=4))
  assert not any(
    np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(compiled))
    if a.ndim >= 2
  )
  with pytest.raises(ValueError, match="resnet20"):
    init_model("resnet21", num_classes=10)


def test_num_classes_option():
  model = _abstract("resnet20", 100)
  assert count_params(model) == 269_722 + 90 * 65


def test_count_params_excludes_batch_stats():
  model = _abstract("resnet20", 10)
  stats = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
  assert sum(s.size for s in stats) == 2 * (16 + 6 * (16 + 32 + 64))
  total = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
  assert count_params(model) < total


def test_unknown_model_raises():
  with pytest.raises(ValueError, match="resnet20"):
    create_model("resnet21", num_classes=10, rngs=nnx.Rngs(0))


def test_invalid_options_raise():
  with pytest.raises(ValueError, match="6n"):
    create_model("resnet20", num_classes=10, rngs=nnx.Rngs(0), depth=21)
  with pytest.raises(ValueError, match="variant"):
    create_model("mobilenet_v2", num_classes=10, rngs=nnx.Rngs(0), variant="tiny")


def test_train_and_eval_modes_with_batchnorm():
  model = create_model("resnet20", num_classes=10, rngs=_fast_rngs())
  x = jax.random.normal(jax.random.key(1), CIFAR, jnp.float32)
  forward = nnx.jit(lambda m, x, train: m(x, train=train), static_argnames="train")

  def running_mean():
    return np.asarray(model.bn.mean[...])

  before = running_mean()
  y_eval = forward(model, x, False)
  np.testing.assert_array_equal(running_mean(), before)  # eval: no update
  np.testing.assert_array_equal(forward(model, x, False), y_eval)

  y_train = forward(model, x, True)
  assert y_train.shape == (2, 10)
  assert not np.array_equal(running_mean(), before)  # train: stats updated
  assert not np.allclose(y_train, y_eval)  # batch stats != initial running
  y_eval2 = forward(model, x, False)
  assert not np.allclose(y_eval2, y_eval)  # eval uses the updated stats
  np.testing.assert_array_equal(forward(model, x, False), y_eval2)


def test_dropout_active_in_train_mode():
  # Eval-mode determinism is covered by the BatchNorm test above; here two
  # train-mode calls must draw different dropout masks.
  model = _materialize(_abstract("mobilenet_v2", 10, width_mult=0.35))
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3), jnp.float32)
  forward = nnx.jit(lambda m, x: m(x, train=True))
  y1, y2 = forward(model, x), forward(model, x)
  assert y1.shape == (2, 10)
  assert not np.allclose(y1, y2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_max_pool_equals_nnx_max_pool_values_and_gradients(dtype):
  """The CPU pooling path gives nnx.max_pool's values and its gradient, bit for bit,
  ties included (the first maximum of a window in row-major order gets the gradient)."""
  from hemp_jax.models.layers import max_pool

  x = jax.random.normal(jax.random.PRNGKey(0), (3, 9, 8, 5))
  x = jnp.where(x > 0.5, x, 0.0).at[0, 0, 0, 0].set(1.0).at[0, 0, 1, 0].set(1.0).astype(dtype)
  ref = lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2))
  assert jnp.array_equal(max_pool(x, 2), ref(x))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 4, 5)).astype(dtype)
  loss = lambda f: lambda x: (f(x).astype(jnp.float32) * w).sum()
  got = jax.jit(jax.grad(loss(lambda x: max_pool(x, 2))))(x)
  want = jax.jit(jax.grad(loss(ref)))(x)
  assert jnp.array_equal(got, want)
  assert float(jnp.abs(got.astype(jnp.float32)).sum()) > 0
