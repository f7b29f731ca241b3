"""Restore a kept run's weights by retraining it, and prove they are the same weights.

Run directories kept under version control often hold everything but the weight files
(``results/runs/*``: too large to commit). Training is bit-reproducible on one kind of
CPU, so the weights can be regenerated from ``config.json``; this module does that in a
scratch run beside the kept one and moves the weights in only if the retrain reproduces
the kept run exactly: every deterministic field of every epoch in ``metrics.jsonl``
(losses, accuracies, and the weights' SHA-256 where the run recorded it) and the
weights digest of every evaluation kept in the run, and only if the files moved are the
ones the retrain recorded. Otherwise the kept run is left as it was and the mismatch is
named, so a figure is not attached to other weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import RobustOptError
from ..modelfile import WEIGHT_FILES, read_model_file, weights_sha256
from ..rundir import RunDir
from .config import TrainConfig
from .loop import train

# Per-epoch fields that measure the machine, not the weights.
TIMING_FIELDS = frozenset({"examples_per_s", "epoch_time_s", "wall_time_s", "run_time_s"})


@dataclass
class RestoreResult:
    """What a restore checked; the weights are in ``run_dir`` when it returns."""

    run_dir: Path
    epochs_checked: int    # epochs whose metrics matched exactly
    digests_checked: int   # weights digests kept in the run (metrics, evaluations) matched


def _same(a: object, b: object) -> bool:
    """Exact equality, with NaN equal to NaN (a run may record a NaN metric)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def record_mismatch(old: dict, new: dict) -> str | None:
    """The first deterministic field in which two records of one epoch differ, or ``None``."""
    for key in sorted(set(old) - TIMING_FIELDS):
        if key not in new or not _same(old[key], new[key]):
            return (f"epoch {old.get('epoch', '?')}: {key} was {old[key]!r}, "
                    f"the retrain gave {new.get(key, 'nothing')!r}")
    return None


def metrics_mismatch(kept: list[dict], redone: list[dict]) -> str | None:
    """The first difference between two runs' deterministic metrics, or ``None``."""
    if len(kept) != len(redone):
        return f"the kept run has {len(kept)} epoch(s), the retrain {len(redone)}"
    for old, new in zip(kept, redone, strict=True):
        problem = record_mismatch(old, new)
        if problem:
            return problem
    return None


def evaluation_digests(run: Path) -> dict[str, str]:
    """``file -> weights_sha256`` for every evaluation kept in the run (eval.json, shards).

    A JSON file that does not parse is refused rather than skipped: it may be the one
    evaluation that would have shown the weights differ.
    """
    found = {}
    for path in sorted(run.rglob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            raise RobustOptError(f"{path} is not readable JSON, so the weights it names cannot "
                                 "be checked: restore the file (e.g. from git) first") from None
        settings = doc.get("settings") if isinstance(doc, dict) else None
        digest = settings.get("weights_sha256") if isinstance(settings, dict) else None
        if isinstance(digest, str):
            found[str(path.relative_to(run))] = digest
    return found


def _retrain(cfg: TrainConfig, scratch: Path, kept: list[dict],
             progress: Callable[[str, dict], None] | None) -> list[dict]:
    """Train (or resume) the scratch run, stopping at the first epoch that differs."""
    stale = f"remove {scratch} to retrain from the start"

    def watch(kind: str, info: dict) -> None:
        if progress is not None:
            progress(kind, info)
        if kind == "epoch" and 0 < info.get("epoch", 0) <= len(kept):
            problem = record_mismatch(kept[info["epoch"] - 1], info)
            if problem:  # the epoch's checkpoint is already written: nothing is lost
                raise RobustOptError(f"the retrain does not reproduce the kept run ({problem}):"
                                     " another device, CPU type or robustopt version trains "
                                     f"other bits; the kept run is unchanged ({stale})")

    partial = RunDir(scratch)
    if partial.has_checkpoint() and partial.read_config() == cfg.to_dict():
        result = train(None, scratch, resume=True, progress=watch)
    else:
        result = train(cfg, scratch, force=True, progress=watch)
    problem = metrics_mismatch(kept, result.metrics)
    if problem:
        raise RobustOptError(f"the retrain does not reproduce the kept run ({problem}); "
                             f"the kept run is unchanged ({stale})")
    return result.metrics


def restore_weights(run_path: str | Path,
                    progress: Callable[[str, dict], None] | None = None) -> RestoreResult:
    """Retrain the kept run in ``run_path`` and move its weights in if they are the same.

    The scratch run is ``.NAME.restore`` beside the kept one. A killed restore resumes it,
    including a kill between the moves of the two weight files.
    """
    run = RunDir.open(Path(run_path).resolve())
    scratch = RunDir(run.path.with_name(f".{run.path.name}.restore"))
    missing = [name for name in WEIGHT_FILES.values() if not (run.path / name).is_file()]
    if not missing or not scratch.path.is_dir() and len(missing) < len(WEIGHT_FILES):
        have = sorted(set(WEIGHT_FILES.values()) - set(missing))
        raise RobustOptError(f"{run.path} already has weights ({', '.join(have)}); nothing to "
                             "restore (delete them first to regenerate them)")
    kept = run.read_metrics()
    if not kept:
        raise RobustOptError(f"{run.path} has no metrics.jsonl to check a retrain against, so "
                             "its weights cannot be restored: train a new run instead")
    cfg = TrainConfig.from_dict(run.read_config())
    evaluated = evaluation_digests(run.path)
    redone = _retrain(cfg, scratch.path, kept, progress)
    # The files to adopt (some may have moved already) must be the ones the retrain wrote.
    files = {which: scratch.path / name if (scratch.path / name).is_file() else run.path / name
             for which, name in WEIGHT_FILES.items()}
    made = {which: weights_sha256(read_model_file(f)[1]) for which, f in files.items()
            if f.is_file()}
    recorded = {r.get("weights_sha256") for r in redone}
    if set(made) != set(WEIGHT_FILES) or made["last"] != redone[-1].get("weights_sha256") \
            or made["best"] not in recorded:
        raise RobustOptError(f"the weight files in {scratch.path} are not the ones its training "
                             f"recorded: remove {scratch.path} and run --restore again")
    for name, digest in evaluated.items():
        if digest not in made.values():
            raise RobustOptError(f"{name} evaluated weights {digest[:12]}, but the retrain made "
                                 f"{', '.join(d[:12] for d in made.values())}; the kept run is "
                                 f"unchanged (the retrain is in {scratch.path})")
    run.adopt_weights(scratch)
    scratch.remove()
    kept_digests = sum("weights_sha256" in r for r in kept)
    return RestoreResult(run.path, len(kept), kept_digests + len(evaluated))
