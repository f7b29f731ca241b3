"""Auto-PGD (Croce & Hein 2020): PGD with momentum and a step size that tunes itself.

"Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks" (ICML 2020). Each row of the search starts at a random
point on the sphere of radius eps, takes steps of size ``2 * eps`` with momentum,
and at checkpoints ``w_j`` (fractions ``0, 0.22, 0.41, 0.57, ...`` of the budget)
halves its own step size and jumps back to its best point when progress stalls.

All restarts and, for APGD-T, all target classes run as one stacked batch of
``targets * restarts * N`` rows (split into chunks of at most ``max_batch`` rows);
every row keeps its own step size and schedule state, so the result does not depend
on how the rows are chunked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..losses import LossFn, get_loss
from ..threat import L2Ball, LinfBall, ThreatModel
from .core import (
    AttackResult,
    _better,
    default_chunk,
    eval_mode,
    finalize,
    goal_met,
    loss_and_grad,
    prepare,
)

__all__ = ["APGDResult", "apgd", "apgd_ce", "apgd_checkpoints", "apgd_t"]

_TINY = 1e-12


@dataclass
class APGDResult(AttackResult):
    """An :class:`AttackResult` plus the compute spent and, when targeted, the target used.

    ``passes`` counts model evaluations on single examples during the search: the clean
    forward pass of every example plus one per iterate of every active row (a forward
    and a backward pass, except the last iterate of a row, which needs no gradient).
    The one-example input check and the final float32 verification pass are not counted.
    ``target`` holds, per example, the class whose targeted run produced the returned
    point (APGD-T), the caller's target (targeted run), or is ``None`` (untargeted).
    """

    passes: int = 0
    target: torch.Tensor | None = None


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations (number of steps taken) after which APGD may halve its step size.

    The reference schedule: a first interval of ``max(int(0.22 N), 1)`` steps, each next
    one ``max(int(0.03 N), 1)`` shorter but never below ``max(int(0.06 N), 1)``; for
    N = 100 this is 22, 41, 57, 70, 80, 87, 93, 99. A checkpoint at N itself is useless
    (no step follows it) and is left out.
    """
    length = max(int(0.22 * steps), 1)
    shortest = max(int(0.06 * steps), 1)
    shrink = max(int(0.03 * steps), 1)
    out: list[int] = []
    t = length
    while t < steps:
        out.append(t)
        length = max(length - shrink, shortest)
        t += length
    return out


def _random_start(threat: ThreatModel, x: torch.Tensor, generator: torch.Generator | None
                  ) -> torch.Tensor:
    """A point at distance eps in a random direction (uniform noise for L-inf, Gaussian for
    L2, rescaled to norm eps), then clipped to the box: APGD's start, not uniform in the ball.
    """
    if isinstance(threat, LinfBall):
        normal = False
    elif isinstance(threat, L2Ball):
        normal = True
    else:  # another threat model: use its own start
        return threat.random_start(x, generator)
    device = generator.device if generator is not None else x.device
    fn = torch.randn if normal else torch.rand
    noise = fn(x.shape, generator=generator, device=device, dtype=torch.float32)
    noise = noise.to(device=x.device, dtype=x.dtype)
    if not normal:
        noise = 2 * noise - 1
    scale = threat.eps / (threat.distance(noise, torch.zeros_like(noise)) + _TINY)
    return threat.project(x + noise * scale.view(-1, *([1] * (x.dim() - 1))), x)


class _BlockStarts:
    """Random starts drawn one block of N rows at a time, in block order.

    Drawing per block (not per chunk) makes the starts, hence the whole run, independent
    of ``max_batch`` while holding only one block of noise at a time.
    """

    def __init__(self, threat: ThreatModel, x: torch.Tensor,
                 generator: torch.Generator | None) -> None:
        self.threat, self.x, self.generator = threat, x, generator
        self.block, self.starts = -1, x

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        n = self.x.shape[0]
        parts = []
        for b in range(lo // n, (hi - 1) // n + 1):
            while self.block < b:  # blocks are visited in order; each is drawn once
                self.block += 1
                self.starts = _random_start(self.threat, self.x, self.generator)
            parts.append(self.starts[max(lo, b * n) - b * n:min(hi, (b + 1) * n) - b * n])
        return torch.cat(parts)


def _check_settings(steps: int, restarts: int, rho: float, momentum: float, max_batch: int,
                    n_targets: int | None, target: torch.Tensor | None) -> None:
    if steps < 1 or restarts < 1:
        raise InputError(f"APGD needs steps >= 1 and restarts >= 1, got steps={steps}, "
                         f"restarts={restarts}")
    if not 0 <= rho <= 1:
        raise InputError(f"rho must lie in [0, 1], got {rho}")
    if not 0 < momentum <= 1:
        raise InputError(f"momentum (weight of the new step) must lie in (0, 1], got {momentum}")
    if max_batch < 1:
        raise InputError(f"max_batch must be >= 1, got {max_batch}")
    if n_targets is not None and target is not None:
        raise InputError("give either target (one class per example) or n_targets, not both")
    if n_targets is not None and n_targets < 1:
        raise InputError(f"n_targets must be >= 1, got {n_targets}")


def _clean_logits(model: nn.Module, x: torch.Tensor, max_batch: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + max_batch]).float()
                          for i in range(0, x.shape[0], max_batch)])


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
         steps: int = 100, restarts: int = 1, loss: str | LossFn = "ce",
         target: torch.Tensor | None = None, n_targets: int | None = None, rho: float = 0.75,
         momentum: float = 0.75, stop_on_success: bool = False,
         generator: torch.Generator | None = None, autocast: torch.dtype | None = None,
         max_batch: int | None = None) -> APGDResult:
    """Auto-PGD of Croce & Hein (2020) for L-inf and L2 threat models.

    ``loss`` is ``"ce"``, ``"dlr"`` or ``"margin"`` (or a callable ``(logits, y, target)``).
    Untargeted by default; with ``target`` (a class per example) it is a targeted attack
    whose goal is that class. With ``n_targets=K`` it is APGD-T: one run per each of the
    K most likely wrong classes of the clean logits, using the targeted form of ``loss``
    (targeted DLR with ``loss="dlr"``), and the goal is any misclassification; all
    ``K * restarts * N`` rows run as one stacked batch, chunked by ``max_batch`` rows
    (default: :func:`~robustopt.attacks.core.default_chunk`).

    The step size starts at ``2 * eps`` per row and halves at a checkpoint (see
    :func:`apgd_checkpoints`) when at most a fraction ``rho`` of the steps since the last
    checkpoint increased the loss, or when the step size was not halved at the last
    checkpoint and the best loss has not improved since; a halving row restarts from its
    best point. ``momentum`` is the weight alpha of the new step
    (``x' = P(x + alpha (z - x) + (1 - alpha)(x - x_prev))``; 1 disables momentum).

    Each example's returned point is its best by (goal met, loss) over the clean point
    and every iterate of every row. With ``stop_on_success`` an example stops consuming
    passes as soon as any of its rows meets the goal; rows are independent, so the set of
    broken examples equals the full run's (up to floating-point noise), only the returned
    points and losses of broken examples differ. ``autocast`` (e.g. ``torch.bfloat16``)
    is used for the search only; the verdict comes from a float32 pass (:func:`finalize`).
    For APGD-T the reported ``loss`` is the untargeted form of ``loss`` at the returned
    point. See :class:`APGDResult` for ``passes``.
    """
    return _apgd(model, x, y, threat, steps=steps, restarts=restarts, loss=loss,
                 target=target, n_targets=n_targets, rho=rho, momentum=momentum,
                 stop_on_success=stop_on_success, generator=generator, autocast=autocast,
                 max_batch=max_batch, clamp_targets=False)


def apgd_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
            steps: int = 100, restarts: int = 1, **kwargs) -> APGDResult:
    """APGD-CE as in AutoAttack's standard version: untargeted cross-entropy, 100 steps."""
    return apgd(model, x, y, threat, steps=steps, restarts=restarts, loss="ce", **kwargs)


def apgd_t(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
           steps: int = 100, restarts: int = 1, n_targets: int | None = None,
           rho: float = 0.75, momentum: float = 0.75, stop_on_success: bool = False,
           generator: torch.Generator | None = None, autocast: torch.dtype | None = None,
           max_batch: int | None = None) -> APGDResult:
    """APGD-T as in AutoAttack's standard version: targeted DLR, 100 steps, 9 targets.

    ``n_targets`` defaults to 9, or to every wrong class when the model has fewer than 10.
    """
    return _apgd(model, x, y, threat, steps=steps, restarts=restarts, loss="dlr", target=None,
                 n_targets=9 if n_targets is None else n_targets, rho=rho, momentum=momentum,
                 stop_on_success=stop_on_success, generator=generator, autocast=autocast,
                 max_batch=max_batch, clamp_targets=n_targets is None)


def _apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
          steps: int, restarts: int, loss: str | LossFn, target: torch.Tensor | None,
          n_targets: int | None, rho: float, momentum: float, stop_on_success: bool,
          generator: torch.Generator | None, autocast: torch.dtype | None,
          max_batch: int | None, clamp_targets: bool) -> APGDResult:
    max_batch = default_chunk(x) if max_batch is None else max_batch
    _check_settings(steps, restarts, rho, momentum, max_batch, n_targets, target)
    loss_fn = get_loss(loss)
    with eval_mode(model):
        prepare(model, x, y, target)  # in eval mode: a check must not move BatchNorm stats
        n = x.shape[0]
        clean = _clean_logits(model, x, max_batch)
        classes = clean.shape[1]
        if n_targets is not None:
            k = min(n_targets, classes - 1) if clamp_targets else n_targets
            if not 1 <= k <= classes - 1:
                raise InputError(f"n_targets={n_targets} but the model has {classes} classes: "
                                 f"give at most {classes - 1} targets")
            wrong = clean.masked_fill(F.one_hot(y, classes).bool(), float("-inf"))
            ranked = wrong.topk(k, dim=1).indices  # [N, K]: k-th most likely wrong class
            loss_targets = ranked.t().repeat_interleave(restarts, dim=0).reshape(-1)
        else:
            k = 1
            loss_targets = None if target is None else target.repeat(restarts)
        search = _Search(model, x, y, threat, loss_fn, loss_targets,
                         None if n_targets is not None else target, steps=steps, rho=rho,
                         momentum=momentum, stop_on_success=stop_on_success,
                         autocast=autocast, clean=clean)
        starts = _BlockStarts(threat, x, generator)
        total = k * restarts * n
        for lo in range(0, total, max_batch):
            hi = min(lo + max_batch, total)
            search.run_chunk(lo, hi, starts.rows(lo, hi))
        report_target = target if n_targets is None else None
        res = finalize(model, x, y, search.best_x, threat, loss_fn, report_target)
    chosen = search.best_target if n_targets is not None else target
    return APGDResult(x_adv=res.x_adv, loss=res.loss, correct=res.correct, success=res.success,
                      logits=res.logits, passes=search.passes, target=chosen)


class _Search:
    """State shared by all chunks: per-example best points and the pass count."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                 loss_fn: LossFn, loss_targets: torch.Tensor | None,
                 goal_target: torch.Tensor | None, *, steps: int, rho: float, momentum: float,
                 stop_on_success: bool, autocast: torch.dtype | None, clean: torch.Tensor
                 ) -> None:
        self.model, self.x, self.y, self.threat, self.loss_fn = model, x, y, threat, loss_fn
        self.loss_targets, self.goal_target = loss_targets, goal_target
        self.steps, self.rho, self.momentum = steps, rho, momentum
        self.stop_on_success, self.autocast, self.clean = stop_on_success, autocast, clean
        self.checkpoints = dict.fromkeys(apgd_checkpoints(steps))
        prev = 0
        for t in self.checkpoints:  # interval length ending at each checkpoint
            self.checkpoints[t], prev = t - prev, t
        n = x.shape[0]
        self.passes = n  # the clean forward pass
        self.best_x = x.clone()
        self.best_loss = torch.full((n,), float("-inf"), device=x.device)
        self.best_success = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.best_target = torch.full((n,), -1, dtype=torch.long, device=x.device)
        self.broken = goal_met(clean, y, goal_target)  # examples whose goal is already met

    def run_chunk(self, lo: int, hi: int, start: torch.Tensor) -> None:
        """Run rows ``lo:hi`` of the stacked batch and merge them into the per-example best."""
        x, n, dev = self.x, self.x.shape[0], self.x.device
        ids = torch.arange(lo, hi, device=dev)
        ex = ids % n
        lt = None if self.loss_targets is None else self.loss_targets[lo:hi]
        gt = None if self.goal_target is None else self.goal_target[ex]
        y = self.y[ex]
        # every row's best starts at the clean point, scored with the row's own loss
        clean = self.clean[ex]
        rb_x = x[ex]
        rb_loss = self.loss_fn(clean, y, lt).float()
        rb_success = goal_met(clean, y, gt)
        self._search(rb_x, rb_loss, rb_success, start, ex, y, lt, gt)
        for b in range(lo // n, (hi - 1) // n + 1):  # merge block by block: no repeated example
            m = (ids // n) == b
            e = ex[m]
            better = _better(rb_loss[m], rb_success[m], self.best_loss[e], self.best_success[e])
            upd = e[better]
            self.best_x[upd] = rb_x[m][better]
            self.best_loss[upd] = rb_loss[m][better]
            self.best_success[upd] = rb_success[m][better]
            if lt is not None:
                self.best_target[upd] = lt[m][better]

    def _search(self, rb_x: torch.Tensor, rb_loss: torch.Tensor, rb_success: torch.Tensor,
                start: torch.Tensor, ex: torch.Tensor, y: torch.Tensor,
                lt: torch.Tensor | None, gt: torch.Tensor | None) -> None:
        """APGD on every row of one chunk, updating the rows' best points (``rb_*``) in place."""
        threat, dev = self.threat, self.x.device
        pos = torch.arange(ex.shape[0], device=dev)  # chunk positions of the active rows
        x0 = self.x[ex]
        cur = start
        if self.stop_on_success:
            keep = ~self.broken[ex]
            pos, x0, cur, ex, y = pos[keep], x0[keep], cur[keep], ex[keep], y[keep]
            lt = None if lt is None else lt[keep]
            gt = None if gt is None else gt[keep]
        rows = pos.shape[0]
        shape = (-1,) + (1,) * (x0.dim() - 1)
        step = torch.full((rows,), 2 * threat.eps, device=dev, dtype=x0.dtype)
        reduced_last = torch.ones(rows, dtype=torch.bool, device=dev)
        n_up = torch.zeros(rows, dtype=torch.long, device=dev)
        prev = cur
        for t in range(self.steps + 1):
            if pos.numel() == 0:
                return
            loss, logits, g = loss_and_grad(self.model, cur, y, self.loss_fn, lt,
                                            need_grad=t < self.steps, autocast=self.autocast)
            self.passes += pos.numel()
            success = goal_met(logits, y, gt)
            # the returned point: best by (goal met, loss) over every iterate
            better = _better(loss, success, rb_loss[pos], rb_success[pos])
            upd = pos[better]
            rb_x[upd] = cur[better]
            rb_loss[upd] = loss[better]
            rb_success[pos] = rb_success[pos] | success
            if self.stop_on_success:
                self.broken[ex[success]] = True
            if t == self.steps:
                return
            # the schedule's own best: by loss only, as in the reference
            if t == 0:
                best_loss, best_x, best_grad = loss.clone(), cur.clone(), g.clone()
                last_check, prev_loss = loss.clone(), loss
            else:
                n_up += loss > prev_loss
                prev_loss = loss
                up = loss > best_loss
                best_loss = torch.where(up, loss, best_loss)
                best_x[up] = cur[up]
                best_grad[up] = g[up]
            grad = g
            length = self.checkpoints.get(t)
            if length is not None:
                halve = (n_up <= self.rho * length) | (~reduced_last & (best_loss <= last_check))
                reduced_last, last_check = halve, best_loss.clone()
                n_up = torch.zeros_like(n_up)
                step = torch.where(halve, step / 2, step)
                cur = torch.where(halve.view(shape), best_x, cur)
                grad = torch.where(halve.view(shape), best_grad, grad)
            if self.stop_on_success:
                keep = ~self.broken[ex]
                if not bool(keep.all()):
                    pos, x0, cur, prev, grad, ex, y = (pos[keep], x0[keep], cur[keep],
                                                       prev[keep], grad[keep], ex[keep], y[keep])
                    lt = None if lt is None else lt[keep]
                    gt = None if gt is None else gt[keep]
                    step, reduced_last, n_up = step[keep], reduced_last[keep], n_up[keep]
                    best_loss, best_x, best_grad = best_loss[keep], best_x[keep], best_grad[keep]
                    last_check, prev_loss = last_check[keep], prev_loss[keep]
                    if pos.numel() == 0:
                        return
            z = threat.step(cur, x0, grad, step.view(shape))
            if t > 0 and self.momentum < 1:
                a = self.momentum
                z = threat.project(cur + a * (z - cur) + (1 - a) * (cur - prev), x0)
            prev, cur = cur, z
