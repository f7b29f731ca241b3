"""Restore a kept run's weights by retraining it, and prove they are the same weights.

Run directories kept under version control often hold everything but the weight files
(``results/runs/*``: too large to commit). Training is bit-reproducible on one kind of
CPU, so the weights can be regenerated from ``config.json``; this module does that in a
scratch run beside the kept one and moves the weights in only if the retrain reproduces
the kept run exactly: every deterministic field of every epoch in ``metrics.jsonl``
(losses, accuracies, and the weights' SHA-256 where the run recorded it) and the
weights digest of every evaluation kept in the run. Otherwise the kept run is left as
it was and the mismatch is named, so a figure is never attached to other weights.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import RobustOptError
from ..modelfile import read_model_file, weights_sha256
from ..rundir import RunDir
from .config import TrainConfig
from .loop import train

# Per-epoch fields that measure the machine, not the weights.
TIMING_FIELDS = frozenset({"examples_per_s", "epoch_time_s", "wall_time_s", "run_time_s"})


@dataclass
class RestoreResult:
    run_dir: Path
    epochs_checked: int            # epochs whose metrics matched exactly
    digests_checked: int           # weights digests (metrics + evaluations) that matched


def _same(a: object, b: object) -> bool:
    """Exact equality, with NaN equal to NaN (a run may record a NaN metric)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def metrics_mismatch(kept: list[dict], redone: list[dict]) -> str | None:
    """The first difference between two runs' deterministic metrics, or ``None``."""
    if len(kept) != len(redone):
        return f"the kept run has {len(kept)} epoch(s), the retrain {len(redone)}"
    for old, new in zip(kept, redone, strict=True):
        for key in sorted(set(old) - TIMING_FIELDS):
            if key not in new or not _same(old[key], new[key]):
                return (f"epoch {old.get('epoch', '?')}: {key} was {old[key]!r}, "
                        f"the retrain gave {new.get(key, 'nothing')!r}")
    return None


def evaluation_digests(run: Path) -> dict[str, str]:
    """``file -> weights_sha256`` for every evaluation kept in the run (eval.json, shards)."""
    found = {}
    for path in sorted(run.rglob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        settings = doc.get("settings") if isinstance(doc, dict) else None
        digest = settings.get("weights_sha256") if isinstance(settings, dict) else None
        if isinstance(digest, str):
            found[str(path.relative_to(run))] = digest
    return found


def restore_weights(run_path: str | Path,
                    progress: Callable[[str, dict], None] | None = None) -> RestoreResult:
    """Retrain the kept run in ``run_path`` and move its weights in if they are the same.

    The scratch run is ``.NAME.restore`` beside the kept one; a killed restore resumes it.
    """
    run = RunDir.open(run_path)
    present = run.weight_files()
    if present:
        raise RobustOptError(f"{run.path} already has its weights ({present[0].name}); "
                             "nothing to restore")
    kept = run.read_metrics()
    if not kept:
        raise RobustOptError(f"{run.path} has no metrics.jsonl to check a retrain against, so "
                             "its weights cannot be restored: train a new run instead")
    cfg = TrainConfig.from_dict(run.read_config())
    evaluated = evaluation_digests(run.path)
    scratch = run.path.with_name(f".{run.path.name}.restore")
    kwargs = {} if progress is None else {"progress": progress}
    if (scratch / "config.json").is_file() and RunDir(scratch).has_checkpoint() and \
            RunDir(scratch).read_config() == cfg.to_dict():
        result = train(None, scratch, resume=True, **kwargs)
    else:
        result = train(cfg, scratch, force=True, **kwargs)
    keep_note = f"the retrain is in {scratch}; {run.path} is unchanged"
    problem = metrics_mismatch(kept, result.metrics)
    if problem:
        raise RobustOptError(f"the retrain does not reproduce {run.path} ({problem}): "
                             "another device, CPU type or robustopt version trains other "
                             f"bits; {keep_note}")
    made = {which: weights_sha256(read_model_file(f)[1])
            for which, f in (("best", scratch / "best.safetensors"),
                             ("last", scratch / "model.safetensors")) if f.is_file()}
    for name, digest in evaluated.items():
        if digest not in made.values():
            raise RobustOptError(f"{name} evaluated weights {digest[:12]}, but the retrain made "
                                 f"{', '.join(d[:12] for d in made.values())}; {keep_note}")
    run.adopt_weights(RunDir(scratch))
    shutil.rmtree(scratch)
    recorded = sum("weights_sha256" in r for r in kept)
    return RestoreResult(run.path, len(kept), recorded + len(evaluated))
