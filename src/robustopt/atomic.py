"""Crash-safe file writes: write a temporary sibling, fsync, then rename over the target.

A reader (or a resumed run) therefore sees either the old file or the new one,
never a torn mix, even if the process is killed mid-write.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import RobustOptError


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and atomically move the result to ``path``."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as err:
        raise RobustOptError(f"cannot write in {path.parent}: {err.strerror}; "
                             "choose a writable output directory") from None
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give normal file modes
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        hint = "free some disk space" if err.errno == 28 else "check permissions and space"
        raise RobustOptError(f"could not write {path}: {err.strerror}; {hint}") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (after a power loss the checkpoint and the
    weights then agree); a no-op where directories cannot be opened or synced."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without setting it where the OS allows: ``os.umask(0)``
    would open a window in which another thread's new files are world-writable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    write_atomic(path, lambda p: p.write_bytes(data))


def write_json_atomic(path: str | os.PathLike, obj: object) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n"
    write_bytes_atomic(path, text.encode())


def _jsonable(obj: object) -> object:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def write_npy_atomic(path: str | os.PathLike, array: object) -> None:
    """Save one array as ``.npy`` (no pickle) with an atomic rename."""
    import numpy as np

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(array), allow_pickle=False)

    write_atomic(path, _write)
