"""SASRec + FAERec fusion: a gated mix of each item's collaborative ID embedding and its text embedding.

    genrec baseline sasrec-faerec --run-dir runs/industrial-cpu --split test [--export-embeddings DIR]

After FAERec (tail-item enhancement by fusing ID and LLM embeddings, with item- and feature-level alignment and a
curriculum), in the SASRec harness: the transformer, training windows, early stopping on valid and scoring are
`genrec.baselines.sasrec`'s; only the item table changes. For item i with ID embedding ``u_i`` (learned) and text
embedding ``t_i`` (the run's item_emb.npy, frozen):

- semantic view ``v_i = W2 gelu(W1 t_i)`` (an adapter to the model width);
- gate ``g_i = sigmoid(w . [LN(u_i), LN(v_i), p_i] + b)``, ``p_i = log1p(count_i) / log1p(max count)`` (train
  interactions), so the model can lean on the text for tail items and on the ID for head items; ``g_i = 0`` for
  cold items (no train interaction): their ID embedding is never trained as a target, yet a learned gate kept it
  (mean gate .998 on the Industrial data). Even so, cold targets rarely reach the top 10 there (the text view's
  scale is learned only through seen items, and training only ever shows cold items as negatives);
- fused ``f_i = g_i u_i + (1 - g_i) v_i``: SASRec's input embedding and its tied output layer.

Loss of a batch at epoch e: ``rec + a(e) * infonce(u, v) + b(e) * barlow_twins(u, v)`` over the batch's items:
item-level alignment (symmetric InfoNCE, the two views of one item are the positive pair), feature-level
alignment (cross-correlation of the standardised views pushed to the identity). Curriculum: ``a`` ramps linearly
to --item-weight over the first --item-ramp epochs; ``b`` is 0 before --feature-start and ramps to
--feature-weight over --feature-ramp epochs. --export-embeddings DIR writes the fused vectors ``f_i`` of the best
epoch as DIR/item_emb.npy + item_emb.json (the embed stage's format), an input of the quantize stage: written to the
run's ``fused/`` folder (with ``--split valid``, so test is never read) they are ``quantize.input: fused``; any
other DIR is ``quantize.input: DIR``.

Example:
    >>> main(["sasrec-faerec", "--run-dir", "runs/demo", "--epochs", "20"])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from genrec.artifacts import ITEM_EMB, ITEM_EMB_META, train_sequences
from genrec.baselines import sasrec
from genrec.baselines.common import BaselineArgs, RunData
from genrec.baselines.knn import aligned_embeddings
from genrec.evaluation import item_counts, popularity_buckets
from genrec.io import write_json, write_npy

logger = logging.getLogger(__name__)


@dataclass
class Config(sasrec.Config):
    temperature: float = field(default=0.2, metadata={"help": "Temperature of the item-level InfoNCE."})
    item_weight: float = field(default=0.1, metadata={"help": "Full weight of the item-level (InfoNCE) alignment."})
    item_ramp: int = field(default=5, metadata={"help": "Epochs over which the item-level weight ramps up from 0."})
    feature_weight: float = field(
        default=0.01, metadata={"help": "Full weight of the feature-level (Barlow Twins) alignment."}
    )
    feature_start: int = field(
        default=10, metadata={"help": "First epoch with feature-level alignment (the curriculum's later phase)."}
    )
    feature_ramp: int = field(
        default=10, metadata={"help": "Epochs over which the feature-level weight ramps up from feature-start."}
    )
    off_diagonal: float = field(
        default=0.005, metadata={"help": "Barlow Twins weight of the off-diagonal (redundancy) terms."}
    )
    align_items: int = field(
        default=1024, metadata={"help": "Most items of a batch the alignment losses use (a random subset)."}
    )
    export_embeddings: str | None = field(
        default=None,
        metadata={"help": "Directory to write the fused item embeddings to (item_emb.npy + item_emb.json, catalog "
                  "order), e.g. for quantize.input."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.temperature <= 0 or min(self.item_weight, self.feature_weight, self.off_diagonal) < 0:
            raise ValueError("--temperature must be > 0; --item-weight, --feature-weight, --off-diagonal >= 0")
        if min(self.item_ramp, self.feature_start, self.feature_ramp, self.align_items - 1) < 1:
            raise ValueError("--item-ramp, --feature-start and --feature-ramp must be >= 1, --align-items >= 2")


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of two views (n, d): row i of `a` and row i of `b` are positives, other rows negatives."""
    logits = nn.functional.normalize(a, dim=-1) @ nn.functional.normalize(b, dim=-1).T / temperature
    target = torch.arange(len(a), device=a.device)
    return (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2


def barlow_twins(a: torch.Tensor, b: torch.Tensor, off_diagonal: float) -> torch.Tensor:
    """Barlow Twins: with each dimension standardised over the rows, C = a'b / n; sum (1 - C_kk)^2 +
    off_diagonal * sum_{k != l} C_kl^2 (0 when the views agree dimension by dimension and are decorrelated)."""
    a = (a - a.mean(0)) / (a.std(0, unbiased=False) + 1e-6)
    b = (b - b.mean(0)) / (b.std(0, unbiased=False) + 1e-6)
    c = a.T @ b / len(a)
    on = torch.diagonal(c)
    return ((1 - on) ** 2).sum() + off_diagonal * ((c**2).sum() - (on**2).sum())


def curriculum(epoch: int, cfg: Config) -> tuple[float, float]:
    """(item-level, feature-level) weights at a 1-based epoch: item-level ramps in first, feature-level later."""
    item = cfg.item_weight * min(1.0, epoch / cfg.item_ramp)
    feature = cfg.feature_weight * min(1.0, max(0.0, (epoch - cfg.feature_start + 1) / cfg.feature_ramp))
    return item, feature


class Views(NamedTuple):
    ids: torch.Tensor  # (n_items, hidden) collaborative ID embeddings u
    semantic: torch.Tensor  # (n_items, hidden) adapted text embeddings v
    gate: torch.Tensor  # (n_items, 1) weight of the ID view
    fused: torch.Tensor  # (n_items, hidden) g u + (1 - g) v


class FAERec(nn.Module):
    """SASRec whose item table is the gated fusion of ID and text embeddings (see the module docstring)."""

    def __init__(self, *, backbone: sasrec.SASRec, text: np.ndarray, popularity: np.ndarray, cfg: Config):
        super().__init__()
        hidden = backbone.hidden
        self.backbone, self.cfg = backbone, cfg
        self.register_buffer("text", torch.as_tensor(text, dtype=torch.float32))
        self.register_buffer("popularity", torch.as_tensor(popularity, dtype=torch.float32)[:, None])
        self.adapter = nn.Sequential(nn.Linear(text.shape[1], hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.norm_ids, self.norm_semantic = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.gate = nn.Linear(2 * hidden + 1, 1)

    def views(self) -> Views:
        ids = self.backbone.item_emb.weight[1:]
        semantic = self.adapter(self.text)
        gate = torch.sigmoid(self.gate(torch.cat([self.norm_ids(ids), self.norm_semantic(semantic),
                                                  self.popularity], dim=-1))) * (self.popularity > 0)
        return Views(ids, semantic, gate, gate * ids + (1 - gate) * semantic)

    def table(self, fused: torch.Tensor) -> torch.Tensor:
        return torch.cat([fused.new_zeros(1, fused.shape[1]), fused])  # row 0: padding

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.backbone(seq, self.table(self.views().fused))

    def training_loss(self, inputs: torch.Tensor, labels: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict]:
        views = self.views()
        rec = sasrec.next_item_loss(self.backbone(inputs, self.table(views.fused)), labels)
        items = torch.unique(torch.cat([labels[labels >= 0], inputs[inputs > 0] - 1]))
        if len(items) > self.cfg.align_items:
            items = items[torch.randperm(len(items), device=items.device)[:self.cfg.align_items]]
        ids, semantic = views.ids[items], views.semantic[items]
        item_loss, feature_loss = info_nce(ids, semantic, self.cfg.temperature), barlow_twins(
            ids, semantic, self.cfg.off_diagonal)
        a, b = curriculum(epoch, self.cfg)
        parts = {"rec": rec.item(), "item": item_loss.item(), "feat": feature_loss.item()}
        return rec + a * item_loss + b * feature_loss, parts


@torch.no_grad()
def gate_summary(model: FAERec, data: RunData, counts: np.ndarray) -> dict:
    """Mean gate (weight of the ID view) over the head, tail and cold items of the train counts."""
    model.eval()
    gate = model.views().gate.squeeze(1).cpu().numpy()
    buckets, _ = popularity_buckets(dict(zip(data.item_ids, counts.tolist())))
    names = np.array([buckets.get(i, "cold") for i in data.item_ids])
    return {f"gate_{b}": round(float(gate[names == b].mean()), 4) for b in ("head", "tail", "cold") if (names == b).any()}


def build(data: RunData, cfg: Config, args: BaselineArgs) -> sasrec.SasrecScorer:
    max_len, windows = sasrec.prepare(data, cfg, args.seed)
    counts = item_counts(train_sequences(data.train, data.index), data.n_items)
    model = FAERec(backbone=sasrec.backbone(data, cfg, max_len), text=aligned_embeddings(data),
                   popularity=np.log1p(counts) / max(np.log1p(counts.max()), 1e-12), cfg=cfg)
    scorer = sasrec.fit(model, data, cfg, args, max_len, windows, name="sasrec-faerec")
    scorer.info.update(gate_summary(model, data, counts))
    if cfg.export_embeddings:
        export_embeddings(Path(cfg.export_embeddings), data.item_ids, fused_embeddings(model),
                          {"source": "sasrec-faerec", "run_dir": str(data.run_dir), "seed": args.seed,
                           "config": asdict(cfg), "fit": dict(scorer.info)})
    return scorer


@torch.no_grad()
def fused_embeddings(model: FAERec) -> np.ndarray:
    """The fused item vectors (n_items, hidden) in catalog order, float32."""
    model.eval()
    return model.views().fused.float().cpu().numpy()


def export_embeddings(out_dir: Path, item_ids: list[str], vectors: np.ndarray, recipe: dict) -> None:
    """Write vectors in the embed stage's format (item_emb.npy + item_emb.json) so `Run`'s reader loads them."""
    write_npy(out_dir / ITEM_EMB, vectors.astype(np.float32))
    write_json(out_dir / ITEM_EMB_META, {"item_ids": list(item_ids), "dim": int(vectors.shape[1]), "recipe": recipe})
    logger.info("sasrec-faerec: fused embeddings (%d x %d) -> %s", *vectors.shape, out_dir)
