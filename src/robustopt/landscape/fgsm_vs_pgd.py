"""Experiment 5: FGSM-trained versus PGD-trained models under FGSM and PGD.

The seed paper (and Kurakin et al., Tramèr et al.) report that a model trained on FGSM
examples resists FGSM but falls to an iterative attack (PGD): FGSM training learns to
make the one gradient-sign step useless (gradient masking) instead of becoming robust.
A PGD-trained model resists both. The FGSM-trained model may also show *label
leaking* (Kurakin et al. 2017): its accuracy on FGSM examples, crafted with the true
labels, is *above* its clean accuracy, because the one-step perturbation gives the label
away. Crafting FGSM with the model's own predictions instead of the labels removes the
leak, so that accuracy is reported too.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ..attacks.core import eval_mode
from ..attacks.fgsm import fgsm
from ..attacks.pgd import pgd
from ..threat import ThreatModel
from .common import Result, check_points, make_generator

COLUMNS = ("clean", "fgsm", "fgsm_pred", "pgd")


def attack_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                 steps: int = 40, restarts: int = 1, step_size: float | None = None,
                 seed: int = 0) -> dict:
    """Accuracy and mean cross-entropy of one model: clean, FGSM (true labels), FGSM
    crafted with the model's predicted labels, and PGD; plus the label-leaking flag."""
    with eval_mode(model):
        with torch.no_grad():
            logits = model(x).float()
        pred = logits.argmax(1)
        clean_loss = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        f = fgsm(model, x, y, threat)
        fp = fgsm(model, x, pred, threat)
        p = pgd(model, x, y, threat, steps=steps, restarts=restarts, step_size=step_size,
                generator=make_generator(seed, x.device))
        with torch.no_grad():
            fp_logits = model(fp.x_adv).float()
        fp_loss = torch.nn.functional.cross_entropy(fp_logits, y, reduction="none")
    acc = {"clean": float((pred == y).float().mean()), "fgsm": f.accuracy,
           "fgsm_pred": float((fp_logits.argmax(1) == y).float().mean()), "pgd": p.accuracy}
    loss = {"clean": float(clean_loss.mean()), "fgsm": float(f.loss.mean()),
            "fgsm_pred": float(fp_loss.mean()), "pgd": float(p.loss.mean())}
    return {"accuracy": acc, "loss": loss,
            "label_leaking": acc["fgsm"] > acc["clean"],
            "resists_fgsm_not_pgd": acc["fgsm"] - acc["pgd"] > 0.2,
            "n": int(x.shape[0])}


def fgsm_vs_pgd(models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
                threat: ThreatModel, *, steps: int = 40, restarts: int = 1,
                step_size: float | None = None, seed: int = 0,
                info: Mapping[str, dict] | None = None) -> Result:
    """The accuracy table of several labelled models on the same points.

    ``meta["models"]`` maps each label to :func:`attack_table`'s dict (plus ``info[label]``,
    e.g. how the model was trained); ``arrays`` has ``accuracy`` [M, 4] in ``COLUMNS`` order.
    """
    check_points(x, y)
    if not models:
        raise ValueError("give at least one model")
    rows = {}
    for label, model in models.items():
        rows[label] = {**attack_table(model, x, y, threat, steps=steps, restarts=restarts,
                                      step_size=step_size, seed=seed),
                       **((info or {}).get(label) or {})}
    acc = np.array([[rows[k]["accuracy"][c] for c in COLUMNS] for k in rows], dtype=np.float64)
    meta = {"settings": {"threat": threat.to_dict(), "steps": steps, "restarts": restarts,
                         "step_size": step_size, "seed": seed, "n": int(x.shape[0])},
            "columns": list(COLUMNS), "labels": list(rows), "models": rows}
    return Result("fgsm_vs_pgd", meta, {"accuracy": acc})


def format_table(result: Result) -> str:
    """A plain-text table of :func:`fgsm_vs_pgd`'s result."""
    meta = result.meta
    lines = [f"{'model':<20}{'clean':>9}{'FGSM':>9}{'FGSM(pred)':>12}{'PGD':>9}  label leaking",
             ]
    for label in meta["labels"]:
        row = meta["models"][label]
        a = row["accuracy"]
        lines.append(f"{label:<20}{a['clean']:>9.2%}{a['fgsm']:>9.2%}{a['fgsm_pred']:>12.2%}"
                     f"{a['pgd']:>9.2%}  {'yes' if row['label_leaking'] else 'no'}")
    s = meta["settings"]
    lines.append(f"({s['n']} test points, {s['threat']['norm']} eps {s['threat']['eps']:g}, "
                 f"PGD-{s['steps']} x {s['restarts']} restart(s); FGSM(pred) is crafted with "
                 "the model's predicted labels)")
    return "\n".join(lines)
