"""Training throughput of MNIST models under the mnist-best recipe: TRADES steps (PGD-7
on the KL, then the clean + adversarial update) per second, through the training loop's
own adversary and loss, on random 28x28 inputs, bf16 autocast, channels_last, batch 100.

The probe behind the choice of the mnist-best model: what 20 minutes of training buy.

    python benchmarks/mnist_train_speed.py      # ~1 minute on 2 cores
"""

from __future__ import annotations

import argparse

import torch
from _timing import items_per_s

import robustopt
from robustopt.models import DATASET_STATS, build_model
from robustopt.train.adversary import adversarial_batch, training_loss
from robustopt.train.config import preset

CANDIDATES = {
    "small-mnist width 4 fc 400": ("small-mnist", {"width": 4, "fc": 400}),
    "trades-mnist": ("trades-mnist", {}),
    "trades-mnist fc 400": ("trades-mnist", {"fc": 400}),
    "madry-mnist": ("madry-mnist", {}),
}


def examples_per_s(model: torch.nn.Module, reps: int) -> float:
    cfg = preset("mnist-best")
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(cfg.batch_size, 1, 28, 28, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (cfg.batch_size,), generator=gen)

    def step() -> None:
        x_adv = adversarial_batch(cfg, model, x, y, cfg.eps, gen, torch.bfloat16)
        loss, _ = training_loss(cfg, model, x, x_adv, y, torch.bfloat16)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return items_per_s(step, cfg.batch_size, reps)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=40, help="timed steps per model")
    args = p.parse_args()
    robustopt.keep_freed_memory()  # as the robustopt command trains
    torch.manual_seed(0)
    mean, std = DATASET_STATS["mnist"]
    print(f"mnist-best TRADES training examples/s, batch 100, bf16, channels_last, "
          f"{torch.get_num_threads()} threads, {args.reps} steps each")
    for label, (name, kwargs) in CANDIDATES.items():
        model = build_model(name, mean=mean, std=std, **kwargs)
        params = sum(p.numel() for p in model.parameters())
        print(f"{label:28s} {examples_per_s(model, args.reps):7.1f} ex/s "
              f"{params / 1e6:6.2f}M parameters", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
