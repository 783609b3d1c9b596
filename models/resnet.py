"""ResNet18 (torchvision) and the study's improved ResNet18 with a three-conv 3x3 stem."""
from __future__ import annotations

from torch import nn
from torchvision.models import ResNet, resnet18 as tv_resnet18

from models.layers import init_kaiming_fan_out, three_conv_stem
from models.registry import StudyResult, register_model


@register_model(study={"mnist": StudyResult(98.99, 1804), "cifar10": StudyResult(65.53, 1884)})
def resnet18(in_channels: int, num_classes: int) -> ResNet:
    """torchvision's ResNet18 with its 7x7/2 stem conv taking `in_channels`; torchvision init."""
    model = tv_resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    # The same init torchvision's ResNet gives its own conv1.
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


@register_model(improves="resnet18",
                study={"mnist": StudyResult(99.63, 2319), "cifar10": StudyResult(81.87, 3738)})
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
