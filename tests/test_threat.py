"""Threat models: eps parsing, construction errors, projection, random start, ascent step."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustopt.errors import InputError
from robustopt.threat import L2Ball, LinfBall, ThreatModel, make_threat, parse_eps

FAST = settings(max_examples=40, deadline=None, derandomize=True)


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg, f"error message must be one line: {msg!r}"
    return msg


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- parse_eps / make_threat

@pytest.mark.parametrize(("text", "value"), [
    ("8/255", 8 / 255), (" 8/255 ", 8 / 255), ("0.3", 0.3), ("1", 1.0), ("0", 0.0),
    (0.5, 0.5), (2, 2.0), ("1e-2", 0.01), ("2/1", 2.0),
])
def test_parse_eps_numbers_and_fractions(text, value):
    assert parse_eps(text) == pytest.approx(value, rel=0, abs=1e-15)
    assert isinstance(parse_eps(text), float)


def test_parse_eps_fraction_is_exact():
    assert parse_eps("8/255") == 8 / 255
    assert parse_eps("1/3") == 1 / 3


@pytest.mark.parametrize("text", ["abc", "8/", "/255", "1/0", "", "8//255", "0.3.1"])
def test_parse_eps_rejects_garbage(text):
    with pytest.raises(InputError) as err:
        parse_eps(text)
    _one_line(err)


@pytest.mark.parametrize(("norm", "cls"), [
    ("linf", LinfBall), ("Linf", LinfBall), ("L-inf", LinfBall), ("inf", LinfBall),
    ("linfinity", LinfBall), ("l2", L2Ball), ("L2", L2Ball), ("2", L2Ball), ("l_2", L2Ball),
])
def test_make_threat_norm_names(norm, cls):
    threat = make_threat(norm, "8/255")
    assert type(threat) is cls
    assert threat.eps == 8 / 255
    assert threat.to_dict() == {"norm": cls.norm, "eps": 8 / 255}


@pytest.mark.parametrize(("norm", "eps"), [
    ("l1", "0.1"), ("l0", "1"), ("", "0.1"), ("linf", "x"), ("linf", "2"), ("linf", "-0.1"),
    ("l2", "-1"), ("linf", "256/255"), ("l2", "nan"), ("l2", "inf"),
])
def test_make_threat_errors(norm, eps):
    with pytest.raises(InputError) as err:
        make_threat(norm, eps)
    _one_line(err)


@pytest.mark.parametrize("cls", [LinfBall, L2Ball])
@pytest.mark.parametrize("eps", [-1e-9, -0.1, -1, float("nan"), float("inf"), -float("inf")])
def test_bad_eps_raises_input_error(cls, eps):
    with pytest.raises(InputError) as err:
        cls(eps)
    _one_line(err)


@pytest.mark.parametrize("eps", [1 + 1e-9, 1.5, 255, 8])
def test_linf_eps_above_one_raises(eps):
    with pytest.raises(InputError) as err:
        LinfBall(eps)
    assert "pixel" in _one_line(err)


def test_boundary_eps_accepted_and_l2_may_exceed_one():
    assert LinfBall(0).eps == 0.0
    assert LinfBall(1).eps == 1.0
    assert L2Ball(0).eps == 0.0
    assert L2Ball(5).eps == 5.0  # an L2 ball of radius > 1 is meaningful on a 784-pixel image
    assert isinstance(LinfBall(1).eps, float)


def test_threat_models_are_immutable_values():
    threat = LinfBall(0.3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        threat.eps = 0.5  # type: ignore[misc]
    assert LinfBall(0.3) == LinfBall(0.3)
    assert LinfBall(0.3) != L2Ball(0.3)
    assert hash(L2Ball(1.0)) == hash(L2Ball(1))
    with pytest.raises(TypeError):
        ThreatModel(0.1)  # abstract


# ---------------------------------------------------------------- projection (property-based)

@st.composite
def _point_pairs(draw, max_eps: float):
    """A clean x in [0,1], a candidate point anywhere (often far outside ball and box), eps."""
    seed = draw(st.integers(0, 2**31 - 1))
    n = draw(st.integers(1, 3))
    c = draw(st.sampled_from([1, 3]))
    h = draw(st.integers(1, 5))
    w = draw(st.integers(1, 5))
    eps = draw(st.one_of(st.sampled_from([0.0, max_eps]), st.floats(0, max_eps)))
    scale = draw(st.sampled_from([1e-4, 0.1, 1.0, 10.0]))
    g = _gen(seed)
    x = torch.rand(n, c, h, w, generator=g)
    x[torch.rand(x.shape, generator=g) < 0.2] = 0.0  # box edges, as in real images
    x[torch.rand(x.shape, generator=g) < 0.2] = 1.0
    z = x + scale * torch.randn(x.shape, generator=g)
    return x, z, eps


@FAST
@given(_point_pairs(max_eps=1.0))
def test_linf_project_lands_in_set(case):
    x, z, eps = case
    threat = LinfBall(eps)
    p = threat.project(z, x)
    assert p.shape == x.shape and p.dtype == x.dtype
    assert torch.isfinite(p).all()
    assert p.min() >= 0 and p.max() <= 1
    assert float((p - x).abs().max()) <= eps + 1e-6
    assert threat.contains(p, x).all()
    torch.testing.assert_close(threat.project(p, x), p, rtol=0, atol=1e-6)  # idempotent


@FAST
@given(_point_pairs(max_eps=4.0))
def test_l2_project_lands_in_set(case):
    x, z, eps = case
    threat = L2Ball(eps)
    p = threat.project(z, x)
    assert p.shape == x.shape and p.dtype == x.dtype
    assert torch.isfinite(p).all()
    assert p.min() >= 0 and p.max() <= 1
    norms = (p - x).flatten(1).norm(dim=1)
    assert (norms <= eps + 1e-6).all(), norms
    assert threat.contains(p, x).all()
    torch.testing.assert_close(threat.project(p, x), p, rtol=0, atol=1e-6)


@pytest.mark.parametrize("threat", [LinfBall(0.0), L2Ball(0.0)])
def test_project_with_eps_zero_returns_x_exactly(threat):
    g = _gen(0)
    x = torch.rand(4, 3, 5, 5, generator=g)
    z = x + torch.randn(x.shape, generator=g)
    assert torch.equal(threat.project(z, x), x)
    assert torch.equal(threat.random_start(x, g), x)


@FAST
@given(st.integers(0, 2**31 - 1), st.sampled_from([1, 3]), st.floats(0.01, 3.0))
def test_l2_point_inside_is_unchanged(seed, c, eps):
    g = _gen(seed)
    x = torch.rand(3, c, 4, 4, generator=g) * 0.5 + 0.25
    delta = torch.randn(x.shape, generator=g)
    # radius at most 0.9 eps and each coordinate at most 0.2: inside ball and box
    delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    delta = delta * torch.rand(3, 1, 1, 1, generator=g) * min(0.9 * eps, 0.2)
    z = x + delta
    # unchanged up to the one rounding of (z - x) + x
    torch.testing.assert_close(L2Ball(eps).project(z, x), z, rtol=0, atol=1e-7)


@FAST
@given(st.integers(0, 2**31 - 1), st.sampled_from([1, 3]), st.floats(0.0, 1.0))
def test_linf_point_inside_is_unchanged(seed, c, eps):
    g = _gen(seed)
    x = torch.rand(3, c, 4, 4, generator=g)
    z = (x + (2 * torch.rand(x.shape, generator=g) - 1) * eps).clamp(0, 1)
    torch.testing.assert_close(LinfBall(eps).project(z, x), z, rtol=0, atol=1e-7)


@FAST
@given(st.integers(0, 2**31 - 1), st.sampled_from([1, 3]), st.floats(0.01, 0.5),
       st.floats(1.01, 100.0))
def test_l2_point_outside_lands_on_sphere_when_box_does_not_bind(seed, c, eps, factor):
    g = _gen(seed)
    x = torch.full((3, c, 4, 4), 0.5)  # every coordinate of a radius-eps<=0.5 step stays in box
    delta = torch.randn(x.shape, generator=g)
    delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps * factor
    p = L2Ball(eps).project(x + delta, x)
    d = p - x
    torch.testing.assert_close(d.flatten(1).norm(dim=1), torch.full((3,), eps),
                               rtol=1e-5, atol=1e-6)
    # same direction: the projection of a point outside is a radial scaling
    cos = (d.flatten(1) * delta.flatten(1)).sum(1) / (d.flatten(1).norm(dim=1) * eps * factor)
    torch.testing.assert_close(cos, torch.ones(3), rtol=0, atol=1e-5)


def test_linf_project_is_coordinatewise_clip():
    x = torch.tensor([[[[0.0, 0.5, 1.0, 0.9]]]])
    z = torch.tensor([[[[-1.0, 0.95, 0.2, 2.0]]]])
    p = LinfBall(0.3).project(z, x)
    torch.testing.assert_close(p, torch.tensor([[[[0.0, 0.8, 0.7, 1.0]]]]))


# ---------------------------------------------------------------- random start

def _ks_distance(samples: torch.Tensor, cdf) -> float:
    """Kolmogorov-Smirnov statistic of ``samples`` against a continuous CDF."""
    s = samples.double().sort().values
    n = s.numel()
    f = cdf(s)
    hi = torch.arange(1, n + 1, dtype=torch.float64) / n
    lo = torch.arange(0, n, dtype=torch.float64) / n
    return float(torch.maximum(hi - f, f - lo).max())


@pytest.mark.parametrize("d", [1, 2, 3])
def test_l2_random_start_radius_is_uniform_in_volume(d):
    n, eps = 4000, 0.4  # x = 0.5 and eps < 0.5: the box never clips
    x = torch.full((n, 1, 1, d), 0.5)
    start = L2Ball(eps).random_start(x, _gen(d))
    r = (start - x).flatten(1).norm(dim=1) / eps
    assert (r <= 1 + 1e-6).all()
    # KS critical value at alpha = 0.001 is 1.95 / sqrt(n) ~ 0.031; seeds are fixed.
    bound = 1.95 / math.sqrt(n)
    assert _ks_distance(r, lambda t: t.clamp(0, 1) ** d) < bound
    if d > 1:  # and the test has the power to tell uniform-in-radius apart
        assert _ks_distance(r, lambda t: t.clamp(0, 1)) > 3 * bound


@pytest.mark.parametrize("d", [2, 3])
def test_l2_random_start_direction_is_isotropic(d):
    n = 4000
    x = torch.full((n, 1, 1, d), 0.5)
    delta = (L2Ball(0.4).random_start(x, _gen(10 + d)) - x).flatten(1)
    unit = delta / delta.norm(dim=1, keepdim=True)
    bound = 1.95 / math.sqrt(n)
    if d == 2:  # angle uniform on (-pi, pi]
        angle = torch.atan2(unit[:, 1], unit[:, 0]).double()
        assert _ks_distance(angle, lambda t: (t + math.pi) / (2 * math.pi)) < bound
    else:  # Archimedes: each coordinate of a uniform point on S^2 is uniform on [-1, 1]
        for k in range(3):
            assert _ks_distance(unit[:, k], lambda t: (t + 1) / 2) < bound
    assert unit.mean(0).abs().max() < 0.05


@pytest.mark.parametrize("shape", [(64, 1, 28, 28), (16, 3, 8, 8)])
@pytest.mark.parametrize("eps", [0.5, 2.0, 30.0])
def test_l2_random_start_inside_set_in_high_dimension(shape, eps):
    g = _gen(1)
    x = torch.rand(shape, generator=g)
    x[:, :, :2] = 0.0
    x[:, :, -2:] = 1.0
    threat = L2Ball(eps)
    start = threat.random_start(x, g)
    assert start.min() >= 0 and start.max() <= 1
    assert ((start - x).flatten(1).norm(dim=1) <= eps + 1e-6).all()
    assert threat.contains(start, x).all()
    assert not torch.equal(start, x)


def test_linf_random_start_is_uniform_per_coordinate_before_clipping():
    eps = 0.3
    x = torch.full((200, 1, 10, 10), 0.5)  # 0.5 +- 0.3 never leaves the box
    delta = (LinfBall(eps).random_start(x, _gen(3)) - x).flatten()
    assert delta.numel() == 20000
    assert delta.abs().max() <= eps + 1e-6
    assert float(delta.min()) < -eps * 0.995 and float(delta.max()) > eps * 0.995
    assert abs(float(delta.mean())) < 0.01 * eps * 3  # sd of the mean: eps/sqrt(3n)
    assert float(delta.var()) == pytest.approx(eps**2 / 3, rel=0.05)
    bound = 1.95 / math.sqrt(delta.numel())
    assert _ks_distance(delta[:4000], lambda t: ((t + eps) / (2 * eps)).clamp(0, 1)) < bound


def test_linf_random_start_clipped_to_box():
    x = torch.cat([torch.zeros(50, 1, 4, 4), torch.ones(50, 1, 4, 4)])
    threat = LinfBall(0.5)
    start = threat.random_start(x, _gen(4))
    assert start.min() >= 0 and start.max() <= 1
    assert threat.contains(start, x).all()
    assert (start[:50] > 0).any() and (start[50:] < 1).any()


@pytest.mark.parametrize("threat", [LinfBall(0.2), L2Ball(1.0)])
def test_random_start_generator_reproducible_and_leaves_global_rng_alone(threat):
    x = torch.rand(8, 3, 6, 6, generator=_gen(5))
    state = torch.get_rng_state()
    a = threat.random_start(x, _gen(7))
    b = threat.random_start(x, _gen(7))
    c = threat.random_start(x, _gen(8))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # without a generator it uses (and advances) the global RNG
    torch.manual_seed(0)
    d = threat.random_start(x)
    torch.manual_seed(0)
    assert torch.equal(d, threat.random_start(x))
    assert threat.contains(d, x).all()


@pytest.mark.parametrize("threat", [LinfBall(0.2), L2Ball(1.0)])
def test_random_start_keeps_dtype(threat):
    x = torch.rand(4, 1, 5, 5, generator=_gen(6), dtype=torch.float64)
    start = threat.random_start(x, _gen(0))
    assert start.dtype == torch.float64
    assert threat.contains(start, x).all()


# ---------------------------------------------------------------- ascent direction and step

def test_linf_ascent_direction_is_sign():
    g = torch.tensor([[[[-2.0, 0.0, 3e-9, 5.0]]]])
    assert torch.equal(LinfBall(0.1).ascent_direction(g), torch.tensor([[[[-1.0, 0, 1, 1]]]]))


def test_l2_ascent_direction_is_unit_per_example_and_zero_safe():
    g = torch.randn(5, 3, 4, 4, generator=_gen(9)) * torch.tensor([1e-6, 1, 10, 1e6, 0]).view(
        -1, 1, 1, 1)
    d = L2Ball(1.0).ascent_direction(g)
    norms = d.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms[:4], torch.ones(4), rtol=1e-5, atol=1e-5)
    assert torch.equal(d[4], torch.zeros_like(d[4]))  # zero gradient: no step, no NaN
    cos = (d[:4].flatten(1) * g[:4].flatten(1)).sum(1) / g[:4].flatten(1).norm(dim=1)
    torch.testing.assert_close(cos, torch.ones(4), rtol=1e-5, atol=1e-5)


@FAST
@given(_point_pairs(max_eps=1.0), st.floats(0, 2.0), st.booleans())
def test_step_stays_in_set_and_in_place_step_equals_it(case, step_size, l2):
    x, z, eps = case
    threat = L2Ball(eps * 3) if l2 else LinfBall(eps)
    start = threat.project(z, x)
    grad = torch.randn(x.shape, generator=_gen(int(step_size * 1000)))
    grad[0].zero_()  # a zero gradient must not move the point either way
    nxt = threat.step(start, x, grad, step_size)
    assert threat.contains(nxt, x).all()
    # the attack core's in-place step: same values bit for bit
    assert torch.equal(threat.step_(start.clone(), x.clone(), grad.clone(), step_size), nxt)
    bounds = threat.bounds(x)
    if bounds is not None:  # with precomputed bounds, x is not needed, here or in the base
        assert torch.equal(threat.step_(start.clone(), None, grad.clone(), step_size, bounds),
                           nxt)
        assert torch.equal(ThreatModel.step_(threat, start.clone(), None, grad.clone(),
                                             step_size, bounds), nxt)
    # with out=, the result lands there and the current point is left as it was
    for step_ in (threat.step_, lambda *a, **k: ThreatModel.step_(threat, *a, **k)):
        kept, out = start.clone(), torch.full_like(start, -1.0)
        got = step_(kept, x.clone(), grad.clone(), step_size, bounds, out=out)
        assert got.data_ptr() == out.data_ptr() and torch.equal(out, nxt)
        assert torch.equal(kept, start)


def test_linf_step_increases_a_linear_objective():
    x = torch.full((2, 1, 3, 3), 0.5)
    w = torch.randn(2, 1, 3, 3, generator=_gen(11))
    threat = LinfBall(0.1)
    nxt = threat.step(x, x, w, 0.1)
    # the steepest L-inf ascent of <w, .> gains exactly eps * ||w||_1
    gain = ((nxt - x) * w).flatten(1).sum(1)
    torch.testing.assert_close(gain, 0.1 * w.flatten(1).abs().sum(1), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- contains / distance

def test_contains_flags_each_violation():
    x = torch.full((7, 1, 2, 2), 0.5)
    z = x.clone()
    z[1, 0, 1, 1] = float("nan")  # anywhere in the row, not only first
    z[2, 0, 0, 0] = 1.2  # outside the box (and the ball)
    z[3, 0, 0, 0] = 0.5 + 0.2  # outside the ball only
    z[4, 0, 0, 0] = 0.5 + 0.1 + 1e-7  # within the tolerance
    z[5, 0, 1, 0] = float("inf")
    z[6, 0, 0, 1] = float("-inf")
    expected = [True, False, False, False, True, False, False]
    assert LinfBall(0.1).contains(z, x).tolist() == expected
    assert L2Ball(0.1).contains(z, x).tolist() == expected
    # a ball wider than the box: only the box (and finiteness) can reject
    assert LinfBall(1.0).contains(z, x).tolist() == [True, False, False, True, True, False, False]
    empty = torch.zeros(2, 0, 3, 3)  # no coordinates: vacuously inside (the L2 norm is 0)
    assert L2Ball(0.1).contains(empty, empty).tolist() == [True, True]


def test_distance_per_example():
    x = torch.zeros(2, 1, 2, 2)
    z = torch.tensor([[0.3, 0.4, 0.0, 0.0], [0.1, 0.1, 0.1, 0.1]]).view(2, 1, 2, 2)
    torch.testing.assert_close(L2Ball(1).distance(z, x), torch.tensor([0.5, 0.2]))
    torch.testing.assert_close(LinfBall(1).distance(z, x), torch.tensor([0.4, 0.1]))
