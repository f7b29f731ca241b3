"""CIFAR-10 from the official python batches (dir or tarball) or an image-folder copy.

The official batches are pickles, and unpickling runs code chosen by whoever wrote the
file. So each batch's bytes are read into memory, their md5 checked against the
official value *first*, and only then decoded with an unpickler that can build nothing
but dicts, lists, strings, ints and plain numeric numpy arrays.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

import numpy as np

from robustopt.data.cache import Arrays, cache_path, cached, fingerprint
from robustopt.data.download import Resource, download, one_line
from robustopt.data.imagefolder import load_image_folder
from robustopt.data.locate import first_existing
from robustopt.errors import DataError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")

BATCHES_DIR = "cifar-10-batches-py"
JPEG_ARCHIVE = "cifar10-jpeg.tar.gz"
JPEG_DIR = "cifar10-jpeg"

# torchvision.datasets.CIFAR10 (tgz_md5, train_list, test_list); sha256 as used by Keras.
TARBALL = Resource(
    filename="cifar-10-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
)
BATCH_MD5 = MappingProxyType({
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
})
SPLIT_BATCHES = MappingProxyType({
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
})

# numpy's array-rebuilding function, found without naming its module (numpy.core in
# numpy 1.x, numpy._core in 2.x).
_RECONSTRUCT = np.empty(0, np.uint8).__reduce__()[0]


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("only plain numpy arrays are allowed")
    return _RECONSTRUCT(np.ndarray, shape, typecode)


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if not isinstance(spec, str) or np.dtype(spec).kind not in "biuf":
        raise pickle.UnpicklingError(f"dtype {spec!r} is not a plain numeric type")
    return np.dtype(spec, bool(align), bool(copy))


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    # Python 3 writes bytes at pickle protocol 2 as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only latin-1 byte strings are allowed")
    return text.encode("latin1")


_ALLOWED = MappingProxyType({
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1,
})


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the few globals a CIFAR batch needs; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def parse_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N,3,32,32]`` uint8 and labels int64 from one batch whose md5 was checked."""
    fix = f"delete it and re-download {TARBALL.filename}"
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # any failure to decode these bytes is a data problem
        raise DataError(f"{where} cannot be decoded safely ({one_line(exc)}): {fix}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{where} is not a CIFAR batch (no dict inside): {fix}")
    obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    images, labels = obj.get("data"), obj.get("labels")
    if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2
            or images.shape[1] != 3 * 32 * 32):
        raise DataError(f"{where} has no uint8 [N, 3072] 'data' array: {fix}")
    if (not isinstance(labels, list) or len(labels) != images.shape[0]
            or not all(type(v) is int and 0 <= v < len(CLASSES) for v in labels)):
        raise DataError(f"{where} has no list of {images.shape[0]} labels in 0..9: {fix}")
    images = np.ascontiguousarray(images.reshape(-1, 3, 32, 32))
    return images, np.asarray(labels, dtype=np.int64)


def _checked(name: str, data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """md5 first, unpickle second: an unverified pickle is never opened."""
    got = hashlib.md5(data).hexdigest()
    want = BATCH_MD5[name]
    if got != want:
        raise DataError(
            f"{where} failed its md5 check (got {got}, expected {want}): it is corrupt or not "
            f"the official file; delete it and re-download {TARBALL.filename}"
        )
    return parse_batch(data, where)


def _join(parts: list[tuple[np.ndarray, np.ndarray]]) -> Arrays:
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    return images, np.concatenate([p[1] for p in parts]), CLASSES


def _read_batch_files(paths: list[Path]) -> Arrays:
    parts = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read {path} ({one_line(exc)}): check the file") from exc
        parts.append(_checked(path.name, data, str(path)))
    return _join(parts)


def _read_tarball(archive: Path, names: tuple[str, ...]) -> Arrays:
    """Read the wanted batches straight out of the official tarball, without extracting."""
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                parts = tuple(p for p in PurePosixPath(member.name).parts if p != ".")
                if member.isfile() and parts[:1] == (BATCHES_DIR,) and len(parts) == 2 \
                        and parts[1] in names:
                    handle = tar.extractfile(member)
                    if handle is not None:
                        blobs[parts[1]] = handle.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive} is truncated or corrupt ({one_line(exc)}): delete it and "
                        "re-download it") from exc
    missing = [n for n in names if n not in blobs]
    if missing:
        raise DataError(f"{archive} lacks {', '.join(missing)}: it is not the official "
                        f"{TARBALL.filename}; delete it and re-download it")
    return _join([_checked(n, blobs[n], f"{archive}:{BATCHES_DIR}/{n}") for n in names])


def load_cifar10(split: str, data_dir: Path, allow_download: bool) -> Arrays:
    """CIFAR-10 ``split`` from the first source found in ``data_dir`` (see module doc)."""
    names = SPLIT_BATCHES[split]
    label = f"cifar10-{split}"
    batch_paths = [data_dir / BATCHES_DIR / n for n in names]
    if all(p.is_file() for p in batch_paths):
        return cached(cache_path(label, fingerprint(batch_paths)),
                      lambda: _read_batch_files(batch_paths))
    tarball = first_existing([data_dir / TARBALL.filename])
    if tarball is None:
        jpeg = first_existing([data_dir / JPEG_ARCHIVE])
        if jpeg is None and (data_dir / JPEG_DIR).is_dir():
            jpeg = data_dir / JPEG_DIR
        if jpeg is not None:
            return _checked_folder(load_image_folder(jpeg, split, label), jpeg)
        where = (f"put {TARBALL.filename} (or its extracted {BATCHES_DIR}/, or "
                 f"{JPEG_ARCHIVE}) in {data_dir} (or pass --data-dir / set ROBUSTOPT_DATA)")
        if not allow_download:
            raise DataError(f"CIFAR-10 not found: {where}")
        try:
            tarball = download(TARBALL, data_dir)
        except DataError as exc:
            raise DataError(f"CIFAR-10 not found and download failed ({exc}); {where}") from exc
    return cached(cache_path(label, fingerprint([tarball])),
                  lambda: _read_tarball(tarball, names))


def _checked_folder(arrays: Arrays, source: Path) -> Arrays:
    images, _, classes = arrays
    if classes != CLASSES or images.shape[1:] != (3, 32, 32):
        raise DataError(
            f"{source} is not CIFAR-10 (classes {', '.join(classes)}; images "
            f"{'x'.join(map(str, images.shape[1:]))}): expected the 10 CIFAR-10 class folders "
            "of 32x32 RGB images; load it as folder:<path> instead"
        )
    return arrays
