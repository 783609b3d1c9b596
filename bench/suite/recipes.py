"""Recipes (how a network is trained) and presets (a suite's defaults), as frozen dataclasses so that a record stores
exactly what ran.
"""
from __future__ import annotations

from dataclasses import dataclass

from models import model_entry

PRECISIONS = ("no", "fp16", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class Recipe:
    """How one network is trained. `lr` is for a global batch of `lr_batch` when `scale_lr` is set."""

    name: str
    lr: float
    momentum: float
    weight_decay: float
    label_smoothing: float
    schedule: str  # "constant", "multistep" (stepped per epoch) or "warmup-cosine" (stepped per step)
    epochs: int
    batch_size: int
    augment: str  # the dataset's augmentation family: "none", "paper" (the study's) or "fast"
    nesterov: bool = False
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_fraction: float = 0.0  # linear warm-up over this share of the run's steps ...
    warmup_max_epochs: float = 1.0  # ... but never longer than this many epochs
    scale_lr: bool = False
    lr_batch: int = 128
    per_model_lr: bool = False  # multiply by the model entry's fast_lr_scale

    def lr_for(self, model: str, global_batch: int) -> float:
        """Peak learning rate for this model and global batch size."""
        lr = self.lr * (model_entry(model).fast_lr_scale if self.per_model_lr else 1.0)
        return lr * global_batch / self.lr_batch if self.scale_lr else lr

    def lr_rule(self) -> str:
        """`lr_for` in words."""
        per_model = ", times the model entry's factor" if self.per_model_lr else ""
        if self.scale_lr:
            return f"recipe {self.name} scales its lr linearly with the global batch ({self.lr:g} per {self.lr_batch}{per_model})"
        return f"recipe {self.name} keeps its lr {self.lr:g} at any global batch{per_model}"


RECIPES: dict[str, Recipe] = {
    # docs/STUDY.md, exactly: the study's recipes.
    "paper-vanilla": Recipe(
        name="paper-vanilla", lr=0.001, momentum=0.9, weight_decay=0.0, label_smoothing=0.0,
        schedule="constant", epochs=50, batch_size=128, augment="none",
    ),
    "paper-improved": Recipe(
        name="paper-improved", lr=0.01, momentum=0.9, weight_decay=4e-5, label_smoothing=0.1,
        schedule="multistep", milestones=(5, 27, 40, 47), gamma=0.1, epochs=50, batch_size=128,
        augment="paper",
    ),
    # Ours, for time to accuracy on a GPU: a large batch with the linear scaling rule, a short
    # warm-up (a tenth of the run, at most an epoch) then cosine decay per step, Nesterov momentum,
    # label smoothing, and cheap device-side flips/shifts. A model entry can scale the rate (VGG16
    # without batch norm gets a tenth).
    "fast": Recipe(
        name="fast", lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4, label_smoothing=0.1,
        schedule="warmup-cosine", warmup_fraction=0.1, warmup_max_epochs=1.0, epochs=12, batch_size=512,
        augment="fast",
        scale_lr=True, lr_batch=512, per_model_lr=True,
    ),
}

# The largest global batch each recipe has been run at as it stands: the study's recipes at their 128; `fast` at
# the batch its learning rate is stated for (lr 0.2 per 512 images). Beyond it the linear scaling rule is
# extrapolated (large batches often want a longer warm-up or LARS), and the suite's first lines say so.
CHECKED_GLOBAL_BATCH = {"paper-vanilla": 128, "paper-improved": 128, "fast": 512}

# The study pairs each vanilla model with the vanilla recipe and each improved one with the improved.
PAIRED = "paired"


def paired_recipe(model: str) -> str:
    return "paper-improved" if model_entry(model).is_improved else "paper-vanilla"


@dataclass(frozen=True)
class Preset:
    """Suite-wide defaults. `None` means: take it from the recipe (or the launcher, for precision)."""

    name: str
    recipe: str
    synthetic: bool
    epochs: int | None = None
    batch_size: int | None = None
    precision: str | None = None
    channels_last: bool = False
    warmup_steps: int = 20
    synthetic_train: int = 2400  # synthetic images for train+val, when the data is synthetic
    synthetic_test: int = 400
    inference_batch: int = 256  # the batch of the trained model's inference throughput (bench/measuring/inference.py)


PRESETS: dict[str, Preset] = {
    "paper": Preset(name="paper", recipe=PAIRED, synthetic=False),
    "fast": Preset(name="fast", recipe="fast", synthetic=False, precision="bf16", channels_last=True),
    # Synthetic data and a few dozen steps: finishes in minutes on two CPU cores.
    "smoke": Preset(
        name="smoke", recipe="fast", synthetic=True, epochs=2, batch_size=32, warmup_steps=2,
        synthetic_train=640, synthetic_test=128, inference_batch=32,
    ),
}
AUTO = "auto"
