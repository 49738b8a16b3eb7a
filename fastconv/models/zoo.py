"""Ready-made networks: small ones for CIFAR-10 and MNIST, VGG-16/19 for ImageNet.

With ``init="he"`` (the default) convolutions and linear layers followed by a
ReLU get He (Kaiming) normal initialization for ReLU (fan_in) with zero bias
and the classifier head keeps the layer default; with ``init="torch"`` every
layer keeps the layer default, PyTorch's (uniform within 1/sqrt(fan_in)),
which is what a network written in PyTorch without an explicit
initialization starts from. ``seed`` (int, numpy Generator or None) makes the
initialization reproducible.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fastconv import _checks
from fastconv.nn import init as init_module
from fastconv.nn.layers import (
    GELU,
    AdaptiveAvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    GlobalMaxPool2d,
    Linear,
    MaxPool2d,
    ReLU,
    Scale,
)
from fastconv.nn.model import Sequential

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Mapping, Sequence

    from numpy.typing import ArrayLike

    import fastconv  # fastconv.Sequential in annotations: the API reference has two, a bare one is ambiguous
    from fastconv.nn.layers import Layer

__all__ = ["cifar6", "mnist2", "vgg", "vgg16", "vgg19", "VGG16_BLOCKS", "VGG19_BLOCKS", "VGG_WIDTHS",
           "airbench94", "AIRBENCH94_WIDTHS"]


def _he_relu(layer: Layer, rng: np.random.Generator) -> Layer:
    init_module.kaiming_normal_(layer.params["weight"], rng, mode="fan_in", nonlinearity="relu")
    if "bias" in layer.params:
        layer.params["bias"].fill(0)
    return layer


INITS = ("he", "torch")


def _initializer(init_name: str, rng: np.random.Generator) -> Callable[[Layer], Layer]:
    """The function applied to each layer followed by a ReLU."""
    if init_name not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init_name!r}")
    if init_name == "torch":
        return lambda layer: layer
    return lambda layer: _he_relu(layer, rng)




def cifar6(num_classes: int = 10, in_channels: int = 3, seed: np.random.Generator | int | None = None,
           init: str = "he") -> fastconv.Sequential:
    """Six 3x3 convolutions (stride 1, padding 1), each followed by ReLU then
    BatchNorm2d, widths 32, 32, 64, 64, 128, 128, a 2x2 max-pool after every
    second one, then Flatten and Linear(128*4*4 -> num_classes).

    Expects 32x32 inputs (N, in_channels, 32, 32); 308,394 parameters for 10 classes.
    ``init``: "he" or "torch" (see the module docstring).
    """
    num_classes = _checks.positive_int(num_classes, "num_classes")
    in_channels = _checks.positive_int(in_channels, "in_channels")
    rng = init_module.as_generator(seed)
    relu_init = _initializer(init, rng)
    layers = []
    channels = in_channels
    for i, width in enumerate((32, 32, 64, 64, 128, 128)):
        layers += [relu_init(Conv2d(channels, width, 3, padding=1, seed=rng)), ReLU(), BatchNorm2d(width)]
        if i % 2 == 1:
            layers.append(MaxPool2d(2))
        channels = width
    layers += [Flatten(), Linear(128 * 4 * 4, num_classes, seed=rng)]
    return Sequential(layers)


def mnist2(num_classes: int = 10, in_channels: int = 1, batchnorm: bool = False,
           seed: np.random.Generator | int | None = None, init: str = "he") -> fastconv.Sequential:
    """conv 32 3x3 pad 1 - ReLU - maxpool 2 - conv 32 3x3 pad 1 - ReLU - maxpool 2
    - Flatten - Linear(1568 -> 500) - ReLU - Linear(500 -> num_classes).

    Expects 28x28 inputs; 799,078 parameters for 10 classes. With batchnorm=True
    a BatchNorm2d follows each convolution's ReLU. ``init``: "he" or "torch"
    (see the module docstring).
    """
    num_classes = _checks.positive_int(num_classes, "num_classes")
    in_channels = _checks.positive_int(in_channels, "in_channels")
    if not isinstance(batchnorm, (bool, np.bool_)):
        raise TypeError(f"batchnorm must be a bool, got {batchnorm!r}")
    rng = init_module.as_generator(seed)
    relu_init = _initializer(init, rng)
    layers = []
    channels = in_channels
    for _ in range(2):
        layers += [relu_init(Conv2d(channels, 32, 3, padding=1, seed=rng)), ReLU()]
        if batchnorm:
            layers.append(BatchNorm2d(32))
        layers.append(MaxPool2d(2))
        channels = 32
    layers += [
        Flatten(),
        relu_init(Linear(32 * 7 * 7, 500, seed=rng)), ReLU(),
        Linear(500, num_classes, seed=rng),
    ]
    return Sequential(layers)


VGG_WIDTHS = (64, 128, 256, 512, 512)
VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG19_BLOCKS = (2, 2, 4, 4, 4)




def vgg(blocks: Sequence[int] = VGG16_BLOCKS, widths: Sequence[int] = VGG_WIDTHS, hidden: int = 4096,
        include_top: bool = True, num_classes: int = 1000, batchnorm: bool = False, in_channels: int = 3,
        weights: str | os.PathLike | Mapping[str, ArrayLike] | None = None,
        seed: np.random.Generator | int | None = None) -> fastconv.Sequential:
    """A VGG network (Simonyan & Zisserman, 2014): ``blocks[i]`` 3x3 convolutions
    (padding 1) of ``widths[i]`` channels, each followed by ReLU (BatchNorm2d
    then ReLU with batchnorm=True), then a 2x2 max-pool, for each block.

    With include_top=True the head follows, as in torchvision:
    AdaptiveAvgPool2d(7) - Flatten - Linear(widths[-1]*7*7 -> hidden) - ReLU -
    Dropout - Linear(hidden -> hidden) - ReLU - Dropout - Linear(hidden ->
    num_classes), so the network takes any image of at least 32x32 pixels and
    returns logits. Without the head it is fully convolutional and returns the
    last pool's maps, (N, widths[-1], H/32, W/32).

    Layer names follow Keras's VGG16/VGG19 where it has them: block1_conv1,
    block1_conv2, block1_pool, ..., block5_pool, fc1, fc2, predictions; the
    layers Keras fuses into them are block1_conv1_bn, block1_conv1_relu,
    avgpool, flatten, fc1_relu, fc1_dropout, and so on. A conv layer's output
    is therefore its pre-activation; take ``*_relu`` for what Keras calls the
    conv's output.

    ``weights``: a weights file (or a mapping of arrays) loaded with
    :func:`fastconv.models.weights.load_weights`; the model is then returned in
    evaluation mode. Without a head the file may hold one, which is ignored.
    Otherwise the convolutions get He initialization (``seed``) and the linear
    layers keep PyTorch's default: drawing another 120 million normal numbers
    for the head takes seconds, and a VGG is built to load trained weights.
    """
    blocks = tuple(_checks.positive_int(b, "blocks entry") for b in blocks)
    widths = tuple(_checks.positive_int(w, "widths entry") for w in widths)
    if not blocks or len(blocks) != len(widths):
        raise ValueError(f"blocks {blocks} and widths {widths} must be non-empty and of the same length")
    hidden = _checks.positive_int(hidden, "hidden")
    include_top = _checks.flag(include_top, "include_top")
    num_classes = _checks.positive_int(num_classes, "num_classes")
    batchnorm = _checks.flag(batchnorm, "batchnorm")
    in_channels = _checks.positive_int(in_channels, "in_channels")
    rng = init_module.as_generator(seed)
    # Loaded weights overwrite everything: keep the layer defaults then.
    he = _initializer("torch" if weights is not None else "he", rng)
    layers = []
    channels = in_channels
    for b, (count, width) in enumerate(zip(blocks, widths), start=1):
        for i in range(1, count + 1):
            name = f"block{b}_conv{i}"
            layers.append((name, he(Conv2d(channels, width, 3, padding=1, seed=rng))))
            if batchnorm:
                layers.append((f"{name}_bn", BatchNorm2d(width)))
            layers.append((f"{name}_relu", ReLU()))
            channels = width
        layers.append((f"block{b}_pool", MaxPool2d(2)))
    if include_top:
        layers += [
            ("avgpool", AdaptiveAvgPool2d(7)),
            ("flatten", Flatten()),
            ("fc1", Linear(channels * 7 * 7, hidden, seed=rng)),
            ("fc1_relu", ReLU()),
            ("fc1_dropout", Dropout(0.5, seed=rng)),
            ("fc2", Linear(hidden, hidden, seed=rng)),
            ("fc2_relu", ReLU()),
            ("fc2_dropout", Dropout(0.5, seed=rng)),
            ("predictions", Linear(hidden, num_classes, seed=rng)),
        ]
    model = Sequential(layers)
    if include_top:
        model.meta["input_shape"] = [in_channels, 224, 224]  # the size ImageNet networks are trained at
    if weights is not None:
        from fastconv.models.weights import load_weights

        load_weights(model, weights, strict=include_top)
        model.eval()
    return model


def vgg16(include_top: bool = True, num_classes: int = 1000, batchnorm: bool = False, in_channels: int = 3,
          weights: str | os.PathLike | Mapping[str, ArrayLike] | None = None,
          seed: np.random.Generator | int | None = None) -> fastconv.Sequential:
    """VGG-16 (configuration D): 13 convolutions in blocks of 2, 2, 3, 3, 3 with
    64, 128, 256, 512, 512 channels, and the 4096-4096-num_classes head.

    138,357,544 parameters with the head (14,714,688 without); see :func:`vgg`
    for the layer names, the head and ``weights``.
    """
    return vgg(VGG16_BLOCKS, VGG_WIDTHS, 4096, include_top, num_classes, batchnorm, in_channels, weights, seed)


def vgg19(include_top: bool = True, num_classes: int = 1000, batchnorm: bool = False, in_channels: int = 3,
          weights: str | os.PathLike | Mapping[str, ArrayLike] | None = None,
          seed: np.random.Generator | int | None = None) -> fastconv.Sequential:
    """VGG-19 (configuration E): 16 convolutions in blocks of 2, 2, 4, 4, 4 with
    64, 128, 256, 512, 512 channels, and the 4096-4096-num_classes head.

    143,667,240 parameters with the head (20,024,384 without); see :func:`vgg`.
    """
    return vgg(VGG19_BLOCKS, VGG_WIDTHS, 4096, include_top, num_classes, batchnorm, in_channels, weights, seed)


AIRBENCH94_WIDTHS = (64, 256, 256)


def airbench94(num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = AIRBENCH94_WIDTHS,
               seed: np.random.Generator | int | None = None, whitening_images: np.ndarray | None = None,
               whitening_eps: float = 5e-4) -> fastconv.Sequential:
    """The network of the airbench94 recipe (Jordan, 2024, "94% on CIFAR-10
    in 3.29 seconds on a single GPU"), 1,972,792 parameters for 10 classes:

    * ``whiten``: a 2x2 convolution (no padding) with 2 * in_channels * 4
      filters and a bias, then a GELU. With ``whitening_images`` (the
      normalized training images, (N, C, H, W)) its filters are their
      patches' whitening filters and their negations
      (:func:`fastconv.nn.init.patch_whitening_`); the weight is frozen.
    * three blocks of widths ``widths`` (64, 256, 256), each: 3x3
      convolution (padding 1, no bias) - 2x2 max-pool - batch norm - GELU -
      3x3 convolution - batch norm - GELU. The convolutions start as a
      partial identity (the first in_channels filters pass their input
      through, :func:`fastconv.nn.init.dirac_`; the others keep PyTorch's
      default initialization); each batch norm has eps 1e-12, momentum 0.4
      (PyTorch's convention: 0.4 of the batch's statistics enter the running
      ones) and a frozen scale of 1, its shift alone being trained.
    * global max-pooling, a linear layer without bias, and the logits
      multiplied by 1/9 (``Scale``).

    Expects 32x32 inputs (it takes any of at least 16x16); freezing is part
    of the training set-up, which a saved model does not carry.
    """
    num_classes = _checks.positive_int(num_classes, "num_classes")
    in_channels = _checks.positive_int(in_channels, "in_channels")
    widths = tuple(_checks.positive_int(w, "widths entry") for w in widths)
    if len(widths) != 3:
        raise ValueError(f"airbench94 has three blocks, got widths {widths}")
    rng = init_module.as_generator(seed)
    whiten_width = 2 * in_channels * 4
    whiten = Conv2d(in_channels, whiten_width, 2, seed=rng)
    whiten.params["bias"].fill(0)
    if whitening_images is not None:
        init_module.patch_whitening_(whiten.params["weight"], whitening_images, eps=whitening_eps)
    whiten.requires_grad_(False, "weight")
    layers: list[tuple[str, Layer]] = [("whiten", whiten), ("whiten_gelu", GELU())]
    channels = whiten_width
    for b, width in enumerate(widths, start=1):
        for i in (1, 2):
            conv = Conv2d(channels, width, 3, padding=1, bias=False, seed=rng)
            init_module.dirac_(conv.params["weight"][:channels])
            norm = BatchNorm2d(width, eps=1e-12, momentum=0.4).requires_grad_(False, "weight")
            layers.append((f"block{b}_conv{i}", conv))
            if i == 1:
                layers.append((f"block{b}_pool", MaxPool2d(2)))
            layers += [(f"block{b}_bn{i}", norm), (f"block{b}_gelu{i}", GELU())]
            channels = width
    layers += [("pool", GlobalMaxPool2d()), ("head", Linear(channels, num_classes, bias=False, seed=rng)),
               ("scale", Scale(1 / 9))]
    return Sequential(layers)
