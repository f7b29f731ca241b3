"""Shared torchattacks helpers for the benchmarks: import it without scipy/torchvision, build
its AutoAttack-standard attacks with robustopt's budgets, run them and check their output.

torchattacks is optional: install it **without its dependencies**
(``pip install --no-deps torchattacks``; see benchmarks/README.md). It imports scipy at import
time (``scipy.stats`` for TIFGSM, ``scipy.optimize`` / ``scipy._lib._util`` for OnePixel); when
scipy is absent :func:`import_torchattacks` puts placeholder modules in ``sys.modules`` for
the duration of that one import only. None of the attacks used here (PGD, APGD, APGDT,
Square, MultiAttack) touches scipy; calling a placeholder raises.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
import types
from collections.abc import Iterator

import torch
from torch import nn

TA_NAMES = ("apgd-ce", "apgd-t", "square")  # robustopt's standard suite, in its order


def _scipy_stub() -> dict[str, types.ModuleType]:
    """Placeholder ``scipy`` modules with the names torchattacks imports at import time."""
    def missing(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("scipy is stubbed by benchmarks/_torchattacks.py; "
                           "this torchattacks attack needs the real scipy")

    mods = {name: types.ModuleType(name) for name in
            ("scipy", "scipy.stats", "scipy.optimize", "scipy._lib", "scipy._lib._util")}
    mods["scipy.optimize"].OptimizeResult = type("OptimizeResult", (dict,), {})
    mods["scipy.optimize"].minimize = missing
    mods["scipy._lib._util"].check_random_state = missing
    mods["scipy"].stats = mods["scipy.stats"]
    mods["scipy"].optimize = mods["scipy.optimize"]
    mods["scipy"]._lib = mods["scipy._lib"]
    mods["scipy._lib"]._util = mods["scipy._lib._util"]
    return mods


def import_torchattacks() -> tuple[types.ModuleType | None, str]:
    """``(module or None, one-line note)``; never installs anything."""
    if importlib.util.find_spec("torchattacks") is None:
        return None, ("torchattacks not installed: skipping its column "
                      "(install with: pip install --no-deps torchattacks)")
    stub = {}
    if importlib.util.find_spec("scipy") is None:
        stub = _scipy_stub()
        sys.modules.update(stub)  # only for the duration of the import below
    try:
        import torchattacks
    except Exception as err:  # any import failure just drops the column
        return None, f"torchattacks not importable ({type(err).__name__}: {err}): skipping it"
    finally:
        for name in stub:
            sys.modules.pop(name, None)
    note = f"torchattacks {getattr(torchattacks, '__version__', '?')}"
    if stub:
        note += (" (imported with a stub for scipy, which it imports at import time for "
                 "TIFGSM/OnePixel only; the attacks used here do not use scipy; torchvision "
                 "is not needed)")
    return torchattacks, note


# --------------------------------------------------------------------------- attacks


def build_attacks(ta: types.ModuleType, model: nn.Module, eps: float, *, seed: int,
                  classes: int = 10, steps: int = 100, queries: int = 5000) -> dict:
    """torchattacks' counterparts of robustopt's ``standard`` suite (AutoAttack standard
    without FAB-T), L-inf, with the same budgets:

    - ``apgd-ce``: ``APGD(loss="ce", steps=100, n_restarts=1, rho=0.75)``;
    - ``apgd-t``: ``APGDT(steps=100, n_restarts=1, n_classes=classes)``: targeted DLR towards
      each of the ``classes - 1`` most likely wrong classes (9 for MNIST), one after the
      other on the points still standing;
    - ``square``: ``Square(n_queries=5000, p_init=0.8, loss="margin", resc_schedule=False)``
      (AutoAttack's standard setting; torchattacks' own default rescales the schedule).

    torchattacks' defaults (steps=10) are *not* AutoAttack's, so every budget is explicit.
    Each attack reseeds torch's global generator with ``seed`` when called.
    """
    return {
        "apgd-ce": ta.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed,
                           loss="ce", rho=0.75),
        "apgd-t": ta.APGDT(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed,
                           rho=0.75, n_classes=classes),
        "square": ta.Square(model, norm="Linf", eps=eps, n_queries=queries, n_restarts=1,
                            p_init=0.8, loss="margin", resc_schedule=False, seed=seed),
    }


@contextlib.contextmanager
def count_rows(model: nn.Module) -> Iterator[list[int]]:
    """Per-example forward passes of ``model`` (rows of every top-level forward call)."""
    rows = [0]

    def hook(_m: nn.Module, args: tuple) -> None:
        rows[0] += int(args[0].shape[0])

    handle = model.register_forward_pre_hook(hook)
    try:
        yield rows
    finally:
        handle.remove()


def verify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, eps: float,
           batch_size: int = 1000, atol: float = 1e-6) -> dict:
    """Judge points an attack returned ourselves: a point counts as broken only if it lies in
    the L-inf ball (tolerance ``atol``) and the [0, 1] box, and the model (eval mode, float32,
    no grad) misclassifies it. Returns per-point masks ``broken``, ``outside``."""
    x_adv = x_adv.detach().float()
    dist = (x_adv - x).abs().flatten(1).amax(dim=1)
    outside = (dist > eps + atol) | (x_adv.flatten(1).amin(1) < -atol) \
        | (x_adv.flatten(1).amax(1) > 1 + atol)
    was = model.training
    model.eval()
    wrong = []
    with torch.no_grad():
        for lo in range(0, x.shape[0], batch_size):
            wrong.append(model(x_adv[lo:lo + batch_size]).argmax(1) != y[lo:lo + batch_size])
    model.train(was)
    return {"broken": torch.cat(wrong) & ~outside, "outside": outside,
            "max_dist": float(dist.max()) if dist.numel() else 0.0}


def run_attack(atk: object, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               batch_size: int) -> dict:
    """Run one torchattacks attack on every point (in chunks of ``batch_size``), timing it
    and counting the model's per-example forward passes. Returns ``x_adv``, ``time_s``
    (wall), ``cpu_s`` (this process's CPU time, all threads) and ``passes``."""
    out = []
    with count_rows(model) as rows:
        t0, c0 = time.perf_counter(), time.process_time()
        for lo in range(0, x.shape[0], batch_size):
            out.append(atk(x[lo:lo + batch_size], y[lo:lo + batch_size]).detach())
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"x_adv": torch.cat(out), "time_s": seconds, "cpu_s": cpu, "passes": rows[0]}


def run_chained(ta: types.ModuleType, attacks: dict, model: nn.Module, x: torch.Tensor,
                y: torch.Tensor, batch_size: int) -> dict:
    """torchattacks' own chaining: ``MultiAttack([APGD, APGDT, Square])`` runs each attack
    only on the points every earlier attack left correctly classified. Per-attack time and
    passes are recorded by wrapping each attack's ``forward``; the passes MultiAttack itself
    spends (one verification forward after each attack) go to ``multiattack``."""
    names = list(attacks)
    book = {n: {"time_s": 0.0, "passes": 0, "calls": 0, "rows_in": 0} for n in names}
    book["multiattack"] = {"time_s": 0.0, "passes": 0}
    counter = [0]
    for name in names:
        atk = attacks[name]

        def timed(images: torch.Tensor, labels: torch.Tensor, _name: str = name,
                  _fwd: object = atk.forward) -> torch.Tensor:
            c0, t0 = counter[0], time.perf_counter()
            adv = _fwd(images, labels)
            entry = book[_name]
            entry["time_s"] += time.perf_counter() - t0
            entry["passes"] += counter[0] - c0
            entry["calls"] += 1
            entry["rows_in"] += int(images.shape[0])
            return adv

        atk.forward = timed
    multi = ta.MultiAttack([attacks[n] for n in names])

    def hook(_m: nn.Module, args: tuple) -> None:
        counter[0] += int(args[0].shape[0])

    handle = model.register_forward_pre_hook(hook)
    out = []
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        for lo in range(0, x.shape[0], batch_size):
            out.append(multi(x[lo:lo + batch_size], y[lo:lo + batch_size]).detach())
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        handle.remove()
        for name in names:
            attacks[name].__dict__.pop("forward", None)  # back to the class's method
    total = counter[0]
    book["multiattack"]["passes"] = total - sum(book[n]["passes"] for n in names)
    book["multiattack"]["time_s"] = seconds - sum(book[n]["time_s"] for n in names)
    return {"x_adv": torch.cat(out), "time_s": seconds, "cpu_s": cpu, "passes": total,
            "per_attack": book}
