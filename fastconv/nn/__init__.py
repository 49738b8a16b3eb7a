"""The network: layers (forward/backward pairs over the kernels), the models
that wire them (a chain, ``Sequential``, or a graph, ``Graph``), losses and
weight initialization.

Everything here sits on the kernels (``fastconv.backend``) and nothing above
them: no optimizer, data set, training loop or analysis tool.
"""
from fastconv.nn import graph, init, layers, losses
from fastconv.nn.graph import Add, Concat, Graph, Identity
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
from fastconv.nn.model import Model, Parameter, Sequential, load, save

__all__ = [
    "init", "layers", "losses", "graph",
    "Layer", "Conv2d", "ReLU", "ReLU6", "LeakyReLU", "BatchNorm2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d",
    "AdaptiveAvgPool2d", "Flatten", "Linear", "Dropout", "LogSoftmax", "Add", "Concat", "Identity",
    "CrossEntropyLoss", "NLLLoss", "softmax", "log_softmax",
    "Model", "Sequential", "Graph", "Parameter", "save", "load",
]
