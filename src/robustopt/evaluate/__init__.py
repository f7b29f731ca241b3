"""Measure: attack suites, the per-example worst case, sanity checks and eps sweeps.

``evaluate(model, x, y, threat, suite="standard")`` runs a suite of attacks with
survivor-only chaining and returns an :class:`EvalResult` (robust accuracy, each
attack's share, passes spent vs the full budget, per-example provenance, the strongest
adversarial point per example and the sanity verdicts). ``sweep`` measures robust
accuracy against eps; ``plot_sweep`` draws it.
"""

from .runner import AttackStats, EvalResult, evaluate
from .sanity import SanityConfig, Verdict, check_sweep
from .suites import SUITE_NAMES, AttackSpec, get_suite, read_suite_file
from .sweep import plot_sweep, sweep

__all__ = ["SUITE_NAMES", "AttackSpec", "AttackStats", "EvalResult", "SanityConfig", "Verdict",
           "check_sweep", "evaluate", "get_suite", "plot_sweep", "read_suite_file", "sweep"]
