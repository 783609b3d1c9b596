"""VGG16 (torchvision layout) and the study's improved VGG16.

Both reuse torchvision's VGG class and its "D" (VGG16) configuration; only the first conv (to take
1 or 3 channels) and, for the improved model, the pooling and first classifier layer change.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.vgg import VGG, cfgs, make_layers

VGG16_CFG = cfgs["D"]


def init_kaiming_fan_out(model: nn.Module) -> None:
    """torchvision's VGG init, which the spec also prescribes for every improved model.

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


def _vgg16_features(in_channels: int, batch_norm: bool) -> nn.Sequential:
    """torchvision's VGG16 conv stack; make_layers hard-codes 3 input channels, so swap the first conv."""
    features = make_layers(VGG16_CFG, batch_norm=batch_norm)
    features[0] = nn.Conv2d(in_channels, VGG16_CFG[0], kernel_size=3, padding=1)
    return features


def vgg16(in_channels: int, num_classes: int) -> VGG:
    """Plain VGG16: AdaptiveAvgPool2d((7,7)) stretches the 2x2 map of a 64 px input; torchvision init."""
    return VGG(_vgg16_features(in_channels, batch_norm=False), num_classes=num_classes, init_weights=True, dropout=0.5)


def vgg16_improved(in_channels: int, num_classes: int) -> VGG:
    """VGG16 with BatchNorm after every conv and AdaptiveMaxPool2d((5,5)), so the first Linear takes 512*5*5."""
    model = VGG(_vgg16_features(in_channels, batch_norm=True), num_classes=num_classes, init_weights=False, dropout=0.5)
    model.avgpool = nn.AdaptiveMaxPool2d((5, 5))
    model.classifier[0] = nn.Linear(512 * 5 * 5, model.classifier[0].out_features)
    init_kaiming_fan_out(model)
    return model
