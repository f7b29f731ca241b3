"""Build models by name, and recover the spec a model was built from so it can be saved.

A saved model is (arch name, keyword arguments, mean, std) plus weights; keeping the
spec on the module (``model.robustopt_spec``) lets ``save_model`` write a
self-describing file without the caller repeating how the model was made.
"""

from __future__ import annotations

import copy
import inspect
import numbers
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from torch import nn

from robustopt.errors import RobustOptError
from robustopt.models.cifar_cnn import cifar_cnn
from robustopt.models.mnist import madry_mnist, small_mnist, trades_mnist
from robustopt.models.normalize import Normalize, check_stats
from robustopt.models.resnet import preact_resnet18
from robustopt.models.wide_resnet import wide_resnet

__all__ = ["MODEL_NAMES", "SPEC_ATTR", "build_model", "model_arguments", "model_spec"]

# Never mutated: a read-only view of name -> constructor.
_CONSTRUCTORS: Mapping[str, Callable[..., nn.Module]] = MappingProxyType(
    {
        "madry-mnist": madry_mnist,
        "small-mnist": small_mnist,
        "trades-mnist": trades_mnist,
        "preact-resnet18": preact_resnet18,
        "wide-resnet": wide_resnet,
        "cifar-cnn": cifar_cnn,
    }
)

MODEL_NAMES: tuple[str, ...] = tuple(_CONSTRUCTORS)
SPEC_ATTR = "robustopt_spec"


def _constructor(name: str) -> Callable[..., nn.Module]:
    try:
        return _CONSTRUCTORS[name]
    except (KeyError, TypeError):
        raise RobustOptError(
            f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}"
        ) from None


def model_arguments(name: str) -> dict[str, Any]:
    """Keyword arguments a model accepts, with their defaults (for help text and checks)."""
    params = inspect.signature(_constructor(name)).parameters
    return {k: p.default for k, p in params.items()}


def _resolve_kwargs(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """All arguments with defaults filled in, so the saved spec does not depend on
    defaults that a later version might change. Every argument is a positive int."""
    defaults = model_arguments(name)
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in defaults.items())
        raise RobustOptError(
            f"unknown argument(s) {', '.join(unknown)} for model {name!r}; valid arguments: {valid}"
        )
    resolved = dict(defaults)
    for key, value in kwargs.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise RobustOptError(
                f"argument {key} of model {name!r} must be an integer >= 1, got {value!r}; "
                f"the default is {defaults[key]!r}"
            )
        resolved[key] = int(value)
    return resolved


def build_model(
    name: str, *, mean: Sequence[float], std: Sequence[float], **kwargs: Any
) -> nn.Sequential:
    """Return ``nn.Sequential(normalize=Normalize(mean, std), net=<arch>)`` taking [0, 1] images.

    ``in_channels`` defaults to ``len(mean)``. The spec used is stored as a plain dict in
    ``model.robustopt_spec`` (see ``model_spec``) so the model can be saved self-describing.
    """
    ctor = _constructor(name)
    m, s = check_stats(mean, std)
    if "in_channels" in model_arguments(name):
        kwargs.setdefault("in_channels", len(m))
    resolved = _resolve_kwargs(name, kwargs)
    channels = resolved.get("in_channels")
    if channels is not None and len(m) not in (1, channels):
        raise RobustOptError(
            f"mean/std have {len(m)} channels but model {name!r} has in_channels={channels}; "
            "give one mean/std value per input channel"
        )
    net = ctor(**resolved)
    model = nn.Sequential(OrderedDict(normalize=Normalize(m, s), net=net))
    spec = {"arch": name, "kwargs": resolved, "mean": list(m), "std": list(s)}
    setattr(model, SPEC_ATTR, spec)
    return model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module a robustopt spec lives on, looking through torch.compile and
    (Distributed)DataParallel wrappers, so their prefixed state dicts never get saved."""
    for _ in range(8):  # bounded: wrappers nest a few levels at most
        if SPEC_ATTR in vars(model):
            break
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


def model_spec(model: nn.Module) -> dict[str, Any]:
    """A copy of ``{"arch", "kwargs", "mean", "std"}`` that ``build_model`` stored on ``model``."""
    spec = vars(unwrap_model(model)).get(SPEC_ATTR)
    if not isinstance(spec, dict):
        raise RobustOptError(
            f"{type(model).__name__} has no robustopt spec; create it with "
            "robustopt.models.build_model(...) or robustopt.load_model(...) so it can be saved"
        )
    return copy.deepcopy(spec)
