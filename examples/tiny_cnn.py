"""A model plugin for deepnets-bench: one decorated builder in a file of your own, loaded by path.

    accelerate launch bench/run.py --plugin examples/tiny_cnn.py --models tiny_cnn --dry-run
    python -m models --plugin examples/tiny_cnn.py          # the registry, with its parameters and GFLOPs

The builder contract:
- `builder(in_channels, num_classes)` returns a freshly initialised nn.Module (no pretrained weights): 1 input
  channel for MNIST and Fashion-MNIST, 3 for CIFAR; 10 classes, or 100 for CIFAR-100.
- Input is a batch of N x in_channels x 64 x 64 images (every dataset is resized to 64x64, normalised); output is
  N x num_classes logits (no softmax: the loss is cross-entropy).
- It must build on the meta device (`with torch.device("meta"): builder(1, 10)`): parameters, FLOPs and the
  shard planner's costs are counted on shapes alone. Create tensors through modules or `torch.empty`/`zeros`
  without naming a device; do not move to a device, read data or download anything while building.
- The function's name is the model's name (a valid `--models` choice), its docstring's first line its description.
  `improves="resnet18"` makes it the improved twin of a registered model, `fast_lr_scale` scales the fast
  recipe's learning rate, `study={"mnist": StudyResult(acc_pct, seconds)}` gives it time-to-target goals.
"""
from torch import nn

from models import register_model


@register_model()
def tiny_cnn(in_channels: int, num_classes: int) -> nn.Module:
    """Two convolutions and a linear layer: the smallest network worth benchmarking."""
    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))
