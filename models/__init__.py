"""The models behind one registry (models/registry.py). Importing the package registers the study's six,
in its order: each vanilla network, then its improved variant."""
from __future__ import annotations

from models.registry import (ModelEntry, StudyResult, build_model, model_entry, model_names, register_model,
                             study_datasets, study_result)

from models import vgg, resnet, inception  # noqa: E402,F401  -- registration, in the study's order

__all__ = ["ModelEntry", "StudyResult", "build_model", "model_entry", "model_names", "register_model",
           "study_datasets", "study_result"]
