"""Strict reader for IDX files (the MNIST / Fashion-MNIST format), plain or gzip'd.

The header is checked against the payload so a truncated download or a swapped
file fails loudly here instead of producing misaligned images later.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from robustopt.data.download import one_line
from robustopt.errors import DataError

IMAGES_MAGIC = 2051  # uint8, 3 dimensions: count, rows, cols
LABELS_MAGIC = 2049  # uint8, 1 dimension: count


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(
            f"{path} is truncated or corrupt ({one_line(exc)}): delete it and re-download "
            "or replace it"
        ) from exc
    except OSError as exc:
        raise DataError(
            f"cannot read {path} ({one_line(exc)}): check the file and its permissions"
        ) from exc


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Decode one uint8 IDX file whose magic number must equal ``magic``."""
    path = Path(path)
    raw = _read_bytes(path)
    fix = "delete it and re-download or replace it"
    if len(raw) < 4:
        raise DataError(f"{path} is truncated (only {len(raw)} bytes): {fix}")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(
            f"{path} has IDX magic number {found}, expected {magic}: it is corrupt or not "
            f"the right file; {fix}"
        )
    ndim = raw[3]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(f"{path} is truncated inside its header: {fix}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(raw) - header_len
    if payload < expected:
        raise DataError(
            f"{path} is truncated ({payload} of {expected} data bytes the header promises): {fix}"
        )
    if payload > expected:
        raise DataError(
            f"{path} is corrupt ({payload - expected} bytes beyond what the header describes): "
            f"{fix}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims).copy()


def read_idx_pair(
    images_path: Path, labels_path: Path, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 1, H, W]`` uint8 and labels ``[N]`` int64 from matching IDX files."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels: one of them is from another split or corrupt; replace it"
        )
    if labels.size and int(labels.max()) >= num_classes:
        raise DataError(
            f"{labels_path} has label {int(labels.max())} outside 0..{num_classes - 1}: it is "
            "corrupt or from another dataset; replace it"
        )
    return np.ascontiguousarray(images[:, None]), labels.astype(np.int64)
