"""Training: one loop, interchangeable adversaries, exact resume."""

from .config import ADVERSARIES, PRESETS, TrainConfig, preset
from .loop import TrainResult, train

__all__ = ["ADVERSARIES", "PRESETS", "TrainConfig", "TrainResult", "preset", "train"]
