"""Dataset names, aliases and the one entry point, :func:`load_dataset`."""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType

from robustopt.data.cifar import load_cifar10
from robustopt.data.dataset import SPLITS, Dataset
from robustopt.data.imagefolder import load_image_folder
from robustopt.data.locate import download_allowed, resolve_data_dir
from robustopt.data.mnist import FASHION_MNIST, MNIST, load_idx_dataset
from robustopt.errors import DataError

DATASET_NAMES: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10")
FOLDER_PREFIX = "folder:"

_ALIASES = MappingProxyType({
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
})


def canonical_name(name: str) -> str:
    """The canonical dataset name for ``name`` (case-insensitive; aliases accepted).

    ``folder:<path>`` keeps its path as given.
    """
    stripped = name.strip()
    if stripped.lower().startswith(FOLDER_PREFIX):
        path = stripped[len(FOLDER_PREFIX):].strip()
        if not path:
            raise DataError("folder: needs a path, e.g. folder:/data/my-images: add the path")
        return FOLDER_PREFIX + path
    try:
        return _ALIASES[stripped.lower()]
    except KeyError:
        raise DataError(
            f"unknown dataset {name!r}: use one of {', '.join(DATASET_NAMES)} or folder:<path>"
        ) from None


def _check_split(split: str) -> str:
    value = split.strip().lower() if isinstance(split, str) else split
    if value not in SPLITS:
        raise DataError(f"unknown split {split!r}: use 'train' or 'test'")
    return value


def load_dataset(
    name: str,
    split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
    download: bool | None = None,
) -> Dataset:
    """Load one split of a dataset into memory as uint8 arrays.

    ``data_dir`` defaults to ``$ROBUSTOPT_DATA`` or the user cache (see
    :func:`resolve_data_dir`); ``download=None`` downloads missing files unless
    ``$ROBUSTOPT_OFFLINE`` is set. Raises DataError with a one-line fix on any problem.
    """
    canonical = canonical_name(name)
    split = _check_split(split)
    if canonical.startswith(FOLDER_PREFIX):
        source = Path(canonical[len(FOLDER_PREFIX):]).expanduser()
        images, labels, classes = load_image_folder(source, split, label=f"folder-{split}")
        return Dataset(canonical, split, images, labels, classes)
    root = resolve_data_dir(data_dir)
    allow = download_allowed(download)
    if canonical == "cifar10":
        images, labels, classes = load_cifar10(split, root, allow)
    else:
        spec = MNIST if canonical == "mnist" else FASHION_MNIST
        images, labels = load_idx_dataset(spec, split, root, allow)
        classes = spec.classes
    return Dataset(canonical, split, images, labels, classes)
