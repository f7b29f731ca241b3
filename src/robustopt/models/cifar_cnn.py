"""A small VGG-style CIFAR network that adversarial training can afford on a 2-core CPU.

A ResNet-18 takes ~70 FGSM-training images per second on 2 cores (bf16), ~5 epochs an
hour; this plain stack (3 stages of two 3x3 conv-BN-ReLU with a max-pool) takes ~5x that
at width 64 (``benchmarks/cifar_train_speed.py``), so an hour buys ~20 epochs. Only
Conv2d/MaxPool2d/BatchNorm2d/ReLU/Flatten/Linear: a bound-propagation verifier can walk it.
"""

from __future__ import annotations

from torch import nn

from robustopt.errors import RobustOptError

__all__ = ["cifar_cnn"]


def _conv_bn_relu(cin: int, cout: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))  # pool before BN: 4x less BN/ReLU work
    return layers + [nn.BatchNorm2d(cout), nn.ReLU()]


def cifar_cnn(
    *, num_classes: int = 10, in_channels: int = 3, width: int = 64, input_size: int = 32
) -> nn.Sequential:
    """conv w; then stages of widths w, 2w, 4w, each conv+pool and conv (3x3, BN, ReLU);
    a max-pool over the remaining 4x4 map, fc 4w -> num_classes. ``width`` scales every layer.
    """
    if input_size % 8:
        raise RobustOptError(
            f"cifar-cnn needs input_size divisible by 8 (three 2x2 max-pools), got {input_size}; "
            "use 32 for CIFAR-10"
        )
    layers = _conv_bn_relu(in_channels, width, pool=False)
    cin = width
    for cout in (width, 2 * width, 4 * width):
        layers += _conv_bn_relu(cin, cout, pool=True) + _conv_bn_relu(cout, cout, pool=False)
        cin = cout
    layers += [nn.MaxPool2d(input_size // 8), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)
