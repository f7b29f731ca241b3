"""Experiment 4: training curves from the runs' ``metrics.jsonl``.

The seed paper plots the adversarial (PGD) training loss against training iterations
and sees it decrease steadily: the saddle-point problem is being solved. This module
reads the per-epoch records a run wrote (no training, no model) and converts epochs to
iterations (optimisation steps), so runs with different batch sizes share one axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..errors import RobustOptError
from ..rundir import RunDir
from .common import Result

#: metrics.jsonl fields drawn (when present): losses, then accuracies
LOSS_FIELDS = ("train_loss", "heldout_robust_loss")
ACC_FIELDS = ("train_robust_acc", "heldout_clean_acc", "heldout_pgd_acc")


def iterations_per_epoch(records: list[dict], config: dict) -> int | None:
    """Optimisation steps in one full epoch, from the epoch records (``examples_per_s`` x
    ``epoch_time_s`` = examples trained on) and the batch size; None if unknown.

    A resumed epoch trains on fewer examples, so the largest epoch is taken.
    """
    batch = config.get("batch_size")
    if not batch:
        return None
    seen = [r.get("examples_per_s", 0) * r.get("epoch_time_s", 0) for r in records]
    seen = [v for v in seen if v and math.isfinite(v)]
    if not seen:
        return None
    return max(1, round(max(seen) / batch))


def run_label(path: str | Path) -> str:
    path = Path(path)
    return path.name or str(path)


def read_run_curves(path: str | Path, label: str | None = None) -> dict:
    """One run's curves as JSON-able lists (``epoch``, ``iteration`` and each metric)."""
    run = RunDir.open(path)
    records = run.read_metrics()
    if not records:
        raise RobustOptError(f"{run.path} has no metrics.jsonl records yet: train it first")
    config = run.read_config()
    per_epoch = iterations_per_epoch(records, config)
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(records)]
    out = {"label": label or run_label(path), "path": str(path),
           "adversary": config.get("adversary"), "model": config.get("model"),
           "batch_size": config.get("batch_size"), "iterations_per_epoch": per_epoch,
           "epoch": epochs,
           "iteration": [e * per_epoch for e in epochs] if per_epoch else None}
    for key in LOSS_FIELDS + ACC_FIELDS + ("lr", "eps", "wall_time_s"):
        if any(key in r for r in records):
            out[key] = [r.get(key) for r in records]
    return out


def training_curves(runs: Sequence[str | Path], labels: Sequence[str] | None = None) -> Result:
    """The training curves of one or several run directories (data only; see plots)."""
    if not runs:
        raise RobustOptError("give at least one run directory")
    if labels is not None and len(labels) != len(runs):
        raise RobustOptError(f"{len(labels)} labels for {len(runs)} runs: give one label per run")
    curves = [read_run_curves(r, None if labels is None else labels[i])
              for i, r in enumerate(runs)]
    summary = []
    for c in curves:
        last = {k: c[k][-1] for k in LOSS_FIELDS + ACC_FIELDS if k in c}
        summary.append({"label": c["label"], "epochs": len(c["epoch"]),
                        "iterations": c["iteration"][-1] if c["iteration"] else None,
                        "last": last})
    return Result("curves", {"runs": curves, "summary": summary})
