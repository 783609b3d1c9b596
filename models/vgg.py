"""VGG16 (torchvision layout) and the study's improved VGG16.

Both reuse torchvision's VGG class and its "D" (VGG16) configuration; only the first conv (to take
1 or 3 channels) and, for the improved model, the pooling and first classifier layer change.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.vgg import VGG, cfgs, make_layers

from models.layers import init_kaiming_fan_out
from models.registry import StudyResult, register_model

VGG16_CFG = cfgs["D"]


def _vgg16_features(in_channels: int, batch_norm: bool) -> nn.Sequential:
    """torchvision's VGG16 conv stack; make_layers hard-codes 3 input channels, so swap the first conv."""
    features = make_layers(VGG16_CFG, batch_norm=batch_norm)
    features[0] = nn.Conv2d(in_channels, VGG16_CFG[0], kernel_size=3, padding=1)
    return features


# Without batch norm VGG16 does not survive the fast recipe's large learning rate: a tenth of it
# (Simonyan & Zisserman trained it at 0.01 for batch 256).
@register_model(fast_lr_scale=0.1,
                study={"mnist": StudyResult(99.19, 3223), "cifar10": StudyResult(75.98, 11172)})
def vgg16(in_channels: int, num_classes: int) -> VGG:
    """Plain VGG16: AdaptiveAvgPool2d((7,7)) stretches the 2x2 map of a 64 px input; torchvision init."""
    return VGG(_vgg16_features(in_channels, batch_norm=False), num_classes=num_classes, init_weights=True, dropout=0.5)


@register_model(improves="vgg16",
                study={"mnist": StudyResult(99.65, 5016), "cifar10": StudyResult(79.02, 5918)})
def vgg16_improved(in_channels: int, num_classes: int) -> VGG:
    """VGG16 with BatchNorm after every conv and AdaptiveMaxPool2d((5,5)), so the first Linear takes 512*5*5."""
    model = VGG(_vgg16_features(in_channels, batch_norm=True), num_classes=num_classes, init_weights=False, dropout=0.5)
    model.avgpool = nn.AdaptiveMaxPool2d((5, 5))
    model.classifier[0] = nn.Linear(512 * 5 * 5, model.classifier[0].out_features)
    init_kaiming_fan_out(model)
    return model
