"""robustopt: train and evaluate adversarially robust image classifiers.

The public surface: threat models, attacks, datasets, model files and training.
Everything works on any ``nn.Module`` mapping [0, 1] NCHW images to logits.
"""

__version__ = "0.1.0"

from .attacks import (  # noqa: E402
    AttackResult,
    apgd,
    apgd_ce,
    apgd_t,
    fgsm,
    pgd,
    smooth_backward,
    smoothed,
    square,
    transfer,
)
from .cpu_memory import keep_freed_memory  # noqa: E402
from .data import load_dataset  # noqa: E402
from .errors import DataError, InputError, ModelFileError, RobustOptError  # noqa: E402
from .evaluate import EvalResult, evaluate, sweep  # noqa: E402
from .losses import cross_entropy, dlr, margin  # noqa: E402
from .modelfile import load_model, save_model  # noqa: E402
from .models import build_model  # noqa: E402
from .threat import L2Ball, LinfBall, ThreatModel, make_threat, parse_eps  # noqa: E402
from .train import TrainConfig, preset, train  # noqa: E402

__all__ = [
    "keep_freed_memory",
    "AttackResult", "DataError", "InputError", "L2Ball", "LinfBall", "ModelFileError",
    "apgd", "apgd_ce", "apgd_t", "square", "EvalResult", "evaluate", "sweep",
    "RobustOptError", "ThreatModel", "TrainConfig", "__version__", "build_model",
    "cross_entropy", "dlr", "fgsm", "load_dataset", "load_model", "make_threat", "margin",
    "parse_eps", "pgd", "preset", "save_model", "smooth_backward", "smoothed", "train",
    "transfer",
]
