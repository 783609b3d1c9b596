"""Pieces the improved models share: the three-conv 3x3 stem and the Kaiming fan-out initialisation."""
from __future__ import annotations

from torch import nn


def three_conv_stem(in_channels: int, width: int = 64) -> nn.Sequential:
    """Three 3x3 conv-BN-ReLU blocks (bias-free) that replace a 7x7/2 stem: 64 px -> 34 -> 32 -> 30.

    resnet18_improved and inception_v1_improved use the same stack (docs/STUDY.md).
    """
    layers: list[nn.Module] = []
    for i, (stride, padding) in enumerate(((2, 3), (1, 0), (1, 0))):
        layers += [
            nn.Conv2d(in_channels if i == 0 else width, width, kernel_size=3, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


def init_kaiming_fan_out(model: nn.Module) -> None:
    """torchvision's VGG init, which the study also prescribes for vgg16_improved and resnet18_improved.

    Applied after layers are swapped so the replacements get it too.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
