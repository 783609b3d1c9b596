"""A test pass's confusions, readable at any number of classes: a record holds the whole matrix up to
INLINE_MAX_CLASSES classes (10,000 cells) and, whatever the classes, its most frequent confusions, which is
what the report lists (a 1,000 x 1,000 matrix is a million cells that no picture or table makes readable)."""
from __future__ import annotations

import numpy as np

INLINE_MAX_CLASSES = 100
TOP_CONFUSIONS = 20  # per record


def top_confusions(matrix: list[list[int]] | np.ndarray, count: int = TOP_CONFUSIONS) -> list[list[int]]:
    """[true class, predicted class, images, images of the true class] of the `count` most frequent confusions
    (off the diagonal), most frequent first, ties by class."""
    counts = np.asarray(matrix, dtype=np.int64)
    totals = counts.sum(axis=1)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:count]
    true, predicted = np.unravel_index(flat, off.shape)
    return [[int(t), int(p), int(off[t, p]), int(totals[t])] for t, p in zip(true, predicted) if off[t, p] > 0]
