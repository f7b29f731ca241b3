"""The FGSM / PGD / transfer attack core.

Three layers of checks:
- property-based (hypothesis, tiny random conv nets): every attack's output lies in its
  threat set and the [0, 1] box, whatever eps, norm, loss, target, restarts or shape;
- on real MNIST images and a small trained CNN: the ordering facts an attack must obey
  (PGD >= FGSM, more restarts / steps never weaker, eps = 0 is the identity, targeted
  PGD moves towards the target, stop_on_success breaks the same examples);
- contracts: model mode, BatchNorm statistics and parameter gradients untouched,
  generators, and a one-line InputError for every kind of bad input.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robustopt.attacks import AttackResult, core, eval_mode, fgsm, pgd, transfer
from robustopt.attacks.core import goal_met
from robustopt.errors import InputError, RobustOptError
from robustopt.losses import get_loss
from robustopt.models import build_model
from robustopt.threat import L2Ball, LinfBall

ATTACKS = ("fgsm", "fgsm_rs", "pgd", "transfer")
N_REAL = 200  # real MNIST examples for the ordering tests
MNIST_STATS = {"mean": (0.1307,), "std": (0.3081,)}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_model(c: int, h: int, w: int, k: int, seed: int, bn: bool = False) -> nn.Module:
    """A random conv net small enough for hundreds of attacks a second."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = [nn.Conv2d(c, 4, 3, padding=1)]
        if bn:
            layers.append(nn.BatchNorm2d(4))
        layers += [nn.ReLU(), nn.Flatten(), nn.Linear(4 * h * w, k)]
        model = nn.Sequential(*layers)
    return model.eval()


def run_attack(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat, *,
               source: nn.Module | None = None, steps: int = 3, restarts: int = 1,
               **kw) -> AttackResult:
    """One entry point over the attacks, so each contract is checked on all of them."""
    if name == "fgsm":
        return fgsm(model, x, y, threat, **kw)
    if name == "fgsm_rs":
        return fgsm(model, x, y, threat, random_start=True, **kw)
    if name == "pgd":
        return pgd(model, x, y, threat, steps=steps, restarts=restarts, **kw)
    if name == "transfer":
        return transfer(model if source is None else source, model, x, y, threat,
                        steps=steps, restarts=restarts, **kw)
    raise AssertionError(name)


def assert_in_threat_set(res: AttackResult, x: torch.Tensor, threat) -> None:
    xa = res.x_adv
    assert xa.shape == x.shape and xa.dtype == x.dtype and xa.device == x.device
    assert torch.isfinite(xa).all()
    assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0
    delta = (xa - x).flatten(1)
    dist = delta.abs().amax(dim=1) if threat.norm == "linf" else delta.norm(dim=1)
    assert (dist <= threat.eps + 1e-6).all(), (float(dist.max()), threat.eps)
    assert threat.contains(xa, x).all()


def assert_result_shapes(res: AttackResult, n: int, k: int) -> None:
    assert res.loss.shape == (n,) and res.loss.dtype == torch.float32
    assert res.correct.shape == (n,) and res.correct.dtype == torch.bool
    assert res.success.shape == (n,) and res.success.dtype == torch.bool
    assert res.logits.shape == (n, k) and res.logits.dtype == torch.float32
    assert not res.x_adv.requires_grad


def assert_consistent(res: AttackResult, model: nn.Module, y: torch.Tensor,
                      loss: str = "ce", target: torch.Tensor | None = None) -> None:
    """Loss, correct and success are those of a fresh forward pass at x_adv."""
    with eval_mode(model), torch.no_grad():
        logits = model(res.x_adv).float()
    torch.testing.assert_close(res.logits, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res.loss, get_loss(loss)(logits, y, target),
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(res.correct, logits.argmax(1) == y)
    assert torch.equal(res.success, goal_met(logits, y, target))
    if target is None:
        assert torch.equal(res.success, ~res.correct)
    assert res.accuracy == pytest.approx(float(res.correct.float().mean()))


# ================================================================ property-based, tiny nets

@st.composite
def attack_cases(draw):
    name = draw(st.sampled_from(ATTACKS))
    norm = draw(st.sampled_from(["linf", "l2"]))
    max_eps = 1.0 if norm == "linf" else 4.0
    eps = draw(st.one_of(st.sampled_from([0.0, max_eps]), st.floats(0.0, max_eps)))
    c = draw(st.sampled_from([1, 3]))
    h = draw(st.integers(2, 6))
    w = draw(st.integers(2, 6))
    n = draw(st.integers(1, 4))
    k = draw(st.integers(2, 5))
    kw: dict = {"loss": draw(st.sampled_from(["ce", "margin"]))}
    if draw(st.booleans()):
        kw["target"] = torch.tensor(draw(st.lists(st.integers(0, k - 1), min_size=n,
                                                  max_size=n)))
    if name in ("pgd", "transfer"):
        kw["steps"] = draw(st.integers(1, 4))
        kw["restarts"] = draw(st.integers(1, 3))
        kw["random_start"] = draw(st.booleans())
        kw["stop_on_success"] = draw(st.booleans())
    step = draw(st.one_of(st.none(), st.floats(0.0, 3.0)))
    if step is not None:
        kw["step_size"] = step
    seed = draw(st.integers(0, 2**31 - 1))
    return name, norm, eps, (n, c, h, w), k, kw, seed


@settings(max_examples=60, deadline=None, derandomize=True)
@given(attack_cases())
def test_every_attack_stays_in_threat_set_and_box(case):
    name, norm, eps, shape, k, kw, seed = case
    threat = LinfBall(eps) if norm == "linf" else L2Ball(eps)
    g = _gen(seed)
    x = torch.rand(shape, generator=g)
    x[torch.rand(shape, generator=g) < 0.25] = 0.0  # pixels on the box's faces
    x[torch.rand(shape, generator=g) < 0.25] = 1.0
    y = torch.randint(0, k, (shape[0],), generator=g)
    x_before = x.clone()
    model = tiny_model(shape[1], shape[2], shape[3], k, seed)
    source = tiny_model(shape[1], shape[2], shape[3], k, seed + 1)
    res = run_attack(name, model, x, y, threat, source=source, generator=g, **kw)
    assert torch.equal(x, x_before)  # the clean batch is never written to
    assert_in_threat_set(res, x, threat)
    assert_result_shapes(res, shape[0], k)
    assert_consistent(res, model, y, kw["loss"], kw.get("target"))
    if eps == 0:
        assert torch.equal(res.x_adv, x)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.sampled_from(["linf", "l2"]), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_pgd_large_step_and_many_restarts_stay_in_set(norm, eps, seed):
    # steps far larger than the ball: every iterate must be projected back
    threat = LinfBall(eps) if norm == "linf" else L2Ball(3 * eps)
    g = _gen(seed)
    x = torch.rand(3, 3, 4, 4, generator=g)
    y = torch.randint(0, 3, (3,), generator=g)
    model = tiny_model(3, 4, 4, 3, seed)
    res = pgd(model, x, y, threat, steps=3, step_size=50.0, restarts=5, generator=g,
              max_batch=6)  # restarts split into groups of 2 rows per example
    assert_in_threat_set(res, x, threat)
    assert_consistent(res, model, y)


# ================================================================ real MNIST, trained CNN

@pytest.fixture(scope="module")
def real(trained_small_cnn, mnist_small):
    x, y = mnist_small
    return trained_small_cnn, x[:N_REAL], y[:N_REAL]


@pytest.fixture(scope="module")
def other_mnist_model():
    """A second MNIST-shaped model (random init) to transfer from."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        return build_model("small-mnist", **MNIST_STATS).eval()


def _threat(norm: str):
    return LinfBall(0.1) if norm == "linf" else L2Ball(1.5)


def _at_least_as_good(succ_a, loss_a, succ_b, loss_b) -> torch.Tensor:
    """Per example: (success, loss) of a >= that of b, lexicographically."""
    return (succ_a & ~succ_b) | ((succ_a == succ_b) & (loss_a >= loss_b))


def test_trained_model_is_accurate(trained_small_cnn, mnist_small):
    x, y = mnist_small
    assert x.shape == (500, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert not trained_small_cnn.training
    with torch.no_grad():
        acc = (trained_small_cnn(x).argmax(1) == y).float().mean()
    assert acc > 0.85


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_loss_at_least_fgsm_loss(real, norm):
    model, x, y = real
    threat = _threat(norm)
    r_fgsm = fgsm(model, x, y, threat)
    r_pgd = pgd(model, x, y, threat, steps=20, generator=_gen(1))
    assert float((r_pgd.loss >= r_fgsm.loss).float().mean()) >= 0.98
    assert r_pgd.accuracy <= r_fgsm.accuracy
    assert r_pgd.accuracy < 0.9  # the attack does something on an undefended model


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("attack", ["fgsm", "fgsm_rs", "pgd", "pgd_restarts", "pgd_margin",
                                    "pgd_targeted", "pgd_stop", "transfer"])
def test_eps_zero_is_identity(real, other_mnist_model, norm, attack):
    model, x, y = real
    threat = LinfBall(0.0) if norm == "linf" else L2Ball(0.0)
    with torch.no_grad():
        clean_logits = model(x)
    clean_correct = clean_logits.argmax(1) == y
    kw: dict = {"generator": _gen(0)}
    name = attack
    if attack == "pgd_restarts":
        name, kw["restarts"] = "pgd", 3
    elif attack == "pgd_margin":
        name, kw["loss"] = "pgd", "margin"
    elif attack == "pgd_targeted":
        name, kw["target"] = "pgd", (y + 1) % 10
    elif attack == "pgd_stop":
        name, kw["stop_on_success"] = "pgd", True
    res = run_attack(name, model, x, y, threat, source=other_mnist_model, steps=5, **kw)
    assert torch.equal(res.x_adv, x)
    assert torch.equal(res.correct, clean_correct)
    assert res.accuracy == float(clean_correct.float().mean())
    torch.testing.assert_close(res.logits, clean_logits, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_targeted_pgd_raises_target_probability(real, norm):
    model, x, y = real
    g = _gen(5)
    target = (y + torch.randint(1, 10, y.shape, generator=g)) % 10  # never the true class
    assert not (target == y).any()
    res = pgd(model, x, y, _threat(norm), steps=20, target=target, generator=g)
    with torch.no_grad():
        p_clean = model(x).softmax(1).gather(1, target[:, None]).squeeze(1)
        p_adv = model(res.x_adv).softmax(1).gather(1, target[:, None]).squeeze(1)
    assert float((p_adv > p_clean).float().mean()) >= 0.95
    assert float((p_adv - p_clean).mean()) > 0.05
    assert res.success.any()  # some examples are pushed all the way to the target
    assert torch.equal(res.success, res.logits.argmax(1) == target)
    assert_consistent(res, model, y, target=target)


@pytest.mark.parametrize(("norm", "loss"), [("linf", "ce"), ("l2", "margin")])
def test_more_restarts_never_lower_best(real, norm, loss):
    model, x, y = real
    threat = _threat(norm)
    one = pgd(model, x, y, threat, steps=8, restarts=1, loss=loss, generator=_gen(2))
    # groups of N rows: each restart sees exactly the batch restarts=1 saw, so restart 1
    # of 4 *is* the restarts=1 run, and the best of four can only be at least as good
    four = pgd(model, x, y, threat, steps=8, restarts=4, loss=loss, generator=_gen(2),
               max_batch=x.shape[0])
    assert _at_least_as_good(four.success, four.loss, one.success, one.loss).all()
    assert four.success.sum() >= one.success.sum()
    # one stacked batch of 4N rows: the same up to float noise of the larger batch
    stacked = pgd(model, x, y, threat, steps=8, restarts=4, loss=loss, generator=_gen(2))
    ok = _at_least_as_good(stacked.success, stacked.loss + 1e-4, one.success, one.loss)
    assert float(ok.float().mean()) >= 0.99


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_more_steps_at_least_as_strong(real, norm):
    model, x, y = real
    threat = _threat(norm)
    step = 2.5 * threat.eps / 5
    # same step size and seed: the first 5 iterates coincide and every iterate is a
    # candidate, so 10 steps are at least as good on every single example
    r5 = pgd(model, x, y, threat, steps=5, step_size=step, generator=_gen(3))
    r10 = pgd(model, x, y, threat, steps=10, step_size=step, generator=_gen(3))
    assert _at_least_as_good(r10.success, r10.loss, r5.success, r5.loss).all()
    # default step sizes (2.5 eps / steps): stronger in aggregate
    d20 = pgd(model, x, y, threat, steps=20, generator=_gen(3))
    assert d20.accuracy <= r5.accuracy
    assert float(d20.loss.mean()) >= float(r5.loss.mean())


class RoundedLogits(nn.Module):
    """Logits rounded to halves (straight-through gradient): distinct iterates tie exactly."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        return z + ((2 * z).round() / 2 - z).detach()


def _nan_in_band(logits, y, target=None):
    """Cross-entropy, but NaN for losses in (0.5, 1.5): a model that is NaN on some inputs."""
    ce = get_loss("ce")(logits, y, target)
    return ce.masked_fill((ce > 0.5) & (ce < 1.5), float("nan"))


@pytest.mark.parametrize(("norm", "loss", "targeted", "rounded", "steps"), [
    ("linf", "ce", False, False, 6), ("l2", "margin", False, False, 6),
    ("linf", "ce", True, False, 6), ("linf", "dlr", False, True, 6),
    ("l2", "ce", False, True, 6), ("linf", "nan", False, False, 6),
    ("linf", "ce", False, False, 1), ("l2", "ce", False, False, 0)])
@pytest.mark.parametrize("buffer_bytes", [1, 3 * N_REAL * 784 * 4, 1 << 30])
def test_tracked_search_returns_the_best_iterate(real, monkeypatch, norm, loss, targeted,
                                                 rounded, steps, buffer_bytes):
    # Reference: iterate k = 0..steps, each from its own untracked run from the same start,
    # scored by a fresh forward, then scanned in order keeping a strictly better
    # (goal met, loss). The search must return exactly the scan's choice, whatever its
    # buffer holds (too little: the per-step tracker; 3 iterates; all of them), including
    # ties (rounded logits) and NaN losses.
    model, x, y = real
    model = RoundedLogits(model) if rounded else model
    threat = _threat(norm)
    step = 1.5 * threat.eps  # overshooting steps: the best iterate is often not the last
    target = (y + 3) % 10 if targeted else None
    loss_fn = _nan_in_band if loss == "nan" else get_loss(loss)
    monkeypatch.setattr(core, "TRACK_BUFFER_BYTES", buffer_bytes)
    with eval_mode(model), torch.no_grad():
        found = core.perturb(model, x, y, threat, loss_fn, target, steps=steps,
                             step_size=step, generator=_gen(9))
        iterates = torch.stack([
            core.perturb(model, x, y, threat, loss_fn, target, steps=k, step_size=step,
                         track_best=False, generator=_gen(9)).x_adv
            for k in range(steps + 1)])
        logits = torch.stack([model(it) for it in iterates])
    n = x.shape[0]
    best = torch.zeros(n, dtype=torch.long)
    best_loss = torch.full((n,), float("-inf"))
    best_success = torch.zeros(n, dtype=torch.bool)
    for k in range(steps + 1):
        loss_k, success_k = loss_fn(logits[k], y, target), goal_met(logits[k], y, target)
        better = (success_k & ~best_success) | ((success_k == best_success)
                                                & (loss_k > best_loss))
        best = torch.where(better, k, best)
        best_loss = torch.where(better, loss_k, best_loss)
        best_success |= success_k
    if steps > 4 and loss != "nan":
        assert len(set(best.tolist())) > 2  # the best iterate differs between examples
    cols = torch.arange(n)
    assert torch.equal(found.x_adv, iterates[best, cols])
    assert torch.equal(found.success, best_success)
    torch.testing.assert_close(found.loss, best_loss, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(found.logits, logits[best, cols])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_margin_pgd_breaks_at_least_as_many_as_fgsm(real, norm):
    # Margin-PGD vs CE-PGD is not a reliable ordering on this model (either can win by a
    # handful of points), so only the robust facts are checked.
    model, x, y = real
    threat = _threat(norm)
    r_margin = pgd(model, x, y, threat, steps=20, loss="margin", generator=_gen(4))
    r_fgsm = fgsm(model, x, y, threat)
    assert r_margin.success.sum() >= r_fgsm.success.sum()
    # the margin is positive exactly where the example is misclassified
    nonzero = r_margin.loss != 0
    assert torch.equal(r_margin.success[nonzero], (r_margin.loss > 0)[nonzero])
    assert_consistent(r_margin, model, y, loss="margin")


@pytest.mark.parametrize(("norm", "restarts", "targeted"),
                         [("linf", 1, False), ("l2", 2, False), ("linf", 2, True)])
def test_stop_on_success_breaks_the_same_examples(real, norm, restarts, targeted):
    model, x, y = real
    threat = _threat(norm)
    target = (y + 3) % 10 if targeted else None
    full = pgd(model, x, y, threat, steps=10, restarts=restarts, target=target,
               generator=_gen(6))
    early = pgd(model, x, y, threat, steps=10, restarts=restarts, target=target,
                generator=_gen(6), stop_on_success=True)
    assert full.success.any() and not full.success.all()  # the comparison means something
    assert torch.equal(early.success, full.success)
    assert_in_threat_set(early, x, threat)
    assert_consistent(early, model, y, target=target)


@pytest.mark.parametrize("attack", ["fgsm", "fgsm_rs", "pgd", "pgd_margin", "pgd_targeted",
                                    "transfer"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_result_matches_fresh_forward(real, other_mnist_model, attack, norm):
    model, x, y = real
    x, y = x[:100], y[:100]
    loss, target, name = "ce", None, attack
    if attack == "pgd_margin":
        name, loss = "pgd", "margin"
    elif attack == "pgd_targeted":
        name, target = "pgd", (y + 1) % 10
    res = run_attack(name, model, x, y, _threat(norm), source=other_mnist_model, steps=10,
                     loss=loss, target=target, generator=_gen(7))
    assert_in_threat_set(res, x, _threat(norm))
    assert_result_shapes(res, x.shape[0], 10)
    assert_consistent(res, model, y, loss=loss, target=target)


def test_transfer_from_self_equals_pgd(real):
    model, x, y = real
    x, y = x[:100], y[:100]
    threat = LinfBall(0.1)
    a = transfer(model, model, x, y, threat, steps=10, generator=_gen(8))
    b = pgd(model, x, y, threat, steps=10, generator=_gen(8))
    assert torch.equal(a.x_adv, b.x_adv)
    assert torch.equal(a.success, b.success)
    torch.testing.assert_close(a.loss, b.loss)


def test_transfer_crafts_on_source_and_scores_on_target(real, other_mnist_model):
    model, x, y = real
    x, y = x[:100], y[:100]
    threat = LinfBall(0.1)
    res = transfer(other_mnist_model, model, x, y, threat, steps=10, loss="margin",
                   generator=_gen(9))
    crafted = pgd(other_mnist_model, x, y, threat, steps=10, loss="margin", generator=_gen(9))
    assert torch.equal(res.x_adv, crafted.x_adv)
    assert_consistent(res, model, y, loss="margin")
    # a random source transfers badly: the target keeps most of its accuracy
    white_box = pgd(model, x, y, threat, steps=10, loss="margin", generator=_gen(9))
    assert res.accuracy > white_box.accuracy


def test_transfer_with_fgsm_attack(real, other_mnist_model):
    model, x, y = real
    x, y = x[:50], y[:50]
    res = transfer(other_mnist_model, model, x, y, L2Ball(1.0), attack=fgsm,
                   random_start=True, generator=_gen(10))
    assert torch.equal(res.x_adv, fgsm(other_mnist_model, x, y, L2Ball(1.0),
                                       random_start=True, generator=_gen(10)).x_adv)
    assert_consistent(res, model, y)


def test_autocast_search_float32_verdict(real):
    model, x, y = real
    x, y = x[:100], y[:100]
    res = pgd(model, x, y, LinfBall(0.1), steps=10, autocast=torch.bfloat16, generator=_gen(11))
    assert_in_threat_set(res, x, LinfBall(0.1))
    assert_result_shapes(res, 100, 10)
    assert_consistent(res, model, y)  # the verdict is a float32 forward pass
    ref = pgd(model, x, y, LinfBall(0.1), steps=10, generator=_gen(11))
    assert abs(res.accuracy - ref.accuracy) <= 0.1


# ================================================================ mode, statistics, gradients

def _all_attacks(model, x, y, threat, source=None):
    kw = {"source": source, "steps": 2, "generator": _gen(0)}
    yield "fgsm", run_attack("fgsm", model, x, y, threat, **kw)
    yield "fgsm_rs", run_attack("fgsm_rs", model, x, y, threat, **kw)
    yield "pgd", run_attack("pgd", model, x, y, threat, restarts=2, **kw)
    yield "pgd_stop", run_attack("pgd", model, x, y, threat, stop_on_success=True, **kw)
    yield "pgd_targeted", run_attack("pgd", model, x, y, threat, target=(y + 1) % 3, **kw)
    yield "transfer", run_attack("transfer", model, x, y, threat, **kw)


@pytest.fixture
def bn_batch():
    g = _gen(20)
    return torch.rand(6, 3, 5, 5, generator=g), torch.randint(0, 3, (6,), generator=g)


@pytest.mark.parametrize("threat", [LinfBall(0.2), L2Ball(1.0)])
def test_attacks_run_in_eval_mode_and_restore_train_mode(bn_batch, threat):
    x, y = bn_batch
    model = tiny_model(3, 5, 5, 3, seed=0, bn=True).train()
    source = tiny_model(3, 5, 5, 3, seed=1, bn=True).train()
    bn = model[1]
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        model(torch.rand(8, 3, 5, 5, generator=_gen(21)))
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    src_buffers = {k: v.clone() for k, v in source.state_dict().items()}
    seen: list[bool] = []
    hook = bn.register_forward_hook(lambda mod, inp, out: seen.append(mod.training))
    for name, _ in _all_attacks(model, x, y, threat, source=source):
        assert model.training and all(m.training for m in model.modules()), name
        assert source.training, name
        for k, v in model.state_dict().items():
            assert torch.equal(v, buffers[k]), (name, k)  # running stats frozen
        for k, v in source.state_dict().items():
            assert torch.equal(v, src_buffers[k]), (name, k)
    hook.remove()
    assert seen and not any(seen)  # every forward pass during the attacks was in eval mode


def test_attacks_restore_mixed_mode(bn_batch):
    # fine-tuning with frozen BatchNorm: train mode overall, BN in eval mode
    x, y = bn_batch
    model = tiny_model(3, 5, 5, 3, seed=0, bn=True).train()
    model[1].eval()
    for name, _ in _all_attacks(model, x, y, LinfBall(0.1), source=model):
        assert model.training and model[0].training and model[3].training, name
        assert not model[1].training, name


def test_attacks_keep_eval_mode(bn_batch):
    x, y = bn_batch
    model = tiny_model(3, 5, 5, 3, seed=0, bn=True).eval()
    for name, _ in _all_attacks(model, x, y, L2Ball(0.5)):
        assert not any(m.training for m in model.modules()), name


def test_eval_mode_restores_on_error():
    model = tiny_model(1, 3, 3, 2, seed=0, bn=True).train()
    with pytest.raises(KeyError), eval_mode(model):
        assert not model.training
        raise KeyError("boom")
    assert model.training and model[1].training


@pytest.mark.parametrize("threat", [LinfBall(0.2), L2Ball(1.0)])
def test_parameter_grads_and_weights_untouched(bn_batch, threat):
    x, y = bn_batch
    model = tiny_model(3, 5, 5, 3, seed=0, bn=True)
    params = dict(model.named_parameters())
    sentinels = {k: torch.randn(p.shape, generator=_gen(30)) for k, p in params.items()}
    for k, p in params.items():
        p.grad = sentinels[k].clone()
    grad_objects = {k: p.grad for k, p in params.items()}
    weights = {k: p.detach().clone() for k, p in params.items()}
    bare = tiny_model(3, 5, 5, 3, seed=1)  # grads None must stay None
    for name, _ in _all_attacks(model, x, y, threat, source=bare):
        for k, p in params.items():
            assert p.grad is grad_objects[k], (name, k)
            assert torch.equal(p.grad, sentinels[k]), (name, k)
            assert torch.equal(p.detach(), weights[k]), (name, k)
            assert p.requires_grad, (name, k)
        assert all(p.grad is None for p in bare.parameters()), name
    for name, _ in _all_attacks(bare, x, y, threat):
        assert all(p.grad is None for p in bare.parameters()), name


def test_frozen_parameters_still_attackable(bn_batch):
    # a caller may have set requires_grad=False on the model: input gradients still flow
    x, y = bn_batch
    model = tiny_model(3, 5, 5, 3, seed=0).requires_grad_(False)
    res = pgd(model, x, y, LinfBall(0.3), steps=5, random_start=False)
    assert not torch.equal(res.x_adv, x)
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("attack", ATTACKS)
def test_input_requiring_grad_gives_plain_points(bn_batch, attack):
    # e.g. a caller inside a training step: the result must not carry a graph back to x
    x, y = bn_batch
    model = tiny_model(3, 5, 5, 3, seed=0)
    plain = run_attack(attack, model, x, y, L2Ball(1.0), restarts=2, generator=_gen(60))
    xg = x.clone().requires_grad_(True)
    res = run_attack(attack, model, xg, y, L2Ball(1.0), restarts=2, generator=_gen(60))
    assert not res.x_adv.requires_grad and res.x_adv.grad_fn is None
    assert not res.loss.requires_grad and not res.logits.requires_grad
    assert xg.grad is None
    assert torch.equal(res.x_adv, plain.x_adv)


# ================================================================ generators and devices

@pytest.mark.parametrize("attack", ["fgsm_rs", "pgd", "transfer"])
def test_generator_reproducible_and_global_rng_untouched(bn_batch, attack):
    x, y = bn_batch
    model = tiny_model(3, 5, 5, 3, seed=0)
    threat = L2Ball(2.0)
    state = torch.get_rng_state()
    a = run_attack(attack, model, x, y, threat, restarts=2, generator=_gen(40))
    b = run_attack(attack, model, x, y, threat, restarts=2, generator=_gen(40))
    c = run_attack(attack, model, x, y, threat, restarts=2, generator=_gen(41))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.loss, b.loss)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_no_generator_uses_global_rng(bn_batch):
    x, y = bn_batch
    model = tiny_model(3, 5, 5, 3, seed=0)
    torch.manual_seed(0)
    a = pgd(model, x, y, LinfBall(0.2), steps=2)
    torch.manual_seed(0)
    b = pgd(model, x, y, LinfBall(0.2), steps=2)
    assert torch.equal(a.x_adv, b.x_adv)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("gen_device", ["cpu", "cuda"])
@pytest.mark.parametrize("threat", [LinfBall(0.1), L2Ball(1.5)])
def test_cuda(trained_small_cnn, mnist_small, gen_device, threat):
    import copy

    model = copy.deepcopy(trained_small_cnn).cuda()
    x, y = (t[:200].cuda() for t in mnist_small)
    g = torch.Generator(device=gen_device).manual_seed(0)
    res = pgd(model, x, y, threat, steps=10, restarts=2, generator=g)
    assert res.x_adv.is_cuda and res.loss.is_cuda and res.success.is_cuda
    assert_in_threat_set(res, x, threat)
    assert_consistent(res, model, y)
    res_fgsm = fgsm(model, x, y, threat, random_start=True, generator=g)
    assert_in_threat_set(res_fgsm, x, threat)
    res_stop = pgd(model, x, y, threat, steps=10, stop_on_success=True,
                   generator=torch.Generator(device=gen_device).manual_seed(1))
    assert_in_threat_set(res_stop, x, threat)
    assert_consistent(res_stop, model, y)
    # same attack on the CPU: the same robust accuracy up to float noise
    cpu = pgd(trained_small_cnn, x.cpu(), y.cpu(), threat, steps=10, restarts=2,
              generator=torch.Generator().manual_seed(0))
    assert abs(cpu.accuracy - res.accuracy) <= 0.03


# ================================================================ bad input

class _Fixed(nn.Module):
    """A model whose output is produced by ``fn`` (to fake broken models)."""

    def __init__(self, fn):
        super().__init__()
        self.lin = nn.Linear(28 * 28, 10)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.lin(x.flatten(1)), x)


def _nan_where_dark(logits, x):
    # NaN logits (and NaN input gradients) for examples whose first pixel is < 0.5
    return logits * (x[:, 0, 0, 0:1] - 0.5).sqrt()


BAD_MODELS = {
    "3d_output": lambda z, x: z[:, :, None],
    "1d_output": lambda z, x: z[:, 0],
    "tuple_output": lambda z, x: (z, z),
    "wrong_batch": lambda z, x: z[:1].expand(1, 10) if x.shape[0] > 1 else z.repeat(2, 1),
    "nan_logits": lambda z, x: z * float("nan"),
    "inf_logits": lambda z, x: z + float("inf"),
    "nan_on_some": _nan_where_dark,
}


@pytest.fixture(scope="module")
def mnist_model():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_model("small-mnist", **MNIST_STATS).eval()


@pytest.fixture
def batch():
    g = _gen(50)
    return torch.rand(4, 1, 28, 28, generator=g), torch.tensor([0, 3, 9, 1])


def _bad_inputs(x, y):
    """name -> (x, y, extra kwargs)."""
    nan = x.clone()
    nan[2, 0, 3, 3] = float("nan")
    inf = x.clone()
    inf[1, 0, 0, 0] = float("inf")
    neg = x.clone()
    neg[0, 0, 5, 5] = -0.01
    return {
        "nan_image": (nan, y, {}),
        "inf_image": (inf, y, {}),
        "0_255_image": (x * 255, y, {}),
        "negative_pixel": (neg, y, {}),
        "rank_3": (x[0], y, {}),
        "rank_2": (x[0, 0], y, {}),
        "rank_5": (x[None], y, {}),
        "uint8_image": ((x * 255).to(torch.uint8), y, {}),
        "int64_image": ((x > 0.5).long(), y, {}),
        "empty_batch": (x[:0], y[:0], {}),
        "list_image": (x.tolist(), y, {}),
        "label_too_large": (x, torch.tensor([0, 10, 2, 1]), {}),
        "label_negative": (x, torch.tensor([0, -1, 2, 1]), {}),
        "label_shape_2d": (x, y[:, None], {}),
        "label_too_many": (x, torch.tensor([0, 1, 2, 3, 4]), {}),
        "label_too_few": (x, y[:3], {}),
        "label_scalar": (x, torch.tensor(3), {}),
        "label_float": (x, y.float(), {}),
        "label_bool": (x, y > 2, {}),
        "three_channels": (x.expand(4, 3, 28, 28).contiguous(), y, {}),
        "wrong_size": (torch.rand(4, 1, 32, 32), y, {}),
        "target_too_large": (x, y, {"target": torch.tensor([1, 2, 10, 3])}),
        "target_negative": (x, y, {"target": torch.tensor([1, 2, -3, 3])}),
        "target_wrong_shape": (x, y, {"target": torch.tensor([1, 2])}),
        "target_float": (x, y, {"target": torch.tensor([1.0, 2.0, 3.0, 4.0])}),
        "unknown_loss": (x, y, {"loss": "hinge"}),
    }


def _expect_input_error(fn) -> str:
    with pytest.raises(InputError) as err:
        fn()
    assert isinstance(err.value, RobustOptError) and isinstance(err.value, ValueError)
    msg = str(err.value)
    assert msg.strip() and "\n" not in msg, f"not one line: {msg!r}"
    assert "internal error" not in msg
    return msg


BAD_INPUT_NAMES = list(_bad_inputs(torch.rand(4, 1, 28, 28), torch.tensor([0, 3, 9, 1])))


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("bad", BAD_INPUT_NAMES)
def test_bad_input_raises_one_line_input_error(mnist_model, batch, attack, bad):
    x, y, kw = _bad_inputs(*batch)[bad]
    _expect_input_error(lambda: run_attack(attack, mnist_model, x, y, LinfBall(0.1),
                                           source=mnist_model, generator=_gen(0), **kw))


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("bad", sorted(BAD_MODELS))
@pytest.mark.parametrize("threat", [LinfBall(0.1), L2Ball(1.0)])
def test_broken_model_raises_one_line_input_error(mnist_model, batch, attack, bad, threat):
    x, y = batch
    if bad == "nan_on_some":
        x = x.clone()
        x[0, 0, 0, 0] = 0.9  # example 0 is fine (the one prepare() looks at) ...
        x[1:, 0, 0, 0] = 0.1  # ... the others are NaN, with NaN input gradients
    model = _Fixed(BAD_MODELS[bad]).eval()
    # for transfer the broken model is the target; the source is a sound model
    _expect_input_error(lambda: run_attack(attack, model, x, y, threat, source=mnist_model,
                                           generator=_gen(0)))


class _InputIgnored(nn.Module):
    """Logits from trainable weights, with the input cut out of the graph (a detach or a
    threshold in forward): the parameters require grad, the input gets none."""

    def __init__(self, detach: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(28 * 28, 10)
        self.detach = detach

    def forward(self, x):
        x = x.flatten(1)
        return self.lin(x.detach() if self.detach else (x > 0.5).to(x.dtype))


@pytest.mark.parametrize("attack", ["fgsm", "fgsm_rs", "pgd"])
@pytest.mark.parametrize("detach", [True, False])
def test_input_outside_the_graph_raises_one_line_input_error(batch, attack, detach):
    x, y = batch
    model = _InputIgnored(detach).eval()
    msg = _expect_input_error(lambda: run_attack(attack, model, x, y, LinfBall(0.1),
                                                 generator=_gen(0)))
    assert "square" in msg


def test_transfer_broken_source_raises_input_error(mnist_model, batch):
    x, y = batch
    bad = _Fixed(BAD_MODELS["nan_logits"])
    _expect_input_error(lambda: transfer(bad, mnist_model, x, y, LinfBall(0.1)))
    three = tiny_model(3, 28, 28, 10, seed=0)  # expects 3 channels
    _expect_input_error(lambda: transfer(mnist_model, three, x, y, LinfBall(0.1)))


@pytest.mark.parametrize(("kw", "word"), [
    ({"steps": 0}, "step"), ({"steps": -1}, "step"), ({"restarts": 0}, "restarts"),
    ({"step_size": -0.1}, "step size"),
])
def test_bad_pgd_settings(mnist_model, batch, kw, word):
    x, y = batch
    msg = _expect_input_error(lambda: pgd(mnist_model, x, y, LinfBall(0.1), **kw))
    assert word in msg


def test_error_messages_name_the_problem(mnist_model, batch):
    x, y = batch
    msg = _expect_input_error(lambda: pgd(mnist_model, x * 255, y, LinfBall(0.1)))
    assert "[0, 1]" in msg
    msg = _expect_input_error(lambda: pgd(mnist_model, x, torch.tensor([0, 10, 2, 1]),
                                          LinfBall(0.1)))
    assert "10" in msg
    msg = _expect_input_error(lambda: pgd(mnist_model, x, y, LinfBall(0.1), loss="hinge"))
    assert "hinge" in msg
    nan = x.clone()
    nan[2, 0, 0, 0] = float("nan")
    msg = _expect_input_error(lambda: fgsm(mnist_model, nan, y, LinfBall(0.1)))
    assert "NaN" in msg and "2" in msg
    inf = x.clone()
    inf[1, 0, 27, 27] = -float("inf")
    msg = _expect_input_error(lambda: pgd(mnist_model, inf, y, LinfBall(0.1)))
    assert "NaN or inf" in msg and "example 1" in msg
    neg = x.clone()
    neg[3, 0, 9, 9] = -0.25
    msg = _expect_input_error(lambda: pgd(mnist_model, neg, y, LinfBall(0.1)))
    assert "[-0.25" in msg and "outside [0, 1]" in msg


@pytest.mark.parametrize(("loss", "targeted"), [("ce", False), ("ce", True), ("margin", False),
                                                ("dlr", True)])
def test_input_gradient_is_the_summed_loss_gradient_exactly(loss, targeted):
    """The core's gradient is that of the summed per-example loss, to the last bit: training
    runs (and ``--restore``) depend on it not drifting."""
    model = tiny_model(1, 28, 28, 10, seed=3).eval()
    g = _gen(4)
    x = torch.rand(16, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    target = (y + 1) % 10 if targeted else None
    loss_fn = get_loss(loss)
    _, _, grad = core.loss_and_grad(model, x, y, loss_fn, target)
    xr = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(loss_fn(model(xr), y, target).sum(), xr)
    assert torch.equal(grad, expected)
