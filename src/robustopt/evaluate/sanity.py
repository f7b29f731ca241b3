"""Sanity checks on an evaluation, after Carlini et al. (2019), "On Evaluating Adversarial
Robustness" (section 5, "Basic sanity tests") and AutoAttack's ``checks.py``.

Each check returns a :class:`Verdict`: ``passed`` is ``True`` (looks healthy), ``False``
(a warning sign, with the likely cause) or ``None`` (not applicable: the data it needs
is missing, e.g. every point was already broken). The checks only ever *flag*; they
never change the robust accuracy, which is decided by the attacks alone.

Checks computed from the attack chain itself (no extra compute):

``black-box-vs-white-box``
    Square (score-based, no gradients) or a transfer attack breaks more than
    ``max(1, 1%)`` of the clean-correct points the white-box attacks run before it
    missed: gradient masking.
``ce-vs-margin``
    Margin/DLR attacks, run after cross-entropy ones (chained: the margin attacks after
    the first CE attack, against the CE attacks before them), break more than
    ``max(2, 5%)`` of the clean-correct points *and* more points than the cross-entropy
    attacks broke themselves (CE "far weaker"): softmax saturation.
``fgsm-vs-iterative`` (needs the sanity FGSM, run after the iterative white-box attacks)
    One FGSM step breaks more than ``max(1, 1%)`` of the points the iterative attacks
    missed; a single step must never beat many.

Checks from the cheap sanity probes (:func:`run_probes`, on at most ``probe_n``
clean-correct points):

``gradients``
    More than 10% of the points have an all-zero or non-finite input gradient of the
    cross-entropy or the margin loss (zero CE only: saturated softmax; both: a
    non-differentiable model).
``single-step-gap``
    One FGSM step leaves more than ``gap`` (default 30 percentage points) more of the
    points correct than PGD-margin with ``long_steps``: the model resists a single
    gradient step but not many, the signature of FGSM training / catastrophic
    overfitting. The worst case is still sound (it includes the iterative attacks), but
    any FGSM-based robustness figure for this model is meaningless.
``more-steps``
    PGD-margin with ``long_steps`` (default 40) leaves more than ``max(2, 3%)`` more
    points standing than PGD-margin with ``short_steps`` (10): the attack does not
    converge (the cumulative accuracy over ``restarts`` independent restarts is
    reported alongside).
``restart-spread``
    Among the points that survive all ``restarts`` PGD-margin restarts, more than 20%
    have final margins whose range exceeds half of what the best restart gained over
    the clean point: a rugged or random loss surface.
``huge-eps``
    PGD-margin (``huge_steps`` = 20 steps) with the radius that contains the whole
    [0, 1] box (L-inf eps 1; L2 eps sqrt(C*H*W)) leaves more than 1% of the points
    correct. The ball then holds every image, including images of other classes, so
    a working attack must reach ~0%: eps = 0.5 would not do (a model that binarises its
    input at 0.5 is legitimately robust there), eps = 1 leaves no excuse.

From an eps sweep (:func:`check_sweep`):

``accuracy-vs-eps``
    Robust accuracy rises by more than ``max(1, 1%)`` of the points as eps grows,
    although every larger ball contains the smaller one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..attacks.core import eval_mode
from ..attacks.fgsm import fgsm
from ..attacks.pgd import pgd
from ..losses import cross_entropy, margin
from ..threat import L2Ball, LinfBall, ThreatModel

CHECK_NAMES = ("fgsm-vs-iterative", "single-step-gap", "more-steps", "accuracy-vs-eps", "huge-eps",
               "black-box-vs-white-box", "ce-vs-margin", "gradients", "restart-spread")


@dataclass
class Verdict:
    """The outcome of one sanity check."""

    name: str
    passed: bool | None          # None: not applicable
    detail: str
    likely_cause: str = ""
    data: dict = field(default_factory=dict)  # the numbers behind the verdict

    @property
    def status(self) -> str:
        return {True: "ok", False: "FAIL", None: "n/a"}[self.passed]

    def message(self) -> str:
        """A one-line warning for a failed check."""
        return (f"sanity check '{self.name}' failed: {self.detail}; likely cause: "
                f"{self.likely_cause}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SanityConfig:
    """Budgets of the sanity probes and the thresholds of the checks (see module doc)."""

    probe_n: int = 100        # clean-correct points the probes run on (the first ones)
    short_steps: int = 10
    long_steps: int = 40
    restarts: int = 3
    huge_steps: int = 20
    fgsm_frac: float = 0.01
    black_box_frac: float = 0.01
    ce_margin_frac: float = 0.05
    steps_frac: float = 0.03
    sweep_frac: float = 0.01
    huge_frac: float = 0.01
    grad_frac: float = 0.10
    spread_ratio: float = 0.5
    spread_frac: float = 0.2
    gap: float = 0.30
    min_points: int = 5       # fewer points than this: a probe check is not applicable


def _allowed(n: int, frac: float, floor: int) -> float:
    return max(floor, frac * n)


# ----------------------------------------------------------------------------- probes


@dataclass
class ProbeData:
    """What the sanity probes measured on ``n`` clean-correct points."""

    n: int
    grad_zero_ce: int = 0
    grad_zero_margin: int = 0
    grad_nonfinite: int = 0
    differentiable: bool = True
    short_broken: int = 0
    fgsm_broken: int | None = None
    restart_broken: list[int] = field(default_factory=list)       # by restart r alone
    cumulative_broken: list[int] = field(default_factory=list)    # by restarts 0..r
    spread_points: int = 0
    spread_wide: int = 0
    spread_median: float | None = None
    huge_eps: float | None = None
    huge_survivors: int | None = None
    passes: int = 0


def huge_threat(threat: ThreatModel, shape: Sequence[int]) -> ThreatModel | None:
    """The ball around any image that contains the whole [0, 1] box, or None if unknown."""
    if isinstance(threat, LinfBall):
        return LinfBall(1.0)
    if isinstance(threat, L2Ball):
        return L2Ball(math.sqrt(math.prod(shape)))
    return None


def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    loss_fn: Callable) -> torch.Tensor:
    """Per-example input gradient of ``loss_fn`` (zeros if the output ignores the input)."""
    with torch.enable_grad():
        xr = x.detach().clone().requires_grad_(True)
        out = model(xr)
        loss = loss_fn(out.float(), y, None)
        if not loss.requires_grad:
            return torch.zeros_like(x)
        (grad,) = torch.autograd.grad(loss.sum(), xr, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad.detach()


def run_probes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
               cfg: SanityConfig, generator: Callable[[int], torch.Generator],
               differentiable: bool = True, counter: Callable[[], int] | None = None
               ) -> ProbeData:
    """Gradient statistics, the steps/restarts probe and the huge-eps probe on ``x``.

    ``x`` are clean-correct points; ``generator(i)`` gives the i-th probe's generator.
    """
    n = x.shape[0]
    data = ProbeData(n=n, differentiable=differentiable)
    start = counter() if counter else 0
    if n == 0:
        return data
    with eval_mode(model):
        if differentiable:
            for name, fn in (("ce", cross_entropy), ("margin", margin)):
                g = input_gradients(model, x, y, fn).flatten(1)
                bad = ~torch.isfinite(g).all(dim=1)
                zero = (g == 0).all(dim=1) & ~bad
                data.grad_nonfinite = max(data.grad_nonfinite, int(bad.sum()))
                if name == "ce":
                    data.grad_zero_ce = int(zero.sum())
                else:
                    data.grad_zero_margin = int(zero.sum())
        else:
            data.grad_zero_ce = data.grad_zero_margin = n
        if not differentiable:
            data.passes = (counter() - start) if counter else 0
            return data
        with torch.no_grad():
            clean_loss = margin(model(x).float(), y)
        data.fgsm_broken = int((~fgsm(model, x, y, threat).correct).sum())
        short = pgd(model, x, y, threat, steps=cfg.short_steps, loss="margin",
                    stop_on_success=True, generator=generator(0))
        data.short_broken = int((~short.correct).sum())
        alive = torch.ones(n, dtype=torch.bool, device=x.device)
        losses = []
        for r in range(cfg.restarts):
            res = pgd(model, x, y, threat, steps=cfg.long_steps, loss="margin",
                      stop_on_success=True, generator=generator(1 + r))
            data.restart_broken.append(int((~res.correct).sum()))
            alive &= res.correct
            data.cumulative_broken.append(int(n - alive.sum()))
            losses.append(res.loss)
        if cfg.restarts >= 2 and bool(alive.any()):
            final = torch.stack(losses)[:, alive]
            top, low = final.max(dim=0).values, final.min(dim=0).values
            gain = (top - clean_loss[alive]).abs().clamp_min(1e-6)
            ratio = (top - low) / gain
            data.spread_points = int(alive.sum())
            data.spread_wide = int((ratio > cfg.spread_ratio).sum())
            data.spread_median = float(ratio.median())
        big = huge_threat(threat, tuple(x.shape[1:]))
        if big is not None:
            res = pgd(model, x, y, big, steps=cfg.huge_steps, loss="margin",
                      stop_on_success=True, generator=generator(100))
            data.huge_eps = big.eps
            data.huge_survivors = int(res.correct.sum())
    data.passes = (counter() - start) if counter else 0
    return data


# ----------------------------------------------------------------------------- checks


def _na(name: str, why: str, **data) -> Verdict:
    return Verdict(name, None, why, "", data)


def check_fgsm(broke: int, attacked: int, n_ref: int, have_iterative: bool,
               cfg: SanityConfig) -> Verdict:
    """FGSM (after the iterative white-box attacks) broke ``broke`` of ``attacked`` points."""
    name = "fgsm-vs-iterative"
    if not have_iterative:
        return _na(name, "no iterative white-box attack ran before the sanity FGSM")
    if attacked == 0:
        return _na(name, "the iterative attacks broke every point; nothing to compare")
    limit = _allowed(n_ref, cfg.fgsm_frac, 1)
    data = {"fgsm_broke": broke, "iterative_survivors": attacked, "allowed": limit}
    if broke > limit:
        return Verdict(name, False,
                       f"a single FGSM step broke {broke} of the {attacked} points that every "
                       "iterative attack missed",
                       "the iterative attacks are broken or badly tuned (step size, too few "
                       "steps) or gradient masking stalls small steps: one step must never "
                       "beat many", data)
    return Verdict(name, True, f"FGSM broke {broke} of the {attacked} points the iterative "
                   "attacks missed", "", data)


def check_black_box(broke: int, attacked: int, n_ref: int, applicable: str | None,
                    cfg: SanityConfig) -> Verdict:
    name = "black-box-vs-white-box"
    if applicable:
        return _na(name, applicable)
    if attacked == 0:
        return _na(name, "the white-box attacks broke every point; nothing left to compare")
    limit = _allowed(n_ref, cfg.black_box_frac, 1)
    data = {"black_box_broke": broke, "white_box_survivors": attacked, "allowed": limit}
    if broke > limit:
        return Verdict(name, False,
                       f"black-box/transfer attacks broke {broke} of the {attacked} points the "
                       "white-box gradient attacks missed",
                       "gradient masking: the gradients mislead first-order attacks "
                       "(shattered, stochastic or vanishing gradients) while attacks that "
                       "do not use them succeed", data)
    return Verdict(name, True, f"black-box/transfer attacks broke {broke} of the {attacked} "
                   "white-box survivors", "", data)


def check_ce_margin(broke: int, attacked: int, n_ref: int, applicable: str | None,
                    cfg: SanityConfig, ce_broke: int = 0) -> Verdict:
    """Margin/DLR attacks broke ``broke`` of the ``attacked`` points CE attacks (which broke
    ``ce_broke``) missed. Fails only when that is both many points and more than the CE
    attacks broke themselves: "far weaker", not the few extra points margin losses
    always add (on under-trained, low-confidence models CE also trails margin a little).
    """
    name = "ce-vs-margin"
    if applicable:
        return _na(name, applicable)
    if attacked == 0:
        return _na(name, "the cross-entropy attacks broke every point; nothing to compare")
    limit = _allowed(n_ref, cfg.ce_margin_frac, 2)
    data = {"margin_broke": broke, "ce_broke": ce_broke, "ce_survivors": attacked,
            "allowed": limit}
    if broke > limit and broke > ce_broke:
        return Verdict(name, False,
                       f"margin/DLR attacks broke {broke} of the {attacked} points the "
                       f"cross-entropy attacks missed (which broke only {ce_broke})",
                       "softmax saturation: cross-entropy gradients vanish when logits are "
                       "very large (scaled logits, distillation); trust margin/DLR losses",
                       data)
    return Verdict(name, True, f"margin/DLR attacks broke {broke} of the {attacked} "
                   "cross-entropy survivors", "", data)


def check_gradients(probe: ProbeData | None, cfg: SanityConfig) -> Verdict:
    name = "gradients"
    if probe is None:
        return _na(name, "sanity probes not run (sanity=False)")
    n = probe.n
    data = {"points": n, "zero_ce": probe.grad_zero_ce, "zero_margin": probe.grad_zero_margin,
            "non_finite": probe.grad_nonfinite, "differentiable": probe.differentiable}
    if probe.differentiable and n < cfg.min_points:
        return _na(name, f"only {n} clean-correct points to probe")
    if not probe.differentiable:
        return Verdict(name, False, "the model's output does not depend differentiably on "
                       "its input (no gradient at all)",
                       "the forward pass detaches or runs under no_grad (or is not "
                       "differentiable): white-box attacks cannot run; use black-box attacks",
                       data)
    limit = cfg.grad_frac * n
    if probe.grad_nonfinite > limit:
        return Verdict(name, False, f"{probe.grad_nonfinite} of {n} points have NaN/inf input "
                       "gradients", "a numerically unstable model (log of 0, division, "
                       "overflow): attacks steer blind", data)
    if probe.grad_zero_margin > limit:
        return Verdict(name, False, f"{probe.grad_zero_margin} of {n} points have an all-zero "
                       f"margin-loss gradient ({probe.grad_zero_ce} for cross-entropy)",
                       "non-differentiable operations in the model (quantisation, "
                       "thresholding, rounding, argmax) zero the gradient: use BPDA or "
                       "black-box attacks", data)
    if probe.grad_zero_ce > limit:
        return Verdict(name, False, f"{probe.grad_zero_ce} of {n} points have an all-zero "
                       "cross-entropy gradient (the margin gradient is fine)",
                       "softmax saturation: the logits are so large that cross-entropy "
                       "gradients underflow; use margin/DLR losses", data)
    return Verdict(name, True, f"input gradients are finite and non-zero on "
                   f"{n - max(probe.grad_zero_ce, probe.grad_zero_margin)} of {n} points", "",
                   data)


def check_steps(probe: ProbeData | None, cfg: SanityConfig) -> Verdict:
    name = "more-steps"
    if probe is None:
        return _na(name, "sanity probes not run (sanity=False)")
    if not probe.differentiable:
        return _na(name, "the model has no input gradient; PGD cannot run")
    if probe.n < cfg.min_points:
        return _na(name, f"only {probe.n} clean-correct points to probe")
    n = probe.n
    long = probe.restart_broken[0] if probe.restart_broken else 0
    extra = probe.short_broken - long
    data = {"points": n, "short_steps": cfg.short_steps, "long_steps": cfg.long_steps,
            "short_accuracy": 1 - probe.short_broken / n, "long_accuracy": 1 - long / n,
            "cumulative_restart_accuracy": [1 - b / n for b in probe.cumulative_broken]}
    limit = _allowed(n, cfg.steps_frac, 2)
    restarts = ", ".join(f"{a:.1%}" for a in data["cumulative_restart_accuracy"])
    if extra > limit:
        return Verdict(name, False,
                       f"PGD-{cfg.long_steps} left {extra} more of {n} points standing than "
                       f"PGD-{cfg.short_steps} (accuracy {data['long_accuracy']:.1%} vs "
                       f"{data['short_accuracy']:.1%})",
                       "the attack does not converge: more steps must not help the model "
                       "(obfuscated or noisy gradients, a randomised model, or a step size "
                       "that only works when large)", data)
    return Verdict(name, True,
                   f"PGD-{cfg.short_steps} {data['short_accuracy']:.1%}, PGD-{cfg.long_steps} "
                   f"{data['long_accuracy']:.1%}, with restarts {restarts}", "", data)


def check_single_step(probe: ProbeData | None, cfg: SanityConfig) -> Verdict:
    name = "single-step-gap"
    if probe is None:
        return _na(name, "sanity probes not run (sanity=False)")
    if not probe.differentiable or probe.fgsm_broken is None:
        return _na(name, "the model has no input gradient; FGSM and PGD cannot run")
    if probe.n < cfg.min_points:
        return _na(name, f"only {probe.n} clean-correct points to probe")
    n = probe.n
    long = probe.restart_broken[0] if probe.restart_broken else 0
    fgsm_acc, pgd_acc = 1 - probe.fgsm_broken / n, 1 - long / n
    data = {"points": n, "fgsm_accuracy": fgsm_acc, "pgd_accuracy": pgd_acc,
            "pgd_steps": cfg.long_steps}
    detail = f"FGSM {fgsm_acc:.1%} vs PGD-{cfg.long_steps} {pgd_acc:.1%} on {n} points"
    if fgsm_acc - pgd_acc > cfg.gap:
        return Verdict(name, False, detail + " (one step leaves far more points standing)",
                       "gradient masking against single-step attacks, typical of FGSM "
                       "training and catastrophic overfitting: report only iterative and "
                       "black-box results for this model, never FGSM accuracy", data)
    return Verdict(name, True, detail, "", data)


def check_spread(probe: ProbeData | None, cfg: SanityConfig) -> Verdict:
    name = "restart-spread"
    if probe is None:
        return _na(name, "sanity probes not run (sanity=False)")
    if not probe.differentiable:
        return _na(name, "the model has no input gradient; PGD cannot run")
    if cfg.restarts < 2:
        return _na(name, "needs at least 2 probe restarts")
    if probe.spread_points < cfg.min_points:
        return _na(name, f"only {probe.spread_points} points survive every restart; too few "
                   "to judge the spread")
    data = {"points": probe.spread_points, "wide": probe.spread_wide,
            "median_ratio": probe.spread_median, "ratio_threshold": cfg.spread_ratio}
    if probe.spread_wide > cfg.spread_frac * probe.spread_points:
        return Verdict(name, False,
                       f"on {probe.spread_wide} of {probe.spread_points} surviving points the "
                       f"final margins of {cfg.restarts} restarts differ by more than "
                       f"{cfg.spread_ratio:g} of the gain over the clean point (median ratio "
                       f"{probe.spread_median:.2f})",
                       "a rugged or random loss surface (randomised or obfuscated model, too "
                       "few steps): single runs are unreliable; use more restarts and steps",
                       data)
    return Verdict(name, True, f"restart final margins agree (median range/gain ratio "
                   f"{probe.spread_median:.2f} on {probe.spread_points} points)", "", data)


def check_huge_eps(probe: ProbeData | None, cfg: SanityConfig) -> Verdict:
    name = "huge-eps"
    if probe is None:
        return _na(name, "sanity probes not run (sanity=False)")
    if not probe.differentiable:
        return _na(name, "the model has no input gradient; PGD cannot run")
    if probe.huge_survivors is None:
        return _na(name, "no unbounded radius is known for this threat model")
    if probe.n < cfg.min_points:
        return _na(name, f"only {probe.n} clean-correct points to probe")
    n, left = probe.n, probe.huge_survivors
    data = {"points": n, "eps": probe.huge_eps, "survivors": left, "accuracy": left / n}
    if left > cfg.huge_frac * n:
        return Verdict(name, False,
                       f"PGD-{cfg.huge_steps} at eps {probe.huge_eps:.4g} (the whole image "
                       f"box) left {left} of {n} points correct ({left / n:.1%})",
                       "the gradient attack cannot reach points that certainly exist: "
                       "gradient masking (zero, saturated or misleading gradients) or a "
                       "broken attack", data)
    return Verdict(name, True, f"PGD at eps {probe.huge_eps:.4g} reaches {left / n:.1%}",
                   "", data)


def check_sweep(sweep: dict | None, cfg: SanityConfig | None = None) -> Verdict:
    """Robust accuracy must not rise with eps (from :func:`robustopt.evaluate.sweep`)."""
    name = "accuracy-vs-eps"
    cfg = cfg or SanityConfig()
    if not sweep:
        return _na(name, "no eps sweep given (run sweep() or --sweep)")
    eps, acc, n = sweep.get("eps", []), sweep.get("robust_accuracy", []), sweep.get("n", 0)
    if len(eps) < 2 or not n:
        return _na(name, "the sweep has fewer than two eps values")
    pairs = sorted(zip(eps, acc, strict=True))
    worst, where = 0.0, None
    low = pairs[0]
    for e, a in pairs[1:]:
        if a - low[1] > worst:
            worst, where = a - low[1], [low[0], e]
        if a < low[1]:
            low = (e, a)
    rise = round(worst * n)
    data = {"max_rise": worst, "points": rise, "at": where, "allowed": _allowed(
        n, cfg.sweep_frac, 1)}
    if rise > data["allowed"]:
        return Verdict(name, False,
                       f"robust accuracy rose by {worst:.1%} ({rise} points) from eps "
                       f"{where[0]:.4g} to {where[1]:.4g}",
                       "the attack weakens as eps grows (every larger ball contains the "
                       "smaller one): gradient masking or an attack whose step size does "
                       "not scale with eps", data)
    return Verdict(name, True, "robust accuracy does not rise with eps", "", data)
