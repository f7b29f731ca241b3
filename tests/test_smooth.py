"""Backward smoothing: same forward, sigmoid backward, and it sees through ReLU thresholds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustopt.attacks import apgd, pgd, smooth_backward, smoothed
from robustopt.attacks.smooth import SmoothBackwardReLU
from robustopt.errors import InputError
from robustopt.evaluate import AttackSpec, evaluate
from robustopt.models import build_model
from robustopt.threat import LinfBall
from robustopt.train import TrainConfig
from robustopt.train.adversary import adversarial_batch, search_model

EPS = 0.3
MNIST = {"mean": (0.1307,), "std": (0.3081,)}
CIFAR = {"mean": (0.49, 0.48, 0.45), "std": (0.25, 0.24, 0.26)}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def threshold_model() -> nn.Module:
    """Class 1 wins only if most of the 64 pixels exceed 0.75: from 0.5 with eps 0.3 every
    pixel can reach 0.8, but a pixel below 0.75 has an exactly zero gradient."""
    hidden = nn.Linear(64, 64)
    head = nn.Linear(64, 2)
    with torch.no_grad():
        hidden.weight.copy_(torch.eye(64))
        hidden.bias.fill_(-0.75)
        head.weight.zero_()
        head.weight[1].fill_(1.0)
        head.bias.copy_(torch.tensor([1.6, 0.0]))  # needs sum(relu(x - 0.75)) > 1.6 of 3.2
    return nn.Sequential(nn.Flatten(), hidden, nn.ReLU(), head).eval()


def threshold_batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n, 1, 8, 8), 0.5), torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize("name, kwargs", [("small-mnist", {"width": 1}), ("madry-mnist", {}),
                                          ("cifar-cnn", {"width": 8})])
def test_forward_is_the_models_bit_for_bit(name, kwargs):
    torch.manual_seed(0)
    cifar = name.startswith("cifar")
    model = build_model(name, **(CIFAR if cifar else MNIST), **kwargs).eval()
    side, c = (32, 3) if cifar else (28, 1)
    x = torch.rand(6, c, side, side)
    surrogate = smooth_backward(model, 10.0)
    with torch.no_grad():
        assert torch.equal(surrogate(x), model(x))
    assert any(isinstance(m, SmoothBackwardReLU) for m in surrogate.modules())
    assert any(isinstance(m, nn.ReLU) for m in model.modules())  # the model is untouched


def test_weights_are_shared_not_copied():
    model = build_model("small-mnist", **MNIST).eval()
    surrogate = smooth_backward(model, 5.0)
    assert {id(p) for p in surrogate.parameters()} == {id(p) for p in model.parameters()}
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        model.net[0].weight.mul_(2.0)  # a change to the model is seen by the surrogate
        assert torch.equal(surrogate(x), model(x))


@pytest.mark.parametrize("beta", [1.0, 10.0, 50.0])
def test_backward_is_the_softplus_gradient(beta):
    z = torch.randn(200, dtype=torch.float64, requires_grad=True)
    out = SmoothBackwardReLU(beta)(z)
    assert torch.equal(out, z.relu())
    (g,) = torch.autograd.grad(out.sum(), z)
    zz = z.detach().clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(nn.functional.softplus(zz, beta=beta).sum(), zz)
    torch.testing.assert_close(g, ref)


@pytest.mark.parametrize("attack", [pgd, apgd])
def test_smoothing_breaks_what_a_zero_gradient_hides(attack):
    model, (x, y) = threshold_model(), threshold_batch()
    threat = LinfBall(EPS)
    kw = {"steps": 20, "generator": _gen(0)}
    plain = attack(model, x, y, threat, **kw)
    smooth = smoothed(model, x, y, threat, beta=10.0, attack=attack, **kw)
    assert plain.correct.all(), "the threshold should stop plain gradients"
    assert not smooth.correct.any()
    assert threat.contains(smooth.x_adv, x).all()
    with torch.no_grad():  # the verdict is the real model's
        assert torch.equal(smooth.correct, model(smooth.x_adv).argmax(1) == y)


def test_evaluator_runs_smoothed_specs_and_counts_their_passes():
    model, (x, y) = threshold_model(), threshold_batch()
    suite = [{"attack": "apgd", "loss": "ce", "steps": 20},
             {"attack": "apgd", "loss": "ce", "steps": 20, "smooth": 10}]
    res = evaluate(model, x, y, LinfBall(EPS), suite, sanity=False)
    plain, smooth = res.attacks
    assert smooth.name == "apgd-ce-20-smooth10"
    assert plain.broke == 0 and smooth.broke == len(y) and res.robust_accuracy == 0.0
    assert smooth.passes > 3 * len(y)  # the search on the copy counts, not only verdicts
    assert set(res.broken_by) == {"apgd-ce-20-smooth10"}


@pytest.mark.parametrize("beta", [0, -1.0, float("nan"), float("inf"), True, "10"])
def test_bad_beta_is_one_line_input_error(beta):
    with pytest.raises(InputError, match="beta"):
        smooth_backward(threshold_model(), beta)


def test_model_without_relu_modules_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with pytest.raises(InputError, match="no nn.ReLU"):
        smooth_backward(model, 10.0)


@pytest.mark.parametrize("spec, word", [({"attack": "square", "smooth": 10}, "gradient"),
                                        ({"attack": "apgd", "smooth": 0}, "smooth"),
                                        ({"attack": "pgd", "smooth": "x"}, "smooth")])
def test_bad_smooth_spec_is_one_line_input_error(spec, word):
    with pytest.raises(InputError, match=word):
        AttackSpec.from_dict(spec)


def test_training_adversary_searches_through_the_smoothed_copy():
    model, (x, y) = threshold_model(), threshold_batch()
    found = {}
    for beta in (0.0, 10.0):
        cfg = TrainConfig(adversary="pgd", eps=EPS, attack_steps=7, attack_step_size=0.1,
                          attack_smooth=beta)
        search = search_model(cfg, model)
        assert (search is model) == (beta == 0)
        x_adv = adversarial_batch(cfg, model, x, y, EPS, _gen(0), None, search)
        assert LinfBall(EPS).contains(x_adv, x).all()
        with torch.no_grad():
            found[beta] = int((model(x_adv).argmax(1) != y).sum())
    assert found == {0.0: 0, 10.0: len(y)}


def test_smooth_share_splits_the_batch_between_the_two_searches():
    model, (x, y) = threshold_model(), threshold_batch(10)
    cfg = TrainConfig(adversary="pgd", eps=EPS, attack_steps=7, attack_step_size=0.1,
                      attack_smooth=10.0, attack_smooth_share=0.3)
    x_adv = adversarial_batch(cfg, model, x, y, EPS, _gen(0), None, search_model(cfg, model))
    with torch.no_grad():
        broken = (model(x_adv).argmax(1) != y).tolist()
    assert broken == [True] * 3 + [False] * 7  # only the smoothed share gets past the threshold


def test_evaluator_skips_smoothing_for_a_model_without_relu_modules():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 3, (6,))
    res = evaluate(model, x, y, LinfBall(0.1), "strong", budget={"steps": 3, "queries": 20,
                                                                 "restarts": 1}, sanity=False)
    skipped = {a.name: a.skipped for a in res.attacks if a.skipped}
    assert list(skipped) == ["apgd-ce-3-smooth15"] and "no nn.ReLU" in skipped["apgd-ce-3-smooth15"]
    assert res.attacks[0].attacked > 0  # the plain attacks still run
