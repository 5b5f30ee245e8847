"""SASRec baseline (Kang & McAuley 2018): a causal transformer over item-ID sequences, trained on train.

    genrec baseline sasrec --run-dir runs/industrial-cpu --split test [--epochs 200 --hidden 64]

Item embeddings plus learned positional embeddings feed pre-norm causal transformer blocks; the output at each
position scores every catalog item by a dot product with the same item embeddings (tied weights). Training uses
each user's train sequence (see `train_sequences`), cut from the end into windows of ``max_len + 1`` items, with
full-softmax cross-entropy at every position (each train interaction is a target once). The model is evaluated
on valid every ``eval_every`` epochs; the best epoch by the selection metric is kept and training stops after
``patience`` evaluations without improvement. Seeded; CPU-sized defaults (a few minutes on 2 cores).
`prepare`, `backbone` and `fit` are shared with sasrec-faerec (genrec.baselines.faerec), which only swaps the item
table.
"""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from genrec.artifacts import train_sequences
from genrec.baselines.common import BaselineArgs, RunData, rank_rows
from genrec.evaluation import ranking_metrics

logger = logging.getLogger(__name__)


@dataclass
class Config:
    hidden: int = field(default=64, metadata={"help": "Embedding and transformer width."})
    layers: int = field(default=2, metadata={"help": "Number of causal transformer blocks."})
    heads: int = field(default=1, metadata={"help": "Attention heads per block (must divide --hidden)."})
    dropout: float = field(default=0.5, metadata={"help": "Dropout on embeddings, attention and feed-forward."})
    max_len: int | None = field(
        default=None, metadata={"help": "Most previous items the model sees; None = the longest history in the data."}
    )
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    batch_size: int = field(default=128, metadata={"help": "Training windows per step."})
    epochs: int = field(default=200, metadata={"help": "Most training epochs."})
    eval_every: int = field(default=2, metadata={"help": "Evaluate on valid every this many epochs."})
    patience: int = field(default=10, metadata={"help": "Stop after this many evaluations without improvement."})
    device: str = field(default="cpu", metadata={"help": "Torch device, e.g. cpu or cuda."})
    threads: int | None = field(
        default=1,
        metadata={"help": "CPU threads for torch (None = torch's default). A model this small runs fastest on one; "
                  "more threads on a busy machine can be 20x slower."},
    )

    def __post_init__(self):
        if min(self.hidden, self.layers, self.heads, self.batch_size, self.epochs, self.eval_every,
               self.patience) < 1:
            raise ValueError("--hidden, --layers, --heads, --batch-size, --epochs, --eval-every and --patience "
                             "must all be >= 1")
        if self.hidden % self.heads:
            raise ValueError(f"--hidden {self.hidden} is not divisible by --heads {self.heads}; change either")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout {self.dropout}: use a value in [0, 1)")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads {self.threads}: use an integer >= 1 (or leave unset for torch's default)")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"--max-len {self.max_len}: use an integer >= 1 (or leave unset)")


class SASRec(nn.Module):
    """Causal self-attention over item ids 1..n (0 = padding, always on the right).

    The item table (row 0 = padding) embeds the inputs and scores the outputs (tied weights). It is the model's own
    ``item_emb`` unless the caller passes another one (FAERec passes its fused ID/text table).
    """

    def __init__(self, *, n_items: int, hidden: int, layers: int, heads: int, dropout: float, max_len: int):
        super().__init__()
        self.hidden = hidden
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.drop = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=hidden, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        nn.init.normal_(self.item_emb.weight, std=hidden**-0.5)
        nn.init.normal_(self.pos_emb.weight, std=hidden**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, length) item ids -> (batch, length, n_items) next-item logits; `table`: (n_items + 1, hidden)."""
        table = self.item_emb.weight if table is None else table
        length = seq.size(1)
        x = table[seq] + self.pos_emb(torch.arange(length, device=seq.device))
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=seq.device)
        h = self.norm(self.blocks(self.drop(x), mask=mask, is_causal=True))
        return h @ table[1:].T

    def training_loss(self, inputs: torch.Tensor, labels: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict]:
        """Full-softmax next-item cross-entropy at every non-padding position, and its parts for the progress bar."""
        loss = next_item_loss(self(inputs), labels)
        return loss, {"rec": loss.item()}


def next_item_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def training_windows(seqs: list[list[int]], max_len: int) -> list[list[int]]:
    """Cut each sequence from the end into windows of <= max_len + 1 items overlapping by one item."""
    windows = []
    for s in seqs:
        for end in range(len(s), 1, -max_len):
            windows.append(s[max(0, end - max_len - 1):end])
    return windows


def _batch(windows: list[list[int]], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (ids + 1, right-padded with 0) and labels (next item index, -100 on padding)."""
    length = max(len(w) for w in windows) - 1
    inputs = torch.zeros(len(windows), length, dtype=torch.long)
    labels = torch.full((len(windows), length), -100, dtype=torch.long)
    for n, w in enumerate(windows):
        inputs[n, :len(w) - 1] = torch.tensor(w[:-1]) + 1
        labels[n, :len(w) - 1] = torch.tensor(w[1:])
    return inputs.to(device), labels.to(device)


class SasrecScorer:
    """Scores rows with a model that maps (batch, length) item ids to next-item logits (SASRec, FAERec)."""

    def __init__(self, model: nn.Module, data: RunData, max_len: int, device: str, batch_size: int = 512):
        self.model, self.data, self.max_len, self.device, self.batch_size = model, data, max_len, device, batch_size
        self.info: dict = {}

    def grid(self) -> list[dict]:
        return [{}]

    @torch.no_grad()
    def score(self, rows) -> np.ndarray:
        self.model.eval()
        out = []
        for start in range(0, len(rows), self.batch_size):
            part = rows[start:start + self.batch_size]
            hists = [[self.data.index[i] for i in r["history"][-self.max_len:]] for r in part]
            seq = torch.zeros(len(hists), max(len(h) for h in hists), dtype=torch.long)
            for n, h in enumerate(hists):
                seq[n, :len(h)] = torch.tensor(h) + 1
            logits = self.model(seq.to(self.device))
            last = torch.tensor([len(h) - 1 for h in hists], device=self.device)
            out.append(logits[torch.arange(len(hists), device=self.device), last].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.data.n_items), dtype=np.float32)


def _valid_metric(scorer: SasrecScorer, metric: str, exclude: bool) -> float:
    ranked, _ = rank_rows(scorer, scorer.data, scorer.data.valid, {}, (exclude,))[exclude]
    return ranking_metrics(ranked, [r["target"] for r in scorer.data.valid])[metric]


def train(scorer: SasrecScorer, windows: list[list[int]], cfg: Config, args: BaselineArgs, name: str = "sasrec"
          ) -> dict:
    """Train with early stopping on the valid metric; load the best epoch's weights into the model.

    The model's ``training_loss(inputs, labels, epoch)`` gives the loss of a batch (its curriculum may depend on the
    1-based epoch) and the parts shown on the progress bar."""
    metric, exclude = args.select_metric, args.exclude_history == "yes"  # 'auto' is decided after training
    model, rng = scorer.model, random.Random(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best = {"epoch": 0, "value": -1.0, "state": copy.deepcopy(model.state_dict())}
    stale, bar = 0, tqdm(range(1, cfg.epochs + 1), desc=name, unit="epoch")
    steps = -(-len(windows) // cfg.batch_size)
    for epoch in bar:
        model.train()
        rng.shuffle(windows)
        totals: dict[str, float] = {}
        for start in range(0, len(windows), cfg.batch_size):
            inputs, labels = _batch(windows[start:start + cfg.batch_size], cfg.device)
            loss, parts = model.training_loss(inputs, labels, epoch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            totals = {k: totals.get(k, 0.0) + v / steps for k, v in parts.items()}
        if epoch % cfg.eval_every and epoch != cfg.epochs:
            continue
        value = _valid_metric(scorer, metric, exclude)
        bar.set_postfix(**{k: f"{v:.3f}" for k, v in totals.items()}, **{f"valid_{metric}": f"{value:.4f}"})
        if value > best["value"]:
            best, stale = {"epoch": epoch, "value": value, "state": copy.deepcopy(model.state_dict())}, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    bar.close()
    model.load_state_dict(best["state"])
    logger.info("%s: best valid %s %.4f at epoch %d (stopped at %d)", name, metric, best["value"],
                best["epoch"], epoch)
    return {"best_epoch": best["epoch"], "epochs_run": epoch, f"valid_{metric}": round(best["value"], 5)}


def prepare(data: RunData, cfg: Config, seed: int) -> tuple[int, list[list[int]]]:
    """Seed every generator and set torch's threads; return max_len and the training windows of the train split."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    max_len = cfg.max_len or max(len(r["history"]) for r in [*data.train, *data.valid, *data.eval_rows])
    windows = training_windows(train_sequences(data.train, data.index), max_len)
    if not windows:
        raise ValueError("the train split has no sequence of two or more items; SASRec has nothing to learn from")
    return max_len, windows


def backbone(data: RunData, cfg: Config, max_len: int) -> SASRec:
    return SASRec(n_items=data.n_items, hidden=cfg.hidden, layers=cfg.layers, heads=cfg.heads, dropout=cfg.dropout,
                  max_len=max_len)


def fit(model: nn.Module, data: RunData, cfg: Config, args: BaselineArgs, max_len: int, windows: list[list[int]],
        name: str = "sasrec") -> SasrecScorer:
    """Train `model` (SASRec or a model around it) with early stopping on valid; the scorer of its best epoch."""
    model = model.to(cfg.device)
    logger.info("%s: %d training windows, max_len %d, %d parameters", name, len(windows), max_len,
                sum(p.numel() for p in model.parameters()))
    scorer = SasrecScorer(model, data, max_len, cfg.device)
    summary = train(scorer, windows, cfg, args, name)
    scorer.info = {"max_len": max_len, "train_windows": len(windows), **summary}
    return scorer


def build(data: RunData, cfg: Config, args: BaselineArgs) -> SasrecScorer:
    max_len, windows = prepare(data, cfg, args.seed)
    return fit(backbone(data, cfg, max_len), data, cfg, args, max_len, windows)
