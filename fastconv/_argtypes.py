"""Argument types shared by the command-line modules: each parses one option's
text or raises argparse.ArgumentTypeError naming it, which argparse prints as
a one-line usage error."""
import argparse
import math


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _number(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def non_negative_float(text):
    value = _number(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def positive_float(text):
    value = _number(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def fraction(text):
    """A fraction in [0, 1)."""
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def probability(text):
    """A probability strictly between 0 and 1."""
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a probability strictly between 0 and 1, got {text!r}")
    return value


def non_negative_int(text):
    """An int >= 0: a count where none is meaningful, or a seed."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _bounded(text, low, high, what):
    value = _number(text)
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected {what} from {low:g} to {high:g}, got {text!r}")
    return value


def unit_interval(text):
    """A number in [0, 1], such as a quantile."""
    return _bounded(text, 0, 1, "a number")


def percentile(text):
    """A percentile in [0, 100): the share of pixels to reset, all of them excluded."""
    value = _number(text)
    if not 0 <= value < 100:
        raise argparse.ArgumentTypeError(f"expected a percentile in [0, 100), got {text!r}")
    return value


def above_one(text):
    """A finite number greater than 1, such as a growth ratio."""
    value = _number(text)
    if not (value > 1 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number above 1, got {text!r}")
    return value


def pixel_value(text):
    """A raw 8-bit pixel value in [0, 255]."""
    return _bounded(text, 0, 255, "a pixel value")
