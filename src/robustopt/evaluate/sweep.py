"""Robust accuracy as a function of eps: the data first, the figure drawn from it.

Each eps is evaluated independently (a point broken at a small eps is *not* carried
over to the larger ones), so the curve doubles as a sanity check: robust accuracy
must not rise with eps, since every larger ball contains the smaller one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..atomic import write_atomic
from ..errors import InputError
from ..threat import make_threat, parse_eps
from .runner import Progress, evaluate
from .sanity import SanityConfig, check_sweep
from .suites import AttackSpec, suite_label


def sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str,
          eps_list: Sequence[float | str], suite: str | Iterable[AttackSpec | Mapping] = "quick",
          *, transfer_from: nn.Module | None = None, seed: int = 0, batch_size: int = 500,
          budget: Mapping | None = None, progress: Progress | None = None) -> dict:
    """Worst-case robust accuracy of ``suite`` at each eps of ``eps_list`` (as data).

    Returns a JSON-able dict: ``norm``, ``suite``, ``n``, ``seed``, ``eps`` (sorted,
    distinct), ``robust_accuracy`` and ``clean_accuracy``, each attack's cumulative
    accuracy per eps (``attacks``), the passes and time per eps, and the
    ``accuracy-vs-eps`` sanity verdict (``sanity``). Evaluations run without the extra
    sanity probes.
    """
    if isinstance(eps_list, (str, bytes)) or not isinstance(eps_list, Iterable):
        raise InputError("eps_list must be a list of radii, e.g. [0.1, 0.2, 0.3]")
    eps = sorted({parse_eps(e) for e in eps_list})
    if not eps:
        raise InputError("eps_list is empty: give at least one radius")
    threats = [make_threat(norm, e) for e in eps]  # refuses bad norms and radii up front
    data: dict = {"robustopt_version": __version__, "norm": threats[0].norm,
                  "suite": suite_label(suite), "seed": seed, "n": int(x.shape[0]),
                  "eps": eps, "robust_accuracy": [], "clean_accuracy": None, "attacks": {},
                  "passes": [], "time_s": []}
    def inner(kind: str, info: dict) -> None:  # the sweep judges itself: no per-eps warnings
        if progress is not None and kind != "warning":
            progress(kind, info)

    for threat in threats:
        if progress is not None:
            progress("message", {"message": f"sweep: eps {threat.eps:.4g}", "event": "sweep",
                                 "eps": threat.eps})
        res = evaluate(model, x, y, threat, suite, transfer_from=transfer_from, seed=seed,
                       batch_size=batch_size, progress=inner, sanity=False, budget=budget)
        data["clean_accuracy"] = res.clean_accuracy
        data["robust_accuracy"].append(res.robust_accuracy)
        data["passes"].append(res.passes_spent)
        data["time_s"].append(res.time_s)
        for a in res.attacks:
            data["attacks"].setdefault(a.name, []).append(a.cumulative_accuracy)
    verdict = check_sweep(data, SanityConfig())
    data["sanity"] = verdict.to_dict()
    if verdict.passed is False and progress is not None:
        progress("warning", {"message": verdict.message(), "check": verdict.name})
    return data


def plot_sweep(data: dict, path: str | Path) -> Path:
    """Draw robust accuracy vs eps (and each attack's cumulative curve) as a PNG.

    Uses matplotlib's Agg canvas directly, so the caller's backend is left alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    eps = [0.0] + list(data["eps"])
    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    clean = data.get("clean_accuracy")
    for name, accs in data.get("attacks", {}).items():
        ax.plot(eps, [clean] + list(accs), linestyle="--", linewidth=1, alpha=0.7,
                label=f"after {name}")
    ax.plot(eps, [clean] + list(data["robust_accuracy"]), marker="o", color="black",
            linewidth=2, label="worst case")
    ax.set_xlabel(f"eps ({data.get('norm', '')})")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"robust accuracy vs eps ({data.get('suite', '')}, n={data.get('n', '?')})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()

    def _write(tmp: Path) -> None:
        fig.savefig(tmp, format="png")

    write_atomic(path, _write)
    return path
