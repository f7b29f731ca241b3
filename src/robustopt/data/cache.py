"""On-disk cache of decoded datasets as plain ``.npz`` arrays.

Decoding 60,000 JPEGs takes seconds; reading the decoded uint8 arrays back takes a
fraction of one. The cache key covers every source file's path, size and mtime plus
a format version, so replacing a source file invalidates its entry. Entries are
written to a temporary file and renamed, so a killed process never leaves half an
entry, and an unreadable entry is simply rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from robustopt.data.download import one_line
from robustopt.data.locate import resolve_cache_dir

logger = logging.getLogger("robustopt.data")

CACHE_VERSION = 1

Arrays = tuple[np.ndarray, np.ndarray, tuple[str, ...]]


def fingerprint(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    """``(absolute path, size, mtime_ns)`` of each source file: what the cache key hashes."""
    out = []
    for path in paths:
        stat = path.stat()
        out.append((str(path.resolve()), int(stat.st_size), int(stat.st_mtime_ns)))
    return out


def cache_path(label: str, sources: list[tuple[str, int, int]], extra: str = "") -> Path:
    """The cache file for ``label`` built from ``sources`` (see :func:`fingerprint`)."""
    blob = json.dumps({"version": CACHE_VERSION, "label": label, "sources": sources,
                       "extra": extra}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:24]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:60]
    return resolve_cache_dir() / f"{slug}-{key}.npz"


def _read(path: Path) -> Arrays | None:
    try:
        with np.load(path, allow_pickle=False) as archive:
            images = archive["images"]
            labels = archive["labels"]
            classes = tuple(str(c) for c in archive["classes"].tolist())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as exc:
        logger.warning("ignoring unreadable cache file %s (%s); rebuilding", path, one_line(exc))
        return None
    if (images.dtype != np.uint8 or images.ndim != 4 or labels.dtype != np.int64
            or labels.shape != (images.shape[0],)):
        logger.warning("ignoring malformed cache file %s; rebuilding", path)
        return None
    return np.ascontiguousarray(images), labels, classes


def _write(path: Path, arrays: Arrays) -> None:
    images, labels, classes = arrays
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, images=images, labels=labels,
                     classes=np.array(classes, dtype=np.str_))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        logger.warning("could not write cache file %s (%s); continuing without it",
                       path, one_line(exc))
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def cached(path: Path, build: Callable[[], Arrays]) -> Arrays:
    """Arrays from the cache file ``path`` if it is sound, else ``build()`` and store them."""
    hit = _read(path)
    if hit is not None:
        return hit
    arrays = build()
    _write(path, arrays)
    return arrays
