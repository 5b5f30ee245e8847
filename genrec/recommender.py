"""One path from a model to recommendations: histories of item ids in, the top-K real catalog items out.

`Recommender` wraps a causal LM with its tokenizer, item -> SID map and trie, and the prompt settings it was trained
with; `Recommender.recommend` is the one ranking function: `genrec evaluate`, SFT's in-training model selection,
GRPO rollouts and the server all call it, so they build the same prompt (`genrec.tasks.next_item_prompt`), encode
it the same way (`genrec.tasks.encode_prompt`) and decode under the same precision (`genrec.precision`).
`load_recommender` is the one way to load a trained checkpoint for inference.

A checkpoint's files (weights, SID map, catalog titles, how it was trained) are read through `genrec.checkpoint`.

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

from genrec.checkpoint import (
    has_sid_map,
    load_catalog,
    load_item_content,
    load_item_interests,
    load_model_and_tokenizer,
    trained_with,
)
from genrec.content import ItemContent
from genrec.decoding.beam import DecodeConfig, recommend
from genrec.decoding.trie import Recommendation, SIDTrie
from genrec.explain import ItemInterests
from genrec.precision import native_bf16, resolve_bf16
from genrec.sid import sid_string, sid_tokens
from genrec.tasks import encode_prompt, next_item_prompt

logger = logging.getLogger(__name__)

@dataclass
class Recommender:
    """A model ready to recommend. `max_history` is the prompt length it was trained with (None: the whole history
    a row holds); `bf16` its training precision (None: unknown, decided by the hardware); `titles` item -> title
    and `interests` the items' embedded interests (both optional; the server shows titles and explains with
    interests); `content` the items' text vectors and `content_weight` the weight of the content prior its
    training stage chose on valid (`DecodeConfig.content_weight` overrides it)."""

    model: torch.nn.Module
    tokenizer: object
    sids: dict[str, list[int]]
    max_history: int | None = None
    bf16: bool | None = None
    titles: dict[str, str] = field(default_factory=dict)
    trie: SIDTrie | None = None
    interests: ItemInterests | None = None
    content: ItemContent | None = None
    content_weight: float = 0.0

    def __post_init__(self):
        self.sid_strings = {iid: sid_string(codes) for iid, codes in self.sids.items()}
        if self.trie is None:
            self.trie = SIDTrie.from_sids(self.sids, self.tokenizer)
        if self.content is not None and self.content.item_ids != self.trie.item_ids:
            missing = set(self.trie.item_ids) - set(self.content.index)
            if missing:
                raise ValueError(f"item vectors lack {len(missing)} catalog item(s) (e.g. {min(missing)!r}); "
                                 "re-run the training stage that wrote the checkpoint")
            rows = [self.content.index[i] for i in self.trie.item_ids]
            self.content = ItemContent(list(self.trie.item_ids), self.content.vectors[rows])
        self._warned_no_content = False

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

        With `decode.content_weight` > 0 and item vectors (`content`), each item's score adds that weight times
        its content similarity to the history (`genrec.content`). The model's train/eval mode is restored
        afterwards, so a trainer can call this mid-training.
        """
        decode = decode or DecodeConfig()
        return self.rank_prompts([self.prompt(h) for h in histories], decode, k=k, progress=progress,
                                 item_prior=self.content_prior(histories, decode))

    def content_prior(self, histories: Sequence[Sequence[str]], decode: DecodeConfig) -> torch.Tensor | None:
        """``(len(histories), items)``: the content weight (`resolved_content_weight`) x each item's cosine with the
        history's content query, in the trie's item order; None when the weight is 0 or there are no item vectors."""
        weight = self.resolved_content_weight(decode)
        if weight == 0:
            return None
        if self.content is None:
            if not self._warned_no_content:
                logger.warning("content_weight=%s but this model has no item vectors (a checkpoint from before "
                               "genrec saved them, or a run without the embed stage): ranking by the model alone; "
                               "re-run its training stage to add them, or pass content_weight=0 to silence this",
                               weight)
                self._warned_no_content = True
            return None
        sims = self.content.similarity(histories, decode.content_decay)
        return torch.from_numpy(sims).mul_(weight)

    def resolved_content_weight(self, decode: DecodeConfig) -> float:
        """The content prior's weight a search runs with: `decode.content_weight` when set, else the checkpoint's."""
        return self.content_weight if decode.content_weight is None else decode.content_weight

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


def load_recommender(checkpoint: str | Path, *, device: str | None = None, dtype: str = "float32",
                     sids: dict[str, list[int]] | None = None) -> Recommender:
    """A trained checkpoint ready to recommend: model (on `device`, default cuda when available), tokenizer, trie,
    catalog titles, the items' interests (explanations; None when the checkpoint has none), the items' text vectors
    (the search's content prior; None when it has none) and the prompt settings it was trained with.

    `sids` replaces the checkpoint's own sids.json (for a plain ``save_pretrained`` model that has none).

    Example:
        >>> rec = load_recommender("runs/demo/checkpoints/sft", device="cpu")  # doctest: +SKIP
    """
    checkpoint = Path(checkpoint)
    model, tokenizer = load_model_and_tokenizer(checkpoint, dtype)
    own_sids, titles = load_catalog(checkpoint) if sids is None or has_sid_map(checkpoint) else ({}, {})
    sids = sids if sids is not None else own_sids
    trained = trained_with(checkpoint)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    logger.info("loaded %s on %s (%d items, max_history %s)", checkpoint, device, len(sids), trained.max_history)
    return Recommender(model, tokenizer, sids, max_history=trained.max_history, bf16=trained.bf16, titles=titles,
                       interests=load_item_interests(checkpoint),
                       content=load_item_content(checkpoint, list(own_sids) or None),
                       content_weight=trained.content_weight)
