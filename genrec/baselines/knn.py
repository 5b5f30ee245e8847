"""Content kNN baseline: rank items by the cosine similarity of their text embeddings to the user's history.

    genrec baseline knn --run-dir runs/industrial-cpu --split test

Uses the run's ``item_emb.npy`` (the embed stage: same encoder and text recipe as the rest of the pipeline), so
no training happens. The query is a recency-weighted mean of the history embeddings (weight ``decay**age``, age 0
= last item; decay 0 = last item only) and an optional popularity prior adds ``w * log(1 + train count)``,
scaled to [0, 1]. Decay and w are chosen on valid from the grids below.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import numpy as np

from genrec.artifacts import ITEM_EMB, ITEM_EMB_META, Run
from genrec.baselines.common import BaselineArgs, RunData
from genrec.baselines.popularity import popularity_counts
from genrec.content import ItemContent

logger = logging.getLogger(__name__)


@dataclass
class Config:
    decays: list[float] = field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0],
        metadata={"help": "Grid of history recency decays in [0, 1] (0 = last item only, 1 = plain mean)."},
    )
    pop_weights: list[float] = field(
        default_factory=lambda: [0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0],
        metadata={"help": "Grid of popularity-prior weights (>= 0) on log(1 + train count) scaled to [0, 1]."},
    )

    def __post_init__(self):
        if not self.decays or any(not 0.0 <= d <= 1.0 for d in self.decays):
            raise ValueError(f"--decays {self.decays}: give one or more values in [0, 1]")
        if not self.pop_weights or any(w < 0 for w in self.pop_weights):
            raise ValueError(f"--pop-weights {self.pop_weights}: give one or more values >= 0")


def aligned_embeddings(data: RunData) -> np.ndarray:
    """The run's item embeddings in catalog order, L2-normalised."""
    run = Run(data.run_dir)
    if not run.exists(ITEM_EMB) or not run.exists(ITEM_EMB_META):
        raise FileNotFoundError(f"{run.path(ITEM_EMB)} or {ITEM_EMB_META} missing; the knn baseline needs the embed "
                                "stage: genrec stage embed CONFIG --run-dir DIR")
    return run.item_embeddings().aligned(data.item_ids)


class KnnScorer:
    def __init__(self, data: RunData, emb: np.ndarray, cfg: Config):
        self.data, self.cfg = data, cfg
        self.content = ItemContent(data.item_ids, emb)
        logpop = np.log1p(popularity_counts(data))
        self.prior = (logpop / max(logpop.max(), 1e-12)).astype(np.float32)
        self.info = {"embedding_dim": int(emb.shape[1])}

    def grid(self) -> list[dict]:
        return [{"decay": d, "pop_weight": w} for d, w in itertools.product(self.cfg.decays, self.cfg.pop_weights)]

    def score(self, rows, decay: float, pop_weight: float) -> np.ndarray:
        return self.content.similarity([r["history"] for r in rows], decay) + pop_weight * self.prior


def build(data: RunData, cfg: Config, args: BaselineArgs) -> KnnScorer:
    return KnnScorer(data, aligned_embeddings(data), cfg)
