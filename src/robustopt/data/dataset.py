"""The in-memory dataset value every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from robustopt.errors import DataError

SPLITS = ("train", "test")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A whole split as compact uint8 arrays; convert to float on the device only when used.

    Kept as uint8 NCHW (4x smaller than float32) so a full split can be cached on disk,
    moved to an accelerator once, and sliced there without a DataLoader.
    """

    name: str
    split: str
    images: np.ndarray  # uint8 [N, C, H, W], C-contiguous
    labels: np.ndarray  # int64 [N]
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        where = f"dataset {self.name!r} ({self.split})"
        if images.dtype != np.uint8 or images.ndim != 4 or not images.flags.c_contiguous:
            raise DataError(
                f"{where}: images must be C-contiguous uint8 [N, C, H, W], got {images.dtype} "
                f"{images.shape}: rebuild the arrays with np.ascontiguousarray(..., np.uint8)"
            )
        if labels.dtype != np.int64 or labels.shape != (images.shape[0],):
            raise DataError(
                f"{where}: labels must be int64 [{images.shape[0]}], got {labels.dtype} "
                f"{labels.shape}: pass one int64 label per image"
            )
        if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= len(self.classes)):
            raise DataError(
                f"{where}: labels must lie in 0..{len(self.classes) - 1}: the classes and "
                "labels do not match; check the source files"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-image shape ``(C, H, W)``, what a model is built for."""
        _, c, h, w = self.images.shape
        return (int(c), int(h), int(w))

    def tensors(
        self, device: torch.device | str | None = None, n: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """First ``n`` examples as ``x`` float32 in [0, 1] ``[n, C, H, W]`` and ``y`` int64.

        The uint8 bytes are moved first and converted on the device: 4x less transfer.
        """
        total = len(self)
        if n is None:
            n = total
        if not 0 <= n <= total:
            raise DataError(
                f"asked for {n} examples of {self.name} ({self.split}), which has {total}: "
                f"pass n between 0 and {total}"
            )
        x = torch.from_numpy(np.ascontiguousarray(self.images[:n])).to(device)
        y = torch.from_numpy(np.ascontiguousarray(self.labels[:n])).to(device, copy=True)
        return x.to(torch.float32).div_(255.0), y
