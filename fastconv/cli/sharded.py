"""The analysis passes that sweep many images, split over MPI ranks.

Under ``mpiexec -n N``, ``fastconv viz top-images``, ``fastconv viz
occlusion`` and ``fastconv robustness`` give each rank its contiguous shard
of the images (:func:`fastconv.train.distributed.map_shards`), run the
analysis tool on it unchanged, and merge the parts on rank 0, which alone
draws and writes. With one process each function is the tool itself.

The merged result is the one-process result: a model's output for an image
does not depend on the other images of its batch, so each image's numbers
are the same whichever rank computes them. What is merged:

* top images: every rank's own top k (activation values, positions, crops,
  with indices made global), pooled and cut to the global top k in the
  tool's order, largest value first and ties to the smaller index;
* occlusion: the per-image maps, joined in the images' order;
* robustness curves: the counts of correct and of broken images summed over
  the ranks, from which the accuracies and success rates are recomputed
  exactly; the mean perturbation norms are weighted by those counts (equal
  to one process's to rounding); ``seconds`` is the slowest rank's.

An attack whose result for an image depends on the other images cannot be
split this way: ``universal`` (one perturbation from all the images) is
refused; the random starts of ``pgd``, ``pgd-l2``, ``apgd-*``, ``fab-t``,
``square`` and ``autoattack`` are drawn for a whole batch from the seed, so
an image's start depends on its place in the batch, and ``cw`` stops early
when the batch's total loss stops falling. Every rank draws from the same
seed: the curves of those attacks are of the same kind as one process's,
not the same numbers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fastconv.train.distributed import Communicator, map_shards, top_k_order

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    import fastconv
    from fastconv.analysis.attribution.occlusion import OcclusionMaps
    from fastconv.analysis.visualize.units import TopImages

__all__ = ["top_images", "occlusion_maps", "robustness_curve", "merge_robustness", "BATCH_ATTACKS",
           "WHOLE_SET_ATTACKS"]

# Attacks whose result for an image depends on the rest of its batch (see the module's docstring).
BATCH_ATTACKS = ("pgd", "pgd-l2", "apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square", "autoattack", "cw")
# Attacks whose result for one image depends on all the images.
WHOLE_SET_ATTACKS = ("universal",)


def top_images(comm: Communicator, model: fastconv.Model, data: np.ndarray, layer: str,
               unit: int | Sequence[int], k: int, transform: Callable[[np.ndarray], np.ndarray] | None = None,
               limit: int | None = None) -> TopImages | None:
    """:func:`fastconv.analysis.visualize.units.top_images` over the first
    ``limit`` images of ``data`` split among the ranks: the global top k on
    rank 0, None on the others."""
    from dataclasses import replace

    from fastconv.analysis.visualize.units import top_images as top_images_of

    if comm.size == 1:
        return top_images_of(model, data, layer, unit, k=k, transform=transform, limit=limit)
    total = len(data) if limit is None else min(len(data), limit)
    if total == 0:
        raise ValueError("data holds no images")
    parts = map_shards(total, comm, lambda part: top_images_of(model, data[part], layer, unit, k=k,
                                                               transform=transform))
    if parts is None:
        return None
    values = np.concatenate([top.values for _, top in parts])
    indices = np.concatenate([top.indices + part.start for part, top in parts])
    order = top_k_order(values, indices, k)

    def pick(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        if any(array is None for array in arrays):
            return None
        return np.concatenate(arrays)[order]  # type: ignore[arg-type]

    crops = [crop for _, top in parts for crop in top.crops]
    return replace(parts[0][1], indices=indices[order], values=values[order],
                   positions=pick([top.positions for _, top in parts]),
                   boxes=np.concatenate([top.boxes for _, top in parts])[order],
                   fields=pick([top.fields for _, top in parts]),
                   crops=[crops[i] for i in order], count=total)


def occlusion_maps(comm: Communicator, model: fastconv.Model, x: np.ndarray,
                   target: Sequence[int] | None = None, **options: Any) -> OcclusionMaps | None:
    """:func:`fastconv.analysis.attribution.occlusion.occlusion_maps` of the
    images ``x`` split among the ranks: every image's maps, in order, on
    rank 0; None on the others. ``options`` are the tool's (patch, stride, fill)."""
    from dataclasses import replace

    from fastconv.analysis.attribution.occlusion import occlusion_maps as maps_of

    if comm.size == 1:
        return maps_of(model, x, target, **options)
    parts = map_shards(len(x), comm, lambda part: maps_of(
        model, x[part], None if target is None else list(target)[part], **options))
    if parts is None:
        return None
    maps = [m for _, m in parts]
    return replace(maps[0], **{name: np.concatenate([getattr(m, name) for m in maps]) for name in (
        "target", "probability", "top_class", "top_probability", "baseline_probability")})


def robustness_curve(comm: Communicator, model: fastconv.Model, x: np.ndarray, y: np.ndarray,
                     methods: Sequence[str], eps_list: Sequence[float], l2_eps_list: Sequence[float] | None,
                     attack_options: Mapping[str, Mapping[str, Any]] | None = None,
                     progress: Callable[[str], object] | None = None) -> dict[str, Any] | None:
    """:func:`fastconv.analysis.attacks.robustness.robustness_curve` of the
    images ``x`` (labels ``y``) split among the ranks: the report of all the
    images on rank 0, None on the others. ``progress`` is for one process
    only (a rank's lines would be of its shard)."""
    from fastconv.analysis.attacks.robustness import robustness_curve as curve_of

    if comm.size == 1:
        return curve_of(model, x, y, list(methods), eps_list, l2_eps_list, attack_options=attack_options,
                        progress=progress)
    whole_set = [name for name in methods if name in WHOLE_SET_ATTACKS]
    if whole_set:
        raise ValueError(f"{', '.join(whole_set)} makes one perturbation from all the images, which cannot be "
                         "split among MPI ranks: run it on one process")
    parts = map_shards(len(x), comm, lambda part: curve_of(model, x[part], np.asarray(y)[part], list(methods),
                                                           eps_list, l2_eps_list, attack_options=attack_options))
    return None if parts is None else merge_robustness([report for _, report in parts])


def _count(fraction: float, images: int) -> int:
    """How many images a fraction of ``images`` counted (it was count / images)."""
    return int(round(fraction * images))


def merge_robustness(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One robustness report of the images of several (each the report of a
    disjoint part, as ``robustness_curve`` returns it), as if measured at once."""
    sizes = [int(report["images"]) for report in reports]
    n = sum(sizes)
    correct = [_count(report["clean_accuracy"], size) for report, size in zip(reports, sizes)]
    merged: dict[str, Any] = {"images": n, "clean_accuracy": sum(correct) / n, "curves": {}}
    for label, first in reports[0]["curves"].items():
        curves = [report["curves"][label] for report in reports]
        curve = {key: first[key] for key in ("attack", "norm", "minimal", "eps")}
        curve.update(accuracy=[], success_rate=[], mean_l2=[], mean_linf=[])
        for point in range(len(first["eps"])):
            # An image broken at eps is one the model got right and no longer does.
            survived = [_count(c["accuracy"][point], size) for c, size in zip(curves, sizes)]
            broken = [right - alive for right, alive in zip(correct, survived)]
            curve["accuracy"].append(sum(survived) / n)
            curve["success_rate"].append(sum(broken) / max(sum(correct), 1))
            for norm in ("mean_l2", "mean_linf"):
                weighted = [(c[norm][point], count) for c, count in zip(curves, broken) if count]
                curve[norm].append(sum(mean * count for mean, count in weighted) / sum(broken)
                                   if weighted else None)
        curve["seconds"] = max(c["seconds"] for c in curves)
        merged["curves"][label] = curve
    return merged
