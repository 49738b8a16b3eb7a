"""What a trained network holds: its filters, activations, the images that
drive each unit most, clusters and maps of its codes, receptive fields, and
the figures of all of them."""
from fastconv.analysis.visualize.embedding import (
    Clusters,
    cluster,
    default_code_layer,
    embed,
    layer_features,
    snap_to_grid,
)
from fastconv.analysis.visualize.feature_maps import Activations, activations
from fastconv.analysis.visualize.hog import HogComparison, compare_hog, hog_descriptors
from fastconv.analysis.visualize.neighbors import Neighbors, nearest_neighbors
from fastconv.analysis.visualize.projections import UnitProjections, unit_projections
from fastconv.analysis.visualize.receptive_field import (
    EffectiveField,
    effective_receptive_field,
    geometry,
    theoretical_size,
)
from fastconv.analysis.visualize.units import TopImages, top_images
from fastconv.analysis.visualize.weights import filter_tiles, filters

__all__ = [
    "Activations", "activations", "Clusters", "cluster", "default_code_layer", "embed", "layer_features",
    "snap_to_grid",
    "filter_tiles", "filters", "EffectiveField", "effective_receptive_field", "geometry", "theoretical_size",
    "TopImages", "top_images", "Neighbors", "nearest_neighbors", "UnitProjections", "unit_projections",
    "HogComparison", "compare_hog", "hog_descriptors",
]
