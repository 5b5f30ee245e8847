"""One path from a model to recommendations: histories of item ids in, the top-K real catalog items out.

`Recommender` wraps a causal LM with its tokenizer, item -> SID map and trie, and the prompt settings it was trained
with; `Recommender.recommend` is the one ranking function: `genrec evaluate`, SFT's in-training model selection,
GRPO rollouts and the server all call it, so they build the same prompt (`genrec.tasks.next_item_prompt`), encode
it the same way (`genrec.tasks.encode_prompt`) and decode under the same precision (`genrec.precision`).
`load_recommender` is the one way to load a trained checkpoint for inference.

A checkpoint (written by `genrec.modeling.save_checkpoint`) is a ``save_pretrained`` directory plus:
``sids.json`` (item -> SID codes), ``genrec.json`` (how it was trained: prompt settings, precision, selection) and,
since the serving API needs titles, ``catalog.jsonl`` (item_id, title).

Example:
    >>> rec = load_recommender("runs/demo/checkpoints/sft")  # doctest: +SKIP
    >>> rec.recommend([["12", "40"]], DecodeConfig(beam=20), k=5)[0].items  # doctest: +SKIP
    ['41', '7', '230', '12', '55']
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genrec.decoding.beam import DecodeConfig, Recommendation, recommend
from genrec.decoding.trie import SIDTrie
from genrec.modeling import CHECKPOINT_CATALOG, CHECKPOINT_META, CHECKPOINT_SIDS, load_model_and_tokenizer
from genrec.precision import native_bf16, resolve_bf16
from genrec.sid import sid_string, sid_tokens
from genrec.tasks import encode_prompt, next_item_prompt

logger = logging.getLogger(__name__)

@dataclass
class Recommender:
    """A model ready to recommend. `max_history` is the prompt length it was trained with (None: the whole history
    a row holds); `bf16` its training precision (None: unknown, decided by the hardware); `titles` item -> title
    (optional; the server shows them)."""

    model: torch.nn.Module
    tokenizer: object
    sids: dict[str, list[int]]
    max_history: int | None = None
    bf16: bool | None = None
    titles: dict[str, str] = field(default_factory=dict)
    trie: SIDTrie | None = None

    def __post_init__(self):
        self.sid_strings = {iid: sid_string(codes) for iid, codes in self.sids.items()}
        if self.trie is None:
            self.trie = SIDTrie.from_sids(self.sids, self.tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt(self, history: Sequence[str]) -> str:
        """The next-item prompt of a history of item ids, as training built it."""
        return next_item_prompt(history, self.sid_strings, self.max_history)

    def use_bf16(self, requested: bool | None) -> bool:
        """bf16 autocast for ranking: `requested` when set, else the training choice where this hardware runs bf16
        natively (float32 elsewhere)."""
        if requested is not None:
            return resolve_bf16(requested, self.device, "ranking")
        return native_bf16(self.device) and self.bf16 is not False

    def recommend(self, histories: Sequence[Sequence[str]], decode: DecodeConfig | None = None, *,
                  k: int | None = None, progress: bool = False) -> list[Recommendation]:
        """Top-`k` distinct catalog items (default: `decode.beam`) per history, best first, with log-probabilities.

        The model's train/eval mode is restored afterwards, so a trainer can call this mid-training.
        """
        return self.rank_prompts([self.prompt(h) for h in histories], decode, k=k, progress=progress)

    def rank_prompts(self, prompts: Sequence[str], decode: DecodeConfig | None = None, *, k: int | None = None,
                     progress: bool = False, **engine) -> list[Recommendation]:
        """`recommend` for prompts already built by `prompt` (GRPO rollouts receive the dataset's prompt texts);
        `engine` passes through to `genrec.decoding.recommend` (e.g. ``engine="generate"`` for benchmarks)."""
        decode = decode or DecodeConfig()
        model, was_training = self.model, self.model.training
        model.eval()
        try:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16(decode.bf16)):
                return recommend(model, self.tokenizer, prompts, self.trie, k=k or decode.beam,
                                 num_beams=decode.beam, batch_size=decode.batch_size, progress=progress,
                                 encode=functools.partial(encode_prompt, self.tokenizer), softmax=decode.softmax,
                                 **engine)
        finally:
            model.train(was_training)

    def completion_ids(self, item_id: str) -> list[int]:
        """The token ids a model generates for an item: its SID tokens, then EOS."""
        return [*self.tokenizer.convert_tokens_to_ids(sid_tokens(self.sids[item_id])), self.trie.eos_token_id]


def selection_metrics(accelerator, recommender: Recommender, rows: Sequence[tuple[Sequence[str], str]],
                      decode: DecodeConfig) -> dict[str, float]:
    """Model selection inside a trainer: HR@K / NDCG@K of `recommender` on (history, target) rows, the rows split
    across processes and gathered (every rank runs the same number of forward passes, as ZeRO-3 needs)."""
    import time

    from accelerate.utils import gather_object

    from genrec.evaluation import KS, ranking_metrics

    start = time.time()
    with accelerator.split_between_processes(list(rows), apply_padding=True) as shard:
        recs = recommender.recommend([h for h, _ in shard], decode)
    recs = gather_object([(r.items, r.invalid) for r in recs])[: len(rows)]
    out = ranking_metrics([items for items, _ in recs], [t for _, t in rows], ks=[k for k in KS if k <= decode.beam])
    out["invalid"] = sum(inv for _, inv in recs)
    out["ranking_seconds"] = round(time.time() - start, 1)
    return out


def checkpoint_metadata(max_history: int | None, bf16: bool, **extra) -> dict:
    """What `load_recommender` needs to know of how a checkpoint was trained (written to genrec.json)."""
    return {"prompt": {"max_history": max_history}, "bf16": bool(bf16), **extra}


def has_sid_map(checkpoint: str | Path) -> bool:
    return (Path(checkpoint) / CHECKPOINT_SIDS).is_file()


def load_catalog(checkpoint: str | Path) -> tuple[dict[str, list[int]], dict[str, str]]:
    """A checkpoint's item -> SID map and item -> title (empty without catalog.jsonl), without its weights (the
    server validates requests with them while the model runs elsewhere)."""
    from genrec.artifacts import read_rows, read_sids

    checkpoint = Path(checkpoint)
    if not has_sid_map(checkpoint):
        raise FileNotFoundError(f"{checkpoint} has no {CHECKPOINT_SIDS}: it was not written by genrec's sft or "
                                "grpo stage; pass the run's SID map (genrec evaluate --run-dir RUN does)")
    titles = {}
    if (checkpoint / CHECKPOINT_CATALOG).is_file():
        titles = {str(r["item_id"]): str(r.get("title", "")) for r in read_rows(checkpoint / CHECKPOINT_CATALOG)}
    return read_sids(checkpoint / CHECKPOINT_SIDS), titles


def load_recommender(checkpoint: str | Path, *, device: str | None = None, dtype: str = "float32",
                     sids: dict[str, list[int]] | None = None) -> Recommender:
    """A trained checkpoint ready to recommend: model (on `device`, default cuda when available), tokenizer, trie,
    catalog titles and the prompt settings it was trained with.

    `sids` replaces the checkpoint's own sids.json (for a plain ``save_pretrained`` model that has none).

    Example:
        >>> rec = load_recommender("runs/demo/checkpoints/sft", device="cpu")  # doctest: +SKIP
    """
    from genrec.io import read_json

    checkpoint = Path(checkpoint)
    model, tokenizer = load_model_and_tokenizer(checkpoint, dtype)
    own_sids, titles = load_catalog(checkpoint) if sids is None or has_sid_map(checkpoint) else ({}, {})
    sids = sids if sids is not None else own_sids
    meta = read_json(checkpoint / CHECKPOINT_META) if (checkpoint / CHECKPOINT_META).is_file() else {}
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    prompt = meta.get("prompt") or {}
    logger.info("loaded %s on %s (%d items, max_history %s)", checkpoint, device, len(sids),
                prompt.get("max_history"))
    return Recommender(model, tokenizer, sids, max_history=prompt.get("max_history"), bf16=meta.get("bf16"),
                       titles=titles)
