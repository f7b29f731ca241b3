"""Image-folder datasets (``<split>/<class>/*.png|jpg|jpeg``) from a directory or a tar.

The tree may sit under one top-level folder (``cifar10-jpeg/train/...``). Archives are
read as a stream and never extracted, so a hostile member path cannot write anywhere.
Class index = position in sorted class-name order, as torchvision's ``ImageFolder``;
example order interleaves the classes (see :func:`_interleave`).
"""

from __future__ import annotations

import gzip
import io
import lzma
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from robustopt.data.cache import Arrays, cache_path, cached
from robustopt.data.download import one_line
from robustopt.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
_GRAY_MODES = frozenset({"L", "1", "LA"})
_COLOR_MODES = frozenset({"RGB", "RGBA", "P", "PA", "CMYK", "YCbCr"})
_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)

# (class name, file name within the class) -> decoded H x W or H x W x 3 array
_Entry = tuple[tuple[str, str], np.ndarray]


def _layout_hint(source: Path, split: str) -> str:
    return (f"put images in {source}/{split}/<class>/*.png|jpg|jpeg "
            f"(optionally under one top-level folder)")


def _decode(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode in _GRAY_MODES:
                return np.asarray(image.convert("L"), dtype=np.uint8)
            if image.mode in _COLOR_MODES:
                return np.asarray(image.convert("RGB"), dtype=np.uint8)
            mode = image.mode
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where} is not a readable image ({one_line(exc)}): replace or remove "
                        "it") from exc
    raise DataError(f"{where} has unsupported image mode {mode!r}: save it as 8-bit "
                    "grayscale or RGB")


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _interleave(entries: list[_Entry], index: dict[str, int]) -> list[_Entry]:
    """Round-robin over classes, each in file-name order: k-th of class 0, of class 1, ...

    A folder tree groups examples by class, so its plain order would make "the first n
    examples" (quick evaluations, previews) all one class; this order keeps every prefix
    class-balanced while staying fully determined by the file names.
    """
    entries = sorted(entries, key=lambda e: e[0])
    rank: dict[str, int] = {}
    keyed = []
    for entry in entries:
        cls = entry[0][0]
        keyed.append(((rank.get(cls, 0), index[cls]), entry))
        rank[cls] = rank.get(cls, 0) + 1
    keyed.sort(key=lambda k: k[0])
    return [entry for _, entry in keyed]


def _stack(entries: list[_Entry], class_names: set[str], where: str) -> Arrays:
    """Put entries in class-interleaved order and build NCHW uint8 arrays."""
    classes = tuple(sorted(class_names))
    index = {name: i for i, name in enumerate(classes)}
    entries = _interleave(entries, index)
    first = entries[0][1].shape[:2]
    color = False
    for (cls, name), array in entries:
        if array.shape[:2] != first:
            raise DataError(
                f"{where}: {cls}/{name} is {array.shape[1]}x{array.shape[0]} but others are "
                f"{first[1]}x{first[0]}: resize all images of the dataset to one size"
            )
        color = color or array.ndim == 3
    n, (h, w) = len(entries), first
    images = np.empty((n, 3 if color else 1, h, w), dtype=np.uint8)
    for i, (_, array) in enumerate(entries):
        images[i] = array.transpose(2, 0, 1) if array.ndim == 3 else array[None]
    labels = np.fromiter((index[cls] for (cls, _), _ in entries), dtype=np.int64, count=n)
    return images, labels, classes


def _scan_directory(root: Path, split: str) -> tuple[Path, dict[str, list[Path]]]:
    base = root / split
    if not base.is_dir():
        nested = [d / split for d in sorted(root.iterdir())
                  if d.is_dir() and not d.name.startswith(".") and (d / split).is_dir()]
        if len(nested) > 1:
            raise DataError(f"{root} holds several '{split}' trees ({nested[0]}, {nested[1]}): "
                            "point at one of them")
        if not nested:
            raise DataError(f"no '{split}' split in {root}: {_layout_hint(root, split)}")
        base = nested[0]
    files = {}
    for class_dir in sorted(base.iterdir()):
        if class_dir.is_dir() and not class_dir.name.startswith("."):
            files[class_dir.name] = sorted(p for p in class_dir.iterdir()
                                           if p.is_file() and _is_image_name(p.name))
    return base, files


def _read_directory(base: Path, files: dict[str, list[Path]]) -> Arrays:
    entries: list[_Entry] = []
    for cls, paths in files.items():
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise DataError(f"cannot read {path} ({one_line(exc)}): check the file and its "
                                "permissions") from exc
            entries.append(((cls, path.name), _decode(data, str(path))))
    return _stack(entries, set(files), str(base))


def _read_archive(archive: Path, split: str) -> Arrays:
    """Stream the archive once; keep members at ``[top/]<split>/<class>/<file>``."""
    found: dict[tuple[str, ...], tuple[list[_Entry], set[str]]] = {}
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                parts = tuple(p for p in PurePosixPath(member.name).parts if p not in (".", "/"))
                if member.isdir() and len(parts) in (2, 3) and parts[-2] == split:
                    found.setdefault(parts[:-2], ([], set()))[1].add(parts[-1])
                    continue
                if (not member.isfile() or len(parts) not in (3, 4) or parts[-3] != split
                        or not _is_image_name(parts[-1]) or parts[-2].startswith(".")):
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                data = handle.read()
                entries, names = found.setdefault(parts[:-3], ([], set()))
                names.add(parts[-2])
                entries.append(((parts[-2], parts[-1]), _decode(data, f"{archive}:{member.name}")))
    except _TAR_ERRORS as exc:
        raise DataError(f"{archive} is truncated or corrupt, or not a tar archive "
                        f"({one_line(exc)}): re-download or replace it") from exc
    except OSError as exc:
        raise DataError(f"cannot read {archive} ({one_line(exc)}): check the file") from exc
    found = {prefix: value for prefix, value in found.items() if value[0]}
    if len(found) > 1:
        tops = sorted("/".join(p) or "." for p in found)
        raise DataError(f"{archive} holds several '{split}' trees ({', '.join(tops)}): keep one")
    if not found:
        raise DataError(f"no '{split}' images in {archive}: {_layout_hint(archive, split)}")
    entries, names = next(iter(found.values()))
    return _stack(entries, names, str(archive))


def load_image_folder(source: str | Path, split: str, label: str) -> Arrays:
    """Decoded ``(images, labels, classes)`` of one split, from the cache when unchanged.

    ``label`` names the cache entry (e.g. ``"cifar10-test"``); the key also covers each
    source file's path, size and mtime.
    """
    source = Path(source).expanduser()
    if source.is_dir():
        base, files = _scan_directory(source, split)
        if not any(files.values()):
            raise DataError(f"no '{split}' images in {base}: {_layout_hint(source, split)}")
        stats = []
        for cls, paths in files.items():
            for p in paths:
                st = p.stat()
                stats.append((f"{cls}/{p.name}", int(st.st_size), int(st.st_mtime_ns)))
        sources = [(str(base.resolve()), 0, 0), *stats]
        return cached(cache_path(label, sources, extra=split),
                      lambda: _read_directory(base, files))
    if source.is_file():
        st = source.stat()
        sources = [(str(source.resolve()), int(st.st_size), int(st.st_mtime_ns))]
        return cached(cache_path(label, sources, extra=split),
                      lambda: _read_archive(source, split))
    raise DataError(f"image folder {source} not found: pass a directory or .tar/.tar.gz "
                    f"holding <split>/<class>/*.png|jpg|jpeg")
