"""Optimizers (SGD, Adam, AdamW), parameter groups, Lookahead, and learning-rate
schedules, with PyTorch's update rules."""
from fastconv.optim.lookahead import Lookahead
from fastconv.optim.optimizers import SGD, Adam, AdamW, Optimizer
from fastconv.optim.schedules import CosineAnnealingLR, OneCycleLR, PiecewiseLinearLR, StepLR

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Lookahead", "StepLR", "CosineAnnealingLR", "OneCycleLR",
           "PiecewiseLinearLR"]
