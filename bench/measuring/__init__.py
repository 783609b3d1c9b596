"""What a run measures and how: the metric declarations, timing, the machine's state, energy, inference, cost and the largest batch that fits."""
