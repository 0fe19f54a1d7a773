"""LeNet models for MNIST.

Both models take NHWC float32 images of shape ``(N, 28, 28, 1)`` and return
logits of shape ``(N, num_classes)``. They contain no BatchNorm or Dropout, so
the ``train`` flag of ``__call__`` is accepted only for interface uniformity
with the rest of the model zoo and has no effect.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hemp_jax.models.layers import max_pool


class LeNet300100(nnx.Module):
  """LeNet-300-100: a 784-300-100-``num_classes`` fully connected network.

  With 10 classes it has 266,610 trainable parameters (LeCun et al., 1998).
  """

  def __init__(self, *, num_classes: int = 10, in_features: int = 784, rngs: nnx.Rngs):
    """Builds the network.

    Args:
      num_classes: Number of output logits.
      in_features: Size of the flattened input (28 * 28 for MNIST).
      rngs: Random number streams used for parameter initialization.
    """
    self.fc1 = nnx.Linear(in_features, 300, rngs=rngs)
    self.fc2 = nnx.Linear(300, 100, rngs=rngs)
    self.fc3 = nnx.Linear(100, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Computes logits.

    Args:
      x: Images of shape ``(N, H, W, C)`` (or already flat, ``(N, H*W*C)``).
      train: Unused; the model has no train/eval-dependent layers.

    Returns:
      Logits of shape ``(N, num_classes)``.
    """
    del train
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(self.fc1(x))
    x = nnx.relu(self.fc2(x))
    return self.fc3(x)


class LeNet5(nnx.Module):
  """LeNet-5, Caffe variant (``examples/mnist/lenet.prototxt``).

  conv5x5(20, valid) -> maxpool 2 -> conv5x5(50, valid) -> maxpool 2 ->
  dense 500 -> ReLU -> dense ``num_classes``. As in Caffe there is no
  nonlinearity after the convolutions. With 10 classes it has 431,080
  trainable parameters. The flattened features are in HWC order (Caffe uses
  CHW); this only matters when porting weights of the first dense layer.
  """

  def __init__(self, *, num_classes: int = 10, in_channels: int = 1, rngs: nnx.Rngs):
    """Builds the network for 28x28 inputs.

    Args:
      num_classes: Number of output logits.
      in_channels: Number of input image channels.
      rngs: Random number streams used for parameter initialization.
    """
    self.conv1 = nnx.Conv(in_channels, 20, (5, 5), padding="VALID", rngs=rngs)
    self.conv2 = nnx.Conv(20, 50, (5, 5), padding="VALID", rngs=rngs)
    self.fc1 = nnx.Linear(4 * 4 * 50, 500, rngs=rngs)
    self.fc2 = nnx.Linear(500, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Computes logits.

    Args:
      x: Images of shape ``(N, 28, 28, in_channels)``.
      train: Unused; the model has no train/eval-dependent layers.

    Returns:
      Logits of shape ``(N, num_classes)``.
    """
    del train
    x = max_pool(self.conv1(x), 2)
    x = max_pool(self.conv2(x), 2)
    x = jnp.reshape(x, (x.shape[0], -1))
    x = nnx.relu(self.fc1(x))
    return self.fc2(x)
