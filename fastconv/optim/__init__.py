"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules, with PyTorch's update rules."""
from fastconv.optim.optimizers import SGD, Adam, AdamW, Optimizer
from fastconv.optim.schedules import CosineAnnealingLR, OneCycleLR, StepLR

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "StepLR", "CosineAnnealingLR", "OneCycleLR"]
