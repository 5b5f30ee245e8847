"""Co-occurrence baseline: next-item transition counts from the train split, backed off to popularity.

    genrec baseline cooc --run-dir runs/industrial-cpu --split test

From each user's train sequence (see `train_sequences`) count pairs (a -> b) where b follows a within
``window`` steps (weight 1 / distance), optionally add the reverse direction (b -> a, weight ``reverse``), and
normalise each source item's row into next-item probabilities. A row's score for item j is
``sum_age decay**age * P(j | history[-1 - age])`` (decay 0: last item only) plus ``pop_weight`` times the train
popularity scaled to [0, 1], which ranks the items no transition reaches (and every item, when the history is
unseen) and fills the list up to K. All four are chosen on valid from the grids below.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from genrec.artifacts import train_sequences
from genrec.baselines.common import BaselineArgs, RunData
from genrec.content import history_matrix
from genrec.evaluation import item_counts


@dataclass
class Config:
    windows: list[int] = field(
        default_factory=lambda: [1, 2, 3],
        metadata={"help": "Grid of pair windows: b follows a when it comes at most this many steps later."},
    )
    reverse_weights: list[float] = field(
        default_factory=lambda: [0.0, 0.5, 1.0],
        metadata={"help": "Grid of weights (>= 0) of the reverse direction (b -> a): 0 = purely sequential."},
    )
    decays: list[float] = field(
        default_factory=lambda: [0.0, 0.5, 1.0],
        metadata={"help": "Grid of history decays in [0, 1]: weight of history[-1 - age] is decay**age."},
    )
    pop_weights: list[float] = field(
        default_factory=lambda: [1e-4, 0.03, 0.1, 0.3],
        metadata={"help": "Grid of popularity weights (> 0): tiny = pure back-off, larger = blend."},
    )

    def __post_init__(self):
        if not self.windows or any(w < 1 for w in self.windows):
            raise ValueError(f"--windows {self.windows}: give one or more integers >= 1")
        if not self.reverse_weights or any(r < 0 for r in self.reverse_weights):
            raise ValueError(f"--reverse-weights {self.reverse_weights}: give one or more values >= 0")
        if not self.decays or any(not 0.0 <= d <= 1.0 for d in self.decays):
            raise ValueError(f"--decays {self.decays}: give one or more values in [0, 1]")
        if not self.pop_weights or any(w <= 0 for w in self.pop_weights):
            raise ValueError(f"--pop-weights {self.pop_weights}: give one or more values > 0")


def pair_counts(seqs, n_items: int, distance: int) -> sparse.csr_matrix:
    """Counts of (s[t], s[t + distance]) over all sequences, as a sparse (source, next) matrix."""
    src, dst = [], []
    for s in seqs:
        src.extend(s[:-distance])
        dst.extend(s[distance:])
    ones = np.ones(len(src), dtype=np.float32)
    return sparse.csr_matrix((ones, (src, dst)), shape=(n_items, n_items), dtype=np.float32)


def row_normalise(m: sparse.csr_matrix) -> sparse.csr_matrix:
    totals = np.asarray(m.sum(axis=1)).ravel()
    inv = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
    return sparse.csr_matrix(sparse.diags(inv) @ m)


class CoocScorer:
    def __init__(self, data: RunData, cfg: Config):
        self.data, self.cfg = data, cfg
        seqs = train_sequences(data.train, data.index)
        self.by_distance = [pair_counts(seqs, data.n_items, d) for d in range(1, max(cfg.windows) + 1)]
        pop = item_counts(seqs, data.n_items)
        self.pop = (pop / max(pop.max(), 1.0)).astype(np.float32)
        self._transitions: dict[tuple[int, float], sparse.csr_matrix] = {}
        self.info = {"pairs_at_distance_1": int(self.by_distance[0].sum()),
                     "sources_with_transitions": int((self.by_distance[0].getnnz(axis=1) > 0).sum())}

    def grid(self) -> list[dict]:
        c = self.cfg
        return [{"window": w, "reverse": r, "decay": d, "pop_weight": p}
                for w, r, d, p in itertools.product(c.windows, c.reverse_weights, c.decays, c.pop_weights)]

    def transitions(self, window: int, reverse: float) -> sparse.csr_matrix:
        key = (window, reverse)
        if key not in self._transitions:
            counts = sum(m / d for d, m in enumerate(self.by_distance[:window], 1))
            self._transitions[key] = row_normalise(sparse.csr_matrix(counts + reverse * counts.T))
        return self._transitions[key]

    def score(self, rows, window: int, reverse: float, decay: float, pop_weight: float) -> np.ndarray:
        hist = history_matrix([r["history"] for r in rows], self.data.index, decay, self.data.n_items)
        return np.asarray((hist @ self.transitions(window, reverse)).todense()) + pop_weight * self.pop


def build(data: RunData, cfg: Config, args: BaselineArgs) -> CoocScorer:
    return CoocScorer(data, cfg)
