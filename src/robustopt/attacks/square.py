"""Square attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): black-box random search.

A score-based attack: it only reads the model's logits, never a gradient, so it sees
through gradient masking (quantised inputs, saturated softmax, non-differentiable
pre-processing) that fools first-order attacks. Each iteration proposes one random
square patch per example and keeps it only if the objective improves.

- L-inf: start from vertical stripes (every column of every channel at +-eps), then set
  a random s x s window, per channel, to a random +-eps.
- L2: start from a grid of "meta-squares" (two opposite-signed 1/r^2-like bumps per
  block), then move mass between two random windows while keeping ``||delta||_2 = eps``.

The square side follows the published schedule of ``p``, the fraction of pixels changed:
``p_init`` halves after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a
10,000-query run, rescaled to the budget at hand. Only examples whose goal is not yet met
are queried (with ``stop_on_success``), and every query is counted.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, fields

import torch
from torch import nn

from ..errors import InputError
from ..losses import LossFn, get_loss
from ..threat import L2Ball, LinfBall, ThreatModel
from .core import AttackResult, _autocast, eval_mode, finalize, goal_met, prepare

P_INIT = 0.8  # AutoAttack's value for both L-inf and L2 (autoattack/autoattack.py)
_HALVE_AFTER = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # of a 10,000-query run
_REFERENCE_BUDGET = 10000


@dataclass
class SquareResult(AttackResult):
    """An :class:`AttackResult` with the query accounting of a black-box attack."""

    queries: torch.Tensor    # [N] int64: model queries spent on each example (clean check incl.)
    passes: int              # forward calls the search made (batches, after max_batch splits)
    broken_at: torch.Tensor  # [N] int64: the example's query at which its goal was first met;
                             # 1 = already met at the clean point, -1 = never met


def p_schedule(p_init: float, it: int, n_iters: int, rescale: bool = True) -> float:
    """Fraction of pixels changed at iteration ``it`` of ``n_iters`` (piece-wise constant).

    With ``rescale`` the iteration is mapped onto the reference 10,000-query run first, as
    in the paper's code; AutoAttack's ``standard`` version runs 5000 queries without it.
    """
    if rescale and n_iters > 0:
        it = int(it / n_iters * _REFERENCE_BUDGET)
    return p_init / 2 ** sum(it > t for t in _HALVE_AFTER)


def square_side(p: float, h: int, w: int, norm: str) -> int:
    """Side of the square for fraction ``p`` of the ``h x w`` pixels of each channel.

    L-inf: at least 1. L2: at least 3 and odd, so that the meta-square has a centre.
    Never more than the shorter image side.
    """
    s = int(round(math.sqrt(p * h * w)))
    if norm == "l2":
        s = max(s, 3)
        s += 1 - s % 2
    return max(1, min(s, h, w))


# ----------------------------------------------------------------------------- randomness


def _gen_device(like: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else like.device


def _randint(high: int, size: tuple[int, ...], like: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
    """Integers uniform in ``[0, high)`` on ``like``'s device, drawn on the generator's."""
    out = torch.randint(0, high, size, generator=generator,
                        device=_gen_device(like, generator))
    return out.to(like.device)


def _signs(size: tuple[int, ...], like: torch.Tensor,
           generator: torch.Generator | None) -> torch.Tensor:
    """Uniform +-1 in ``like``'s dtype."""
    return (_randint(2, size, like, generator) * 2 - 1).to(like.dtype)


def _nonzero_bits(rows: int, cols: int, like: torch.Tensor,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Uniform random bool masks of shape [rows, cols] with at least one bit set per row."""
    bits = _randint(2, (rows, cols), like, generator).bool()
    while True:
        empty = ~bits.any(dim=1)
        if not bool(empty.any()):
            return bits
        bits[empty] = _randint(2, (int(empty.sum()), cols), like, generator).bool()


def _tiny(dtype: torch.dtype) -> float:
    return max(1e-12, float(torch.finfo(dtype).tiny))


# ----------------------------------------------------------------------------- windows


def _positions(m: int, s: int, h: int, w: int, like: torch.Tensor,
               generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corner of one s x s window per example, uniform over all valid positions."""
    return (_randint(h - s + 1, (m,), like, generator),
            _randint(w - s + 1, (m,), like, generator))


def _window_mask(top: torch.Tensor, left: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    """Bool mask [m, 1, h, w] of each example's window."""
    rows = torch.arange(h, device=top.device)
    cols = torch.arange(w, device=top.device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + s)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + s)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def _window_flat(top: torch.Tensor, left: torch.Tensor, s: int, c: int, h: int, w: int
                 ) -> torch.Tensor:
    """Flat (row-major) indices [m, c, s, s] of each example's window, for ``take``/``put_``."""
    m = top.shape[0]
    offs = torch.arange(s, device=top.device)
    base = torch.arange(m * c, device=top.device).view(m, c, 1, 1) * (h * w)
    rows = (top[:, None] + offs).view(m, 1, s, 1) * w
    cols = (left[:, None] + offs).view(m, 1, 1, s)
    return base + rows + cols


def _window_index(top: torch.Tensor, left: torch.Tensor, s: int, c: int
                  ) -> tuple[torch.Tensor, ...]:
    """Advanced index selecting each example's window as a [m, c, s, s] block."""
    m = top.shape[0]
    offs = torch.arange(s, device=top.device)
    batch = torch.arange(m, device=top.device)[:, None, None, None]
    chan = torch.arange(c, device=top.device)[None, :, None, None]
    rows = (top[:, None] + offs)[:, None, :, None]
    cols = (left[:, None] + offs)[:, None, None, :]
    return batch, chan, rows, cols


# ----------------------------------------------------------------------------- L2 shapes


def _bump(a: int, b: int, like: torch.Tensor) -> torch.Tensor:
    """Unit-norm a x b rectangle of nested rings around its centre, ring k weighing 1/(k+1)^2.

    Pixel (i, j) at Chebyshev distance d from ``(a // 2, b // 2)`` gets
    ``sum_{k=d}^{K-1} 1/(k+1)^2`` with ``K = max(a // 2, b // 2) + 1``.
    """
    out = torch.zeros(a, b, dtype=torch.float64, device=like.device)
    if a == 0 or b == 0:
        return out.to(like.dtype)
    k = max(a // 2, b // 2) + 1
    weights = 1.0 / torch.arange(1, k + 1, dtype=torch.float64, device=like.device) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[d] = sum_{k >= d} weights[k]
    di = (torch.arange(a, device=like.device) - a // 2).abs()
    dj = (torch.arange(b, device=like.device) - b // 2).abs()
    out = tail[torch.maximum(di[:, None], dj[None, :])]
    return (out / out.norm()).to(like.dtype)


def _meta_square(s: int, like: torch.Tensor) -> torch.Tensor:
    """Unit-norm s x s meta-square: a bump on the top half, a negated bump on the bottom."""
    shape = torch.cat([_bump(s // 2, s, like), -_bump(s - s // 2, s, like)])
    return shape / shape.norm().clamp_min(_tiny(like.dtype))


def _meta_squares(m: int, s: int, like: torch.Tensor,
                  generator: torch.Generator | None) -> torch.Tensor:
    """[m, s, s]: the meta-square, transposed for a random half of the examples."""
    shape = _meta_square(s, like)
    both = torch.stack([shape, shape.T])
    return both[_randint(2, (m,), like, generator)]


# ----------------------------------------------------------------------------- L-inf / L2


def _linf_init(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """Vertical stripes: each column of each channel moved by a random +-eps."""
    n, c, _, w = x.shape
    return (x + eps * _signs((n, c, 1, w), x, generator)).clamp(0.0, 1.0)


def _linf_propose(x: torch.Tensor, cur: torch.Tensor, eps: float, s: int,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Set one random s x s window per example, per channel, to a random +-eps.

    A proposal that would not change the current point (the window already holds those
    signs) is redrawn among the other sign patterns, as the reference code's retry loop.
    Only the windows are computed and compared (the rest of the proposal is a copy of
    ``cur``): late in a run a window is a few pixels, and full-image arithmetic per
    iteration would cost more than the model's forward pass on a small network.
    """
    m, c, h, w = x.shape
    top, left = _positions(m, s, h, w, x, generator)
    flat = _window_flat(top, left, s, c, h, w)
    sign = _signs((m, c, 1, 1), x, generator)
    x_win = x.take(flat)
    new = (x_win + eps * sign).clamp_(0.0, 1.0)
    same = (new == cur.take(flat)).flatten(1).all(dim=1)
    if bool(same.any()):
        rows = same.nonzero().squeeze(1)
        flip = _nonzero_bits(rows.numel(), c, x, generator)[:, :, None, None]
        sign_r = torch.where(flip, -sign[rows], sign[rows])
        new[rows] = (x_win[rows] + eps * sign_r).clamp_(0.0, 1.0)
    cand = cur.clone()  # take/put_ index logically: any memory layout works
    cand.put_(flat, new)
    return cand


def _l2_init_delta(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Unscaled L2 start: a centred grid of meta-squares of side ``min(h, w) // 5``.

    Each block gets a random orientation and, per channel, a random sign.
    """
    n, c, h, w = x.shape
    s = max(min(h, w) // 5, 1)
    nh, nw = h // s, w // s
    oh, ow = (h - nh * s) // 2, (w - nw * s) // 2
    shapes = _meta_squares(n * nh * nw, s, x, generator).view(n, 1, nh, nw, s, s)
    signs = _signs((n, c, nh, nw, 1, 1), x, generator)
    blocks = (shapes * signs).permute(0, 1, 2, 4, 3, 5).reshape(n, c, nh * s, nw * s)
    delta = torch.zeros_like(x)
    delta[:, :, oh:oh + nh * s, ow:ow + nw * s] = blocks
    return delta


def _scale_to(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """``x + delta`` with ``delta`` rescaled to L2 norm ``eps``, clipped to the box.

    The radius is shrunk by a few rounding errors of the norm (relative ``4 e sqrt(d)``, e
    the machine epsilon: 2e-4 for float32 at d = 3x224x224), so that rounding never puts a
    point outside the ball: the threat set's membership test has an absolute tolerance of
    1e-6, which float32 norms of large images (eps >= 5 at 3x224x224) would otherwise exceed.
    """
    d = x[0].numel()
    radius = eps * (1.0 - 4.0 * float(torch.finfo(x.dtype).eps) * math.sqrt(d))
    norm = delta.flatten(1).norm(dim=1).clamp_min(_tiny(x.dtype))
    return (x + delta * (max(radius, 0.0) / norm).view(-1, 1, 1, 1)).clamp(0.0, 1.0)


def _l2_init(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    return _scale_to(x, _l2_init_delta(x, generator), eps)


def _l2_propose(x: torch.Tensor, cur: torch.Tensor, eps: float, s: int,
                generator: torch.Generator | None) -> torch.Tensor:
    """Move mass between two random s x s windows, keeping ``||delta||_2 = eps``.

    Window 2 is emptied; window 1 gets, per channel, a fresh meta-square with a random sign
    added to its normalised old content, scaled so that it holds the mass of both windows
    plus any unused budget. The result is rescaled to norm eps and clipped to the box.
    """
    m, c, h, w = x.shape
    tiny = _tiny(x.dtype)
    delta = cur - x
    top1, left1 = _positions(m, s, h, w, x, generator)
    top2, left2 = _positions(m, s, h, w, x, generator)
    idx1 = _window_index(top1, left1, s, c)
    mask1 = _window_mask(top1, left1, s, h, w)
    mask2 = _window_mask(top2, left2, s, h, w)

    old = delta[idx1]                                                    # [m, c, s, s]
    old_norm = old.square().sum(dim=(2, 3), keepdim=True).sqrt()         # [m, c, 1, 1]
    image_sq = delta.square().flatten(1).sum(dim=1).view(m, 1, 1, 1)
    union_sq = (delta * (mask1 | mask2)).square().sum(dim=(2, 3), keepdim=True)
    budget = ((eps ** 2 - image_sq).clamp_min(0.0) / c + union_sq).sqrt()

    new = _meta_squares(m, s, x, generator)[:, None] * _signs((m, c, 1, 1), x, generator)
    new = new + old / (old_norm + tiny)
    new = new / (new.square().sum(dim=(2, 3), keepdim=True).sqrt() + tiny) * budget

    delta = delta.masked_fill(mask2, 0.0)
    delta[idx1] = new
    return _scale_to(x, delta, eps)


_METHODS = {"linf": (_linf_init, _linf_propose), "l2": (_l2_init, _l2_propose)}


# ----------------------------------------------------------------------------- search


class _Oracle:
    """The model as a black box: per-example objective and verdict, passes counted.

    With ``autocast`` the queries run in that reduced precision, and every row it calls a
    success (or gives a non-finite logit) is re-queried in the model's own precision, with
    autocast off, before it counts: an example is never dropped from the search, nor
    stalled at a loss of -inf, on a verdict that full precision would overturn.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, max_batch: int,
                 autocast: torch.dtype | None = None) -> None:
        self.model, self.loss_fn, self.max_batch = model, loss_fn, max_batch
        self.autocast = autocast
        self.passes = 0

    def _logits(self, xs: torch.Tensor, confirm: bool = False) -> torch.Tensor:
        outs = []
        precision = (torch.autocast(xs.device.type, enabled=False) if confirm
                     else _autocast(xs, self.autocast))
        with precision:
            for chunk in xs.split(self.max_batch):
                outs.append(self.model(chunk))
                self.passes += 1
        return (outs[0] if len(outs) == 1 else torch.cat(outs)).float()

    def __call__(self, xs: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self._logits(xs)
        if self.autocast is not None:
            doubtful = goal_met(logits, y, target) | ~torch.isfinite(logits).all(dim=1)
            rows = doubtful.nonzero().squeeze(1)
            if rows.numel():
                logits = logits.clone()
                logits[rows] = self._logits(xs[rows], confirm=True)
        ok = torch.isfinite(logits).all(dim=1)  # a NaN logit must not count as a success
        loss = self.loss_fn(logits, y, target).float()
        loss = torch.where(ok & ~loss.isnan(), loss, torch.full_like(loss, float("-inf")))
        return loss, goal_met(logits, y, target) & ok


def _better(loss: torch.Tensor, success: torch.Tensor, best_loss: torch.Tensor,
            best_success: torch.Tensor) -> torch.Tensor:
    """Order points by (goal met, loss): a success beats a failure, then strictly higher loss."""
    return (success & ~best_success) | ((success == best_success) & (loss > best_loss))


class _Ledger:
    """Per-example query counts and the query at which each example first met its goal.

    Settled in bulk (when an example leaves a run, and at its end), not per iteration: all
    examples active in a run have spent the same number of its queries.
    """

    def __init__(self, n: int, device: torch.device) -> None:
        self.queries = torch.zeros(n, dtype=torch.int64, device=device)
        self.broken_at = torch.full((n,), -1, dtype=torch.int64, device=device)

    def settle(self, rows: torch.Tensor, spent: int, first: torch.Tensor) -> None:
        """``rows`` spent ``spent`` more queries; ``first`` is the 1-based query among them
        at which each first met its goal (-1: not met)."""
        before = self.queries[rows]
        self.queries[rows] = before + spent
        known = self.broken_at[rows]
        self.broken_at[rows] = torch.where((first >= 0) & (known < 0), before + first, known)


def _one_run(oracle: _Oracle, ledger: _Ledger, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None, rows: torch.Tensor, norm: str, eps: float,
             n_search: int, p_init: float, rescale: bool, stop_on_success: bool,
             generator: torch.Generator | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One random-search run on ``rows``: the init query plus ``n_search - 1`` iterations.

    The still-active examples' state is kept compacted (``a_*``) and only re-gathered
    when an example meets its goal: thousands of iterations on a robust model then copy
    no batch-sized tensor beyond the proposal itself.
    """
    init, propose = _METHODS[norm]
    xs, ys = x[rows], y[rows]
    ts = None if target is None else target[rows]
    _, _, h, w = x.shape
    cur = init(xs, eps, generator)
    loss, success = oracle(cur, ys, ts)
    first = torch.where(success, 1, -1)  # run-local query of the first success
    if stop_on_success:
        act = (~success).nonzero().squeeze(1)
        ledger.settle(rows[success], 1, first[success])
    else:
        act = torch.arange(rows.numel(), device=x.device)
    a_x, a_cur, a_y, a_rows = xs[act], cur[act], ys[act], rows[act]
    a_t = None if ts is None else ts[act]
    a_loss, a_success, a_first = loss[act], success[act], first[act]
    spent = 1
    for it in range(n_search - 1):
        if act.numel() == 0:
            break
        s = square_side(p_schedule(p_init, it, n_search, rescale), h, w, norm)
        cand = propose(a_x, a_cur, eps, s, generator)
        new_loss, new_success = oracle(cand, a_y, a_t)
        spent += 1
        better = _better(new_loss, new_success, a_loss, a_success)
        torch.where(better.view(-1, *([1] * (cand.dim() - 1))), cand, a_cur, out=a_cur)
        a_loss = torch.where(better, new_loss, a_loss)
        a_success = a_success | (better & new_success)
        if stop_on_success:
            if bool(a_success.any()):  # write back, settle and drop the broken
                cur[act], loss[act], success[act] = a_cur, a_loss, a_success
                keep = ~a_success
                done = a_rows[a_success]
                ledger.settle(done, spent, torch.full_like(done, spent))
                act, a_x, a_cur, a_y, a_rows = act[keep], a_x[keep], a_cur[keep], \
                    a_y[keep], a_rows[keep]
                a_t = None if a_t is None else a_t[keep]
                a_loss, a_success, a_first = a_loss[keep], a_success[keep], a_first[keep]
        else:
            a_first = torch.where(new_success & (a_first < 0), spent, a_first)
    cur[act], loss[act], success[act] = a_cur, a_loss, a_success
    ledger.settle(a_rows, spent, a_first)
    return cur, loss, success


def _count(name: str, value: object) -> int:
    """A setting that must be an integer >= 1 (Python or NumPy integer, not a bool)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = 0
    if number < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    return number


def _fraction(p_init: object) -> float:
    if p_init is None:
        return P_INIT
    try:
        value = float(p_init)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value <= 1.0:
        raise InputError(f"p_init is a fraction of pixels in (0, 1], got {p_init!r}")
    return value


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
           queries: int = 5000, p_init: float | None = None, restarts: int = 1,
           loss: str | LossFn = "margin", target: torch.Tensor | None = None,
           stop_on_success: bool = True, generator: torch.Generator | None = None,
           max_batch: int = 8192, rescale_schedule: bool = True,
           autocast: torch.dtype | None = None) -> SquareResult:
    """Square attack: score-based random search over square patches, with no gradients.

    ``threat`` is a :class:`LinfBall` or an :class:`L2Ball`. ``queries`` is the query budget
    per example and restart: the first query of each example checks the clean point, and
    each restart then spends at most ``queries - 1`` (its random start plus the iterations),
    so an example never uses more than ``1 + restarts * (queries - 1)`` queries. With
    ``stop_on_success`` an example is no longer queried once its goal is met (clean points
    already misclassified use one query), and restarts run only on unbroken examples.

    ``p_init`` (default 0.8, AutoAttack's value for both norms; the paper used 0.05 for
    L-inf and 0.1 for L2 on undefended models) is the initial fraction of pixels per square;
    it halves on the published schedule, rescaled to the budget (``rescale_schedule``).
    ``loss`` (maximised; ``"margin"`` by default) decides acceptance, after the goal: a
    proposal is kept if it meets the goal first, or else strictly raises the loss. Give
    ``target`` for a targeted attack. The clean point is a candidate too, so the returned
    point is never worse than it by (goal met, loss). The model only runs under
    ``torch.no_grad``; ``max_batch`` bounds the rows of one forward pass and draws nothing,
    so it changes no random choice.

    ``autocast=torch.bfloat16`` runs the queries in bfloat16. A success only counts once a
    full-precision query (autocast off) confirms it; those confirmations add to ``passes``,
    not to ``queries``. The returned verdicts are float32, so it cannot overstate the
    attack; but proposals are accepted on the bfloat16 loss, and that **weakens the
    search**. Measured (``benchmarks/square_precision.py``,
    ``results/square_precision_mnist-best-seed2.txt``: 300 points the mnist-best headline
    left standing, Square-10000, two seeds, 2-core AVX-512-BF16 CPU): bfloat16 ran 2.49x the
    queries per second but left the returned points' float32 margin loss 0.107 lower than
    float32 did with the same seed (95% interval 0.088-0.127; between two float32 seeds the
    mean difference was +0.005, interval -0.016..+0.028), and broke 3 and 3 of the 10 points
    that float32 broke 7 and 6 of. A likely cause: bfloat16 cannot resolve the small loss
    changes of the late, few-pixel proposals. The evaluator's suites therefore run Square
    in float32; use this only for a quick search whose strength does not matter.
    """
    if not isinstance(threat, (LinfBall, L2Ball)):
        raise InputError(f"the Square attack supports LinfBall and L2Ball, got "
                         f"{type(threat).__name__}")
    if autocast not in (None, torch.bfloat16):
        raise InputError(f"autocast is torch.bfloat16 or None, got {autocast!r}")
    queries = _count("queries", queries)
    restarts = _count("restarts", restarts)
    max_batch = _count("max_batch", max_batch)
    p_init = _fraction(p_init)
    loss_fn = get_loss(loss)
    n = x.shape[0]
    with eval_mode(model), torch.no_grad():
        prepare(model, x, y, target)  # in eval mode: the check must not move BatchNorm stats
        oracle = _Oracle(model, loss_fn, max_batch, autocast)
        ledger = _Ledger(n, x.device)
        everyone = torch.arange(n, device=x.device)
        best_loss, best_success = oracle(x, y, target)
        ledger.settle(everyone, 1, torch.where(best_success, 1, -1))
        best_x = x.clone()
        n_search = queries - 1 if threat.eps > 0 else 0  # eps = 0: the set is {x}
        for _ in range(restarts if n_search > 0 else 0):
            rows = (~best_success).nonzero().squeeze(1) if stop_on_success else everyone
            if rows.numel() == 0:
                break
            cur, loss_r, success_r = _one_run(
                oracle, ledger, x, y, target, rows, threat.norm, threat.eps, n_search,
                p_init, rescale_schedule, stop_on_success, generator)
            better = _better(loss_r, success_r, best_loss[rows], best_success[rows])
            upd = rows[better]
            best_x[upd] = cur[better]
            best_loss[upd] = loss_r[better]
            best_success[upd] = success_r[better]
        result = finalize(model, x, y, best_x, threat, loss_fn, target)
    values = {f.name: getattr(result, f.name) for f in fields(AttackResult)}
    return SquareResult(**values, queries=ledger.queries, passes=oracle.passes,
                        broken_at=ledger.broken_at)
