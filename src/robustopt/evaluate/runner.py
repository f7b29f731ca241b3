"""``evaluate``: the per-example worst case of a suite of attacks, with provenance and checks.

How the compute is spent (AutoAttack's scheme):

- the clean pass decides which points are misclassified already; they are never attacked;
- the attacks run in the suite's order, each only on the points every earlier attack
  left standing (survivor-only chaining), and each with ``stop_on_success`` so a point
  stops costing passes once broken; PGD restarts (and targets) run one after the other
  on the survivors of the previous ones, which records the restart that broke a point.

A point is robust only if it survives every attack, so skipping a point that is
already broken cannot change any verdict. Every row of an attack is computed
independently of the other rows (the model runs in eval mode), so for an attack whose
randomness is fixed (no random start) the verdicts are identical to the full budget's;
a randomised attack draws its random starts for the points it is given, so the verdicts
are the same *in distribution*. ``full_budget=True`` runs every attack on every point
without early stopping, for comparison.

``passes`` count per-example forward passes through the model (and the transfer source);
a gradient step is one forward and one backward pass and counts once. The full budget
is every attack's full steps x restarts (x targets) plus its verification pass on every
point, plus the clean pass (see :meth:`AttackSpec.full_passes`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..atomic import write_atomic
from ..attacks.apgd import apgd
from ..attacks.core import AttackResult, eval_mode, fast_layout
from ..attacks.fgsm import fgsm
from ..attacks.pgd import pgd
from ..attacks.smooth import smooth_backward
from ..attacks.square import square
from ..attacks.transfer import transfer
from ..errors import InputError
from ..losses import margin
from ..threat import ThreatModel
from ..validate import check_images, check_labels, check_logits, forward_checked
from . import sanity as S
from .suites import AttackSpec, get_suite, suite_label

log = logging.getLogger("robustopt.evaluate")

Progress = Callable[[str, dict], None]
NULL = -1  # "not given by the attack" in the integer provenance arrays


# ----------------------------------------------------------------------------- helpers


class _Counted(nn.Module):
    """Transparent wrapper counting per-example forward passes."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.count = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count += int(x.shape[0])
        return self.inner(x)


def _generator(device: torch.device, seed: int, *keys: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


class _Emitter:
    """Progress events to the caller's callback, else to the module logger."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    def message(self, text: str, **info) -> None:
        if self.progress is not None:
            self.progress("message", {"message": text, **info})
        else:
            log.info(text)

    def warning(self, text: str, **info) -> None:
        if self.progress is not None:
            self.progress("warning", {"message": text, **info})
        else:
            log.warning(text)


def _has_input_gradient(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the logits depend differentiably on the input (white-box attacks need it)."""
    with torch.enable_grad():
        xr = x.detach().clone().requires_grad_(True)
        out = model(xr)
        if not (isinstance(out, torch.Tensor) and out.requires_grad):
            return False
        (grad,) = torch.autograd.grad(out.float().sum(), xr, allow_unused=True)
    return grad is not None


def _loss_for(spec: AttackSpec, classes: int, targeted: bool) -> str:
    """DLR needs 3 classes (4 targeted); fall back to the margin loss below that."""
    loss = "dlr" if spec.attack == "apgd-t" else spec.loss
    if loss == "dlr" and classes < (4 if targeted else 3):
        return "margin"
    return loss


@dataclass
class _Found:
    """Per-row outcome of one attack: first success, else highest-margin point."""

    x_adv: torch.Tensor
    margin: torch.Tensor
    broken: torch.Tensor
    restart: torch.Tensor
    step: torch.Tensor
    query: torch.Tensor
    target: torch.Tensor

    @classmethod
    def start(cls, x: torch.Tensor) -> _Found:
        m, dev = x.shape[0], x.device

        def ints() -> torch.Tensor:
            return torch.full((m,), NULL, dtype=torch.long, device=dev)

        return cls(x.clone(), torch.full((m,), -math.inf, device=dev),
                   torch.zeros(m, dtype=torch.bool, device=dev), ints(), ints(), ints(), ints())

    def merge(self, rows: torch.Tensor, res: AttackResult, y: torch.Tensor,
              **prov: torch.Tensor | int | None) -> None:
        mg = margin(res.logits, y)
        hit = ~res.correct
        new = hit & ~self.broken[rows]
        better = ~hit & ~self.broken[rows] & (mg > self.margin[rows])
        for mask in (new, better):
            idx = rows[mask]
            self.x_adv[idx] = res.x_adv[mask].to(self.x_adv.dtype)
            self.margin[idx] = mg[mask]
        idx = rows[new]
        self.broken[idx] = True
        for key, value in prov.items():
            if value is None:
                continue
            arr = getattr(self, key)
            if isinstance(value, int):
                arr[idx] = value
            else:
                arr[idx] = value[new].to(arr.dtype)


def _run_spec(spec: AttackSpec, model: nn.Module, source: nn.Module | None, x: torch.Tensor,
              y: torch.Tensor, clean_logits: torch.Tensor, threat: ThreatModel,
              classes: int, chain: bool, gen: Callable[[int], torch.Generator],
              grad_model: nn.Module | None = None) -> _Found:
    """Run one attack on the rows ``x``; stop early per row when ``chain``.

    ``grad_model``: a smoothed-backward copy of ``model`` (``spec.smooth``) that the
    gradient attack searches on; its points are then judged on ``model``.
    """
    def white_box(fn: Callable[..., AttackResult], xs: torch.Tensor, ys: torch.Tensor,
                  **kw) -> AttackResult:
        if grad_model is None:
            return fn(model, xs, ys, threat, **kw)
        return transfer(grad_model, model, xs, ys, threat, attack=fn, **kw)

    found = _Found.start(x)
    m = x.shape[0]
    everyone = torch.arange(m, device=x.device)
    step_size = None if spec.step is None else spec.step * threat.eps
    a = spec.attack
    if a == "pgd":
        targeted = spec.n_targets > 0
        k = spec.targets(classes) if targeted else 1
        loss = _loss_for(spec, classes, targeted)
        ranked = None
        if targeted:
            wrong = clean_logits.masked_fill(F.one_hot(y, classes).bool(), -math.inf)
            ranked = wrong.topk(k, dim=1).indices
        for t in range(k):
            for r in range(spec.restarts):
                rows = (~found.broken).nonzero().squeeze(1) if chain else everyone
                if rows.numel() == 0:
                    return found
                tgt = None if ranked is None else ranked[rows, t]
                res = white_box(pgd, x[rows], y[rows], steps=spec.steps,
                                step_size=step_size, restarts=1, loss=loss, target=tgt,
                                random_start=spec.random_start, stop_on_success=chain,
                                generator=gen(t * spec.restarts + r))
                found.merge(rows, res, y[rows], restart=r, target=tgt)
    elif a in ("apgd", "apgd-t"):
        targeted = a == "apgd-t"
        res = white_box(apgd, x, y, steps=spec.steps, restarts=spec.restarts,
                        loss=_loss_for(spec, classes, targeted),
                        n_targets=spec.targets(classes) if targeted else None,
                        stop_on_success=chain, generator=gen(0))
        found.merge(everyone, res, y, target=getattr(res, "target", None) if targeted else None)
    elif a == "square":
        res = square(model, x, y, threat, queries=spec.queries, p_init=spec.p_init,
                     restarts=spec.restarts, loss=spec.loss, stop_on_success=chain,
                     generator=gen(0), rescale_schedule=spec.rescale_schedule)
        query = getattr(res, "broken_at", None)
        found.merge(everyone, res, y, query=query)
    elif a == "fgsm":
        res = white_box(fgsm, x, y, step_size=step_size, random_start=spec.random_start,
                        loss=spec.loss, generator=gen(0))
        found.merge(everyone, res, y, step=1)
    else:  # transfer
        res = transfer(source, model, x, y, threat, attack=pgd, steps=spec.steps,
                       step_size=step_size, restarts=spec.restarts, loss=spec.loss,
                       random_start=spec.random_start, generator=gen(0))
        found.merge(everyone, res, y)
    return found


# ----------------------------------------------------------------------------- result


@dataclass
class AttackStats:
    """One attack's share of an evaluation (summed over batches)."""

    spec: AttackSpec
    n: int
    attacked_mask: torch.Tensor  # [N] bool: points this attack ran on
    broke_mask: torch.Tensor     # [N] bool: points it found an adversarial example for
    robust_after: int = 0        # points still robust after this attack (cumulative)
    time_s: float = 0.0
    passes: int = 0
    full_passes: int = 0
    skipped: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def attacked(self) -> int:
        return int(self.attacked_mask.sum())

    @property
    def broke(self) -> int:
        return int(self.broke_mask.sum())

    @property
    def accuracy_attacked(self) -> float | None:
        """Fraction of the points it attacked that survived it."""
        return None if self.attacked == 0 else 1 - self.broke / self.attacked

    @property
    def cumulative_accuracy(self) -> float:
        """Robust accuracy over all N points after this attack and every earlier one."""
        return self.robust_after / self.n

    def to_dict(self) -> dict:
        return {"name": self.name, "spec": self.spec.to_dict(), "attacked": self.attacked,
                "broke": self.broke, "accuracy_on_attacked": self.accuracy_attacked,
                "cumulative_accuracy": self.cumulative_accuracy, "time_s": self.time_s,
                "passes": self.passes, "full_passes": self.full_passes,
                "skipped": self.skipped}


@dataclass
class EvalResult:
    """Everything :func:`evaluate` measured; per-example tensors are on the CPU."""

    threat: ThreatModel
    suite: str
    specs: list[AttackSpec]
    seed: int
    clean_correct: torch.Tensor   # [N] bool
    robust: torch.Tensor          # [N] bool: survived every attack
    broken_by: list[str | None]   # [N] attack name, "clean" (misclassified), None (robust)
    restart: torch.Tensor         # [N] int64, -1 = not given
    step: torch.Tensor            # [N] int64, -1 = not given
    query: torch.Tensor           # [N] int64, -1 = not given
    target: torch.Tensor          # [N] int64 target class of the breaking run, -1 = none
    margin: torch.Tensor          # [N] float32 max_{j!=y} z_j - z_y at x_adv (> 0: broken)
    x_adv: torch.Tensor           # [N, C, H, W]: strongest point found, inside the set
    attacks: list[AttackStats]
    verdicts: list[S.Verdict]
    passes_spent: int
    passes_full: int
    sanity_passes: int
    time_s: float
    settings: dict = field(default_factory=dict)
    sanity_config: S.SanityConfig | None = None

    @property
    def n(self) -> int:
        return int(self.robust.numel())

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())

    @property
    def robust_accuracy(self) -> float:
        """The worst case: the fraction of points that survived every attack."""
        return float(self.robust.float().mean())

    @property
    def passes_saved(self) -> int:
        return self.passes_full - self.passes_spent

    def attack(self, name: str) -> AttackStats:
        for a in self.attacks:
            if a.name == name:
                return a
        raise KeyError(name)

    def failed_checks(self) -> list[S.Verdict]:
        return [v for v in self.verdicts if v.passed is False]

    def attach_sweep(self, sweep: dict, progress: Progress | None = None, *,
                     warn: bool = True) -> S.Verdict:
        """Add (or replace) the accuracy-vs-eps verdict from an eps sweep; a failure is
        reported through ``progress`` (else the logger) unless ``warn`` is false."""
        verdict = S.check_sweep(sweep, self.sanity_config)
        self.verdicts = [v for v in self.verdicts if v.name != verdict.name] + [verdict]
        if verdict.passed is False and warn:
            _Emitter(progress).warning(verdict.message(), check=verdict.name)
        return verdict

    def to_json(self, per_example: bool = True) -> dict:
        """A JSON-able dict (no tensors); the adversarial points are left to save_npz."""
        out = {
            "robustopt_version": __version__,
            "threat": self.threat.to_dict(),
            "suite": self.suite,
            "seed": self.seed,
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "attacks": [a.to_dict() for a in self.attacks],
            "passes": {"spent": self.passes_spent, "full_budget": self.passes_full,
                       "saved": self.passes_saved,
                       "saved_fraction": (self.passes_saved / self.passes_full
                                          if self.passes_full else 0.0),
                       "sanity": self.sanity_passes},
            "sanity": [v.to_dict() for v in self.verdicts],
            "time_s": self.time_s,
            "settings": dict(self.settings),
        }
        if per_example:
            def opt(t: torch.Tensor) -> list:
                return [None if v == NULL else v for v in t.tolist()]

            out["per_example"] = {
                "clean_correct": self.clean_correct.tolist(),
                "robust": self.robust.tolist(),
                "broken_by": list(self.broken_by),
                "restart": opt(self.restart), "step": opt(self.step),
                "query": opt(self.query), "target": opt(self.target),
                "margin": [float(v) for v in self.margin.tolist()],
            }
        return out

    def save_npz(self, path: str | Path) -> None:
        """Adversarial points and per-example provenance as a pickle-free ``.npz``."""
        arrays = {
            "x_adv": self.x_adv.float().numpy(),
            "clean_correct": self.clean_correct.numpy(),
            "robust": self.robust.numpy(),
            "broken_by": np.array([b or "" for b in self.broken_by], dtype=str),
            "restart": self.restart.numpy(), "step": self.step.numpy(),
            "query": self.query.numpy(), "target": self.target.numpy(),
            "margin": self.margin.numpy(),
        }

        def _write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

        write_atomic(path, _write)

    def table(self) -> str:
        """A readable summary: per-attack accuracy, passes, the worst case and the checks."""
        t = self.threat
        lines = [f"{self.n} points, {t.norm} eps {t.eps:.4g}, suite {self.suite}, "
                 f"seed {self.seed}",
                 f"{'attack':<28}{'attacked':>9}{'broke':>7}{'acc(attacked)':>15}"
                 f"{'cumulative':>12}{'time':>9}{'passes':>13}",
                 f"{'clean':<28}{self.n:>9}{int((~self.clean_correct).sum()):>7}{'':>15}"
                 f"{self.clean_accuracy:>12.2%}{'':>9}{self.n:>13,}"]
        for a in self.attacks:
            acc = "-" if a.accuracy_attacked is None else f"{a.accuracy_attacked:.2%}"
            name = a.name + (" (skipped)" if a.skipped else "")
            lines.append(f"{name:<28}{a.attacked:>9}{a.broke:>7}{acc:>15}"
                         f"{a.cumulative_accuracy:>12.2%}{a.time_s:>8.1f}s{a.passes:>13,}")
        saved = self.passes_saved / self.passes_full if self.passes_full else 0.0
        lines += [f"robust accuracy (worst case over all attacks): {self.robust_accuracy:.2%}"
                  f"  (clean {self.clean_accuracy:.2%})",
                  f"passes: {self.passes_spent:,} spent of a {self.passes_full:,} full budget "
                  f"({saved:.1%} saved); sanity probes {self.sanity_passes:,}; "
                  f"{self.time_s:.1f} s",
                  "sanity checks:"]
        for v in self.verdicts:
            lines.append(f"  [{v.status:>4}] {v.name}: {v.detail}"
                         + (f" -> likely cause: {v.likely_cause}" if v.passed is False else ""))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- evaluate


def _check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                  seed: int, batch_size: int, source: nn.Module | None) -> None:
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if source is not None and not isinstance(source, nn.Module):
        raise InputError(f"transfer_from must be a torch.nn.Module, got {type(source).__name__}")
    if not isinstance(threat, ThreatModel):
        raise InputError(f"threat must be a ThreatModel such as LinfBall(0.3), got "
                         f"{type(threat).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be an integer >= 0, got {seed!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    check_images(x)
    check_labels(y, x.shape[0])
    if y.device != x.device:
        raise InputError(f"images are on {x.device} but labels on {y.device}: move both to "
                         "the model's device")


def _clean_pass(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for lo in range(0, x.shape[0], batch_size):
            chunk = x[lo:lo + batch_size]
            out.append(forward_checked(model, chunk).float() if lo == 0
                       else check_logits(model(chunk), chunk.shape[0]).float())
    logits = torch.cat(out)
    return logits


def _check_source(source: nn.Module, x: torch.Tensor, classes: int) -> None:
    try:
        with torch.no_grad():
            k = forward_checked(source, x[:2]).shape[1]
    except InputError as err:
        raise InputError(f"the transfer source model does not fit these images: {err}") from None
    if k != classes:
        raise InputError(f"the transfer source model has {k} outputs but the model has "
                         f"{classes}: it was built for another dataset")


def _with_sanity_fgsm(specs: list[AttackSpec]) -> list[AttackSpec]:
    """Insert the sanity FGSM right after the last white-box attack (before black-box ones)."""
    last_wb = max((i for i, s in enumerate(specs) if s.white_box), default=-1)
    fg = AttackSpec("fgsm", "ce", random_start=False, sanity=True, name="fgsm (sanity)")
    return specs[:last_wb + 1] + [fg] + specs[last_wb + 1:]


def _chain_verdicts(stats: list[AttackStats], clean: torch.Tensor, chain: bool,
                    cfg: S.SanityConfig) -> list[S.Verdict]:
    n_ref = int(clean.sum())
    none = torch.zeros_like(clean)

    def union(items: Iterable[AttackStats]) -> torch.Tensor:
        out = none.clone()
        for a in items:
            out |= a.broke_mask
        return out

    ran = [a for a in stats if not a.skipped]
    verdicts = []
    # FGSM vs iterative
    fg = [i for i, a in enumerate(ran) if a.spec.sanity]
    if fg:
        i = fg[0]
        iters = [a for a in ran[:i] if a.spec.iterative]
        missed = clean & ~union(iters)
        broke = int((ran[i].broke_mask & missed).sum())
        verdicts.append(S.check_fgsm(broke, int(missed.sum()), n_ref, bool(iters), cfg))
    else:
        skipped = [a.skipped for a in stats if a.spec.sanity and a.skipped]
        why = f"the sanity FGSM was skipped: {skipped[0]}" if skipped else \
            "the sanity FGSM was not run (sanity=False)"
        verdicts.append(S._na("fgsm-vs-iterative", why))
    # black-box vs white-box
    # Chained, a black-box attack only sees the survivors of the attacks before it, so
    # it is compared with the white-box attacks that ran before it (white-box attacks
    # after it, e.g. extra PGD runs, never saw the points it broke).
    wb = [i for i, a in enumerate(ran) if a.spec.white_box]
    bb = [i for i, a in enumerate(ran) if a.spec.black_box and (not chain or i > min(wb))] \
        if wb else []
    if chain and bb:
        wb = [i for i in wb if i < min(bb)]
    why = None
    if not wb:
        why = "no white-box attack ran"
    elif not bb:
        why = ("no black-box or transfer attack ran after a white-box attack (the quick "
               "suite has none; use standard or strong)")
    missed = clean & ~union(ran[i] for i in wb)
    broke = int((union(ran[i] for i in bb) & missed).sum())
    verdicts.append(S.check_black_box(broke, int(missed.sum()), n_ref, why, cfg))
    # cross-entropy vs margin/DLR: chained, the margin attacks after the first CE attack
    # against the CE attacks before them (a chain may go on to more CE attacks)
    ce = [i for i, a in enumerate(ran) if a.spec.white_box and not a.spec.sanity
          and a.spec.loss_family == "ce"]
    mg = [i for i, a in enumerate(ran) if a.spec.white_box and not a.spec.sanity
          and a.spec.loss_family == "margin" and (not chain or (ce and i > min(ce)))]
    if chain and mg:
        ce = [i for i in ce if i < min(mg)]
    why = None
    if not ce:
        why = "no cross-entropy white-box attack ran"
    elif not mg:
        why = "no margin/DLR white-box attack ran after a cross-entropy attack"
    ce_hit = clean & union(ran[i] for i in ce)
    broke = int((union(ran[i] for i in mg) & clean & ~ce_hit).sum())
    verdicts.append(S.check_ce_margin(broke, n_ref - int(ce_hit.sum()), n_ref, why, cfg,
                                      ce_broke=int(ce_hit.sum())))
    return verdicts


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             suite: str | Iterable[AttackSpec | Mapping] = "standard", *,
             transfer_from: nn.Module | None = None, seed: int = 0, batch_size: int = 500,
             progress: Progress | None = None, sanity: bool | S.SanityConfig = True,
             budget: Mapping | None = None, full_budget: bool = False,
             sweep_result: dict | None = None, index_offset: int = 0,
             channels_last: bool | None = None) -> EvalResult:
    """Robust accuracy of ``model`` on ``(x, y)`` under ``threat``: the per-example worst
    case over the attacks of ``suite``, with provenance, passes and sanity verdicts.

    ``model``: any ``nn.Module`` mapping [0, 1] NCHW float images to ``[batch, classes]``
    logits. ``suite``: ``"quick"``, ``"standard"`` (default) or ``"strong"`` (see
    :mod:`robustopt.evaluate.suites`), or a list of :class:`AttackSpec` / dicts.
    ``budget``: overrides of ``steps``/``restarts``/``queries``/``n_targets`` for a named
    suite. ``transfer_from``: a source model; a transfer attack is appended to a named
    suite. ``sanity``: ``True`` (default), ``False`` or a :class:`SanityConfig`; it adds a
    one-step FGSM after the white-box attacks (its successes count, like any attack's)
    and cheap probes (input-gradient statistics, PGD-10 vs PGD-40 with 3 restarts and
    PGD at a radius covering the whole box, on at most 100 points), all reported
    separately from the attacks' budget. ``sweep_result``: a :func:`sweep` dict whose
    accuracy-vs-eps check is added. ``full_budget``: attack every point with every
    attack, no early stop (for comparison; the verdicts do not change).

    Points are processed in batches of ``batch_size``; each batch runs the whole chain.
    Randomness comes from ``seed`` alone (one generator per batch, attack and run), so a
    given seed and batch size give the same result. ``index_offset``: where ``x[0]`` sits
    in the dataset; batches are keyed by their place in it, so a shard that starts on a
    batch boundary attacks its points exactly as one evaluation of the whole set would.
    Progress lines and the warnings of failed checks go to ``progress(kind, info)`` (kinds
    ``"message"``, ``"warning"``), else to the ``robustopt.evaluate`` logger.
    ``channels_last``: hold the model's convolution weights channels-last while it is
    attacked (``None``: on the CPU; see :func:`robustopt.attacks.core.fast_layout`); the
    result's settings record whether they were (``weights_channels_last``).
    """
    start_time = time.perf_counter()
    _check_inputs(model, x, y, threat, seed, batch_size, transfer_from)
    if isinstance(index_offset, bool) or not isinstance(index_offset, int) or index_offset < 0:
        raise InputError(f"index_offset must be an integer >= 0, got {index_offset!r}")
    emit = _Emitter(progress)
    cfg = sanity if isinstance(sanity, S.SanityConfig) else (S.SanityConfig() if sanity
                                                             else None)
    specs = get_suite(suite, transfer=transfer_from is not None, budget=budget)
    if any(s.attack == "transfer" for s in specs) and transfer_from is None:
        raise InputError("the attack list has a transfer attack but no source model: pass "
                         "transfer_from=MODEL")
    if cfg is not None:
        specs = _with_sanity_fgsm(specs)
    chain = not full_budget
    n, dev = x.shape[0], x.device
    with eval_mode(model), fast_layout(model, x, channels_last) as weights_channels_last:
        counted = _Counted(model)
        source = None
        if transfer_from is not None:
            source = _Counted(transfer_from)
        # one smoothed-backward copy per sharpness, sharing the model's weights; none for a
        # model without nn.ReLU modules (its smoothed gradients would be the plain ones)
        smoothers: dict[float, _Counted] = {}
        no_smoothing = ""
        for beta in {s.smooth for s in specs if s.smooth is not None}:
            try:
                smoothers[beta] = _Counted(smooth_backward(model, beta))
            except InputError as err:
                no_smoothing = str(err)

        def passes() -> int:
            return counted.count + sum(m.count for m in smoothers.values()) + (
                source.count if source is not None else 0)
        clean_logits = _clean_pass(counted, x, batch_size)
        classes = clean_logits.shape[1]
        check_labels(y, n, classes)
        if source is not None:
            with eval_mode(transfer_from):
                _check_source(transfer_from, x, classes)
        clean = clean_logits.argmax(1) == y
        differentiable = _has_input_gradient(model, x[:1])
        emit.message(f"evaluating {n} points under {threat.norm} eps {threat.eps:.4g}: clean "
                     f"accuracy {float(clean.float().mean()):.2%}; attacks: "
                     + ", ".join(s.name for s in specs), event="start", n=n)

        x_adv = x.detach().clone()
        mg = margin(clean_logits, y)
        broken_by: list[str | None] = ["clean" if not c else None for c in clean.tolist()]
        ints = {k: torch.full((n,), NULL, dtype=torch.long, device=dev)
                for k in ("restart", "step", "query", "target")}
        robust = clean.clone()
        stats = [AttackStats(s, n, torch.zeros(n, dtype=torch.bool, device=dev),
                             torch.zeros(n, dtype=torch.bool, device=dev),
                             full_passes=n * s.full_passes(classes)) for s in specs]
        for st in stats:
            if threat.eps == 0:
                st.skipped = "eps = 0: the threat set is the clean point"
            elif st.spec.white_box and not differentiable:
                st.skipped = "the model's output has no input gradient"
            elif st.spec.smooth is not None and st.spec.smooth not in smoothers:
                st.skipped = no_smoothing
        lost = [st.name for st in stats if st.skipped and st.spec.white_box and threat.eps > 0
                and not differentiable]
        if lost:
            emit.warning("the model's output has no input gradient (it detaches or runs under "
                         f"no_grad): white-box attacks skipped ({', '.join(lost)}); only "
                         "black-box attacks count, so the robust accuracy is an upper bound "
                         "at best", event="skipped")
        batches = list(range(0, n, batch_size))
        for j, lo in enumerate(batches):
            hi = min(lo + batch_size, n)
            b = (index_offset + lo) // batch_size  # the batch's key: its place in the dataset
            for k, st in enumerate(stats):
                spec = st.spec
                if st.skipped:
                    continue
                pool = torch.arange(lo, hi, device=dev)
                rows = pool[robust[lo:hi]] if chain else pool
                if rows.numel() == 0:
                    continue
                before = passes()
                t0 = time.perf_counter()
                found = _run_spec(spec, counted, source, x[rows], y[rows], clean_logits[rows],
                                  threat, classes, chain,
                                  lambda i, b=b, k=k: _generator(dev, seed, b, k, i),
                                  smoothers.get(spec.smooth))
                st.time_s += time.perf_counter() - t0
                st.passes += passes() - before
                st.attacked_mask[rows] = True
                st.broke_mask[rows[found.broken]] = True
                new = found.broken & robust[rows]
                idx = rows[new]
                for i in idx.tolist():
                    broken_by[i] = spec.name
                robust[idx] = False
                x_adv[idx] = found.x_adv[new]
                mg[idx] = found.margin[new]
                for key, arr in ints.items():
                    arr[idx] = getattr(found, key)[new]
                keep = robust[rows] & (found.margin > mg[rows])
                x_adv[rows[keep]] = found.x_adv[keep]
                mg[rows[keep]] = found.margin[keep]
                emit.message(f"[batch {j + 1}/{len(batches)}] {spec.name}: attacked "
                             f"{rows.numel()}, broke {int(found.broken.sum())}, robust so far "
                             f"{int(robust[:hi].sum())}/{hi} ({st.time_s:.1f} s)",
                             event="attack", attack=spec.name, batch=j + 1,
                             batches=len(batches))
        if not chain:
            robust = clean.clone()
            for st in stats:
                robust &= ~st.broke_mask
        alive = clean.clone()
        for st in stats:
            if not st.skipped:
                alive &= ~st.broke_mask
            st.robust_after = int(alive.sum())

        verdicts = _chain_verdicts(stats, clean, chain, cfg or S.SanityConfig())
        probe = None
        sanity_passes = 0
        if cfg is not None and threat.eps > 0:
            pick = clean.nonzero().squeeze(1)[:cfg.probe_n]
            c0 = counted.count
            probe = S.run_probes(counted, x[pick], y[pick], threat, cfg,
                                 lambda i: _generator(dev, seed, 1_000_000, i),
                                 differentiable=differentiable)
            sanity_passes = counted.count - c0
        rules = cfg or S.SanityConfig()
        verdicts += [S.check_gradients(probe, rules), S.check_single_step(probe, rules),
                     S.check_steps(probe, rules),
                     S.check_spread(probe, rules), S.check_huge_eps(probe, rules)]
        if threat.eps == 0:
            verdicts = [replace(v, passed=None, detail="eps = 0: nothing to attack",
                                likely_cause="") for v in verdicts]
        verdicts.append(S.check_sweep(sweep_result, rules))
    order = {name: i for i, name in enumerate(S.CHECK_NAMES)}
    verdicts.sort(key=lambda v: order.get(v.name, len(order)))
    for v in verdicts:
        if v.passed is False:
            emit.warning(v.message(), check=v.name)
    spent = n + sum(st.passes for st in stats)
    full = n + sum(st.full_passes for st in stats)
    cpu = torch.device("cpu")
    settings = {"batch_size": batch_size, "index_offset": index_offset,
                "full_budget": full_budget, "sanity": cfg is not None,
                "budget": dict(budget) if budget else None,
                "transfer": transfer_from is not None, "classes": classes,
                "sanity_config": None if cfg is None else asdict(cfg),
                "weights_channels_last": weights_channels_last}
    return EvalResult(
        threat=threat, suite=suite_label(suite), specs=specs, seed=seed,
        clean_correct=clean.to(cpu), robust=robust.to(cpu), broken_by=broken_by,
        restart=ints["restart"].to(cpu), step=ints["step"].to(cpu),
        query=ints["query"].to(cpu), target=ints["target"].to(cpu),
        margin=mg.float().to(cpu), x_adv=x_adv.to(cpu),
        attacks=[replace(st, attacked_mask=st.attacked_mask.to(cpu),
                         broke_mask=st.broke_mask.to(cpu)) for st in stats],
        verdicts=verdicts, passes_spent=spent, passes_full=full,
        sanity_passes=sanity_passes, time_s=time.perf_counter() - start_time,
        settings=settings, sanity_config=cfg)
