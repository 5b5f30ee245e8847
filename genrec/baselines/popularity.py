"""Most-popular baseline: every row gets the same list, the items most frequent in the train split.

    genrec baseline popularity --run-dir runs/industrial-cpu --split test

Frequency counts each train interaction once (see `train_sequences`); ``--counts targets`` counts only the
targets of train rows instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from genrec.artifacts import train_sequences
from genrec.baselines.common import BaselineArgs, RunData
from genrec.evaluation import item_counts


@dataclass
class Config:
    counts: Literal["interactions", "targets"] = field(
        default="interactions",
        metadata={"help": "What is counted in the train split: every interaction once ('interactions', the usual "
                  "most-popular) or only the row targets ('targets')."},
    )


class PopularityScorer:
    def __init__(self, counts: np.ndarray):
        self.counts = counts.astype(np.float32)
        self.info = {"items_seen": int((counts > 0).sum()), "interactions": int(counts.sum())}

    def grid(self) -> list[dict]:
        return [{}]

    def score(self, rows) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(rows), len(self.counts))).copy()


def popularity_counts(data: RunData, what: str = "interactions") -> np.ndarray:
    """Train frequency of every catalog item (float64, zeros for unseen items)."""
    if what == "targets":
        return item_counts([[data.index[r["target"]] for r in data.train]], data.n_items)
    return item_counts(train_sequences(data.train, data.index), data.n_items)


def build(data: RunData, cfg: Config, args: BaselineArgs) -> PopularityScorer:
    return PopularityScorer(popularity_counts(data, cfg.counts))
