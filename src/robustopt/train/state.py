"""Everything a run needs to continue exactly where it stopped, as tensors plus JSON.

Optimizer moments, RNG states and the model's weights become named tensors (saved with
safetensors); counters and the metric history become JSON. Nothing is pickled, so a
run directory from a stranger cannot execute code when resumed.
"""

from __future__ import annotations

import torch
from torch import nn


def pack(model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
         counters: dict, average: nn.Module | None = None,
         best: dict[str, torch.Tensor] | None = None
         ) -> tuple[dict[str, torch.Tensor], dict]:
    """Split the full training state (with the weight average and the best weights so far,
    if any) into (tensors, JSON)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if average is not None:
        tensors.update({f"average.{k}": v for k, v in average.state_dict().items()})
    if best is not None:
        tensors.update({f"best.{k}": v for k, v in best.items()})
    opt = optimizer.state_dict()
    opt_json: dict = {"param_groups": opt["param_groups"], "state": {}}
    for idx, slots in opt["state"].items():
        opt_json["state"][str(idx)] = {}
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
                opt_json["state"][str(idx)][key] = {"tensor": True}
            else:
                opt_json["state"][str(idx)][key] = {"value": value}
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    return tensors, {"counters": counters, "optimizer": opt_json}


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def best_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The best weights a checkpoint carries (None: none yet, or an older checkpoint)."""
    return _prefixed(tensors, "best.") or None


def unpack(tensors: dict[str, torch.Tensor], state: dict, model: nn.Module,
           optimizer: torch.optim.Optimizer, generator: torch.Generator,
           average: nn.Module | None = None) -> dict:
    """Load a packed state into live objects; return the counters."""
    model.load_state_dict(_prefixed(tensors, "model."))
    if average is not None:
        average.load_state_dict(_prefixed(tensors, "average."))
    opt_json = state["optimizer"]
    slots: dict = {}
    for idx, entries in opt_json["state"].items():
        slots[int(idx)] = {
            key: tensors[f"optim.{idx}.{key}"] if "tensor" in spec else spec["value"]
            for key, spec in entries.items()
        }
    optimizer.load_state_dict({"state": slots, "param_groups": opt_json["param_groups"]})
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    return state["counters"]
