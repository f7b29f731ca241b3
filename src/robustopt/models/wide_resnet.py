"""Wide ResNet (Zagoruyko & Komodakis), CIFAR style, as used by Madry et al. (WRN-34-10)
and most robust CIFAR-10 baselines (WRN-28-10). Pre-activation blocks, no dropout."""

from __future__ import annotations

from torch import nn

from robustopt.errors import RobustOptError
from robustopt.models.resnet import PreActBlock

__all__ = ["wide_resnet"]


def wide_resnet(
    *,
    depth: int = 34,
    width: int = 10,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
) -> nn.Sequential:
    """WRN-depth-width: three stages of (depth-4)/6 blocks with 16w, 32w, 64w channels.

    The default (34, 10) is Madry et al.'s CIFAR-10 model (~46.2M parameters);
    WRN-28-10 has ~36.5M. Weights use the reference initialisation (Kaiming fan-out).
    """
    if depth < 10 or (depth - 4) % 6:
        raise RobustOptError(
            f"wide-resnet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth}; "
            "use 28 or 34"
        )
    if input_size % 4:
        raise RobustOptError(
            f"wide-resnet needs input_size divisible by 4 (two stride-2 stages), "
            f"got {input_size}; use 32 for CIFAR-10"
        )
    n = (depth - 4) // 6
    channels = (16 * width, 32 * width, 64 * width)
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)]
    in_planes = 16
    for planes, stride in zip(channels, (1, 2, 2), strict=True):
        blocks = [PreActBlock(in_planes, planes, stride)]
        blocks += [PreActBlock(planes, planes) for _ in range(n - 1)]
        layers.append(nn.Sequential(*blocks))
        in_planes = planes
    layers += [
        nn.BatchNorm2d(in_planes),
        nn.ReLU(),
        nn.AvgPool2d(input_size // 4),
        nn.Flatten(),
        nn.Linear(in_planes, num_classes),
    ]
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return net
