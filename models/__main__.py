"""`python -m models`: the model table (parameters, forward and training GFLOPs per 64x64 image)."""
from models.facts import facts_table

print(facts_table().to_markdown(index=False, intfmt=",", floatfmt=".3f"))
