"""Data: the data sets as uint8 NCHW arrays (``datasets``) and what prepares
their batches for a network (``transforms``: normalization, augmentation)."""
from fastconv.data.datasets import (
    DATASET_NAMES,
    IDX_FILES,
    SAMPLE_DIR,
    DataError,
    Dataset,
    cache_info,
    clear_cache,
    download,
    held_out_split,
    limited,
    load_cifar10,
    load_dataset,
    load_folder_dataset,
    load_idx_dataset,
    load_image_folder,
    read_idx,
    search_dirs,
    short_name,
    stratified_split,
    user_data_dir,
)
from fastconv.data.transforms import Augment, Normalize, resize_and_crop

__all__ = [
    "DataError", "Dataset", "DATASET_NAMES", "IDX_FILES", "SAMPLE_DIR", "load_dataset",
    "read_idx", "load_idx_dataset", "load_cifar10", "load_image_folder", "load_folder_dataset",
    "held_out_split", "download", "user_data_dir", "search_dirs", "stratified_split", "limited", "short_name",
    "cache_info", "clear_cache", "Normalize", "Augment", "resize_and_crop",
]
