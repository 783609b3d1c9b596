"""`python -m models`: the registry as a table: each model's entry (what it improves, its fast-recipe
learning-rate scale, the datasets the study has numbers for) beside its parameters and GFLOPs per
64x64 image."""
import pandas as pd

from models.facts import facts_table
from models.registry import model_entry, model_names

entries = pd.DataFrame([{
    "model": name, "improves": model_entry(name).improves or "", "fast lr x": model_entry(name).fast_lr_scale,
    "study numbers": ", ".join(model_entry(name).study), "description": model_entry(name).description,
} for name in model_names()])
print(entries.merge(facts_table(), on="model").to_markdown(index=False, intfmt=",", floatfmt=".3g"))
