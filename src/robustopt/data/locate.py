"""Where datasets and decoded caches live on disk.

One place decides the directories so the command line, the tests and library
callers agree: an explicit argument wins, then an environment variable, then the
user's cache directory (``XDG_CACHE_HOME`` or ``~/.cache``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

DATA_ENV = "ROBUSTOPT_DATA"
CACHE_ENV = "ROBUSTOPT_CACHE"
OFFLINE_ENV = "ROBUSTOPT_OFFLINE"

_TRUTHY = frozenset({"1", "true", "yes", "on"})


def _user_cache_root() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "robustopt"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The dataset directory: ``data_dir``, else ``$ROBUSTOPT_DATA``, else the user cache."""
    if data_dir is not None and str(data_dir).strip():
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return _user_cache_root() / "data"


def resolve_cache_dir() -> Path:
    """The decoded-array cache: ``$ROBUSTOPT_CACHE``, else ``<user cache>/robustopt/cache``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return _user_cache_root() / "cache"


def download_allowed(download: bool | None) -> bool:
    """Resolve the ``download`` flag: ``None`` means yes unless ``$ROBUSTOPT_OFFLINE`` is set.

    Offline machines and CI set the variable once instead of passing a flag everywhere.
    """
    if download is not None:
        return bool(download)
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in _TRUTHY


def first_existing(candidates: Iterable[Path]) -> Path | None:
    """The first candidate that is an existing regular file, or None."""
    for path in candidates:
        if path.is_file():
            return path
    return None
