"""On-device batching and augmentation: whole splits live on the device as tensors.

No DataLoader workers: slicing resident tensors is faster than any worker pipeline for
datasets this small, and pure tensor ops keep augmentation reproducible from a
``torch.Generator``. Device and dtype always come from the inputs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from robustopt.errors import InputError


def _randint(high: int, n: int, generator: torch.Generator | None, device: torch.device
             ) -> torch.Tensor:
    """Draw on the generator's own device, then move: a CPU generator works for a GPU batch."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(high, (n,), generator=generator, device=gen_device).to(device)


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Per-example random ``H x W`` crop of the zero-padded batch, then a random mirror.

    Draws, in order, the row offsets, the column offsets (each in ``0..2*pad``) and the
    flip bits, all ``[N]`` from ``generator``, so a seed fixes the result exactly.
    """
    if x.ndim != 4:
        raise InputError(f"random_crop_flip needs an [N, C, H, W] batch, got shape "
                         f"{tuple(x.shape)}: add the batch dimension")
    if pad < 0:
        raise InputError(f"pad must be >= 0, got {pad}: pass 0 for flips only")
    n, c, h, w = x.shape
    dev = x.device
    dy = _randint(2 * pad + 1, n, generator, dev)
    dx = _randint(2 * pad + 1, n, generator, dev)
    flip = _randint(2, n, generator, dev).bool()
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    rows = dy[:, None] + torch.arange(h, device=dev)  # [N, H]
    cols = torch.arange(w, device=dev).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]  # [N, W]
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chan = torch.arange(c, device=dev)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    order: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` minibatches sliced from tensors already on their device.

    ``order`` (e.g. from :func:`epoch_permutation`) fixes the visiting order explicitly;
    otherwise ``shuffle`` draws one from ``generator``. Unshuffled batches are views.
    """
    n = x.shape[0]
    if y.shape[0] != n:
        raise InputError(f"x has {n} examples but y has {y.shape[0]}: pass matching tensors")
    if batch_size <= 0:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    if order is not None and shuffle:
        raise InputError("pass either shuffle=True or an explicit order, not both")
    if order is None and shuffle:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=gen_device)
    if order is not None:
        if order.shape != (n,):
            raise InputError(f"order must have shape [{n}], got {tuple(order.shape)}")
        order = order.to(x.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            yield x[start:end], y[start:end]
        else:
            index = order[start:end]
            yield x[index], y[index.to(y.device)]


def epoch_permutation(n: int, seed: int, epoch: int, device: torch.device | str | None = None
                      ) -> torch.Tensor:
    """A permutation of ``range(n)`` fixed by ``(seed, epoch)`` alone.

    Depending on nothing but those two numbers (not on RNG state consumed earlier) is what
    lets a resumed run replay exactly the batch order of an uninterrupted one. Drawn on
    the CPU so every device gets the same order.
    """
    if n < 0 or seed < 0 or epoch < 0:
        raise InputError(f"n, seed and epoch must be >= 0, got {n}, {seed}, {epoch}")
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(state[0]) << 32 | int(state[1]))
    return torch.randperm(n, generator=generator).to(device)
