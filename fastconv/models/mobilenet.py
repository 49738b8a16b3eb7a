"""MobileNetV2 (Sandler et al. 2018) as a :class:`~fastconv.nn.graph.Graph`, in torchvision's layout.

A 3x3 convolution with stride 2, then inverted residual blocks: a 1x1
convolution expands the channels t times (left out when t is 1), a 3x3
depthwise convolution (one filter per channel, ``groups`` = channels) filters
each channel, and a 1x1 convolution projects back down with no activation
after it (the "linear bottleneck"); a block that keeps the shape adds its
input. ReLU6 after every other convolution, a 1x1 convolution to 1280
channels, global average pooling, dropout and a linear classifier.

Nodes are named as torchvision names the modules (``features.3.conv.1.0`` is
block 3's depthwise convolution), so its state dicts load by name
(``fastconv.load_weights``); a residual block's output, its sum, is the node
``features.i``. Convolutions start from He normal initialization (fan_out),
the classifier from N(0, 0.01), batch norms from weight 1 and bias 0, as
torchvision's; ``seed`` makes it reproducible.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fastconv import _checks
from fastconv.nn import init as init_module
from fastconv.nn.graph import Add, Graph
from fastconv.nn.layers import BatchNorm2d, Conv2d, Dropout, GlobalAvgPool2d, Linear, ReLU6

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

__all__ = ["mobilenet_v2", "INVERTED_RESIDUAL_SETTINGS"]

# (expansion t, output channels c, blocks n, first block's stride s), per stage.
INVERTED_RESIDUAL_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                              (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to a multiple of ``divisor``, never more than 10% below it (torchvision's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def mobilenet_v2(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.2, seed: np.random.Generator | int | None = None,
                 dtype: DTypeLike = np.float32, init: str = "he") -> Graph:
    """torchvision's MobileNetV2 for 224x224 inputs (3.5 M parameters at ``width_mult=1``).

    ``init="torch"`` keeps the layers' default initialization (PyTorch's)
    instead of torchvision's."""
    num_classes = _checks.positive_int(num_classes, "num_classes")
    in_channels = _checks.positive_int(in_channels, "in_channels")
    width_mult = _checks.real_number(width_mult, "width_mult", 0.0, 16.0, low_open=True)
    if init not in ("he", "torch"):
        raise ValueError(f"init must be one of ('he', 'torch'), got {init!r}")
    he = init == "he"
    rng = init_module.as_generator(seed)
    g = Graph()

    def conv_bn(prefix: str, source: str, cin: int, cout: int, kernel: int, stride: int = 1,
                groups: int = 1, activation: bool = True) -> str:
        """Nodes prefix.0 (convolution), prefix.1 (batch norm) and, with ``activation``, prefix.2 (ReLU6)."""
        conv = Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, bias=False, groups=groups, dtype=dtype,
                      seed=rng)
        if he:
            init_module.kaiming_normal_(conv.params["weight"], rng, mode="fan_out", nonlinearity="relu")
        h = g.add(f"{prefix}.0", conv, source)
        h = g.add(f"{prefix}.1", BatchNorm2d(cout, dtype=dtype), h)
        return g.add(f"{prefix}.2", ReLU6(), h) if activation else h

    channels = _divisible(32 * width_mult)
    h = conv_bn("features.0", g.input, in_channels, channels, 3, stride=2)
    index = 1
    for t, c, n, s in INVERTED_RESIDUAL_SETTINGS:
        out = _divisible(c * width_mult)
        for block in range(n):
            stride = s if block == 0 else 1
            hidden = int(round(channels * t))
            prefix = f"features.{index}.conv"
            step, t_in = 0, h
            if t != 1:
                t_in = conv_bn(f"{prefix}.{step}", t_in, channels, hidden, 1)
                step += 1
            t_in = conv_bn(f"{prefix}.{step}", t_in, hidden, hidden, 3, stride, groups=hidden)
            project = Conv2d(hidden, out, 1, bias=False, dtype=dtype, seed=rng)
            if he:
                init_module.kaiming_normal_(project.params["weight"], rng, mode="fan_out", nonlinearity="relu")
            t_in = g.add(f"{prefix}.{step + 1}", project, t_in)
            t_in = g.add(f"{prefix}.{step + 2}", BatchNorm2d(out, dtype=dtype), t_in)
            h = g.add(f"features.{index}", Add(), t_in, h) if stride == 1 and channels == out else t_in
            channels = out
            index += 1
    last = _divisible(1280 * max(1.0, width_mult))
    h = conv_bn(f"features.{index}", h, channels, last, 1)
    h = g.add("avgpool", GlobalAvgPool2d(), h)
    h = g.add("classifier.0", Dropout(dropout, seed=rng), h)
    head = Linear(last, num_classes, dtype=dtype, seed=rng)
    if he:
        head.params["weight"][...] = rng.normal(0.0, 0.01, head.params["weight"].shape)
        head.params["bias"].fill(0)
    g.add("classifier.1", head, h)
    return g
