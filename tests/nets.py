"""The small networks several test modules look inside, built one way.

The analysis tests need a net that is quick to train and small enough to
check by hand; they share this one rather than each keeping a copy that
drifts (tests/conftest.py trains it as the ``digit_model`` fixture).
"""
import numpy as np

from fastconv.nn import layers as L
from fastconv.nn.model import Sequential

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST_NORMALIZATION = {"mean": [MNIST_MEAN], "std": [MNIST_STD], "scale": 255.0}


def digit_net(seed=0, dtype=np.float32):
    """conv 8 - ReLU - pool - conv 16 - ReLU - pool - linear 10, for 28x28
    digits, untrained, with MNIST's normalization, input shape and classes."""
    rng = np.random.default_rng(seed)
    model = Sequential([
        L.Conv2d(1, 8, 3, padding=1, seed=rng, dtype=dtype), L.ReLU(), L.MaxPool2d(2),
        L.Conv2d(8, 16, 3, padding=1, seed=rng, dtype=dtype), L.ReLU(), L.MaxPool2d(2),
        L.Flatten(), L.Linear(16 * 7 * 7, 10, seed=rng, dtype=dtype),
    ])
    model.meta.update({"normalization": dict(MNIST_NORMALIZATION), "input_shape": [1, 28, 28],
                       "classes": [str(i) for i in range(10)]})
    return model
