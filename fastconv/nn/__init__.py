"""The network: layers (forward/backward pairs over the kernels), the model
that chains them, losses and weight initialization.

Everything here sits on the kernels (``fastconv.backend``) and nothing above
them: no optimizer, data set, training loop or analysis tool.
"""
from fastconv.nn import init, layers, losses
from fastconv.nn.layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    GlobalAvgPool2d,
    Layer,
    LeakyReLU,
    Linear,
    LogSoftmax,
    MaxPool2d,
    ReLU,
    ReLU6,
)
from fastconv.nn.losses import CrossEntropyLoss, NLLLoss, log_softmax, softmax
from fastconv.nn.model import Parameter, Sequential, load, save

__all__ = [
    "init", "layers", "losses",
    "Layer", "Conv2d", "ReLU", "ReLU6", "LeakyReLU", "BatchNorm2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d",
    "AdaptiveAvgPool2d", "Flatten", "Linear", "Dropout", "LogSoftmax",
    "CrossEntropyLoss", "NLLLoss", "softmax", "log_softmax",
    "Sequential", "Parameter", "save", "load",
]
