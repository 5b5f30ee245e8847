"""transformers adapter of the trie: a `LogitsProcessor` for ``generate`` and the ``engine="generate"`` path of
`genrec.decoding.recommend`.

`GenerateEngine` never inherits the checkpoint's ``generation_config`` (a saved ``do_sample=True``, ``top_k``,
``repetition_penalty``, ``min_new_tokens`` or ``suppress_tokens`` would silently change or break the search): it
builds its own `GenerationConfig` and runs `generate` with a fresh default config on the model.

Example:
    >>> processor = TrieLogitsProcessor(SIDTrie.from_sids(sids, tokenizer))  # doctest: +SKIP
    >>> model.generate(**inputs, logits_processor=LogitsProcessorList([processor]), num_beams=20)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from genrec.decoding.trie import DEAD, Recommendation, SIDTrie

# transformers gives the extra beams of the first step a score of -1e9 (so they copy beam 0); anything at or below
# this threshold is such a filler or a -inf dead end, never a real hypothesis.
_FILLER_SCORE = -1e8


class TrieLogitsProcessor(LogitsProcessor):
    """Masks every token a catalog SID cannot continue with; finds the prompt length itself on its first call.

    Use one processor per ``generate()`` call, or call `reset` between calls (a later call whose input is not one
    token longer than the last one is also taken as a new generation, but a new prompt that happens to be exactly
    one token longer would not be).

    Writes only the allowed positions into a persistent ``-inf`` buffer (resetting last step's positions) and
    returns that buffer, so a step costs O(allowed tokens), not O(rows x vocabulary). The returned tensor is
    reused on the next call: copy it if you keep it (``recommend`` does not). ``dead_rows`` counts rows that
    reached a prefix outside the catalog (they are only allowed EOS).

    Example:
        >>> processor = TrieLogitsProcessor(trie)  # doctest: +SKIP
        >>> model.generate(**inputs, logits_processor=LogitsProcessorList([processor]), ...)  # doctest: +SKIP
    """

    def __init__(self, trie: SIDTrie):
        self.trie = trie
        self.dead_rows = 0
        self._prompt_len: int | None = None
        self._last_len = -1
        self._buffer: torch.Tensor | None = None
        self._written: tuple[torch.Tensor, torch.Tensor] | None = None

    def reset(self) -> None:
        """Forget the prompt length (the next call starts a new generation); the buffer is kept for reuse."""
        self._prompt_len = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        length = input_ids.shape[1]
        if self._prompt_len is None or length != self._last_len + 1:
            self._prompt_len = length  # a new generate() call: everything so far is prompt
        self._last_len = length
        state, _ = self.trie.walk(input_ids[:, self._prompt_len:])
        self.dead_rows += int((state == DEAD).sum())
        rows, tokens = self.trie.allowed(state)
        out = self._take_buffer(scores)
        out[rows, tokens] = scores[rows, tokens]
        self._written = (rows, tokens)
        return out

    def _take_buffer(self, scores: torch.Tensor) -> torch.Tensor:
        buf = self._buffer
        if buf is None or buf.shape != scores.shape or buf.dtype != scores.dtype or buf.device != scores.device:
            self._buffer = torch.full_like(scores, -math.inf)
        elif self._written is not None:
            buf[self._written] = -math.inf
        self._written = None
        return self._buffer


def generation_config(trie: SIDTrie, *, num_beams: int, pad_token_id: int) -> GenerationConfig:
    """The beam-search config `recommend` uses: deterministic, one SID plus EOS, scores = total log-probability."""
    return GenerationConfig(
        do_sample=False,
        top_k=None,
        top_p=None,
        temperature=None,
        num_beams=num_beams,
        num_return_sequences=num_beams,
        max_new_tokens=trie.depth + 1,
        eos_token_id=trie.eos_token_id,
        pad_token_id=pad_token_id,
        length_penalty=0.0,  # rank items by the probability of their whole SID, whatever its length
        early_stopping=False,
        output_scores=True,  # needed for sequences_scores
        return_dict_in_generate=True,
    )


@contextmanager
def _fresh_generation_config(model):
    """Hide the checkpoint's generation_config so generate() only sees library defaults plus ours."""
    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


class GenerateEngine:
    """The ``engine="generate"`` path of `recommend`: transformers' beam search with a `TrieLogitsProcessor`
    (one processor per engine: its -inf buffer is reused across batches). It runs each prompt once per beam, so it
    is the slower reference; `processor_factory` swaps in another constraint per batch (benchmarks)."""

    def __init__(self, trie: SIDTrie, *, num_beams: int, pad_token_id: int,
                 processor_factory: Callable[[], LogitsProcessor] | None = None):
        self.trie, self.num_beams, self.processor_factory = trie, num_beams, processor_factory
        self.config = generation_config(trie, num_beams=num_beams, pad_token_id=pad_token_id)
        self.processor = TrieLogitsProcessor(trie)

    def __call__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int) -> list[Recommendation]:
        self.processor.reset()
        processor = self.processor_factory() if self.processor_factory else self.processor
        with torch.inference_mode(), _fresh_generation_config(model):
            gen = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=self.config,
                                 logits_processor=LogitsProcessorList([processor]))
        return _collect(self.trie, gen.sequences[:, input_ids.shape[1]:], gen.sequences_scores, self.num_beams, k)


def _collect(trie: SIDTrie, generated: torch.Tensor, scores: torch.Tensor, num_beams: int, k: int):
    """Group returned beams per prompt, map them to items, drop fillers and duplicates, keep the best `k`."""
    found = trie.lookup(generated)
    scores = scores.float().tolist()
    recs = []
    for p in range(len(found) // num_beams):
        rec, seen = Recommendation([], []), set()
        for j in range(p * num_beams, (p + 1) * num_beams):
            if not scores[j] > _FILLER_SCORE:  # filler beam or dead end (also catches NaN)
                continue
            if found[j] is None:
                rec.invalid += 1
            elif found[j] not in seen and len(rec.items) < k:
                seen.add(found[j])
                rec.items.append(trie.item_ids[found[j]])
                rec.scores.append(scores[j])
        recs.append(rec)
    return recs
