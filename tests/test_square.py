"""The Square attack: a black-box random search that must break real models without gradients.

A small CNN is trained for a few seconds on 1000 real MNIST images (../shared/data);
the attack must break it, also behind a gradient-masking input quantisation, while the
model never computes a gradient. Tiny random models cover shapes, norms and budgets.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from robustopt.attacks.apgd import apgd
from robustopt.attacks.fgsm import fgsm
from robustopt.attacks.pgd import pgd
from robustopt.attacks.square import (
    SquareResult,
    _l2_init,
    _l2_init_delta,
    _l2_propose,
    _linf_init,
    _linf_propose,
    _meta_square,
    p_schedule,
    square,
    square_side,
)
from robustopt.errors import InputError
from robustopt.losses import margin
from robustopt.models import build_model
from robustopt.threat import L2Ball, LinfBall

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Guarded(nn.Module):
    """Wraps a copy of a model: fails on any gradient, counts forward calls and rows."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(net)  # the hook must not leak into the shared model
        self.calls = 0
        self.rows = 0
        self.net.register_full_backward_hook(self._no_backward)

    @staticmethod
    def _no_backward(*args):
        raise AssertionError("the Square attack must never run a backward pass")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled(), "model called with gradients enabled"
        assert not x.requires_grad
        self.calls += 1
        self.rows += x.shape[0]
        return self.net(x)


class Quantise(nn.Module):
    """Input quantisation to 9 levels: piecewise constant, so its input gradient is zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 8) / 8


@pytest.fixture(scope="session")
def mnist(tmp_path_factory):
    """A standard (non-robust) small-mnist model and 100 MNIST test images."""
    from robustopt.data import load_dataset

    mp = pytest.MonkeyPatch()
    mp.setenv("ROBUSTOPT_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("ROBUSTOPT_OFFLINE", "1")
    try:
        train = load_dataset("mnist", "train", data_dir=SHARED_DATA, download=False)
        test = load_dataset("mnist", "test", data_dir=SHARED_DATA, download=False)
        x, y = train.tensors(n=1000)
        xt, yt = test.tensors(n=100)
    finally:
        mp.undo()
    torch.manual_seed(0)
    model = build_model("small-mnist", mean=(0.1307,), std=(0.3081,))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = gen(0)
    for _ in range(4):
        perm = torch.randperm(1000, generator=g)
        for i in range(0, 1000, 100):
            b = perm[i:i + 100]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    with torch.no_grad():
        clean = model(xt).argmax(1) == yt
    assert clean.float().mean() >= 0.85, "the test model did not train"
    return model, xt, yt, clean


def tiny_model(c: int, h: int, w: int, k: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 16), nn.Tanh(),
                         nn.Linear(16, k)).eval()


# ------------------------------------------------------------------ breaking real models


def test_linf_breaks_standard_mnist_model_without_any_gradient(mnist):
    model, x, y, clean = mnist
    guarded = Guarded(model).train()  # the attack must use, then restore, eval
    before = {k: v.clone() for k, v in guarded.state_dict().items()}
    res = square(guarded, x, y, LinfBall(0.3), queries=1000, generator=gen(1))

    assert isinstance(res, SquareResult)
    broken = res.success[clean].float().mean().item()
    assert broken >= 0.9, f"only {broken:.0%} of correctly classified points broken"
    assert guarded.training
    assert all(torch.equal(v, guarded.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in guarded.parameters())
    # query accounting: every row the model saw, bar prepare's 1 and finalize's N, is counted
    assert res.queries.max() <= 1000 and res.queries.min() >= 1
    assert guarded.calls == res.passes + 2
    assert guarded.rows == int(res.queries.sum()) + 1 + x.shape[0]
    # an example stops being queried at the query that broke it
    hit = res.broken_at > 0
    assert torch.equal(res.queries[hit], res.broken_at[hit])
    assert torch.equal(hit, res.success)
    assert torch.equal(res.broken_at[~clean], torch.ones_like(res.broken_at[~clean]))
    assert bool((res.x_adv - x).abs().amax() <= 0.3 + 1e-6)


def test_gradient_masking_quantisation_does_not_stop_square(mnist):
    model, x, y, _ = mnist
    masked = nn.Sequential(Quantise(), model).eval()
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(masked(xg), y), xg)
    assert torch.count_nonzero(grad) == 0  # no gradient signal at all
    with torch.no_grad():
        clean = masked(x).argmax(1) == y
    white_box = pgd(masked, x, y, LinfBall(0.3), steps=10, generator=gen(0))
    assert white_box.accuracy >= clean.float().mean().item() - 0.1  # PGD is fooled

    res = square(Guarded(masked), x, y, LinfBall(0.3), queries=1000, generator=gen(2))
    broken = res.success[clean].float().mean().item()
    assert broken >= 0.9, f"only {broken:.0%} broken behind the quantisation"


def test_the_random_search_not_the_start_does_the_work(mnist):
    model, x, y, clean = mnist
    x, y, clean = x[:30], y[:30], clean[:30]
    start_only = square(model, x, y, LinfBall(0.2), queries=2, generator=gen(5))
    searched = square(model, x, y, LinfBall(0.2), queries=300, generator=gen(5))
    assert start_only.success[clean].float().mean().item() <= 0.2
    assert searched.success[clean].float().mean().item() >= 0.8


def test_l2_square_breaks_most_points(mnist):
    model, x, y, clean = mnist
    x, y, clean = x[:40], y[:40], clean[:40]
    res = square(Guarded(model), x, y, L2Ball(3.0), queries=200, generator=gen(3))
    assert res.success[clean].float().mean().item() >= 0.5
    assert bool(L2Ball(3.0).distance(res.x_adv, x).max() <= 3.0 + 1e-5)


def test_targeted_square_reaches_the_target(mnist):
    model, x, y, _ = mnist
    x, y = x[:32], y[:32]
    target = (y + 1) % 10
    res = square(Guarded(model), x, y, LinfBall(0.3), queries=300, target=target,
                 generator=gen(4))
    assert res.success.float().mean().item() >= 0.6
    assert torch.equal(res.success, res.logits.argmax(1) == target)
    assert torch.allclose(res.loss, margin(res.logits, y, target))


# ------------------------------------------------------------------ contract


def test_eps_zero_gives_clean_accuracy_exactly(mnist):
    model, x, y, clean = mnist
    for threat in (LinfBall(0.0), L2Ball(0.0)):
        res = square(model, x, y, threat, queries=50, generator=gen(0))
        assert torch.equal(res.x_adv, x)
        assert torch.equal(res.correct, clean)
        assert res.accuracy == clean.float().mean().item()
        assert torch.equal(res.queries, torch.ones_like(res.queries))
        assert res.passes == 1


@pytest.mark.parametrize("threat", [LinfBall(0.1), L2Ball(1.5)], ids=["linf", "l2"])
def test_deterministic_for_a_generator_and_independent_of_max_batch(mnist, threat):
    model, x, y, _ = mnist
    x, y = x[:24], y[:24]
    a = square(model, x, y, threat, queries=40, generator=gen(7))
    b = square(model, x, y, threat, queries=40, generator=gen(7), max_batch=5)
    c = square(model, x, y, threat, queries=40, generator=gen(8))
    assert torch.equal(a.x_adv, b.x_adv)
    assert torch.equal(a.queries, b.queries) and torch.equal(a.broken_at, b.broken_at)
    assert b.passes > a.passes  # smaller forward batches, same queries
    assert not torch.equal(a.x_adv, c.x_adv)


def test_query_accounting(mnist):
    model, x, y, clean = mnist
    x, y, clean = x[:20], y[:20], clean[:20]
    wrong = y.clone()
    wrong[:5] = (y[:5] + 1) % 10  # labelled wrongly: already misclassified at the clean point
    miss = ~clean | (torch.arange(20) < 5)
    res = square(model, x, wrong, LinfBall(0.05), queries=30, generator=gen(0))
    assert torch.equal(res.queries[miss], torch.ones(int(miss.sum()), dtype=torch.int64))
    assert torch.equal(res.broken_at[miss], res.queries[miss])
    assert bool((res.queries <= 30).all())

    full = square(model, x, y, LinfBall(0.05), queries=30, stop_on_success=False,
                  generator=gen(0))
    assert bool((full.queries == 30).all()) and full.passes == 30
    for restarts in (2, 3):
        r = square(model, x, y, LinfBall(0.05), queries=12, restarts=restarts,
                   stop_on_success=False, generator=gen(0))
        assert bool((r.queries == 1 + restarts * 11).all())
    r = square(model, x, y, LinfBall(0.05), queries=12, restarts=3, generator=gen(0))
    assert bool((r.queries <= 1 + 3 * 11).all())

    one = square(model, x, y, LinfBall(0.3), queries=1, generator=gen(0))
    assert torch.equal(one.x_adv, x) and bool((one.queries == 1).all())


def test_best_point_never_worse_than_clean(mnist):
    model, x, y, _ = mnist
    x, y = x[:16], y[:16]
    with torch.no_grad():
        clean_loss = margin(model(x), y)
    for threat in (LinfBall(0.02), L2Ball(0.3)):
        res = square(model, x, y, threat, queries=15, stop_on_success=False, generator=gen(0))
        assert bool((res.loss >= clean_loss - 1e-5).all())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 4), c=st.sampled_from([1, 3]), h=st.integers(1, 12),
    w=st.integers(1, 12), norm=st.sampled_from(["linf", "l2"]),
    eps_i=st.integers(0, 4), seed=st.integers(0, 2**16), stop=st.booleans(),
)
def test_every_returned_point_lies_in_the_threat_set(n, c, h, w, norm, eps_i, seed, stop):
    eps = ([0.0, 1e-3, 0.05, 0.3, 1.0] if norm == "linf" else [0.0, 0.01, 0.5, 3.0, 50.0])[eps_i]
    threat = LinfBall(eps) if norm == "linf" else L2Ball(eps)
    g = gen(seed)
    x = torch.rand(n, c, h, w, generator=g)
    x[x < 0.2] = 0.0  # saturated pixels exercise the box
    x[x > 0.8] = 1.0
    y = torch.randint(0, 5, (n,), generator=g)
    model = tiny_model(c, h, w, seed=seed % 7)
    res = square(model, x, y, threat, queries=12, restarts=2, stop_on_success=stop,
                 generator=g)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert bool(threat.contains(res.x_adv, x).all())
    assert bool((res.queries >= 1).all()) and bool((res.queries <= 1 + 2 * 11).all())


@settings(max_examples=40, deadline=None)
@given(c=st.sampled_from([1, 2, 3]), h=st.integers(1, 10), w=st.integers(1, 10),
       norm=st.sampled_from(["linf", "l2"]), eps=st.sampled_from([1e-3, 0.1, 0.5, 1.0]),
       seed=st.integers(0, 2**16))
def test_raw_search_points_stay_in_the_set_without_reprojection(c, h, w, norm, eps, seed):
    """The search itself stays feasible: the final projection is a guard, not a repair."""
    g = gen(seed)
    x = torch.rand(3, c, h, w, generator=g)
    x[x < 0.2] = 0.0
    x[x > 0.8] = 1.0
    threat = LinfBall(eps) if norm == "linf" else L2Ball(eps * 10)
    init, propose = (_linf_init, _linf_propose) if norm == "linf" else (_l2_init, _l2_propose)
    cur = init(x, threat.eps, g)
    for it in range(8):
        assert bool(threat.contains(cur, x, atol=1e-5).all())
        s = square_side(p_schedule(0.8, it, 8), h, w, norm)
        cand = propose(x, cur, threat.eps, s, g)
        if norm == "linf":  # a proposal always changes the point (the reference's retry)
            assert bool((cand != cur).flatten(1).any(1).all())
        cur = cand
    assert bool(threat.contains(cur, x, atol=1e-5).all())


# ------------------------------------------------------------------ published details


def test_p_schedule_matches_the_published_one():
    # halvings after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10,000
    expected = {0: 1, 10: 1, 11: 2, 50: 2, 51: 4, 200: 4, 201: 8, 500: 8, 501: 16,
                1001: 32, 2001: 64, 4001: 128, 6001: 256, 8000: 256, 8001: 512, 9999: 512}
    for it, div in expected.items():
        assert p_schedule(0.8, it, 10000) == pytest.approx(0.8 / div)
    # rescaled to a 1000-query budget: iteration 2 maps to 20 > 10
    assert p_schedule(0.8, 1, 1000) == 0.8 and p_schedule(0.8, 2, 1000) == 0.4
    assert p_schedule(0.8, 11, 5000, rescale=False) == 0.4  # AutoAttack's raw schedule
    assert square_side(0.8, 28, 28, "linf") == 25
    assert square_side(0.8 / 512, 28, 28, "linf") == 1
    for p in (0.8, 0.1, 0.001):
        s = square_side(p, 28, 28, "l2")
        assert s >= 3 and s % 2 == 1
    assert square_side(0.8, 4, 30, "linf") == 4  # never beyond the shorter side


def test_linf_init_is_vertical_stripes():
    x = torch.full((2, 3, 6, 7), 0.5)
    start = _linf_init(x, 0.25, gen(0))
    d = start - x
    assert torch.equal(d.abs(), torch.full_like(d, 0.25))
    assert torch.equal(d, d[:, :, :1].expand_as(d))  # constant down each column


def test_l2_init_is_a_grid_of_meta_squares_at_norm_eps():
    x = torch.full((3, 1, 28, 28), 0.5)
    delta = _l2_init_delta(x, gen(0))
    # side 28 // 5 = 5, five blocks per axis centred with offset 1: rows/cols 0, 26, 27 empty
    for edge in (0, 26, 27):
        assert torch.count_nonzero(delta[:, :, edge]) == 0
        assert torch.count_nonzero(delta[:, :, :, edge]) == 0
    block = delta[0, 0, 1:6, 1:6]
    shape = _meta_square(5, x)
    assert torch.allclose(block.abs(), shape.abs()) or torch.allclose(block.abs(), shape.T.abs())
    assert shape[:2].sum() > 0 > shape[2:].sum()  # two opposite-signed bumps
    assert float(shape.norm()) == pytest.approx(1.0)
    start = _l2_init(x, 0.5, gen(0))
    norms = (start - x).flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full((3,), 0.5), rtol=1e-4) and bool((norms <= 0.5).all())


def test_l2_proposal_keeps_the_norm_at_eps_inside_the_box():
    g = gen(0)
    x = 0.4 + 0.2 * torch.rand(4, 3, 16, 16, generator=g)
    eps = 0.5  # small enough that the box never clips
    cur = _l2_init(x, eps, g)
    for it in range(30):
        cur = _l2_propose(x, cur, eps, square_side(p_schedule(0.8, it, 30), 16, 16, "l2"), g)
        norms = (cur - x).flatten(1).norm(dim=1)
        assert torch.allclose(norms, torch.full((4,), eps), rtol=1e-4)
        assert bool((norms <= eps).all())


def test_l2_points_on_large_images_pass_the_membership_check():
    """float32 rounding of a 150k-pixel norm must not push a point past eps + 1e-6."""
    g = gen(0)
    x = 0.25 + 0.5 * torch.rand(8, 3, 224, 224, generator=g)
    model = tiny_model(3, 224, 224)
    res = square(model, x, torch.arange(8) % 5, L2Ball(10.0), queries=6,
                 stop_on_success=False, generator=g)  # raised in finalize without the margin
    assert bool(L2Ball(10.0).contains(res.x_adv, x).all())


def test_bad_settings_are_refused_in_one_line(mnist):
    model, x, y, _ = mnist
    x, y = x[:2], y[:2]
    bad = [dict(queries=0), dict(restarts=0), dict(p_init=0.0), dict(p_init=1.5),
           dict(max_batch=0), dict(queries=2.5), dict(queries=True), dict(p_init="big"),
           dict(p_init=float("nan"))]
    for kwargs in bad:
        with pytest.raises(InputError) as err:
            square(model, x, y, LinfBall(0.1), **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(InputError):
        square(model, x, y, object())  # type: ignore[arg-type]
    with pytest.raises(InputError):
        square(model, x, y + 20, LinfBall(0.1))
    with pytest.raises(InputError):
        square(model, x * 3, y, LinfBall(0.1))


def test_float64_inputs_keep_their_dtype():
    model = tiny_model(1, 5, 5).double()
    x = torch.rand(3, 1, 5, 5, generator=gen(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    for threat in (LinfBall(0.1), L2Ball(0.5)):
        res = square(model, x, y, threat, queries=10, generator=gen(0))
        assert res.x_adv.dtype == torch.float64
        assert bool(threat.contains(res.x_adv, x).all())


# ------------------------------------------------------------------ reduced precision


class Tie(nn.Module):
    """Class 0 for rows whose first pixel is 1, which eps 0.1 cannot change; for the
    others logits (1, 1 + 2^-10): class 1 in float32, a tie that argmax gives to class 0
    in bfloat16, whose spacing near 1 is 2^-7."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[2.0], [0.0]]))
            self.head.bias.copy_(torch.tensor([1.0, 1.0 + 2 ** -10]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = x.flatten(1)[:, :1]
        return self.head((first > 0.5).to(x.dtype) + 0 * first)  # in the graph, gradient 0


def tie_rows() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Tie model, 6 inputs of label 1, and which of them float32 misclassifies."""
    x = torch.rand(6, 1, 4, 4, generator=gen(0)) * 0.3
    real = torch.tensor([True, False, False, True, False, True])
    x[real, 0, 0, 0] = 1.0
    return Tie().eval(), x, torch.ones(6, dtype=torch.long), real


def test_bf16_success_counts_only_once_full_precision_confirms_it():
    model, x, y, real = tie_rows()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        assert bool((model(x).argmax(1) != y).all()), "bfloat16 must misclassify every row"
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1) != y, real)
    # max_batch 1: the confirmations are split too; an outer autocast must not leak in
    with torch.autocast("cpu", torch.bfloat16):
        res = square(model, x, y, LinfBall(0.1), queries=20, autocast=torch.bfloat16,
                     generator=gen(1), max_batch=1)
    assert torch.equal(res.success, real)
    assert res.queries.tolist() == [1 if r else 20 for r in real.tolist()]
    assert res.broken_at.tolist() == [1 if r else -1 for r in real.tolist()]


def test_verdicts_stay_full_precision_inside_a_callers_autocast():
    model, x, y, real = tie_rows()
    with torch.autocast("cpu", torch.bfloat16):
        results = [square(model, x, y, LinfBall(0.1), queries=5, generator=gen(1)),
                   pgd(model, x, y, LinfBall(0.1), steps=2, generator=gen(1)),
                   fgsm(model, x, y, LinfBall(0.1)),
                   apgd(model, x, y, LinfBall(0.1), steps=2, generator=gen(1))]
    for res in results:
        assert torch.equal(res.success, real)


def test_bf16_square_still_breaks_a_standard_model_with_float32_verdicts(mnist):
    model, x, y, clean = mnist
    guarded = Guarded(model)
    res = square(guarded, x, y, LinfBall(0.3), queries=300, autocast=torch.bfloat16,
                 generator=gen(1))
    assert bool(LinfBall(0.3).contains(res.x_adv, x).all())
    assert bool(((res.broken_at > 0) <= res.success).all()), "the search kept a bf16 claim"
    assert res.success[clean].float().mean().item() >= 0.9
    assert guarded.calls == res.passes + 2  # confirmations are passes; + prepare, finalize
    with pytest.raises(InputError):
        square(model, x[:2], y[:2], LinfBall(0.3), autocast="bf16")  # type: ignore[arg-type]
