"""The model zoo (the seeds' ``cifar6`` and ``mnist2``, the airbench94 network,
VGG), weight import from other frameworks' files, and the ImageNet conventions
VGG's weights need."""
from fastconv.models.zoo import (
    AIRBENCH94_WIDTHS,
    VGG16_BLOCKS,
    VGG19_BLOCKS,
    VGG_WIDTHS,
    airbench94,
    cifar6,
    mnist2,
    vgg,
    vgg16,
    vgg19,
)

__all__ = ["cifar6", "mnist2", "airbench94", "vgg", "vgg16", "vgg19", "VGG16_BLOCKS", "VGG19_BLOCKS",
           "VGG_WIDTHS", "AIRBENCH94_WIDTHS"]
