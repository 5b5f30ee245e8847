"""Behavioural calibration of item embeddings before quantization (after GenAIR's calibration loss).

Text embeddings place items by what they are; users also group items by how they are bought together. This
module moves the embeddings a little towards the co-interaction structure of the **train** split, so the RQ-VAE's
codes (and the SIDs) share prefixes among items that are both similar and co-interacted.

GenAIR adds to a recommender's loss, over the in-batch items with L2-normalised embeddings e,

    L_GenAIR = - sum_{i != j} w_ij * ||e_i - e_j||^2 / (n (n - 1)),   w_ij = exp(-gamma * s_ij),
    s_ij = log1p(C_ij) / log1p(max C)    (C: co-interaction counts; s = 0, so w = 1, for pairs never co-interacted)

with gamma = 4 and weight 1e-4 beside the recommendation loss: every pair is pushed apart, co-interacted pairs less.
Without a recommendation loss to pull co-interacted items together, the standalone version here adds that pull and
an anchor that keeps each item near its text embedding x_i (L2-normalised). The calibrated embedding is
``e_i = normalize(x_i + r(x_i))`` with ``r`` a residual MLP (d -> hidden -> d, GELU, last layer zero-initialised so
training starts at e = x) shared by all items, so items without train interactions move with the learned map too.
Each step samples `batch_size` co-interacted pairs P (uniformly over the distinct pairs) and as many random items;
B is every item involved:

    L = mean_{i in B} ||e_i - x_i||^2                                   (anchor)
        + calibration_weight * L_GenAIR(e_B, s_B, gamma)                (spread, less for co-interacted pairs)
        + calibration_pull * sum_{(i,j) in P} s_ij ||e_i - e_j||^2 / sum_{(i,j) in P} s_ij     (pull)

minimised with AdamW for `calibration_steps` steps (defaults in `genrec.tokenizer.QuantizeConfig`).

Example:
    >>> counts = co_interaction_counts(train_rows, {iid: n for n, iid in enumerate(item_ids)})  # doctest: +SKIP
    >>> calibrated = calibrate(emb, counts, QuantizeConfig(calibration="genair"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from scipy import sparse
from torch import nn
from tqdm.auto import tqdm

from genrec.artifacts import train_sequences

if TYPE_CHECKING:
    from genrec.tokenizer.config import QuantizeConfig

logger = logging.getLogger(__name__)


def co_interaction_counts(train_rows: Sequence[dict], item_index: dict[str, int], window: int | None = None
                          ) -> sparse.csr_matrix:
    """Symmetric (n_items, n_items) counts of distinct items co-occurring in one user's train sequence.

    Each user's interactions count once (`train_sequences`); every pair of positions at most `window` apart (None:
    the whole sequence) adds 1 to C_ij and C_ji. The diagonal is 0 (a repeat purchase is no pair). Pass the train
    rows only: anything else leaks the evaluation targets into the SIDs.

    Example:
        >>> rows = [{"user_id": "u", "history": ["a", "b"], "target": "c"}]
        >>> co_interaction_counts(rows, {"a": 0, "b": 1, "c": 2}, window=1).toarray().tolist()
        [[0, 1, 0], [1, 0, 1], [0, 1, 0]]
    """
    if window is not None and window < 1:
        raise ValueError(f"window={window}: use an integer >= 1, or None for the whole sequence")
    rows, cols = [], []
    for seq in train_sequences(train_rows, item_index):
        seq = np.asarray(seq, dtype=np.int64)
        for offset in range(1, min(len(seq), (window or len(seq)) + 1)):
            a, b = seq[:-offset], seq[offset:]
            keep = a != b
            rows += [a[keep], b[keep]]
            cols += [b[keep], a[keep]]
    n = len(item_index)
    if not rows:
        return sparse.csr_matrix((n, n), dtype=np.int64)
    r, c = np.concatenate(rows), np.concatenate(cols)
    return sparse.csr_matrix((np.ones(len(r), dtype=np.int64), (r, c)), shape=(n, n))


def strengths(counts: sparse.spmatrix) -> sparse.csr_matrix:
    """GenAIR's s_ij = log1p(C_ij) / log1p(max C), in [0, 1]; 0 where the pair never co-occurred."""
    counts = sparse.csr_matrix(counts, dtype=np.float64)
    top = counts.max() if counts.nnz else 0.0
    out = counts.copy()
    out.data = np.log1p(out.data) / np.log1p(top) if top > 0 else out.data * 0
    return out


def calibration_loss(emb: torch.Tensor, strength: torch.Tensor, gamma: float) -> torch.Tensor:
    """GenAIR's behavioural calibration loss of a batch: -sum_{i != j} w_ij ||e_i - e_j||^2 / (n (n - 1)), with
    e the L2-normalised rows of `emb` (n, d) and w = exp(-gamma * strength) (`strength`: (n, n) s_ij, 0 for pairs
    never co-interacted, so their weight is 1).

    Example:
        >>> e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> round(calibration_loss(e, torch.zeros(2, 2), 4.0).item(), 4)  # both ordered pairs at distance^2 = 2
        -2.0
    """
    n = emb.shape[0]
    if n < 2:
        return emb.sum() * 0
    e = nn.functional.normalize(emb, dim=-1)
    dist2 = (2 - 2 * e @ e.T).clamp(min=0)  # ||e_i - e_j||^2 of unit vectors
    weights = torch.exp(-gamma * strength) * (1 - torch.eye(n, device=emb.device, dtype=emb.dtype))
    return -(weights * dist2).sum() / (n * (n - 1))


class Residual(nn.Module):
    """e = normalize(x + MLP(x)); the MLP's last layer starts at zero, so the map starts as the identity."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x + self.mlp(x), dim=-1)


class CalibrationLosses(NamedTuple):
    total: torch.Tensor
    anchor: torch.Tensor
    genair: torch.Tensor
    pull: torch.Tensor


def step_losses(model: Residual, x: torch.Tensor, s: sparse.csr_matrix, pairs: np.ndarray, pair_s: np.ndarray,
                others: np.ndarray, cfg: QuantizeConfig) -> CalibrationLosses:
    """The calibration objective (module docstring) on sampled pairs (k, 2) plus random items `others`."""
    batch = np.unique(np.concatenate([pairs.ravel(), others]))
    where = {int(item): n for n, item in enumerate(batch)}
    e = model(x[batch])
    s_batch = torch.as_tensor(s[batch][:, batch].toarray(), dtype=e.dtype, device=e.device)
    anchor = ((e - x[batch]) ** 2).sum(-1).mean()
    genair = calibration_loss(e, s_batch, cfg.calibration_gamma)
    i = torch.as_tensor([where[int(a)] for a in pairs[:, 0]], device=e.device)
    j = torch.as_tensor([where[int(b)] for b in pairs[:, 1]], device=e.device)
    w = torch.as_tensor(pair_s, dtype=e.dtype, device=e.device)
    pull = (w * ((e[i] - e[j]) ** 2).sum(-1)).sum() / w.sum().clamp(min=1e-12)
    total = anchor + cfg.calibration_weight * genair + cfg.calibration_pull * pull
    return CalibrationLosses(total, anchor, genair, pull)


def calibrate(emb: np.ndarray, counts: sparse.spmatrix, cfg: QuantizeConfig, device: str = "cpu") -> np.ndarray:
    """Calibrated copies of `emb` (n_items, d), L2-normalised, float32; `counts`: `co_interaction_counts` of the
    train split, rows in the order of `emb`. Seeded by ``cfg.seed``. With no co-interacted pair the embeddings are
    returned normalised and otherwise unchanged."""
    if counts.shape != (len(emb), len(emb)):
        raise ValueError(f"co-interaction counts {counts.shape} do not match {len(emb)} embeddings")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    x = nn.functional.normalize(torch.as_tensor(emb, dtype=torch.float32, device=device), dim=-1)
    upper = sparse.triu(strengths(counts), k=1).tocoo()
    if upper.nnz == 0:
        logger.warning("calibration: no co-interacted pair in the train split; embeddings left as they are")
        return x.cpu().numpy()
    s = strengths(counts)
    model = Residual(x.shape[1], cfg.calibration_hidden).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.calibration_lr, weight_decay=0.0)
    bar = tqdm(range(cfg.calibration_steps), desc="calibrate", unit="step")
    for _ in bar:
        pick = rng.integers(0, upper.nnz, cfg.calibration_batch_size)
        pairs = np.stack([upper.row[pick], upper.col[pick]], axis=1)
        others = rng.integers(0, len(emb), cfg.calibration_batch_size)
        losses = step_losses(model, x, s, pairs, upper.data[pick], others, cfg)
        opt.zero_grad(set_to_none=True)
        losses.total.backward()
        opt.step()
        bar.set_postfix(**{k: f"{v.item():.4f}" for k, v in losses._asdict().items()})
    logger.info("calibration: %d co-interacted pairs, final losses %s", upper.nnz,
                {k: round(v.item(), 4) for k, v in losses._asdict().items()})
    with torch.no_grad():
        return model.eval()(x).cpu().numpy()


def calibration_stats(before: np.ndarray, after: np.ndarray, counts: sparse.spmatrix, samples: int = 20000,
                      seed: int = 0) -> dict:
    """How far calibration moved the items: mean cosine of co-interacted pairs and of random pairs, before and
    after, and the mean distance of each item from its input (both sides L2-normalised)."""
    before = before / np.maximum(np.linalg.norm(before, axis=1, keepdims=True), 1e-12)
    after = after / np.maximum(np.linalg.norm(after, axis=1, keepdims=True), 1e-12)
    pairs = sparse.triu(counts, k=1).tocoo()
    rng = np.random.default_rng(seed)
    ri, rj = rng.integers(0, len(before), samples), rng.integers(0, len(before), samples)

    def mean_cos(e, i, j):
        return round(float((e[i] * e[j]).sum(1).mean()), 4) if len(i) else None

    return {
        "pairs": int(pairs.nnz),
        "cos_pairs_before": mean_cos(before, pairs.row, pairs.col),
        "cos_pairs_after": mean_cos(after, pairs.row, pairs.col),
        "cos_random_before": mean_cos(before, ri, rj),
        "cos_random_after": mean_cos(after, ri, rj),
        "mean_shift": round(float(np.linalg.norm(after - before, axis=1).mean()), 4),
    }
