"""`python -m models [--plugin MODULE|FILE.py]` (or `deepnets-models`): the registry as a table: each model's entry
(what it improves, its fast-recipe learning-rate scale, the datasets the study has numbers for) beside its
parameters and GFLOPs per 64x64 image (counted on the meta device, as the builder contract requires)."""
from __future__ import annotations

import sys
from typing import Sequence

import pandas as pd

from common.cli import OneLineParser, add_plugin_option, load_plugins
from models.facts import facts_table
from models.registry import model_entry, model_names

PROG = "python -m models"


def main(argv: Sequence[str] | None = None) -> int:
    load_plugins(argv, PROG)
    parser = OneLineParser(prog=PROG, description="The model registry: metadata, parameters and GFLOPs per image.")
    add_plugin_option(parser)
    parser.parse_args(argv)
    entries = pd.DataFrame([{
        "model": name, "improves": model_entry(name).improves or "", "fast lr x": model_entry(name).fast_lr_scale,
        "study numbers": ", ".join(model_entry(name).study), "description": model_entry(name).description,
    } for name in model_names()])
    print(entries.merge(facts_table(), on="model").to_markdown(index=False, intfmt=",", floatfmt=".3g"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
