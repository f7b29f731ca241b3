"""PreAct-ResNet-18 for CIFAR-sized inputs (He et al. 2016 v2; the Wong/Rice robust setup).

The residual block is a small module with an explicit forward over named standard
layers; everything around it is an ``nn.Sequential`` a verifier can walk.
"""

from __future__ import annotations

from torch import Tensor, nn

from robustopt.errors import RobustOptError

__all__ = ["PreActBlock", "preact_resnet18"]


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut (1x1 conv of the pre-activation
    when the shape changes, identity on the input otherwise). Shared by the Wide ResNet."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + shortcut


def preact_resnet18(
    *, num_classes: int = 10, in_channels: int = 3, input_size: int = 32
) -> nn.Sequential:
    """PreAct-ResNet-18 (~11.2M parameters): 64-128-256-512 stages of two blocks each,
    final BN-ReLU, global average pool (as AvgPool2d, verifier-friendly), linear head."""
    if input_size % 8:
        raise RobustOptError(
            f"preact-resnet18 needs input_size divisible by 8 (three stride-2 stages), "
            f"got {input_size}; use 32 for CIFAR-10"
        )
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)]
    in_planes = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers.append(
            nn.Sequential(PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes))
        )
        in_planes = planes
    layers += [
        nn.BatchNorm2d(512),
        nn.ReLU(),
        nn.AvgPool2d(input_size // 8),
        nn.Flatten(),
        nn.Linear(512, num_classes),
    ]
    return nn.Sequential(*layers)
