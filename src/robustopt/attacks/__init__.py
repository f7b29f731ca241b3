"""Attacks: plain functions of (model, x, y, threat, settings) returning an AttackResult."""

from .core import AttackResult, eval_mode, finalize, perturb
from .fgsm import fgsm
from .pgd import pgd
from .transfer import transfer

__all__ = ["AttackResult", "eval_mode", "fgsm", "finalize", "perturb", "pgd", "transfer"]
