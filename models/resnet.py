"""ResNet18 (torchvision) and the study's improved ResNet18 with a three-conv 3x3 stem.

The stem is shared with the improved Inception v1, which the spec defines with the same stack.
"""
from __future__ import annotations

from torch import nn
from torchvision.models import ResNet, resnet18 as tv_resnet18

from models.vgg import init_kaiming_fan_out


def three_conv_stem(in_channels: int, width: int = 64) -> nn.Sequential:
    """Three 3x3 conv-BN-ReLU blocks (bias-free) that replace a 7x7/2 stem: 64 px -> 34 -> 32 -> 30."""
    layers: list[nn.Module] = []
    for i, (stride, padding) in enumerate(((2, 3), (1, 0), (1, 0))):
        layers += [
            nn.Conv2d(in_channels if i == 0 else width, width, kernel_size=3, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


def resnet18(in_channels: int, num_classes: int) -> ResNet:
    """torchvision's ResNet18 with its 7x7/2 stem conv taking `in_channels`; torchvision init."""
    model = tv_resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    # The same init torchvision's ResNet gives its own conv1.
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def resnet18_improved(in_channels: int, num_classes: int) -> ResNet:
    """ResNet18 with the three-conv stem (its own BN/ReLU replace bn1/relu) and Dropout(0.1) before the Linear."""
    model = tv_resnet18(num_classes=num_classes)
    model.conv1 = three_conv_stem(in_channels)
    # ResNet.forward runs conv1 -> bn1 -> relu -> maxpool; the stem already ends in BN + ReLU.
    model.bn1 = nn.Identity()
    model.relu = nn.Identity()
    model.fc = nn.Sequential(nn.Dropout(0.1), nn.Linear(model.fc.in_features, num_classes))
    init_kaiming_fan_out(model)
    return model
