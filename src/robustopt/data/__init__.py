"""Datasets: readers (IDX, CIFAR-10, image folders), download + checksum, decoded-array
cache, and on-device batching and augmentation."""

from robustopt.data.batching import epoch_permutation, iterate_batches, random_crop_flip
from robustopt.data.dataset import Dataset
from robustopt.data.locate import resolve_cache_dir, resolve_data_dir
from robustopt.data.registry import DATASET_NAMES, canonical_name, load_dataset

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "canonical_name",
    "epoch_permutation",
    "iterate_batches",
    "load_dataset",
    "random_crop_flip",
    "resolve_cache_dir",
    "resolve_data_dir",
]
