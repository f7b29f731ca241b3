"""The run directory: the one place that writes ``runs/NAME/`` (see DESIGN.md).

Training, evaluation and the report all read and write a run through this class,
so the layout and the crash-safety rules (atomic writes, no overwrite unless asked)
live in one file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as save_tensors
from torch import nn

from . import __version__
from .atomic import write_bytes_atomic, write_json_atomic
from .errors import RobustOptError
from .modelfile import WEIGHT_FILES, _one_line, save_model
from .release import is_bundle

CHECKPOINT = "checkpoint/state.safetensors"
LOCK = ".train.lock"  # held (flock) while a process trains the run; never wiped
_OWNED = ("config.json", "model.json", "model.safetensors", "best.safetensors",
          "metrics.jsonl", "eval.json", "checkpoint", "plots", "report.html")


def _read_json(path: Path, parse: Callable[[str], Any]) -> Any:
    """``parse(text)`` of a run file; a corrupt file is one line naming it, not a traceback."""
    try:
        return parse(path.read_text())
    except (UnicodeDecodeError, ValueError) as err:
        raise RobustOptError(f"{path} is not valid JSON ({_one_line(err)}): restore it from "
                             "a copy (e.g. git) or start the run again") from None


class RunDir:
    """A run directory on disk; construct with :meth:`create` or :meth:`open`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    # -- lifecycle -------------------------------------------------------------------
    @classmethod
    def check_new(cls, path: str | Path, *, force: bool = False) -> RunDir:
        """Refuse a path ``create`` would refuse, without touching anything on disk."""
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise RobustOptError(f"{run.path} exists and is not a directory: choose another --out")
        if run.path.is_dir() and any(run.path.iterdir()) and not force:
            raise RobustOptError(
                f"run directory {run.path} already exists: pass --resume to continue it "
                "or --force to start over (its files will be replaced)")
        return run

    @classmethod
    def create(cls, path: str | Path, *, force: bool = False) -> RunDir:
        """A fresh run directory; an existing non-empty one is kept unless ``force``."""
        run = cls.check_new(path, force=force)
        if run.path.is_dir() and any(run.path.iterdir()):
            run.lock()  # never wipe a run another process is training
            for name in _OWNED:
                target = run.path / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        try:
            (run.path / "checkpoint").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RobustOptError(f"cannot create run directory {run.path}: {err.strerror}; "
                                 "choose a writable --out") from None
        return run

    def lock(self) -> None:
        """Hold the run for this process while it trains, so that a second ``--resume``,
        ``--restore`` or ``--force`` of the same run cannot interleave its writes. An OS
        lock (flock): released when the process exits or is killed; a no-op off POSIX."""
        if self._lock_fd is not None:
            return
        try:
            import fcntl
        except ImportError:
            return
        try:
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise RobustOptError(f"cannot write in run directory {self.path}: "
                                 f"{err.strerror}; choose a writable --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RobustOptError(f"{self.path} is being trained by another process: wait for "
                                 "it to finish or stop it first") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(path)
        if not (run.path / "config.json").is_file():
            raise RobustOptError(f"{run.path} is not a robustopt run directory (no config.json)")
        return run

    # -- files -----------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        write_json_atomic(self.path / "config.json",
                          {"robustopt_version": __version__, **config})

    def read_config(self) -> dict:
        cfg = _read_json(self.path / "config.json", json.loads)
        if not isinstance(cfg, dict):
            raise RobustOptError(f"{self.path / 'config.json'} holds a {type(cfg).__name__}, "
                                 "not a training config: restore the file or start over")
        cfg.pop("robustopt_version", None)
        return cfg

    def write_weights(self, model: nn.Module, which: str, info: dict) -> str:
        """Save ``last`` (model.safetensors) or ``best`` (best.safetensors) weights; returns
        their SHA-256 (:func:`robustopt.modelfile.weights_sha256`)."""
        return save_model(model, self.path / WEIGHT_FILES[which], extra=info)

    def adopt_weights(self, source: RunDir) -> None:
        """Move another run's weight files into this run (``robustopt train --restore``).

        Each file moves with an atomic rename, so a kill leaves every weight file either
        absent or complete.
        """
        for name in WEIGHT_FILES.values():
            if (source.path / name).is_file():
                os.replace(source.path / name, self.path / name)

    def remove(self) -> None:
        """Delete this run directory (a scratch run whose weights were adopted)."""
        shutil.rmtree(self.path)

    def write_model_json(self, info: dict) -> None:
        write_json_atomic(self.path / "model.json", info)

    def write_metrics(self, records: list[dict]) -> None:
        """Rewrite metrics.jsonl in full (a resumed run replays the history it saved)."""
        text = "".join(json.dumps(r) + "\n" for r in records)
        write_bytes_atomic(self.path / "metrics.jsonl", text.encode())

    def read_metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        return _read_json(path, lambda text: [json.loads(line) for line in text.splitlines()
                                              if line.strip()])

    def refuse_bundle(self) -> None:
        """A release bundle's files are fixed by its SHA-256 manifest: never add to one."""
        if is_bundle(self.path):
            raise RobustOptError(f"{self.path} is a release bundle, which must stay as "
                                 "published: write the output elsewhere (--out)")

    def write_eval(self, result: dict) -> None:
        self.refuse_bundle()
        write_json_atomic(self.path / "eval.json", result)

    def plots_dir(self) -> Path:
        self.refuse_bundle()
        d = self.path / "plots"
        d.mkdir(exist_ok=True)
        return d

    # -- checkpoint: tensors + JSON state in one safetensors file, no pickle ----------
    def write_checkpoint(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        blob = save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                            metadata={"state": json.dumps(state)})
        (self.path / "checkpoint").mkdir(exist_ok=True)
        write_bytes_atomic(self.path / CHECKPOINT, blob)

    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT).is_file()

    def read_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict]:
        path = self.path / CHECKPOINT
        if not path.is_file():
            raise RobustOptError(f"{self.path} has no checkpoint to resume from: "
                                 "start a new run instead of --resume")
        try:
            with safe_open(str(path), framework="pt") as fh:
                state = json.loads(fh.metadata()["state"])
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as err:  # safetensors raises several types for a bad file
            raise RobustOptError(f"checkpoint {path} is unreadable ({type(err).__name__}); "
                                 "start the run again with --force") from None
        return tensors, state

    # -- report ----------------------------------------------------------------------
    def write_report(self, html: str) -> Path:
        """Write the self-contained HTML report as ``report.html``, atomically."""
        self.refuse_bundle()
        path = self.path / "report.html"
        write_bytes_atomic(path, html.encode("utf-8"))
        return path
