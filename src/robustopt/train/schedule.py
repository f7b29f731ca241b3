"""Learning-rate and eps schedules as pure functions of training progress.

Progress is measured in (fractional) epochs, so a resumed run recomputes exactly the
same values from its step counter; no scheduler object carries hidden state.
"""

from __future__ import annotations

from .config import TrainConfig


def learning_rate(cfg: TrainConfig, progress: float) -> float:
    """LR at ``progress`` epochs into a run of ``cfg.epochs`` epochs."""
    frac = min(max(progress / cfg.epochs, 0.0), 1.0)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "piecewise":
        drops = sum(frac >= m for m in cfg.milestones)
        return cfg.lr * cfg.lr_gamma**drops
    peak = cfg.onecycle_peak  # one-cycle: linear up to lr, then linearly down to 0
    if frac < peak:
        return cfg.lr * frac / peak
    return cfg.lr * (1.0 - frac) / (1.0 - peak)


def epsilon(cfg: TrainConfig, progress: float) -> float:
    """Training eps at ``progress`` epochs (linear ramp from 0 to the training radius,
    then constant)."""
    if cfg.eps_ramp_epochs <= 0:
        return cfg.train_radius()
    return cfg.train_radius() * min(1.0, progress / cfg.eps_ramp_epochs)
