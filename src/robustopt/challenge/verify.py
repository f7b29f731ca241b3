"""Checking a challenge submission, then scoring the model on it.

A submission is a ``.npy`` file (or a ``.npz`` with an ``x_adv`` member) holding float32
``[N, C, H, W]`` in [0, 1], aligned with the first N points of the bundle's test split.
Everything about the file is checked before any data is read and before the model runs:

1. the format, by content: npy magic and header (parsed here, never by ``np.load``, and
   never unpickled), or a zip whose ``x_adv.npy`` member is stored/deflated, not
   encrypted, and declares a size that fits the split;
2. the header: dtype ``<f4`` (not object, not big-endian), C order, 4 dims, per-image
   shape equal to the split's, 1 <= N <= split size, and a payload length equal to
   ``N*C*H*W*4`` exactly (so a tiny file claiming 10^12 elements allocates nothing);
3. the values: finite, inside [0, 1], each example within eps of its clean point
   (the bundle's L-inf or L2 threat model, tolerance 1e-6).

Any failure is a ``SubmissionError`` (a ``RobustOptError``): one line naming the first
offending example and by how much it breaks the rule.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ..errors import InputError, RobustOptError
from ..threat import ThreatModel, make_threat

__all__ = [
    "EPS_TOLERANCE",
    "Submission",
    "SubmissionError",
    "VerifyResult",
    "check_values",
    "read_submission",
    "score",
    "verify_submission",
]

EPS_TOLERANCE = 1e-6
NPZ_MEMBER = "x_adv.npy"
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a member first, or an empty archive
_MAX_HEADER = 64 * 1024  # real npy headers are ~128 bytes; numpy itself refuses > 10000 chars
_MAX_MEMBERS = 64


class SubmissionError(InputError):
    """A submission file is malformed or breaks the challenge's rules."""


@dataclass(frozen=True)
class Submission:
    """A parsed submission: the array and the SHA-256 of its canonical content."""

    x_adv: np.ndarray  # float32 [N, C, H, W], C-contiguous, little-endian
    sha256: str        # of b"float32 N,C,H,W\n" + the raw little-endian bytes
    file_sha256: str   # of the file as submitted
    kind: str          # "npy" or "npz"

    @property
    def n(self) -> int:
        return int(self.x_adv.shape[0])


@dataclass(frozen=True)
class VerifyResult:
    """An accepted submission and what the model scores on it."""

    sha256: str
    file_sha256: str
    n: int
    correct: int
    clean_correct: int
    dataset: str
    split: str
    threat: dict
    max_distance: float
    bundle_sha256: str  # SHA-256 of the bundle's MANIFEST.sha256: the model's identity
    arch: str

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct / self.n


# ----------------------------------------------------------------------------- parsing


def _reject(where: str, what: str) -> SubmissionError:
    return SubmissionError(f"rejected {where}: {what}")


def _read_header(fh: BinaryIO, available: int, where: str) -> tuple[tuple, bool, np.dtype, int]:
    """Parse an npy header from ``fh`` (positioned at its start) with ``available`` bytes in
    all; return ``(shape, fortran_order, dtype, header_length)``. The header's own length
    field is checked against ``available`` before anything of that length is read."""
    head = fh.read(8)
    if len(head) < 8:
        raise _reject(where, f"truncated .npy file ({len(head)} bytes); save with numpy.save")
    if head[:6] != _NPY_MAGIC:
        raise _reject(where, f"not a .npy array (bad magic {head[:6]!r}); save with "
                      "numpy.save(file, x_adv.astype(numpy.float32))")
    version = (head[6], head[7])
    if version not in ((1, 0), (2, 0)):
        raise _reject(where, f"unsupported .npy format version {version[0]}.{version[1]}; "
                      "save with numpy.save (format 1.0)")
    size_len = 2 if version == (1, 0) else 4
    raw = fh.read(size_len)
    if len(raw) < size_len:
        raise _reject(where, "truncated .npy header; the file is incomplete")
    length = struct.unpack("<H" if size_len == 2 else "<I", raw)[0]
    header_end = 8 + size_len + length
    if length > _MAX_HEADER or header_end > available:
        raise _reject(where, f".npy header claims {length} bytes but the file has "
                      f"{max(available - 8 - size_len, 0)} after it; the file is truncated "
                      "or corrupt")
    fh_header = io.BytesIO(head + raw + fh.read(length))
    fh_header.seek(0)
    try:
        np.lib.format.read_magic(fh_header)
        reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = reader(fh_header, max_header_size=_MAX_HEADER)
    except Exception as err:  # numpy raises ValueError, SyntaxError, RecursionError, ...
        text = str(err).strip().splitlines()
        raise _reject(where, f"unreadable .npy header ({text[0][:120] if text else err!r}); "
                      "save with numpy.save") from None
    return tuple(shape), bool(fortran), np.dtype(dtype), header_end


def _check_header(shape: tuple, fortran: bool, dtype: np.dtype, image_shape: tuple[int, ...],
                  max_n: int, where: str) -> int:
    """Check the declared array against the split; return the number of payload bytes."""
    if dtype.hasobject:
        raise _reject(where, f"dtype {dtype.str} holds Python objects (pickle), which are "
                      "never loaded; save float32 pixels")
    if dtype.str != "<f4":
        hint = " (big-endian)" if dtype.byteorder == ">" else ""
        raise _reject(where, f"dtype is {dtype.str}{hint}, expected little-endian float32 "
                      "'<f4'; convert with x.astype('<f4')")
    if fortran:
        raise _reject(where, "the array is in Fortran order; save np.ascontiguousarray(x)")
    if len(shape) != 4:
        raise _reject(where, f"array has {len(shape)} dimensions {shape}, expected 4 "
                      f"[N, {', '.join(map(str, image_shape))}]")
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise _reject(where, f"invalid shape {shape}")
    if tuple(shape[1:]) != tuple(image_shape):
        raise _reject(where, f"images have shape {tuple(shape[1:])}, expected "
                      f"{tuple(image_shape)} (C, H, W) for this model's dataset")
    n = shape[0]
    if n < 1:
        raise _reject(where, "the array holds no examples")
    if n > max_n:
        raise _reject(where, f"{n} examples but the test split has only {max_n}")
    return n * math.prod(image_shape) * 4


def _canonical_sha256(x: np.ndarray) -> str:
    digest = hashlib.sha256(f"float32 {','.join(map(str, x.shape))}\n".encode())
    digest.update(memoryview(np.ascontiguousarray(x)).cast("B"))
    return digest.hexdigest()


def _read_npy(path: Path, size: int, image_shape: tuple, max_n: int) -> np.ndarray:
    where = str(path)
    with open(path, "rb") as fh:
        shape, fortran, dtype, header_end = _read_header(fh, size, where)
        nbytes = _check_header(shape, fortran, dtype, image_shape, max_n, where)
        if size != header_end + nbytes:
            raise _reject(where, f"the file has {size - header_end} data bytes but its header "
                          f"declares {shape} float32 = {nbytes} bytes; it is truncated or "
                          "padded")
        fh.seek(header_end)
        x = np.empty(shape, dtype="<f4")  # nbytes: exactly what the file holds
        if fh.readinto(memoryview(x).cast("B")) != nbytes:
            raise _reject(where, "the file changed while it was read; submit it again")
    return x


def _read_npz(path: Path, image_shape: tuple, max_n: int) -> np.ndarray:
    where = f"{path} ({NPZ_MEMBER})"
    limit = max_n * math.prod(image_shape) * 4 + _MAX_HEADER + 12
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > _MAX_MEMBERS:
                raise _reject(str(path), f"the archive has {len(infos)} members; an .npz "
                              f"submission needs {NPZ_MEMBER} and at most {_MAX_MEMBERS} in all")
            matches = [i for i in infos if i.filename == NPZ_MEMBER]
            if len(matches) != 1:
                names = ", ".join(sorted(i.filename for i in infos)[:5]) or "nothing"
                raise _reject(str(path), f"the .npz must hold exactly one {NPZ_MEMBER} "
                              f"(numpy.savez(file, x_adv=...)); it holds {names}")
            info = matches[0]
            if info.flag_bits & 0x1:
                raise _reject(where, "the member is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise _reject(where, f"unsupported compression method {info.compress_type}; "
                              "use numpy.savez or numpy.savez_compressed")
            if info.file_size > limit:
                raise _reject(where, f"the member declares {info.file_size} bytes "
                              f"uncompressed, more than {max_n} images of this split can "
                              f"take ({limit}); refused before decompressing")
            with zf.open(info) as fh:
                shape, fortran, dtype, header_end = _read_header(fh, info.file_size, where)
                nbytes = _check_header(shape, fortran, dtype, image_shape, max_n, where)
                if info.file_size != header_end + nbytes:
                    raise _reject(where, f"the member has {info.file_size - header_end} data "
                                  f"bytes but its header declares {shape} float32 = {nbytes} "
                                  "bytes; it is truncated or padded")
                x = np.empty(shape, dtype="<f4")  # bounded by the split size (checked)
                view, got = memoryview(x).cast("B"), 0
                while got < nbytes:
                    chunk = fh.read(min(nbytes - got, 1 << 20))
                    if not chunk:
                        break
                    view[got:got + len(chunk)] = chunk
                    got += len(chunk)
                if got != nbytes or fh.read(1):  # reading to the end checks the CRC
                    raise _reject(where, "the member's data is truncated")
    except SubmissionError:
        raise
    except Exception as err:  # zipfile/zlib raise many types on hostile input: report one
        text = str(err).strip().splitlines()
        raise _reject(str(path), f"not a valid .npz archive ({type(err).__name__}: "
                      f"{text[0][:120] if text else ''}); save with numpy.savez") from None
    return x


def read_submission(path: Path | str, image_shape: tuple[int, ...], max_n: int) -> Submission:
    """Parse a submission file safely (see the module docstring); values are not yet checked.

    ``image_shape`` is the split's ``(C, H, W)`` and ``max_n`` its number of points.
    """
    path = Path(path)
    where = str(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise _reject(where, "not a regular file")
        with open(path, "rb") as fh:
            magic = fh.read(8)
        if magic.startswith(_NPY_MAGIC):
            kind, x = "npy", _read_npy(path, size, tuple(image_shape), max_n)
        elif magic.startswith(_ZIP_MAGIC):
            kind, x = "npz", _read_npz(path, tuple(image_shape), max_n)
        elif magic[:1] == b"\x80" and len(magic) > 1 and 1 <= magic[1] <= 5:
            raise _reject(where, "the file is a Python pickle, which is never loaded; save a "
                          "float32 array with numpy.save(file, x_adv)")
        elif size < 8:
            raise _reject(where, f"the file is truncated ({size} bytes); save with numpy.save")
        else:
            raise _reject(where, f"neither .npy nor .npz (starts with {magic[:8]!r}); save "
                          "with numpy.save(file, x_adv.astype(numpy.float32))")
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as err:
        raise SubmissionError(f"cannot read {path} ({err.strerror}); check the path") from None
    return Submission(x, _canonical_sha256(x), digest.hexdigest(), kind)


# ----------------------------------------------------------------------------- values


def _pixel(index: int, shape: tuple) -> str:
    c, h, w = np.unravel_index(index, shape)
    return f"pixel (c={c}, h={h}, w={w})"


def check_values(x_adv: np.ndarray, x_clean: np.ndarray, threat: ThreatModel,
                 tolerance: float = EPS_TOLERANCE, where: str = "the submission") -> float:
    """Check every example: finite, inside [0, 1], within eps of its clean point (+ tolerance).

    Names the first offending example (lowest index) and the first rule it breaks, with the
    amount; returns the largest distance. ``x_clean`` is float32 ``[>= N, C, H, W]``.
    """
    n = x_adv.shape[0]
    image_shape = tuple(x_adv.shape[1:])
    flat = x_adv.reshape(n, -1)
    clean = x_clean[:n].reshape(n, -1)
    finite = np.isfinite(flat).all(axis=1)
    with np.errstate(invalid="ignore"):
        in_box = ((flat >= 0) & (flat <= 1)).all(axis=1)
    dist = np.full(n, np.inf)
    for s in range(0, n, 1024):  # float64 differences of the float32 values, in chunks
        part = slice(s, s + 1024)
        ok = finite[part] & in_box[part]
        diff = flat[part][ok].astype(np.float64) - clean[part][ok].astype(np.float64)
        if threat.norm == "linf":
            d = np.abs(diff).max(axis=1) if diff.size else np.zeros(0)
        else:
            d = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        dist[part][ok] = d
    bad = np.flatnonzero(~finite | ~in_box | (dist > threat.eps + tolerance))
    if not bad.size:
        return float(dist.max()) if n else 0.0
    i = int(bad[0])
    row = flat[i]
    if not finite[i]:
        j = int(np.flatnonzero(~np.isfinite(row))[0])
        raise _reject(where, f"example {i} has the non-finite value {row[j]} at "
                      f"{_pixel(j, image_shape)}")
    if not in_box[i]:
        j = int(np.flatnonzero((row < 0) | (row > 1))[0])
        value = float(row[j])
        by = -value if value < 0 else value - 1
        raise _reject(where, f"example {i} has value {value:.9g} at {_pixel(j, image_shape)}, "
                      f"outside [0, 1] by {by:.3g}")
    raise _reject(where, f"example {i} is at {threat.norm} distance {dist[i]:.9g} from its "
                  f"clean point, more than eps {threat.eps:.9g} by {dist[i] - threat.eps:.3g} "
                  f"(tolerance {tolerance:g})")


# ----------------------------------------------------------------------------- scoring


def score(model: torch.nn.Module, x: np.ndarray | torch.Tensor, y: torch.Tensor,
          batch_size: int = 500, device: torch.device | str | None = None) -> int:
    """Number of points ``model`` classifies correctly, in batched forward passes."""
    device = torch.device(device or "cpu")
    x = torch.as_tensor(x)
    correct = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size].to(device=device, dtype=torch.float32)
            pred = model(xb).argmax(1).cpu()
            correct += int((pred == y[i:i + batch_size].cpu()).sum())
    return correct


def _bundle_threat(record: dict[str, Any], where: str) -> ThreatModel:
    saved = record.get("threat")
    if not isinstance(saved, dict) or "norm" not in saved or "eps" not in saved:
        raise RobustOptError(f"{where} has no threat model in model.json; re-export it")
    return make_threat(str(saved["norm"]), saved["eps"])


def verify_submission(
    bundle: Path | str,
    adv: Path | str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 500,
    device: torch.device | str | None = None,
) -> VerifyResult:
    """Check a submission against a release bundle and score the bundle's model on it.

    Raises ``SubmissionError`` for a bad file, ``ModelFileError`` for a bad bundle; the
    model is loaded and run only after the file has passed every check.
    """
    from ..data import load_dataset
    from ..modelfile import load_model
    from ..release import bundle_record

    record = bundle_record(bundle)
    threat = _bundle_threat(record, str(bundle))
    dataset = record.get("dataset")
    if not isinstance(dataset, str):
        raise RobustOptError(f"{bundle} does not name its dataset in model.json; re-export it")
    split = "test"
    data = load_dataset(dataset, split, data_dir)
    sub = read_submission(adv, data.shape, len(data))
    x_clean, y = data.tensors(n=sub.n)
    distance = check_values(sub.x_adv, x_clean.numpy(), threat, where=str(adv))
    model = load_model(bundle, device=device)
    correct = score(model, sub.x_adv, y, batch_size, device)
    clean_correct = score(model, x_clean, y, batch_size, device)
    return VerifyResult(sub.sha256, sub.file_sha256, sub.n, correct, clean_correct, dataset,
                        split, threat.to_dict(), distance, record["manifest_sha256"],
                        str(record.get("arch")))
