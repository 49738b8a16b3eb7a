"""The model zoo (the seeds' ``cifar6`` and ``mnist2``, VGG), weight import
from other frameworks' files, and the ImageNet conventions VGG's weights need."""
from fastconv.models.zoo import VGG16_BLOCKS, VGG19_BLOCKS, VGG_WIDTHS, cifar6, mnist2, vgg, vgg16, vgg19

__all__ = ["cifar6", "mnist2", "vgg", "vgg16", "vgg19", "VGG16_BLOCKS", "VGG19_BLOCKS", "VGG_WIDTHS"]
