"""Tools to look inside a trained network (``fastconv.analysis``).

They work on any :class:`fastconv.nn.model.Sequential`, grayscale or RGB,
batch-first, through the model's public API only, return NumPy arrays, and
each has a figure function in :mod:`fastconv.analysis.visualize.figures`.

Attribution methods share one verb, ``Method(model).attribute(x, target)``,
whose result is shaped like x. Attacks share another,
``Attack(model, ...)(x, y=None, target=None) -> x_adv``, on [0, 1] pixels.
"""
# Each subpackage lists its public names once, in its own __all__; they are
# all importable from fastconv.analysis too.
from fastconv.analysis import attacks, attribution, optimize, report, visualize
from fastconv.analysis._common import Normalizer
from fastconv.analysis.attacks import *  # noqa: F403
from fastconv.analysis.attribution import *  # noqa: F403
from fastconv.analysis.optimize import *  # noqa: F403
from fastconv.analysis.report import *  # noqa: F403
from fastconv.analysis.visualize import *  # noqa: F403

__all__ = [
    "Normalizer",
    *visualize.__all__, *attribution.__all__, *attacks.__all__, *optimize.__all__, *report.__all__,
]
