"""Argument types shared by the command-line modules: each parses one option's
text or raises argparse.ArgumentTypeError naming it, which argparse prints as
a one-line usage error."""
import argparse
import math


class UsageError(Exception):
    """A mistake in the command line or in the files it names; printed as one line."""


def _parsed(text, parse, accept, expected):
    """parse(text) when it parses and accept() takes it; otherwise an error
    saying what was expected and quoting the text. NaN fails every bound."""
    try:
        value = parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text):
    return _parsed(text, int, lambda v: v >= 1, "a positive integer")


# The largest image side an option accepts: far beyond what the tools are
# meant for, and small enough that one image of floats fits in memory.
MAX_IMAGE_SIDE = 4096


def image_side(text):
    """A side in pixels for an image the command makes or crops, 1 to MAX_IMAGE_SIDE."""
    return _parsed(text, int, lambda v: 1 <= v <= MAX_IMAGE_SIDE, f"an image side from 1 to {MAX_IMAGE_SIDE} pixels")


def non_negative_int(text):
    """An int >= 0: a count where none is meaningful, or a seed."""
    return _parsed(text, int, lambda v: v >= 0, "a non-negative integer")


def non_negative_float(text):
    return _parsed(text, float, lambda v: 0 <= v < math.inf, "a non-negative number")


def positive_float(text):
    return _parsed(text, float, lambda v: 0 < v < math.inf, "a positive number")


def above_one(text):
    """A finite number greater than 1, such as a growth ratio."""
    return _parsed(text, float, lambda v: 1 < v < math.inf, "a number above 1")


def fraction(text):
    """A fraction in [0, 1)."""
    return _parsed(text, float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")


def probability(text):
    """A probability strictly between 0 and 1."""
    return _parsed(text, float, lambda v: 0 < v < 1, "a probability strictly between 0 and 1")


def unit_interval(text):
    """A number in [0, 1], such as a quantile."""
    return _parsed(text, float, lambda v: 0 <= v <= 1, "a number from 0 to 1")


def percentile(text):
    """A percentile in [0, 100): the share of pixels to reset, all of them excluded."""
    return _parsed(text, float, lambda v: 0 <= v < 100, "a percentile in [0, 100)")


def pixel_value(text):
    """A raw 8-bit pixel value in [0, 255]."""
    return _parsed(text, float, lambda v: 0 <= v <= 255, "a pixel value from 0 to 255")
