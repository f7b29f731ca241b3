"""The MNIST networks of the papers robustopt reproduces, as plain ``nn.Sequential`` stacks.

Plain stacks of Conv2d/ReLU/MaxPool2d/Flatten/Linear let a bound-propagation verifier
walk them layer by layer, and keep input gradients free of in-place surprises.
"""

from __future__ import annotations

from torch import nn

from robustopt.errors import RobustOptError

__all__ = ["madry_mnist", "small_mnist", "trades_mnist"]


def madry_mnist(
    *, num_classes: int = 10, in_channels: int = 1, input_size: int = 28
) -> nn.Sequential:
    """Madry et al.'s MNIST CNN (MadryLab/mnist_challenge ``model.py``).

    conv 32 5x5 "SAME" + ReLU + maxpool 2, conv 64 5x5 "SAME" + ReLU + maxpool 2,
    fc 7*7*64 -> 1024 + ReLU, fc 1024 -> num_classes. Initialisation is PyTorch's default,
    not the TF truncated normal (std 0.1, bias 0.1) of the original.
    """
    if input_size % 4:
        raise RobustOptError(
            f"madry-mnist needs input_size divisible by 4 (two 2x2 max-pools), got {input_size}; "
            "use 28 for MNIST"
        )
    side = input_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * side * side, 1024),
        nn.ReLU(),
        nn.Linear(1024, num_classes),
    )


def small_mnist(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    width: int = 1,
    fc: int = 100,
    input_size: int = 28,
) -> nn.Sequential:
    """Wong & Kolter's small CNN: conv 16 4x4/2, conv 32 4x4/2, fc 100, fc num_classes.

    ``width`` multiplies both conv widths and ``fc`` sets the hidden layer, so training
    recipes (e.g. certified training, which likes wider nets) can scale it.
    """
    if input_size < 4:
        raise RobustOptError(f"small-mnist needs input_size >= 4, got {input_size}; use 28")
    side = input_size // 2 // 2  # each 4x4 stride-2 pad-1 conv halves (floor) the side
    c1, c2 = 16 * width, 32 * width
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, kernel_size=4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, kernel_size=4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c2 * side * side, fc),
        nn.ReLU(),
        nn.Linear(fc, num_classes),
    )


def trades_mnist(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    width: int = 1,
    fc: int = 200,
    input_size: int = 28,
) -> nn.Sequential:
    """Zhang et al.'s (TRADES) SmallCNN: two blocks of two unpadded 3x3 convs (32, then 64
    channels) each followed by a 2x2 max-pool, then fc 200, fc 200, fc num_classes.

    Four conv layers at full resolution cost about as much per step on a CPU as the
    wider small-mnist the mnist-best preset used, with an eighth of the parameters.
    TRADES' dropout between the hidden layers is left out: the stack stays a plain chain
    a verifier can walk, and training and evaluation see the same network.
    """
    side = ((input_size - 4) // 2 - 4) // 2  # two valid 3x3 convs (-4), then a 2x2 pool
    if side < 1:
        raise RobustOptError(f"trades-mnist needs input_size >= 16, got {input_size}; use 28")
    c1, c2 = 32 * width, 64 * width
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, kernel_size=3),
        nn.ReLU(),
        nn.Conv2d(c1, c1, kernel_size=3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, kernel_size=3),
        nn.ReLU(),
        nn.Conv2d(c2, c2, kernel_size=3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * side * side, fc),
        nn.ReLU(),
        nn.Linear(fc, fc),
        nn.ReLU(),
        nn.Linear(fc, num_classes),
    )
