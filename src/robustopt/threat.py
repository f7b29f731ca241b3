"""Perturbation sets: the ``P(x)`` of the robust-optimization objective.

A threat model is a small immutable value. It knows the three things every
first-order attack needs from its set (project, draw a random start, pick the
steepest-ascent direction) and how to check membership, so attacks never
special-case a norm. Every set is intersected with the [0, 1] image box.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import torch

from .errors import InputError

_TINY = 1e-12


def parse_eps(text: str | float | int) -> float:
    """Parse an epsilon given as a number or a fraction such as ``"8/255"``."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        try:
            value = float(Fraction(text.strip())) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            raise InputError(
                f"cannot read eps {text!r}: give a number or a fraction such as 8/255"
            ) from None
    return value


def _per_example_norm(t: torch.Tensor, p: float) -> torch.Tensor:
    return t.flatten(1).norm(p=p, dim=1)


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _draw(shape: torch.Size | tuple, like: torch.Tensor, generator: torch.Generator | None,
          normal: bool = False) -> torch.Tensor:
    """Random numbers on ``like``'s device/dtype, drawn on the generator's own device."""
    device = generator.device if generator is not None else like.device
    fn = torch.randn if normal else torch.rand
    out = fn(shape, generator=generator, device=device, dtype=torch.float32)
    return out.to(device=like.device, dtype=like.dtype)


@dataclass(frozen=True)
class ThreatModel(ABC):
    """A norm ball of radius ``eps`` around each clean point, within the [0, 1] box."""

    eps: float

    norm: ClassVar[str] = "none"  # set by each subclass; used in reports and files

    def __post_init__(self) -> None:
        eps = float(self.eps)
        if not math.isfinite(eps) or eps < 0:
            raise InputError(f"eps must be a finite number >= 0, got {self.eps!r}")
        object.__setattr__(self, "eps", eps)

    @abstractmethod
    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Map ``x_adv`` to a point of the set around ``x`` (and of the box)."""

    @abstractmethod
    def random_start(self, x: torch.Tensor, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
        """A point drawn uniformly from the ball around ``x``, then put in the box."""

    @abstractmethod
    def ascent_direction(self, grad: torch.Tensor) -> torch.Tensor:
        """The unit-norm steepest-ascent direction for this norm."""

    @abstractmethod
    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-example distance in this norm."""

    def step(self, x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor,
             step_size: float | torch.Tensor) -> torch.Tensor:
        """One projected steepest-ascent step."""
        return self.project(x_adv + step_size * self.ascent_direction(grad), x)

    def step_(self, x_adv: torch.Tensor, x: torch.Tensor | None, grad: torch.Tensor,
              step_size: float, bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`step` that may overwrite ``x_adv`` and ``grad`` (the attack core's hot
        loop owns both): same values, no new buffers where the norm allows it. ``bounds``
        is :meth:`bounds` of ``x``, computed once per attack rather than once per step;
        ``x`` may then be None. With ``out`` the result goes there and ``x_adv`` is kept:
        the tracked search steps from a buffered iterate that may still be the best, so a
        subclass that overrides this method must accept ``out`` too."""
        if bounds is not None:  # the set is the box ``bounds``: projecting is clamping
            stepped = torch.clamp(x_adv + step_size * self.ascent_direction(grad), *bounds)
        else:
            stepped = self.step(x_adv, x, grad, step_size)
        return stepped if out is None else out.copy_(stepped)

    def bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-coordinate ``(lower, upper)`` bounds of the set around ``x``, if it is a box."""
        return None

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor, atol: float = 1e-6
                 ) -> torch.Tensor:
        """Per-example membership test (finite, inside the box, within eps)."""
        flat = x_adv.flatten(1)
        # Per-row min and max propagate NaN (every comparison with it is False) and see
        # +-inf outside the box, so this one test is "finite and in the box" in two cheap
        # reductions rather than an isfinite pass and two comparison passes.
        if flat.shape[1] == 0:  # no coordinates: vacuously in the box (amin needs one)
            in_box = torch.ones(flat.shape[0], dtype=torch.bool, device=flat.device)
        else:
            in_box = (flat.amin(dim=1) >= 0) & (flat.amax(dim=1) <= 1)
        # float32 rounding of a norm over many pixels grows with eps: allow 1e-5 relative
        near = self.distance(x_adv.float(), x.float()) <= self.eps * (1 + 1e-5) + atol
        return in_box & near

    def to_dict(self) -> dict:
        return {"norm": self.norm, "eps": self.eps}


@dataclass(frozen=True)
class LinfBall(ThreatModel):
    """``{x' : ||x' - x||_inf <= eps} ∩ [0, 1]^d``; projection is exact (coordinate-wise)."""

    norm: ClassVar[str] = "linf"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eps > 1:
            raise InputError(
                f"L-inf eps {self.eps:g} exceeds 1, the whole [0, 1] image range: "
                "give eps in pixel units, e.g. 0.3 or 8/255"
            )

    def bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the ball and the box intersect in a box: [max(x - eps, 0), min(x + eps, 1)]
        return (x - self.eps).clamp_(min=0.0), (x + self.eps).clamp_(max=1.0)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # One clamp to the box of bounds(): a point already inside comes back bit for bit
        # (x + (x_adv - x) would round), and the step below is this same clamp in place.
        return torch.clamp(x_adv, *self.bounds(x))

    def step_(self, x_adv: torch.Tensor, x: torch.Tensor | None, grad: torch.Tensor,
              step_size: float, bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
        # x + a * sign(g) is exact in one fused op (a * ±1 needs no rounding), so this
        # equals step() bit for bit in three passes over the batch and no new tensor.
        lo, hi = bounds if bounds is not None else self.bounds(x)
        return torch.add(x_adv, grad.sign_(), alpha=step_size,
                         out=x_adv if out is None else out).clamp_(lo, hi)

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
        noise = _draw(x.shape, x, generator)
        return self.project(x + (2 * noise - 1) * self.eps, x)

    def ascent_direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # max |d| is the inf-norm exactly (and keeps NaN); the generic norm kernel is ~5x slower
        return (x_adv - x).flatten(1).abs().amax(dim=1)


@dataclass(frozen=True)
class L2Ball(ThreatModel):
    """``{x' : ||x' - x||_2 <= eps} ∩ [0, 1]^d``.

    Projection scales onto the ball and then clips to the box. Clipping moves
    every coordinate towards the clean point (which is in the box), so it never
    leaves the ball: the result is always feasible, as in foolbox and AutoAttack.
    """

    norm: ClassVar[str] = "l2"

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        delta = x_adv - x
        norms = _per_example_norm(delta, 2)
        factor = torch.clamp(self.eps / (norms + _TINY), max=1.0)
        return (x + delta * _expand(factor, delta)).clamp(0.0, 1.0)

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
        n, d = x.shape[0], x[0].numel()
        direction = _draw(x.shape, x, generator, normal=True)
        direction = direction / _expand(_per_example_norm(direction, 2) + _TINY, direction)
        u = _draw((n,), x, generator)
        radius = self.eps * u.pow(1.0 / d)  # uniform in volume, not in radius
        return self.project(x + direction * _expand(radius, direction), x)

    def ascent_direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad / _expand(_per_example_norm(grad, 2) + _TINY, grad)

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _per_example_norm(x_adv - x, 2)


NORMS = {"linf": LinfBall, "l2": L2Ball}


def make_threat(norm: str, eps: str | float) -> ThreatModel:
    """Build a threat model from command-line words (``"linf"``, ``"8/255"``)."""
    key = norm.lower().replace("-", "").replace("_", "")
    key = {"inf": "linf", "linfinity": "linf", "2": "l2"}.get(key, key)
    if key not in NORMS:
        raise InputError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")
    return NORMS[key](parse_eps(eps))
