"""Attack suites: named, ordered lists of attack specs, and the specs themselves.

An :class:`AttackSpec` is a plain value naming one attack and its budget. A suite is
an ordered list of them; the evaluator runs it in order, each attack only on the
points every earlier attack left standing (survivor-only chaining, as AutoAttack
does), so the order matters for cost, never for the verdict.

Built-in suites (the same for L-inf and L2; budgets are AutoAttack's where they exist):

``quick``
    PGD-CE and PGD-margin (Carlini–Wagner), 50 steps, 3 restarts each.
``standard`` (the default)
    AutoAttack's standard version without FAB-T: APGD-CE (100 steps), APGD-T with the
    targeted DLR loss (100 steps, 9 target classes) and Square (5,000 queries,
    ``p_init`` 0.8, no schedule rescaling).
``strong``
    APGD-CE and untargeted APGD-DLR with 5 restarts each, APGD-T (9 targets), PGD-margin
    at three step sizes (0.1, 0.025 and 0.01 eps, 100 steps), targeted PGD-margin towards
    the 3 most likely wrong classes, APGD-CE with 5 restarts through sigmoid-backward
    ReLUs (``smooth`` 15: sees through ReLU thresholds that zero the gradient), and Square
    with 10,000 queries.

When a transfer source model is given, a transfer attack (PGD-CE, 100 steps, crafted
on the source) is appended to any named suite. Custom suites are lists of
:class:`AttackSpec`, of dicts with its fields, or of suite names (which stand for their
attacks), in Python or in a JSON file (:func:`read_suite_file`, ``--suite FILE.json``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..attacks.smooth import check_beta
from ..errors import InputError

ATTACKS = ("pgd", "apgd", "apgd-t", "square", "fgsm", "transfer")
LOSSES = ("ce", "margin", "dlr")
SUITE_NAMES = ("quick", "standard", "strong")
BUDGET_KEYS = ("steps", "restarts", "queries", "n_targets")

WHITE_BOX = ("pgd", "apgd", "apgd-t", "fgsm")
ITERATIVE = ("pgd", "apgd", "apgd-t")
BLACK_BOX = ("square", "transfer")


@dataclass(frozen=True)
class AttackSpec:
    """One attack of a suite and its budget.

    ``attack``: ``pgd`` | ``apgd`` | ``apgd-t`` | ``square`` | ``fgsm`` | ``transfer``.
    ``loss``: ``ce`` | ``margin`` | ``dlr`` (APGD-T always uses the targeted DLR loss,
    Square the margin loss unless told otherwise). ``steps`` and ``restarts`` are per
    run; ``step`` is the step size as a fraction of eps (``None``: the attack's default,
    2.5 eps / steps for PGD). ``n_targets``: for ``apgd-t`` the number of target classes
    (clamped to classes - 1), for ``pgd`` a targeted attack towards each of the
    ``n_targets`` most likely wrong classes of the clean point (0: untargeted).
    ``queries``, ``p_init`` and ``rescale_schedule`` are Square's. ``sanity`` marks the
    evaluator's own FGSM check. ``smooth`` (gradient attacks only): take the gradients
    through ReLUs whose backward pass is ``sigmoid(smooth * z)``
    (:func:`robustopt.attacks.smooth_backward`), for models whose ReLU thresholds mask
    plain gradients; the points are still judged by the model itself. ``name`` defaults to
    a readable label.
    """

    attack: str
    loss: str = "ce"
    steps: int = 100
    restarts: int = 1
    step: float | None = None
    n_targets: int = 0
    queries: int = 5000
    p_init: float = 0.8
    rescale_schedule: bool = False
    random_start: bool = True
    sanity: bool = False
    smooth: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        attack = str(self.attack).lower()
        object.__setattr__(self, "attack", attack)
        object.__setattr__(self, "loss", str(self.loss).lower())
        if attack not in ATTACKS:
            raise InputError(f"unknown attack {self.attack!r}: choose one of {', '.join(ATTACKS)}")
        if self.loss not in LOSSES:
            raise InputError(f"unknown loss {self.loss!r} for {attack}: choose one of "
                             f"{', '.join(LOSSES)}")
        for key in ("steps", "restarts", "queries"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{attack}: {key} must be an integer >= 1, got {value!r}")
        if isinstance(self.n_targets, bool) or not isinstance(self.n_targets, int) \
                or self.n_targets < 0:
            raise InputError(f"{attack}: n_targets must be an integer >= 0, got "
                             f"{self.n_targets!r}")
        if attack == "apgd-t" and self.n_targets < 1:
            raise InputError("apgd-t needs n_targets >= 1 (AutoAttack uses 9)")
        if self.step is not None and not (isinstance(self.step, (int, float))
                                          and 0 < float(self.step) <= 10):
            raise InputError(f"{attack}: step is a fraction of eps in (0, 10], got {self.step!r}")
        if isinstance(self.p_init, bool) or not isinstance(self.p_init, (int, float)) \
                or not 0 < self.p_init <= 1:
            raise InputError(f"square: p_init must be a number in (0, 1], got {self.p_init!r}")
        if self.smooth is not None:
            if attack not in WHITE_BOX:
                raise InputError(f"{attack}: smooth applies to gradient attacks only "
                                 f"({', '.join(WHITE_BOX)}); drop it from this spec")
            check_beta(self.smooth)
        if not self.name:
            object.__setattr__(self, "name", self._default_name())

    def _default_name(self) -> str:
        base = self._base_name()
        return base if self.smooth is None else f"{base}-smooth{self.smooth:g}"

    def _base_name(self) -> str:
        a = self.attack
        runs = f"x{self.restarts}" if self.restarts > 1 else ""
        if a == "fgsm":
            return "fgsm" + ("" if self.loss == "ce" else f"-{self.loss}")
        if a == "square":
            return f"square-{self.queries}" + runs
        if a == "apgd":
            return f"apgd-{self.loss}" + (f"-{self.steps}" if self.steps != 100 else "") + runs
        if a == "apgd-t":
            return "apgd-t" + (f"-{self.steps}" if self.steps != 100 else "") + runs
        if a == "transfer":
            return f"transfer-pgd-{self.loss}-{self.steps}" + runs
        kind = "pgd-t" if self.n_targets else "pgd"
        step = "" if self.step is None else f"@{self.step:g}eps"
        return f"{kind}-{self.loss}-{self.steps}{runs}{step}"

    # -- classification -----------------------------------------------------------------
    @property
    def white_box(self) -> bool:
        return self.attack in WHITE_BOX

    @property
    def iterative(self) -> bool:
        return self.attack in ITERATIVE

    @property
    def black_box(self) -> bool:
        return self.attack in BLACK_BOX

    @property
    def loss_family(self) -> str:
        """``ce`` or ``margin`` (margin and DLR: losses that do not saturate)."""
        if self.attack == "apgd-t":
            return "margin"
        return "ce" if self.loss == "ce" else "margin"

    def targets(self, classes: int) -> int:
        """Targeted runs per restart (1 for an untargeted attack)."""
        if self.attack == "apgd-t" or (self.attack == "pgd" and self.n_targets):
            return max(1, min(self.n_targets, classes - 1))
        return 1

    def full_passes(self, classes: int) -> int:
        """Per-example model passes of the full budget (no early stop), incl. verification.

        PGD: ``steps`` gradient passes plus a last no-gradient check per run, then one
        float32 verification pass per run. APGD: the clean pass, ``steps + 1`` per row and
        one verification. Square: ``1 + restarts * (queries - 1)`` queries plus one
        verification. FGSM: one gradient pass and one verification. Transfer: the PGD
        search on the source plus a verification on each model.
        """
        a, r = self.attack, self.restarts
        extra = 0 if self.smooth is None else 1  # the model's own verification
        if a == "fgsm":
            return 2 + extra
        if a == "pgd":
            return self.targets(classes) * r * (self.steps + 2 + extra)
        if a in ("apgd", "apgd-t"):
            return 2 + extra + self.targets(classes) * r * (self.steps + 1)
        if a == "square":
            return 2 + r * (self.queries - 1)
        return r * (self.steps + 1) + 2  # transfer

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> AttackSpec:
        if not isinstance(d, Mapping):
            raise InputError(f"an attack spec must be an AttackSpec or a dict, got "
                             f"{type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown attack spec field(s) {', '.join(map(str, unknown))}: "
                             f"valid fields are {', '.join(sorted(names))}")
        if "attack" not in d:
            raise InputError("an attack spec needs 'attack' (e.g. {'attack': 'pgd'})")
        return cls(**d)


def _quick() -> list[AttackSpec]:
    return [AttackSpec("pgd", "ce", steps=50, restarts=3),
            AttackSpec("pgd", "margin", steps=50, restarts=3)]


def _standard() -> list[AttackSpec]:
    return [AttackSpec("apgd", "ce", steps=100),
            AttackSpec("apgd-t", "dlr", steps=100, n_targets=9),
            AttackSpec("square", "margin", queries=5000, p_init=0.8, rescale_schedule=False)]


def _strong() -> list[AttackSpec]:
    return [AttackSpec("apgd", "ce", steps=100, restarts=5),
            AttackSpec("apgd-t", "dlr", steps=100, n_targets=9),
            AttackSpec("apgd", "dlr", steps=100, restarts=5),
            AttackSpec("pgd", "margin", steps=100, step=0.1),
            AttackSpec("pgd", "margin", steps=100, step=0.025),
            AttackSpec("pgd", "margin", steps=100, step=0.01),
            AttackSpec("pgd", "margin", steps=100, n_targets=3),
            AttackSpec("apgd", "ce", steps=100, restarts=5, smooth=15.0),
            AttackSpec("square", "margin", queries=10000, p_init=0.8, rescale_schedule=True)]


_SUITES = {"quick": _quick, "standard": _standard, "strong": _strong}

TRANSFER = AttackSpec("transfer", "ce", steps=100)


def apply_budget(spec: AttackSpec, budget: Mapping | None) -> AttackSpec:
    """``spec`` with the budget overrides that apply to its kind of attack."""
    if not budget:
        return spec
    changes: dict = {}
    if "steps" in budget and spec.attack in ("pgd", "apgd", "apgd-t", "transfer"):
        changes["steps"] = budget["steps"]
    if "restarts" in budget and spec.attack != "fgsm":
        changes["restarts"] = budget["restarts"]
    if "queries" in budget and spec.attack == "square":
        changes["queries"] = budget["queries"]
    if "n_targets" in budget and spec.n_targets:
        changes["n_targets"] = budget["n_targets"]
    if not changes:
        return spec
    # a default name follows the new budget; a name the caller chose is kept
    name = "" if spec.name == spec._default_name() else spec.name
    return dataclasses.replace(spec, **changes, name=name)


def get_suite(suite: str | Iterable[AttackSpec | Mapping] = "standard", *,
              transfer: bool = False, budget: Mapping | None = None) -> list[AttackSpec]:
    """The attack list of a named suite (or a custom list), with budget overrides.

    ``budget`` may set ``steps``, ``restarts``, ``queries`` and ``n_targets`` for every
    attack they apply to (for quick checks and tests). With ``transfer`` a transfer
    attack is appended to a named suite; a custom list must contain it explicitly.
    Names are made unique by a ``#2``, ``#3``... suffix.
    """
    if budget is not None:
        if not isinstance(budget, Mapping):
            raise InputError("budget must be a dict such as {'steps': 10, 'queries': 200}")
        unknown = sorted(set(budget) - set(BUDGET_KEYS))
        if unknown:
            raise InputError(f"unknown budget key(s) {', '.join(map(str, unknown))}: "
                             f"use {', '.join(BUDGET_KEYS)}")
    if isinstance(suite, str):
        key = suite.strip().lower()
        if key not in _SUITES:
            raise InputError(f"unknown suite {suite!r}: choose one of {', '.join(SUITE_NAMES)} "
                             "or pass a list of attack specs")
        specs = _SUITES[key]()
        if transfer:
            specs.append(TRANSFER)
    else:
        try:
            items = list(suite)
        except TypeError:
            raise InputError(f"suite must be a name or a list of attack specs, got "
                             f"{type(suite).__name__}") from None
        if not items:
            raise InputError("the attack list is empty: give at least one attack spec")
        specs = []
        for item in items:  # a suite name inside a list stands for that suite's attacks
            if isinstance(item, str):
                specs.extend(get_suite(item))
            else:
                specs.append(item if isinstance(item, AttackSpec) else AttackSpec.from_dict(item))
    specs = [apply_budget(s, budget) for s in specs]
    seen: dict[str, int] = {}
    out = []
    for s in specs:
        seen[s.name] = seen.get(s.name, 0) + 1
        if seen[s.name] > 1:
            s = dataclasses.replace(s, name=f"{s.name}#{seen[s.name]}")
        out.append(s)
    return out


def read_suite_file(path: str | Path) -> list:
    """A suite from a JSON file: a list whose items are attack-spec objects or suite names.

    E.g. ``["standard", {"attack": "pgd", "loss": "margin", "steps": 100, "restarts": 5}]``
    runs the standard suite and then PGD on the margin loss on its survivors. The file
    is parsed as JSON only (data, never code) and checked like any attack list.
    """
    path = Path(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(f"cannot read the suite file {path}: {err.strerror or err}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"the suite file {path} is not valid JSON ({err}): write a list of "
                         'attack specs such as [{"attack": "apgd", "loss": "ce"}]') from None
    if not isinstance(items, list):
        raise InputError(f"the suite file {path} must hold a JSON list of attack specs or "
                         f"suite names, not a {type(items).__name__}")
    get_suite(items)  # validate now: one clear error before any model is loaded
    return items


def suite_label(suite: str | Iterable) -> str:
    return suite.strip().lower() if isinstance(suite, str) else "custom"
