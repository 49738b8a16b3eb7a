"""Ready-made networks for CIFAR-10 and MNIST.

Convolutions and linear layers followed by a ReLU get He (Kaiming) normal
initialization for ReLU (fan_in) with zero bias; the classifier head keeps the
layer default (PyTorch's). ``seed`` (int, numpy Generator or None) makes the
initialization reproducible.
"""
import numpy as np

from . import init
from .layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU
from .model import Sequential

__all__ = ["cifar6", "mnist2"]


def _he_relu(layer, rng):
    init.kaiming_normal_(layer.params["weight"], rng, mode="fan_in", nonlinearity="relu")
    if "bias" in layer.params:
        layer.params["bias"].fill(0)
    return layer


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def cifar6(num_classes=10, in_channels=3, seed=None):
    """Six 3x3 convolutions (stride 1, padding 1), each followed by ReLU then
    BatchNorm2d, widths 32, 32, 64, 64, 128, 128, a 2x2 max-pool after every
    second one, then Flatten and Linear(128*4*4 -> num_classes).

    Expects 32x32 inputs (N, in_channels, 32, 32); 308,394 parameters for 10 classes.
    """
    num_classes = _positive_int(num_classes, "num_classes")
    in_channels = _positive_int(in_channels, "in_channels")
    rng = init.as_generator(seed)
    layers = []
    channels = in_channels
    for i, width in enumerate((32, 32, 64, 64, 128, 128)):
        layers += [_he_relu(Conv2d(channels, width, 3, padding=1, seed=rng), rng), ReLU(), BatchNorm2d(width)]
        if i % 2 == 1:
            layers.append(MaxPool2d(2))
        channels = width
    layers += [Flatten(), Linear(128 * 4 * 4, num_classes, seed=rng)]
    return Sequential(layers)


def mnist2(num_classes=10, in_channels=1, batchnorm=False, seed=None):
    """conv 32 3x3 pad 1 - ReLU - maxpool 2 - conv 32 3x3 pad 1 - ReLU - maxpool 2
    - Flatten - Linear(1568 -> 500) - ReLU - Linear(500 -> num_classes).

    Expects 28x28 inputs; 799,078 parameters for 10 classes. With batchnorm=True
    a BatchNorm2d follows each convolution's ReLU.
    """
    num_classes = _positive_int(num_classes, "num_classes")
    in_channels = _positive_int(in_channels, "in_channels")
    if not isinstance(batchnorm, (bool, np.bool_)):
        raise TypeError(f"batchnorm must be a bool, got {batchnorm!r}")
    rng = init.as_generator(seed)
    layers = []
    channels = in_channels
    for _ in range(2):
        layers += [_he_relu(Conv2d(channels, 32, 3, padding=1, seed=rng), rng), ReLU()]
        if batchnorm:
            layers.append(BatchNorm2d(32))
        layers.append(MaxPool2d(2))
        channels = 32
    layers += [
        Flatten(),
        _he_relu(Linear(32 * 7 * 7, 500, seed=rng), rng), ReLU(),
        Linear(500, num_classes, seed=rng),
    ]
    return Sequential(layers)
