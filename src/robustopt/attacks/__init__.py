"""Attacks: plain functions of (model, x, y, threat, settings) returning an AttackResult."""

from .apgd import APGDResult, apgd, apgd_ce, apgd_t
from .core import AttackResult, eval_mode, finalize, perturb
from .fgsm import fgsm
from .pgd import pgd
from .smooth import smooth_backward, smoothed
from .square import SquareResult, square
from .transfer import transfer

__all__ = ["APGDResult", "AttackResult", "apgd", "apgd_ce", "apgd_t", "eval_mode", "fgsm",
           "finalize", "perturb", "pgd", "smooth_backward", "smoothed", "square", "SquareResult",
           "transfer"]
