"""The one attack core: projected steepest ascent with restarts, shared by every attack.

FGSM, PGD, targeted PGD and the training adversaries are all calls of
:func:`perturb` with different settings. Public attacks end with
:func:`finalize`, which re-projects, checks every point against the threat set
and recomputes the verdict with a float32 forward pass, so neither a bug nor
reduced precision in the search can overstate an attack.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError
from ..losses import LossFn
from ..threat import ThreatModel
from ..validate import check_images, check_labels, check_logits, forward_checked

# Memory for the iterates the tracked ascent keeps between best-point updates (see
# :func:`_ascend_tracked`): all 21 iterates of PGD-20 on 256 MNIST images fit, so the
# bookkeeping runs once per attack there. Batches too big for 3 iterates in it use the
# per-step tracker, so memory stays within this much of the per-step tracker's.
TRACK_BUFFER_BYTES = 32 << 20


@dataclass
class AttackResult:
    """What an attack found, per example, at points verified to be in the threat set."""

    x_adv: torch.Tensor    # [N, C, H, W], inside the threat set around x
    loss: torch.Tensor     # [N] float32 objective at x_adv (higher = stronger)
    correct: torch.Tensor  # [N] bool: the model still predicts the true label at x_adv
    success: torch.Tensor  # [N] bool: the attack's goal is met (misclassified / target hit)
    logits: torch.Tensor   # [N, K] float32 logits at x_adv

    @property
    def accuracy(self) -> float:
        """Fraction of examples still classified correctly."""
        return float(self.correct.float().mean()) if self.correct.numel() else float("nan")


@dataclass
class Perturbation:
    """Raw output of :func:`perturb`: points plus the tracked objective (if tracked)."""

    x_adv: torch.Tensor
    loss: torch.Tensor | None
    success: torch.Tensor | None
    logits: torch.Tensor | None = None  # float32 logits at x_adv, when the search ran in fp32


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the model in eval mode (BatchNorm statistics frozen) and restore the caller's mode.

    Every submodule's own flag is restored, so a caller's mixed mode (e.g. a model in
    train mode with frozen BatchNorm layers) survives; ``model.train(flag)`` would not.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


@contextlib.contextmanager
def fast_layout(model: nn.Module, x: torch.Tensor, enabled: bool | None = None
                ) -> Iterator[bool]:
    """Hold a conv net's 4-D weights channels-last while it is attacked, then restore them.

    With oneDNN's channels-last float32 convolutions, an evaluation of the mnist-best model
    (``trades-mnist``) ran 1.40x faster on this project's CPU than in the default layout;
    the width-2 ``small-mnist`` gained nothing (0.94x) (``benchmarks/eval_layout_speed.py``).
    The values agree to float rounding, and every verdict is still a float32 forward pass.
    ``enabled=None`` turns it on for 4-D inputs on the CPU only (unmeasured on GPUs); a
    model whose 4-D weights are not all in the default layout is left as it is. The
    weights keep their identity (``param.data`` changes), so copies that share them, such
    as the smoothed-backward surrogate, follow. Yields whether the layout was switched:
    float rounding differs between layouts, so a random search can take another path on a
    borderline point, and an evaluation records which layout it ran in.
    """
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.dim() == 4]
    if enabled is None:
        enabled = x.dim() == 4 and x.device.type == "cpu"
    if not (enabled and tensors and all(t.is_contiguous() for t in tensors)):
        yield False
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield True
    finally:
        model.to(memory_format=torch.contiguous_format)


def goal_met(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
             ) -> torch.Tensor:
    """Misclassified (untargeted) or classified as the target (targeted); logits [..., classes]."""
    pred = logits.argmax(dim=-1)
    return pred != y if target is None else pred == target


def _autocast(x: torch.Tensor, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, dtype=dtype)


def _reduced(x: torch.Tensor, dtype: torch.dtype | None) -> bool:
    """Whether a search on ``x`` ran in reduced precision: its own or a caller's autocast."""
    return dtype is not None or torch.is_autocast_enabled(x.device.type)


def loss_and_grad(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                  target: torch.Tensor | None = None, *, need_grad: bool = True,
                  autocast: torch.dtype | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-example loss, logits and the input gradient, never touching parameters' ``.grad``."""
    if not need_grad:
        with torch.no_grad(), _autocast(x_adv, autocast):
            logits = model(x_adv)
        return loss_fn(logits, y, target).detach(), logits.float(), None
    with torch.enable_grad():
        x_adv = x_adv.detach().requires_grad_(True)
        with _autocast(x_adv, autocast):
            logits = model(x_adv)
        loss = loss_fn(logits, y, target)
        # the per-example losses' gradient with unit weights: loss.sum()'s, without the sum
        (grad,) = (torch.autograd.grad(loss, x_adv, grad_outputs=torch.ones_like(loss),
                                       allow_unused=True) if loss.requires_grad else (None,))
        if grad is None:
            raise InputError("the model's output does not depend differentiably on its input "
                             "(no_grad, detach or a threshold inside forward): use a "
                             "gradient-free attack such as square")
    # A NaN gradient (a model that is NaN/inf on some inputs) makes NaN iterates; finalize
    # reports those as a model problem rather than scrubbing every gradient in the hot loop.
    return loss.detach(), logits.detach().float(), grad


def _better(loss: torch.Tensor, success: torch.Tensor, best_loss: torch.Tensor,
            best_success: torch.Tensor) -> torch.Tensor:
    """Order points by (goal met, loss): a success beats any failure, then higher loss wins."""
    return (success & ~best_success) | ((success == best_success) & (loss > best_loss))


def _pick_best_restart(loss: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
    """Index over the restart axis (dim 0) of each example's best point by (success, loss)."""
    any_success = success.any(dim=0, keepdim=True)
    ranked = loss.nan_to_num(nan=-3e38)  # a NaN-loss success still beats any failure
    return ranked.masked_fill(any_success & ~success, float("-inf")).argmax(dim=0)


def _buffer_slots(cur: torch.Tensor, steps: int) -> int:
    """How many consecutive iterates of ``cur``'s size fit in :data:`TRACK_BUFFER_BYTES`."""
    per_slot = max(cur.numel() * cur.element_size(), 1)
    return min(steps + 1, TRACK_BUFFER_BYTES // per_slot)


def _first_best(loss: torch.Tensor, success: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each column's best row by (goal met, loss), as a scan over rows in order would pick.

    The scan starts from (no success, loss -inf) and moves only to a strictly better row, so
    ties keep the earlier row, a NaN loss never wins on loss, and a success whose loss is
    NaN is never replaced. Returns the row index per column and the loss the scan holds
    (-inf where no row beat the start). Matches the per-step tracker in :func:`_run_group`
    exactly, so the two paths agree on every input.
    """
    cols = torch.arange(loss.shape[1], device=loss.device)
    ranked = loss.masked_fill(loss.isnan(), float("-inf"))
    top_fail, idx_fail = ranked.max(dim=0)  # first maximum; 0 when every loss is -inf/NaN
    first_hit = success.to(torch.uint8).argmax(dim=0)
    top_hit, idx_hit = ranked.masked_fill(~success, float("-inf")).max(dim=0)
    stuck = (top_hit == float("-inf")) | loss[first_hit, cols].isnan()
    idx_hit = torch.where(stuck, first_hit, idx_hit)
    any_hit = success.any(dim=0)
    idx = torch.where(any_hit, idx_hit, idx_fail)
    held = loss[idx, cols].masked_fill(~any_hit & (top_fail == float("-inf")), float("-inf"))
    return idx, held


def _ascend_tracked(model: nn.Module, cur: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor,
                    t0: torch.Tensor | None, threat: ThreatModel, loss_fn: LossFn,
                    bounds: tuple[torch.Tensor, torch.Tensor] | None, *, steps: int,
                    step_size: float, slots: int, autocast: torch.dtype | None
                    ) -> Perturbation:
    """Ascent keeping each row's best iterate, with the bookkeeping done once per ``slots`` steps.

    On a small model the per-step comparisons and batch-sized selects of the per-step
    tracker are a visible share of an attack (``benchmarks/attack_throughput.py``). Here each
    step writes its iterate straight into the next slot of a buffer and the losses and
    logits are kept; when the slots are full, :func:`_first_best` picks each row's best
    among them and the best so far, in one pass. The choice is the per-step tracker's.
    """
    m = cur.shape[0]
    channels_last = cur.dim() == 4 and not cur.is_contiguous() and cur.is_contiguous(
        memory_format=torch.channels_last)  # keep a channels-last batch channels-last
    buf = torch.empty((slots * m, *cur.shape[1:]), dtype=cur.dtype, device=cur.device,
                      memory_format=torch.channels_last if channels_last
                      else torch.contiguous_format).unflatten(0, (slots, m))
    slot_views = buf.unbind(0)  # one op for all slots, not an indexing op per step
    slot_views[0].copy_(cur)
    best: Perturbation | None = None
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (loss, logits) of buffered iterates
    for t in range(steps + 1):
        xa = slot_views[len(pending)]
        need_grad = t < steps
        loss, logits, grad = loss_and_grad(model, xa, y0, loss_fn, t0, need_grad=need_grad,
                                           autocast=autocast)
        pending.append((loss, logits))
        if len(pending) == slots or not need_grad:
            best = _merge_buffered(best, buf, pending, y0, t0)
            pending = []
        if need_grad:
            threat.step_(xa, x0, grad, step_size, bounds, out=slot_views[len(pending)])
    assert best is not None
    # Logits from a reduced-precision search are not a verdict: finalize recomputes them.
    return best if not _reduced(x0, autocast) else Perturbation(best.x_adv, best.loss,
                                                                 best.success)


def _merge_buffered(best: Perturbation | None, buf: torch.Tensor,
                    pending: list[tuple[torch.Tensor, torch.Tensor]], y: torch.Tensor,
                    target: torch.Tensor | None) -> Perturbation:
    """The best so far after the buffered iterates, which come after ``best`` in time."""
    loss = torch.stack([lo for lo, _ in pending])        # [k, m]
    logits = torch.stack([lg for _, lg in pending])      # [k, m, classes]
    success = goal_met(logits, y, target)
    if best is not None:  # the best so far goes first: it is the earliest candidate
        loss = torch.cat([best.loss[None], loss])
        logits = torch.cat([best.logits[None], logits])
        success = torch.cat([best.success[None], success])
    idx, held = _first_best(loss, success)
    cols = torch.arange(y.shape[0], device=y.device)
    offset = 0 if best is None else 1
    slot = (idx - offset).clamp_(min=0)
    x_new = buf[slot, cols]
    if best is not None:  # rows whose best is still the old point keep it
        x_new = torch.where((idx == 0).view(-1, *([1] * (x_new.dim() - 1))), best.x_adv, x_new)
    return Perturbation(x_new, held, success[idx, cols], logits[idx, cols])


def _run_group(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
               loss_fn: LossFn, target: torch.Tensor | None, *, steps: int,
               step_size: float, restarts: int, random_start: bool, track_best: bool,
               stop_on_success: bool, generator: torch.Generator | None,
               autocast: torch.dtype | None) -> Perturbation:
    """Ascent from ``restarts`` starts per example, run as one stacked batch."""
    n = x.shape[0]
    if restarts == 1:  # no stacked copies of the batch: less memory traffic per step
        x0, y0, t0 = x, y, target
    else:
        x0 = x.repeat(restarts, 1, 1, 1)
        y0 = y.repeat(restarts)
        t0 = target.repeat(restarts) if target is not None else None
    if random_start:
        starts = [threat.random_start(x, generator) for _ in range(restarts)]
        cur = starts[0] if restarts == 1 else torch.cat(starts)
    else:
        cur = x0.clone()
    bounds = threat.bounds(x0)  # per-coordinate box for L-inf: one clamp per step
    if not (track_best or stop_on_success):
        for _ in range(steps):
            _, _, grad = loss_and_grad(model, cur, y0, loss_fn, t0, autocast=autocast)
            cur = threat.step_(cur, x0, grad, step_size, bounds)
        return Perturbation(cur, None, None)
    slots = _buffer_slots(cur, steps)
    if not stop_on_success and slots >= min(3, steps + 1):
        return _ascend_tracked(model, cur, x0, y0, t0, threat, loss_fn, bounds, steps=steps,
                               step_size=step_size, slots=slots, autocast=autocast)
    # Per-step tracking: for stop_on_success (rows drop out as they break) and for batches
    # too big to buffer a few iterates of.
    best_x = cur.clone()
    best_logits: torch.Tensor | None = None
    best_loss = torch.full((n * restarts,), float("-inf"), device=x.device)
    best_success = torch.zeros(n * restarts, dtype=torch.bool, device=x.device)
    rows: torch.Tensor | None = None  # active rows; None means all
    for t in range(steps + 1):
        xa = cur if rows is None else cur[rows]
        ya = y0 if rows is None else y0[rows]
        ta = None if t0 is None else (t0 if rows is None else t0[rows])
        need_grad = t < steps
        loss, logits, grad = loss_and_grad(model, xa, ya, loss_fn, ta, need_grad=need_grad,
                                           autocast=autocast)
        success = goal_met(logits, ya, ta)
        if best_logits is None:  # t = 0, all rows: the start points are the first candidates
            best_logits = logits.clone()
        if rows is None:
            better = _better(loss, success, best_loss, best_success)
            # in place: no new batch-sized buffer per step
            torch.where(better.view(-1, 1, 1, 1), xa, best_x, out=best_x)
            torch.where(better.view(-1, 1), logits, best_logits, out=best_logits)
            torch.where(better, loss, best_loss, out=best_loss)
            best_success |= success
        else:
            better = _better(loss, success, best_loss[rows], best_success[rows])
            upd = rows[better]
            best_x[upd] = xa[better]
            best_logits[upd] = logits[better]
            best_loss[upd] = loss[better]
            best_success[rows] = best_success[rows] | success
        if not need_grad:
            break
        # cur (or its gathered rows) is ours, and best_x holds copies: step in place
        if rows is None:
            x_rows, b_rows = x0, bounds
        elif bounds is None:
            x_rows, b_rows = x0[rows], None
        else:  # the bounds alone define the step: no need to gather x0 too
            x_rows, b_rows = None, (bounds[0][rows], bounds[1][rows])
        stepped = threat.step_(xa, x_rows, grad, step_size, b_rows)
        if rows is None:
            cur = stepped
        else:
            cur[rows] = stepped
        if stop_on_success:
            broken = best_success.view(restarts, n).any(dim=0).repeat(restarts)
            if broken.any():
                keep = ~broken if rows is None else ~broken[rows]
                rows = (torch.arange(n * restarts, device=x.device) if rows is None else rows)[keep]
                if rows.numel() == 0:
                    break
    # Logits from a reduced-precision search are not a verdict: finalize recomputes them.
    return Perturbation(best_x, best_loss, best_success,
                        None if _reduced(x, autocast) else best_logits)


def perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
            loss_fn: LossFn, target: torch.Tensor | None = None, *, steps: int,
            step_size: float, restarts: int = 1, random_start: bool = True,
            track_best: bool = True, stop_on_success: bool = False,
            generator: torch.Generator | None = None, autocast: torch.dtype | None = None,
            max_batch: int | None = None) -> Perturbation:
    """Projected steepest ascent on ``loss_fn`` within ``threat``; the shared attack engine.

    Restarts are stacked into one batch of ``restarts * N`` rows (split into groups of
    at most ``max_batch`` rows to bound memory) and each example keeps its best point by
    (goal met, loss). With ``track_best`` every iterate is a candidate, not only the last;
    without it (the cheap training path) the final iterate is returned untracked. With
    ``stop_on_success`` an example that any restart has broken stops consuming passes.
    Assumes the model is already in the mode the caller wants (see :func:`eval_mode`).
    """
    if steps < 0 or restarts < 1:
        raise InputError(f"need steps >= 0 and restarts >= 1, got steps={steps}, "
                         f"restarts={restarts}")
    track_best = track_best or restarts > 1  # choosing among restarts needs the scores
    x = x.detach()  # a caller's x may require grad: no graph through the iterates
    n = x.shape[0]
    if max_batch is not None and n > max_batch:  # bound memory: attack the batch in slices
        parts = [perturb(model, x[i:i + max_batch], y[i:i + max_batch], threat, loss_fn,
                         None if target is None else target[i:i + max_batch], steps=steps,
                         step_size=step_size, restarts=restarts, random_start=random_start,
                         track_best=track_best, stop_on_success=stop_on_success,
                         generator=generator, autocast=autocast, max_batch=max_batch)
                 for i in range(0, n, max_batch)]
        cat = (lambda ts: None if any(t is None for t in ts) else torch.cat(ts))  # noqa: E731
        return Perturbation(torch.cat([p.x_adv for p in parts]),
                            cat([p.loss for p in parts]), cat([p.success for p in parts]),
                            cat([p.logits for p in parts]))
    per_group = restarts if max_batch is None else max(1, min(restarts, max_batch // max(n, 1)))
    picked: list[Perturbation] = []
    done = 0
    while done < restarts:
        r = min(per_group, restarts - done)
        picked.append(_run_group(model, x, y, threat, loss_fn, target, steps=steps,
                                 step_size=step_size, restarts=r, random_start=random_start,
                                 track_best=track_best, stop_on_success=stop_on_success,
                                 generator=generator, autocast=autocast))
        done += r
    if len(picked) == 1 and restarts == 1:  # one start: its tracked best is the answer
        return picked[0]
    xs = torch.cat([p.x_adv.view(-1, n, *x.shape[1:]) for p in picked])
    if picked[0].loss is None:
        return Perturbation(xs[0], None, None)
    losses = torch.cat([p.loss.view(-1, n) for p in picked])
    successes = torch.cat([p.success.view(-1, n) for p in picked])
    idx = _pick_best_restart(losses, successes)
    cols = torch.arange(n, device=x.device)
    logits = None
    if all(p.logits is not None for p in picked):
        logits = torch.cat([p.logits.view(-1, n, p.logits.shape[-1]) for p in picked])[idx, cols]
    return Perturbation(xs[idx, cols], losses[idx, cols], successes[idx, cols], logits)


def finalize(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
             threat: ThreatModel, loss_fn: LossFn, target: torch.Tensor | None = None,
             logits: torch.Tensor | None = None) -> AttackResult:
    """Re-project, verify membership, and score the points with a float32 forward pass.

    ``logits`` may carry the float32 logits the search computed at exactly these points;
    they are reused only if re-projection leaves every point bit-identical, otherwise (and
    whenever they are not given) the model is run again.
    """
    x = x.detach()  # the returned points carry no graph back to the caller's x
    searched = x_adv.detach().to(x.dtype)
    x_adv = threat.project(searched, x)
    inside = threat.contains(x_adv, x)  # False for non-finite points too
    if not bool(inside.all()):
        finite = torch.isfinite(x_adv.flatten(1)).all(dim=1)
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0])
            raise InputError(f"the model gave NaN or inf gradients or outputs near example "
                             f"{bad}, so the attack could not proceed: check the model for "
                             "non-finite values")
        bad = int((~inside).nonzero()[0])
        raise RuntimeError(
            f"internal error: attack returned example {bad} outside the {threat.norm} ball "
            f"(distance {float(threat.distance(x_adv[bad:bad + 1], x[bad:bad + 1])[0]):.3g} "
            f"> eps {threat.eps:g}); please report this bug"
        )
    if logits is None or logits.dtype != torch.float32 or not torch.equal(x_adv, searched):
        # autocast off: the verdict stays full precision inside a caller's autocast too
        with torch.no_grad(), torch.autocast(x_adv.device.type, enabled=False):
            logits = model(x_adv)
    logits = check_logits(logits, x.shape[0], "at the adversarial points").float()
    loss = loss_fn(logits, y, target)
    return AttackResult(x_adv=x_adv, loss=loss, correct=logits.argmax(1) == y,
                        success=goal_met(logits, y, target), logits=logits)


def prepare(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
            target: torch.Tensor | None = None) -> None:
    """Validate an attack's inputs cheaply (one forward on a single example)."""
    check_images(x)
    check_labels(y, x.shape[0])
    with torch.no_grad():
        k = forward_checked(model, x[:1]).shape[1]
    check_labels(y, x.shape[0], k)
    if target is not None:
        check_labels(target, x.shape[0], k, name="target labels")


def default_chunk(x: torch.Tensor) -> int:
    """Rows per chunk of a stacked search (APGD's targets x restarts x examples).

    On a CPU the per-step elementwise work (steps, projections, best-point updates) runs
    from cache only if a chunk's images stay near 4 MB: 1,337-row MNIST chunks ran
    APGD-T 1.3x faster than one 2,250-row chunk (``benchmarks/apgd_chunk.py``,
    ``results/apgd_chunk.txt``). Accelerators prefer big chunks.
    """
    if x.device.type != "cpu":
        return 8192
    return max(64, min(8192, (1 << 20) // max(x[0].numel(), 1)))


def default_step_size(threat: ThreatModel, steps: int) -> float:
    """2.5 * eps / steps: lets an iterate cross the ball and back (Madry et al.)."""
    return 2.5 * threat.eps / max(steps, 1)
