"""Checksummed, atomic downloads and file digests.

A dataset file is only ever moved into place after its digest matched, and it is
written to a temporary file in the same directory first, so an interrupted or
tampered download never leaves a file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from robustopt.errors import DataError

logger = logging.getLogger("robustopt.data")

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Resource:
    """One downloadable file: its name, where to fetch it and its known digests."""

    filename: str
    url: str
    md5: str
    sha256: str | None = None


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in chunks so large archives do not fill memory."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def one_line(text: object) -> str:
    """Collapse whitespace so error text stays on the promised single line."""
    return " ".join(str(text).split())


def download(resource: Resource, directory: Path) -> Path:
    """Fetch ``resource`` into ``directory``, verify its digests, then rename into place.

    Raises DataError (one line) when the network, the disk or the checksum fails.
    """
    target = directory / resource.filename
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{resource.filename}.", dir=directory)
    except OSError as exc:
        raise DataError(
            f"cannot write to {directory} ({one_line(exc)}): pass a writable --data-dir "
            "or set ROBUSTOPT_DATA"
        ) from exc
    tmp = Path(tmp_name)
    md5 = hashlib.md5()
    sha256 = hashlib.sha256()
    try:
        logger.info("downloading %s -> %s", resource.url, target)
        request = urllib.request.Request(resource.url, headers={"User-Agent": "robustopt"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
            request, timeout=_TIMEOUT_S
        ) as response:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                md5.update(chunk)
                sha256.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if md5.hexdigest() != resource.md5 or (
            resource.sha256 is not None and sha256.hexdigest() != resource.sha256
        ):
            raise DataError(
                f"download of {resource.url} failed its checksum (md5 {md5.hexdigest()}, "
                f"expected {resource.md5}): retry, or fetch the file by hand into {directory}"
            )
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a shared data dir should stay readable
        os.replace(tmp, target)
    except DataError:
        tmp.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"download of {resource.url} failed ({one_line(exc)}): check the network, or put "
            f"{resource.filename} in {directory} by hand"
        ) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
