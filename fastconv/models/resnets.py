"""Residual networks as :class:`~fastconv.nn.graph.Graph` models.

* ``resnet20()``, ``resnet32()``, ``resnet44()``, ``resnet56()``: the CIFAR-10
  networks of He et al. 2016 (section 4.2): a 3x3 convolution with 16
  filters, three stages of n basic blocks with 16, 32 and 64 filters (the
  first block of the second and third stage halves the map with stride 2),
  global average pooling and a 10-way linear layer; 6n + 2 weighted layers.
  The shortcuts are the paper's option A: identity, or every second pixel
  with zero channels appended where the map shrinks (``PadShortcut``), so
  the shortcuts add no parameters (resnet20: 0.27 M parameters).
* ``resnet18()``, ``resnet34()``, ``resnet50()``: the ImageNet networks in
  torchvision's layout (a 1x1 convolution and batch norm, ``downsample``, on
  the shortcut where the shape changes; bottleneck blocks in resnet50 with
  the stride on the 3x3 convolution, as torchvision's "v1.5"), for 224x224
  inputs.

Every node is named as torchvision names the module (``layer1.0.conv1``,
``layer1.0.downsample.0``), so ``state_dict()`` keys are torchvision's and
its weight files load by name (``fastconv.load_weights``). A block's output,
after its last ReLU, is the node named after the block (``layer4.1``): what
a hook on torchvision's block module sees, and where Grad-CAM looks by
default. Its other nodes are ``.relu`` (after the first batch norm, and the
second in a bottleneck) and ``.add`` (the sum with the shortcut).

With ``init="he"`` (the default) convolutions start from He normal
initialization (fan_out, as torchvision); with ``init="torch"`` they keep the
layer default, PyTorch's. Batch norms start from weight 1 and bias 0, the
linear layer from PyTorch's default; ``seed`` (int, Generator or None) makes
it reproducible.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fastconv import _checks
from fastconv.nn import init as init_module
from fastconv.nn.graph import Add, Graph, PadShortcut
from fastconv.nn.layers import BatchNorm2d, Conv2d, GlobalAvgPool2d, Linear, MaxPool2d, ReLU

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

__all__ = ["cifar_resnet", "resnet20", "resnet32", "resnet44", "resnet56",
           "resnet", "resnet18", "resnet34", "resnet50", "IMAGENET_DEPTHS"]


INITS = ("he", "torch")


class _Builder:
    """Adds convolution and batch-norm nodes with the architecture's initialization."""

    def __init__(self, seed: np.random.Generator | int | None, dtype: DTypeLike, init: str) -> None:
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.he = init == "he"
        self.graph = Graph()
        self.rng = init_module.as_generator(seed)
        self.dtype = dtype

    def conv(self, name: str, source: str, in_channels: int, out_channels: int, kernel: int,
             stride: int = 1, padding: int = 0) -> str:
        layer = Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False, dtype=self.dtype,
                       seed=self.rng)
        if self.he:
            init_module.kaiming_normal_(layer.params["weight"], self.rng, mode="fan_out", nonlinearity="relu")
        return self.graph.add(name, layer, source)

    def bn(self, name: str, source: str, channels: int) -> str:
        return self.graph.add(name, BatchNorm2d(channels, dtype=self.dtype), source)

    def relu(self, name: str, source: str) -> str:
        return self.graph.add(name, ReLU(), source)

    def head(self, source: str, channels: int, num_classes: int) -> Graph:
        pooled = self.graph.add("avgpool", GlobalAvgPool2d(), source)
        self.graph.add("fc", Linear(channels, num_classes, dtype=self.dtype, seed=self.rng), pooled)
        return self.graph


# --------------------------------------------------------------------------- CIFAR

def cifar_resnet(depth: int, num_classes: int = 10, in_channels: int = 3,
                 seed: np.random.Generator | int | None = None, dtype: DTypeLike = np.float32,
           init: str = "he") -> Graph:
    """He et al.'s CIFAR ResNet of ``depth`` = 6n + 2 layers (20, 32, 44, 56, 110, ...), for 32x32 inputs."""
    depth = _checks.positive_int(depth, "depth")
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has 6n + 2 layers (20, 32, 44, 56, 110, ...), got depth {depth}")
    num_classes = _checks.positive_int(num_classes, "num_classes")
    in_channels = _checks.positive_int(in_channels, "in_channels")
    blocks = (depth - 2) // 6
    b = _Builder(seed, dtype, init)
    h = b.relu("relu", b.bn("bn1", b.conv("conv1", b.graph.input, in_channels, 16, 3, padding=1), 16))
    channels = 16
    for stage, width in enumerate((16, 32, 64), start=1):
        for index in range(blocks):
            stride = 2 if stage > 1 and index == 0 else 1
            name = f"layer{stage}.{index}"
            t = b.conv(f"{name}.conv1", h, channels, width, 3, stride, 1)
            t = b.relu(f"{name}.relu", b.bn(f"{name}.bn1", t, width))
            t = b.bn(f"{name}.bn2", b.conv(f"{name}.conv2", t, width, width, 3, 1, 1), width)
            shortcut = h
            if stride != 1 or channels != width:
                shortcut = b.graph.add(f"{name}.shortcut", PadShortcut(width, stride), h)
            h = b.relu(name, b.graph.add(f"{name}.add", Add(), t, shortcut))
            channels = width
    return b.head(h, channels, num_classes)


def resnet20(num_classes: int = 10, in_channels: int = 3, seed: np.random.Generator | int | None = None,
             dtype: DTypeLike = np.float32, init: str = "he") -> Graph:
    """The 20-layer CIFAR ResNet (three blocks per stage): ``cifar_resnet(20)``."""
    return cifar_resnet(20, num_classes, in_channels, seed, dtype, init)


def resnet32(num_classes: int = 10, in_channels: int = 3, seed: np.random.Generator | int | None = None,
             dtype: DTypeLike = np.float32, init: str = "he") -> Graph:
    """The 32-layer CIFAR ResNet (five blocks per stage): ``cifar_resnet(32)``."""
    return cifar_resnet(32, num_classes, in_channels, seed, dtype, init)


def resnet44(num_classes: int = 10, in_channels: int = 3, seed: np.random.Generator | int | None = None,
             dtype: DTypeLike = np.float32, init: str = "he") -> Graph:
    """The 44-layer CIFAR ResNet (seven blocks per stage): ``cifar_resnet(44)``."""
    return cifar_resnet(44, num_classes, in_channels, seed, dtype, init)


def resnet56(num_classes: int = 10, in_channels: int = 3, seed: np.random.Generator | int | None = None,
             dtype: DTypeLike = np.float32, init: str = "he") -> Graph:
    """The 56-layer CIFAR ResNet (nine blocks per stage): ``cifar_resnet(56)``."""
    return cifar_resnet(56, num_classes, in_channels, seed, dtype, init)


# --------------------------------------------------------------------------- ImageNet (torchvision layout)

# Blocks per stage, and whether they are bottlenecks (expansion 4).
IMAGENET_DEPTHS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True)}


def resnet(depth: int, num_classes: int = 1000, in_channels: int = 3,
           seed: np.random.Generator | int | None = None, dtype: DTypeLike = np.float32,
           init: str = "he") -> Graph:
    """torchvision's ResNet of ``depth`` 18, 34 or 50, for 224x224 inputs (any size from 32 works)."""
    if depth not in IMAGENET_DEPTHS:
        raise ValueError(f"depth must be one of {sorted(IMAGENET_DEPTHS)}, got {depth!r}")
    num_classes = _checks.positive_int(num_classes, "num_classes")
    in_channels = _checks.positive_int(in_channels, "in_channels")
    counts, bottleneck = IMAGENET_DEPTHS[depth]
    expansion = 4 if bottleneck else 1
    b = _Builder(seed, dtype, init)
    h = b.relu("relu", b.bn("bn1", b.conv("conv1", b.graph.input, in_channels, 64, 7, 2, 3), 64))
    h = b.graph.add("maxpool", MaxPool2d(3, 2, 1), h)
    channels = 64
    for stage, (count, width) in enumerate(zip(counts, (64, 128, 256, 512)), start=1):
        for index in range(count):
            stride = 2 if stage > 1 and index == 0 else 1
            name = f"layer{stage}.{index}"
            out = width * expansion
            if bottleneck:
                t = b.relu(f"{name}.relu", b.bn(f"{name}.bn1", b.conv(f"{name}.conv1", h, channels, width, 1), width))
                t = b.relu(f"{name}.relu2", b.bn(f"{name}.bn2",
                                                 b.conv(f"{name}.conv2", t, width, width, 3, stride, 1), width))
                t = b.bn(f"{name}.bn3", b.conv(f"{name}.conv3", t, width, out, 1), out)
            else:
                t = b.conv(f"{name}.conv1", h, channels, width, 3, stride, 1)
                t = b.relu(f"{name}.relu", b.bn(f"{name}.bn1", t, width))
                t = b.bn(f"{name}.bn2", b.conv(f"{name}.conv2", t, width, width, 3, 1, 1), width)
            shortcut = h
            if stride != 1 or channels != out:
                shortcut = b.bn(f"{name}.downsample.1",
                                b.conv(f"{name}.downsample.0", h, channels, out, 1, stride), out)
            h = b.relu(name, b.graph.add(f"{name}.add", Add(), t, shortcut))
            channels = out
    return b.head(h, channels, num_classes)


def resnet18(num_classes: int = 1000, in_channels: int = 3, seed: np.random.Generator | int | None = None,
             dtype: DTypeLike = np.float32, init: str = "he") -> Graph:
    """torchvision's ResNet-18 (basic blocks 2, 2, 2, 2): ``resnet(18)``."""
    return resnet(18, num_classes, in_channels, seed, dtype, init)


def resnet34(num_classes: int = 1000, in_channels: int = 3, seed: np.random.Generator | int | None = None,
             dtype: DTypeLike = np.float32, init: str = "he") -> Graph:
    """torchvision's ResNet-34 (basic blocks 3, 4, 6, 3): ``resnet(34)``."""
    return resnet(34, num_classes, in_channels, seed, dtype, init)


def resnet50(num_classes: int = 1000, in_channels: int = 3, seed: np.random.Generator | int | None = None,
             dtype: DTypeLike = np.float32, init: str = "he") -> Graph:
    """torchvision's ResNet-50 (bottleneck blocks 3, 4, 6, 3): ``resnet(50)``."""
    return resnet(50, num_classes, in_channels, seed, dtype, init)
