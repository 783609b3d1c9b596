"""Inception v1 (torchvision's GoogLeNet) and the study's improved version with a three-conv 3x3 stem."""
from __future__ import annotations

from torch import nn
from torchvision.models import GoogLeNet
from torchvision.models.googlenet import BasicConv2d

from models.layers import three_conv_stem
from models.registry import StudyResult, register_model


def _googlenet(num_classes: int) -> GoogLeNet:
    """GoogLeNet as the study used it: no aux heads (forward returns a plain tensor), raw input, dropout 0.2."""
    return GoogLeNet(num_classes=num_classes, aux_logits=False, transform_input=False, init_weights=True, dropout=0.2)


@register_model(study={"mnist": StudyResult(99.51, 1536), "cifar10": StudyResult(83.15, 1626)})
def inception_v1(in_channels: int, num_classes: int) -> GoogLeNet:
    """GoogLeNet whose first 7x7/2 conv block takes `in_channels`; torchvision init."""
    model = _googlenet(num_classes)
    model.conv1 = BasicConv2d(in_channels, 64, kernel_size=7, stride=2, padding=3)
    # The same truncated-normal init GoogLeNet gives its own convs (its BN init, 1/0, is PyTorch's default).
    nn.init.trunc_normal_(model.conv1.conv.weight, mean=0.0, std=0.01, a=-2, b=2)
    return model


@register_model(improves="inception_v1",
                study={"mnist": StudyResult(99.65, 2003), "cifar10": StudyResult(85.85, 6662)})
def inception_v1_improved(in_channels: int, num_classes: int) -> GoogLeNet:
    """GoogLeNet whose first conv block is the three-conv stem, left at PyTorch's default init (as in the study)."""
    model = _googlenet(num_classes)
    model.conv1 = three_conv_stem(in_channels)
    return model
