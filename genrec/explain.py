"""Why an item is recommended: its interests that are closest to the interests of the history's items.

`ItemInterests` holds every item's positive interests (RLDI-positive once the label stage has run; every mined
interest before it) as rows of one matrix of unit vectors. The vectors are computed once, when a model is trained
(genrec.training embeds them with the bundled MiniLM encoder and genrec.checkpoint stores them with the model), so an
explanation costs no model call: per request, one product of the recommended items' interest vectors with the
history's, and a top-`n` per item.

A connection says: this interest of the recommended item is the one of its interests most similar (cosine) to an
interest of another history item, with that similarity as its score (an item recommended again is not connected to
itself); an item's connections are its best-scoring interests, best first, those under a minimum score left out. An
item with no interests, or a history whose items have none, gets no connections.

Example:
    >>> vectors = {"woodworking": [1.0, 0.0], "joinery": [0.8, 0.6], "gifts": [0.0, 1.0]}
    >>> interests = ItemInterests.build({"saw": ["woodworking", "gifts"], "chisel": ["joinery"]},
    ...                                 lambda texts: np.array([vectors[t] for t in texts]))
    >>> [(c.interest, round(c.score, 2), c.history_item, c.history_interest)
    ...  for c in interests.explain(["chisel"], ["saw"])[0]]
    [('woodworking', 0.8, 'chisel', 'joinery'), ('gifts', 0.6, 'chisel', 'joinery')]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from genrec.content import unit_rows


class Connection(NamedTuple):
    """One reason: the recommended item's `interest` and the history item's interest it is closest to."""

    interest: str
    score: float  # cosine similarity of the two interests' embeddings
    history_item: str
    history_interest: str


@dataclass(frozen=True)
class ItemInterests:
    """Interest texts, their unit vectors (row n embeds texts[n]) and each item's rows, most confident first."""

    texts: list[str]
    vectors: np.ndarray
    items: dict[str, list[int]]

    def __post_init__(self):
        if self.vectors.ndim != 2 or len(self.vectors) != len(self.texts):
            raise ValueError(f"{len(self.texts)} interest texts but vectors of shape {self.vectors.shape}: one row "
                             "per text")
        bad = [iid for iid, rows in self.items.items() if any(not 0 <= r < len(self.texts) for r in rows)]
        if bad:
            raise ValueError(f"item {bad[0]!r} names interest rows outside the {len(self.texts)} texts")

    @classmethod
    def build(cls, interests: Mapping[str, Sequence[str]], encode: Callable[[list[str]], np.ndarray],
              max_per_item: int = 8) -> ItemInterests:
        """Embed each distinct interest text once (one `encode` call) and index every item's first `max_per_item`.

        `interests`: item id -> its positive interests, most confident first; `encode`: texts -> array (n, d).
        """
        kept = {iid: list(dict.fromkeys(t for t in texts if t.strip()))[:max_per_item]
                for iid, texts in interests.items()}
        texts = sorted({t for ts in kept.values() for t in ts})
        row = {t: n for n, t in enumerate(texts)}
        vectors = np.asarray(encode(texts), dtype=np.float32) if texts else np.zeros((0, 1), np.float32)
        return cls(texts, unit_rows(vectors), {iid: [row[t] for t in ts] for iid, ts in kept.items() if ts})

    def __len__(self) -> int:
        """Items with at least one interest."""
        return len(self.items)

    def explain(self, history: Sequence[str], items: Sequence[str], top: int = 3,
                min_score: float = -1.0) -> list[list[Connection]]:
        """Per item of `items`, its `top` interests closest to the history items' interests, best first; a
        connection scoring below `min_score` is no reason and is left out."""
        pairs = [(iid, r) for iid in dict.fromkeys(history) for r in self.items.get(iid, ())]
        if not pairs:
            return [[] for _ in items]
        rows = [self.items.get(iid, []) for iid in items]
        flat = [r for rs in rows for r in rs]
        if not flat:
            return [[] for _ in items]
        # (interests of the items, of the history). Not `@`: a product this small still wakes OpenBLAS's threads,
        # which on a loaded 2-core machine took 4 ms instead of 0.03 (measured); einsum stays on this thread (0.15)
        sims = np.einsum("id,jd->ij", self.vectors[flat], self.vectors[[r for _, r in pairs]])
        owners = np.array([iid for iid, _ in pairs], dtype=object)
        start = 0
        for iid, rs in zip(items, rows):  # an item in the history connects to the other history items, not itself
            sims[start:start + len(rs), owners == iid] = -np.inf
            start += len(rs)
        best, scores = sims.argmax(axis=1), sims.max(axis=1)
        out, start = [], 0
        for rs in rows:
            span = range(start, start + len(rs))
            start += len(rs)
            ranked = sorted((n for n in span if scores[n] >= min_score), key=lambda n: -scores[n])[:top]
            out.append([Connection(self.texts[flat[n]], float(scores[n]), pairs[best[n]][0],
                                   self.texts[pairs[best[n]][1]]) for n in ranked])
        return out
