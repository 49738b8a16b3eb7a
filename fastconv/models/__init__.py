"""The model zoo (the seeds' ``cifar6`` and ``mnist2``, the airbench94 network,
VGG, ResNets, MobileNetV2), weight import from other frameworks' files, and the
ImageNet conventions pretrained weights need."""
from fastconv.models.mobilenet import mobilenet_v2
from fastconv.models.resnets import (
    cifar_resnet,
    resnet,
    resnet18,
    resnet20,
    resnet32,
    resnet34,
    resnet44,
    resnet50,
    resnet56,
)
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
           "VGG_WIDTHS", "AIRBENCH94_WIDTHS", "cifar_resnet", "resnet20", "resnet32", "resnet44", "resnet56",
           "resnet", "resnet18", "resnet34", "resnet50", "mobilenet_v2"]
