"""Training throughput of CIFAR-10 models: FGSM-RS steps (one attack step + one training
step) per second on random 32x32 inputs, bf16 autocast, channels_last, batch 128.

The probe behind the ``cifar10-cpu`` preset's model: what an hour of training buys.

    python benchmarks/cifar_train_speed.py      # ~2 minutes on 2 cores
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _timing import items_per_s

import robustopt
from robustopt.models import DATASET_STATS, build_model

CANDIDATES = {
    "cifar-cnn width 32": ("cifar-cnn", {"width": 32}),
    "cifar-cnn width 64": ("cifar-cnn", {"width": 64}),
    "wide-resnet 16-4": ("wide-resnet", {"depth": 16, "width": 4}),
    "preact-resnet18": ("preact-resnet18", {}),
}


def examples_per_s(model: torch.nn.Module, batch: int = 128, reps: int = 6) -> float:
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    eps, alpha = 8 / 255, 10 / 255

    def step() -> None:
        delta = ((torch.rand_like(x) * 2 - 1) * eps).requires_grad_(True)
        with torch.autocast("cpu", torch.bfloat16):
            loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        x_adv = (x + (delta + alpha * grad.sign()).clamp(-eps, eps)).clamp(0, 1).detach()
        with torch.autocast("cpu", torch.bfloat16):
            loss = F.cross_entropy(model(x_adv), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return items_per_s(step, batch, reps)


def main() -> int:
    robustopt.keep_freed_memory()  # as the robustopt command trains
    torch.manual_seed(0)
    mean, std = DATASET_STATS["cifar10"]
    print(f"FGSM-RS training examples/s, batch 128, bf16, channels_last, "
          f"{torch.get_num_threads()} threads")
    for label, (name, kwargs) in CANDIDATES.items():
        model = build_model(name, mean=mean, std=std, **kwargs)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{label:<22}{examples_per_s(model):8.1f} ex/s  {params:6.2f}M parameters",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
