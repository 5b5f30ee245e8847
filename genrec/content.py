"""Content similarity between a user's history and the catalog, from the items' text embeddings.

One definition serves two callers: the content kNN baseline ranks items by it, and genrec's beam search adds it to
the model's log-probabilities as a prior (`DecodeConfig.content_weight`), which is what lets the generative model
reach tail and cold items it has rarely or never generated in training. The history's query is a recency-weighted
sum of its items' unit vectors (weight ``decay**age``, age 0 = the last item; decay 0 = the last item only), and an
item's score is the cosine of its vector with that query.

Example:
    >>> content = ItemContent(["a", "b", "c"], vectors)  # doctest: +SKIP
    >>> content.similarity([["a", "b"]], decay=0.5).shape  # doctest: +SKIP
    (1, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse


def history_matrix(histories: Sequence[Sequence[str]], index: dict[str, int], decay: float,
                   n_items: int) -> sparse.csr_matrix:
    """Sparse (rows, items) weights of each history: decay**age, age 0 = last item (decay 0: last item only).
    Items outside `index` (not in the catalog) carry no weight."""
    r_idx, c_idx, vals = [], [], []
    for n, hist in enumerate(histories):
        for age, iid in enumerate(reversed(hist)):
            w = decay**age if age else 1.0
            if w == 0.0:
                break
            if iid in index:
                r_idx.append(n)
                c_idx.append(index[iid])
                vals.append(w)
    return sparse.csr_matrix((vals, (r_idx, c_idx)), shape=(len(histories), n_items), dtype=np.float32)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (all-zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


@dataclass
class ItemContent:
    """The catalog's text vectors, one unit row per item id (in `item_ids` order)."""

    item_ids: list[str]
    vectors: np.ndarray

    def __post_init__(self):
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.item_ids):
            raise ValueError(f"{self.vectors.shape} item vectors for {len(self.item_ids)} items; expected one row "
                             "per item")
        self.vectors = unit_rows(self.vectors)
        self.index = {iid: n for n, iid in enumerate(self.item_ids)}

    def query(self, histories: Sequence[Sequence[str]], decay: float) -> np.ndarray:
        """(rows, dim) unit queries: the recency-weighted sum of each history's item vectors (zero when no item of
        the history is in the catalog)."""
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay={decay}: must be in [0, 1] (0 = last item only, 1 = plain mean)")
        weights = history_matrix(histories, self.index, decay, len(self.item_ids))
        return unit_rows(np.asarray(weights @ self.vectors))

    def similarity(self, histories: Sequence[Sequence[str]], decay: float) -> np.ndarray:
        """(rows, items) cosine of each item with each history's query, in [-1, 1]."""
        return self.query(histories, decay) @ self.vectors.T
