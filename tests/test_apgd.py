"""APGD (Croce & Hein 2020) on a small MNIST model trained in the fixture on real images."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustopt.attacks.apgd import APGDResult, apgd, apgd_ce, apgd_checkpoints, apgd_t
from robustopt.attacks.pgd import pgd
from robustopt.data import load_dataset
from robustopt.errors import InputError
from robustopt.models import build_model
from robustopt.threat import L2Ball, LinfBall

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TRAIN_EPS = 0.1


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The test machines are shared: one intra-op thread is much faster than two contended."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mnist(tmp_path_factory, one_thread):
    """1000 real MNIST training images to fit on, the next 100 to attack."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"no shared data directory at {DATA_DIR}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBUSTOPT_CACHE", str(tmp_path_factory.mktemp("cache")))
        ds = load_dataset("mnist", "train", data_dir=DATA_DIR, download=False)
        x, y = ds.tensors(n=1100)
    return x[:1000], y[:1000], x[1000:], y[1000:]


@pytest.fixture(scope="module")
def model(mnist):
    """small-mnist, Adam for 6 short epochs; from epoch 2 half of each batch is 3-step PGD."""
    xtr, ytr, _, _ = mnist
    torch.manual_seed(0)
    net = build_model("small-mnist", mean=(0.1307,), std=(0.3081,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    order = seeded(1)
    for epoch in range(6):
        perm = torch.randperm(1000, generator=order)
        for i in range(0, 1000, 50):
            xb, yb = xtr[perm[i:i + 50]], ytr[perm[i:i + 50]]
            if epoch >= 2:
                xa = pgd(net, xb, yb, LinfBall(TRAIN_EPS), steps=3, step_size=0.05,
                         generator=order).x_adv
                xb, yb = torch.cat([xb, xa]), torch.cat([yb, yb])
            net.train()
            loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def evalset(mnist, model):
    _, _, x, y = mnist
    with torch.no_grad():
        clean_acc = float((model(x).argmax(1) == y).float().mean())
    assert clean_acc > 0.75, "the fixture model failed to train"
    return x, y


# --------------------------------------------------------------------------- schedule


def test_checkpoints_follow_the_reference_schedule():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 of N = 100 iterations
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(50) == [11, 21, 30, 38, 45]  # lengths 11, 10, 9, 8, 7 (>= 3)
    assert apgd_checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert apgd_checkpoints(1) == []


# --------------------------------------------------------------------------- strength


@pytest.mark.parametrize("threat", [LinfBall(TRAIN_EPS), L2Ball(1.5)], ids=["linf", "l2"])
def test_apgd_ce_at_least_as_strong_as_pgd(model, evalset, threat):
    x, y = evalset
    steps = 50
    ref = pgd(model, x, y, threat, steps=steps, step_size=2.5 * threat.eps / steps,
              generator=seeded())
    res = apgd_ce(model, x, y, threat, steps=steps, generator=seeded())
    assert isinstance(res, APGDResult)
    assert float((res.loss >= ref.loss).float().mean()) >= 0.95
    assert res.accuracy <= ref.accuracy + 0.01
    assert res.accuracy < 0.8  # the attack has something to do
    assert torch.equal(res.success, ~res.correct)
    assert res.passes == x.shape[0] * (1 + steps + 1)  # clean pass + N_iter + 1 iterates


def test_apgd_t_at_least_as_strong_as_apgd_ce(model, evalset):
    x, y = evalset
    ce = apgd_ce(model, x, y, LinfBall(TRAIN_EPS), steps=50, generator=seeded())
    t = apgd_t(model, x, y, LinfBall(TRAIN_EPS), steps=50, n_targets=3, generator=seeded())
    assert t.accuracy <= ce.accuracy + 0.02
    assert torch.equal(t.success, ~t.correct)  # APGD-T's goal is any misclassification
    assert t.target.shape == y.shape and bool((t.target != y).all())
    with torch.no_grad():  # each example's target is one of its 3 likeliest wrong classes
        wrong = model(x).masked_fill(F.one_hot(y, 10).bool(), float("-inf"))
    top3 = wrong.topk(3, dim=1).indices
    assert bool((top3 == t.target[:, None]).any(dim=1).all())
    assert t.passes == x.shape[0] * (1 + 3 * 51)


def test_targeted_attack_aims_at_the_given_class(model, evalset):
    x, y = evalset[0][:32], evalset[1][:32]
    target = (y + 1) % 10
    res = apgd(model, x, y, LinfBall(0.3), steps=20, loss="dlr", target=target,
               generator=seeded())
    assert torch.equal(res.success, res.logits.argmax(1) == target)
    assert torch.equal(res.target, target)
    assert float(res.success.float().mean()) > 0.5


# --------------------------------------------------------------------------- threat set


class Recorder(nn.Module):
    """Wraps a model and keeps every batch it is asked to classify."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().float().clone())
        return self.inner(x)


@pytest.mark.parametrize("threat", [LinfBall(0.05), LinfBall(0.3), LinfBall(1.0), L2Ball(0.5),
                                    L2Ball(2.0), L2Ball(6.0)], ids=str)
def test_every_queried_and_returned_point_is_in_the_threat_set(model, evalset, threat):
    x, y = evalset[0][:12], evalset[1][:12]
    rec = Recorder(model)
    res = apgd(rec, x, y, threat, steps=10, restarts=2, loss="dlr", generator=seeded())
    assert bool(threat.contains(res.x_adv, x).all())
    assert bool((threat.distance(res.x_adv, x) <= threat.eps + 1e-6).all())
    queried = torch.cat(rec.seen)
    assert queried.shape[0] == 1 + 12 + 2 * 12 * 11 + 12  # check, clean, iterates, verdict
    assert bool(((queried >= 0) & (queried <= 1)).all())
    m, n = queried.shape[0], x.shape[0]
    pairs = threat.distance(queried[:, None].expand(m, n, *x.shape[1:]).reshape(-1, 1, 28, 28),
                            x[None].expand(m, n, *x.shape[1:]).reshape(-1, 1, 28, 28))
    assert bool((pairs.view(m, n).min(dim=1).values <= threat.eps + 1e-6).all())


@pytest.mark.parametrize("threat", [LinfBall(0.0), L2Ball(0.0)], ids=["linf", "l2"])
def test_eps_zero_gives_clean_accuracy(model, evalset, threat):
    x, y = evalset[0][:40], evalset[1][:40]
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    for res in (apgd_ce(model, x, y, threat, steps=5, generator=seeded()),
                apgd_t(model, x, y, threat, steps=5, n_targets=2, generator=seeded())):
        assert torch.equal(res.x_adv, x)
        assert torch.equal(res.correct, clean)


# --------------------------------------------------------------------------- stacking, stopping


def test_stop_on_success_same_verdict_fewer_passes(model, evalset):
    x, y = evalset[0][:48], evalset[1][:48]
    for kwargs in ({"loss": "ce", "restarts": 2}, {"loss": "dlr", "n_targets": 2}):
        full = apgd(model, x, y, LinfBall(TRAIN_EPS), steps=30, generator=seeded(), **kwargs)
        lean = apgd(model, x, y, LinfBall(TRAIN_EPS), steps=30, generator=seeded(),
                    stop_on_success=True, max_batch=40, **kwargs)
        assert torch.equal(lean.correct, full.correct)
        assert 0 < (~full.correct).sum() < 48
        assert lean.passes < 0.9 * full.passes


def test_stacked_targets_equal_one_target_at_a_time(model, evalset):
    """One stacked batch of K*N rows gives what K separate single-target runs give."""
    x, y = evalset[0][:24], evalset[1][:24]
    kw = {"steps": 20, "n_targets": 3, "restarts": 1}
    stacked = apgd_t(model, x, y, LinfBall(TRAIN_EPS), generator=seeded(), **kw)
    for max_batch in (24, 17):  # one target per chunk; chunks straddling targets
        chunked = apgd_t(model, x, y, LinfBall(TRAIN_EPS), generator=seeded(),
                         max_batch=max_batch, **kw)
        assert torch.equal(chunked.correct, stacked.correct)
        assert torch.equal(chunked.target, stacked.target)
        torch.testing.assert_close(chunked.x_adv, stacked.x_adv, atol=1e-5, rtol=0)
        assert chunked.passes == stacked.passes


# --------------------------------------------------------------------------- contract


def test_model_mode_restored_and_parameter_grads_untouched(model, evalset):
    x, y = evalset[0][:8], evalset[1][:8]
    net = copy.deepcopy(model).train()
    params = list(net.parameters())
    params[0].grad = torch.full_like(params[0], 0.5)
    apgd_t(net, x, y, L2Ball(1.0), steps=5, n_targets=2, generator=seeded())
    assert net.training
    assert torch.equal(params[0].grad, torch.full_like(params[0], 0.5))
    assert all(p.grad is None for p in params[1:])


def test_batchnorm_statistics_untouched_for_a_training_mode_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                        nn.Linear(4 * 26 * 26, 8), nn.BatchNorm1d(8), nn.Linear(8, 10)).train()
    buffers = copy.deepcopy(list(net.buffers()))
    x, y = torch.rand(6, 1, 28, 28, generator=seeded()), torch.arange(6)
    apgd(net, x, y, LinfBall(0.1), steps=3, generator=seeded())
    assert net.training
    assert all(torch.equal(a, b) for a, b in zip(buffers, net.buffers(), strict=True))


def test_autocast_search_float32_verdict(model, evalset):
    x, y = evalset[0][:16], evalset[1][:16]
    res = apgd_ce(model, x, y, LinfBall(TRAIN_EPS), steps=10, autocast=torch.bfloat16,
                  generator=seeded())
    assert bool(LinfBall(TRAIN_EPS).contains(res.x_adv, x).all())
    with torch.no_grad():
        assert torch.equal(res.correct, model(res.x_adv).argmax(1) == y)
    assert res.logits.dtype == torch.float32


def test_same_generator_same_result(model, evalset):
    x, y = evalset[0][:16], evalset[1][:16]
    a = apgd(model, x, y, L2Ball(1.0), steps=8, restarts=2, generator=seeded(3))
    b = apgd(model, x, y, L2Ball(1.0), steps=8, restarts=2, generator=seeded(3))
    assert torch.equal(a.x_adv, b.x_adv)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps >= 1"),
    ({"restarts": 0}, "restarts >= 1"),
    ({"rho": 1.5}, "rho"),
    ({"momentum": 0.0}, "momentum"),
    ({"max_batch": 0}, "max_batch"),
    ({"n_targets": 10, "loss": "dlr"}, "at most 9 targets"),
    ({"n_targets": 2, "target": torch.zeros(4, dtype=torch.long)}, "not both"),
    ({"loss": "hinge"}, "unknown loss"),
])
def test_bad_settings_are_refused(model, evalset, kwargs, match):
    x, y = evalset[0][:4], evalset[1][:4]
    with pytest.raises(InputError, match=match):
        apgd(model, x, y, LinfBall(0.1), **kwargs)


def test_default_chunk_keeps_about_4_mb_of_images_per_chunk_on_cpu():
    from robustopt.attacks.core import default_chunk

    assert default_chunk(torch.zeros(2, 1, 28, 28)) == (1 << 20) // 784   # MNIST: 1,337 rows
    assert default_chunk(torch.zeros(2, 3, 32, 32)) == (1 << 20) // 3072  # CIFAR-10: 341
    assert default_chunk(torch.zeros(2, 3, 512, 512)) == 64               # never below 64
    assert default_chunk(torch.zeros(2, 1, 2, 2)) == 8192                 # nor above 8,192
