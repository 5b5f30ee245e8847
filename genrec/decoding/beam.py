"""genrec's trie-constrained beam search, and `recommend`: prompts in, K distinct real catalog items out.

`trie_beam_search` runs each prompt once, gathers its KV cache into the beams and scores only the tokens the
`SIDTrie` allows, so every finished hypothesis is a catalog item. `recommend` batches prompts for it (or, with
``engine="generate"``, for transformers' ``generate`` through the adapter in genrec.decoding.hf). `DecodeConfig`
holds the search settings every caller shares (evaluation, in-training model selection, GRPO rollouts, serving).

Example:
    >>> trie = SIDTrie.from_sids(sids, tokenizer)  # doctest: +SKIP
    >>> recs = recommend(model, tokenizer, ["User history: <a_1><b_2><c_3>. Next item:"], trie, k=10)  # doctest: +SKIP
    >>> recs[0].items[:3], recs[0].scores[:3]  # doctest: +SKIP
    (['B00123', 'B00777', 'B00042'], [-0.41, -1.87, -2.05])
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from genrec.decoding.trie import DEAD, Recommendation, SIDTrie
from genrec.head import head_transform
from genrec.sid import sid_vocab

logger = logging.getLogger(__name__)

SOFTMAX_MODES = ("sid", "full")


@dataclass
class DecodeConfig:
    """Settings of the constrained beam search, shared by `genrec evaluate`, model selection, GRPO and serving."""

    beam: int = field(
        default=20, metadata={"help": "Beam width; beam search keeps this many distinct items (20: the benchmark)."}
    )
    batch_size: int = field(default=16, metadata={"help": "Prompts per beam-search batch."})
    softmax: str = field(
        default="sid",
        metadata={"help": "Score SID tokens with a softmax over SID tokens only ('sid', what SFT trains with "
                  "sid_softmax) or over the whole vocabulary ('full')."},
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 autocast: unset = auto (the checkpoint's training choice where this hardware runs "
                  "bf16 natively, else float32); true / false force it (genrec.precision)."},
    )
    content_weight: float | None = field(
        default=None,
        metadata={"help": "Weight of the content prior: each item's score adds weight x the cosine of its text "
                  "vector with the history's (genrec.content), which reaches tail and cold items the model rarely "
                  "generates. Unset = the checkpoint's own weight (the sft stage picks it on the valid split, "
                  "genrec.training.choose_content_weight); 0 = the model's log-probabilities alone. Needs a "
                  "checkpoint with item vectors (genrec's sft and grpo stages save them)."},
    )
    content_decay: float = field(
        default=0.5,
        metadata={"help": "Recency decay of the content prior's history query (0 = last item only, 1 = plain "
                  "mean); 0.5 is what content kNN selects on Industrial's valid split."},
    )

    def __post_init__(self):
        if self.beam < 1:
            raise ValueError(f"beam={self.beam}: must be >= 1 (20 is the benchmark protocol)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: must be >= 1")
        if self.softmax not in SOFTMAX_MODES:
            raise ValueError(f"softmax={self.softmax!r}: use 'sid' (over SID tokens, as SFT trains) or 'full'")
        if self.content_weight is not None and not (self.content_weight >= 0 and math.isfinite(self.content_weight)):
            raise ValueError(f"content_weight={self.content_weight}: must be a finite number >= 0 (0 = off)")
        if not 0.0 <= self.content_decay <= 1.0:
            raise ValueError(f"content_decay={self.content_decay}: must be in [0, 1] (0 = last item only)")


def recommend(
    model,
    tokenizer,
    prompts: Sequence[str],
    trie: SIDTrie,
    *,
    k: int = 10,
    num_beams: int = DecodeConfig.beam,
    batch_size: int = DecodeConfig.batch_size,
    progress: bool = False,
    encode: Callable[[str], list[int]] | None = None,
    engine: str = "trie",
    softmax: str = DecodeConfig.softmax,
    processor_factory: Callable | None = None,
    item_prior: torch.Tensor | None = None,
) -> list[Recommendation]:
    """Constrained beam search: up to `k` distinct catalog items per prompt with their log-probabilities.

    Prompts are encoded one by one (``encode(text)``; default: the tokenizer without special tokens, so no
    [CLS]/[SEP] lands inside a prompt; pass the encoder training used, e.g. one that applies a chat template),
    grouped by length and left-padded into batches of `batch_size`; results come back in prompt order.

    `engine="trie"` (default) runs `trie_beam_search`: one prompt pass per prompt, then ``depth + 1`` one-token
    steps over the beams. `engine="generate"` runs transformers' ``generate`` with a `TrieLogitsProcessor`
    (same items and scores on fixed-depth catalogs; slower, it runs the prompt once per beam);
    `softmax="sid"` (default; trie engine only) normalises each SID token's probability over the tokenizer's SID
    tokens, the distribution genrec's SFT trains (``sid_softmax``), and runs the LM head on those rows only;
    `softmax="full"` normalises over the whole vocabulary (what ``generate`` does).
    `processor_factory` replaces that processor per batch (for benchmarks against other constraints).
    `item_prior` (``(len(prompts), trie.num_items)``, trie engine only) adds a score per prompt and item to the
    log-probabilities, as an exact lookahead (`SIDTrie.subtree_max`); scores are then log-probability + prior.

    Example:
        >>> recommend(model, tokenizer, prompts, trie, k=10, num_beams=20)[0].items  # doctest: +SKIP
    """
    if num_beams < 1 or k < 1:
        raise ValueError(f"k={k}, num_beams={num_beams}: both must be >= 1")
    if k > num_beams:
        raise ValueError(f"k={k} > num_beams={num_beams}: beam search returns at most num_beams items; "
                         "raise num_beams")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    if engine not in ("trie", "generate"):
        raise ValueError(f"engine={engine!r}: use 'trie' (genrec's beam search) or 'generate' (transformers)")
    if processor_factory is not None and engine != "generate":
        raise ValueError("processor_factory only applies to engine='generate'")
    if softmax not in SOFTMAX_MODES:
        raise ValueError(f"softmax={softmax!r}: use 'sid' (over SID tokens, as SFT trains) or 'full' (vocabulary)")
    if softmax == "sid" and engine != "trie":
        raise ValueError("softmax='sid' needs engine='trie'; transformers' generate normalises over the vocabulary")
    if item_prior is not None:
        if engine != "trie":
            raise ValueError("item_prior needs engine='trie' (genrec's beam search)")
        if tuple(item_prior.shape) != (len(prompts), trie.num_items):
            raise ValueError(f"item_prior of shape {tuple(item_prior.shape)}: expected ({len(prompts)}, "
                             f"{trie.num_items}), one row per prompt and one column per catalog item")
    sid_ids = list(sid_vocab(tokenizer).values()) if softmax == "sid" else None
    encoded, pad_id, device = _encode_prompts(model, tokenizer, prompts, trie, encode)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths share a batch: less padding
    generate = None
    if engine == "generate":
        from genrec.decoding.hf import GenerateEngine

        generate = GenerateEngine(trie, num_beams=num_beams, pad_token_id=pad_id, processor_factory=processor_factory)
    out: list[Recommendation | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc="beam search", unit="prompt", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        input_ids, attention_mask = _left_pad([encoded[i] for i in idx], pad_id, device)
        if generate is None:
            prior = None if item_prior is None else item_prior[idx].float().to(device)
            items, scores = trie_beam_search(model, input_ids, attention_mask, trie, num_beams=num_beams,
                                             sid_token_ids=sid_ids, item_prior=prior)
            recs = _collect_items(trie, items, scores, k)
        else:
            recs = generate(model, input_ids, attention_mask, k)
        for i, rec in zip(idx, recs, strict=True):
            out[i] = rec
        bar.update(len(idx))
    bar.close()
    return out


@torch.inference_mode()
def trie_beam_search(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: SIDTrie,
    *,
    num_beams: int,
    sid_token_ids: Sequence[int] | None = None,
    item_prior: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search over the trie's SIDs for a left-padded batch; returns ``(items, scores)``, both ``(batch, beams)``.

    ``items`` holds indices into ``trie.item_ids`` (-1 where fewer than `num_beams` items were reachable, with score
    ``-inf``), best first; ``scores`` are total log-probabilities of the SID tokens plus the closing EOS. Without
    `sid_token_ids` every token's softmax is over the whole vocabulary (what transformers' beam search ranks by with
    ``length_penalty=0``); with them, a SID token's softmax is over those ids only, as genrec's SFT trains it
    (``sid_softmax``), and the LM head runs on those rows only (EOS keeps the full softmax).

    Unlike ``generate`` with ``num_beams`` (which copies every prompt `num_beams` times before the first forward
    pass), the prompt runs once per row; its KV cache is then gathered into the beams. Each step scores only the
    tokens the trie allows (a hypothesis that takes EOS at a complete SID is finished), keeps the best `num_beams`
    unfinished hypotheses per prompt, and stops after ``depth + 1`` tokens, so every returned item is real.

    `item_prior` (``(batch, trie.num_items)``) adds a score per item. It enters as an exact lookahead: each step
    scores a hypothesis by its log-probability plus the best prior among the items it can still reach
    (`SIDTrie.subtree_max`), so the search keeps prefixes that lead to high-prior items, and a finished item's score
    is its log-probability plus its own prior.
    """
    batch, device = input_ids.shape[0], input_ids.device
    prompt_rows = torch.arange(batch, device=device)
    step, logits = _stepper(model)
    cols = col_of = None
    if sid_token_ids is not None:
        cols = torch.as_tensor(sorted(sid_token_ids), dtype=torch.int64, device=device)
        col_of = torch.full((int(cols.max()) + 1 if cols.numel() else 1,), -1, dtype=torch.int64, device=device)
        col_of[cols] = torch.arange(cols.numel(), device=device)
        missing = trie.edge_token[(trie.edge_token >= col_of.shape[0]) | (col_of[trie.edge_token.clamp(
            max=col_of.shape[0] - 1)] < 0)]
        if missing.numel():
            raise ValueError(f"trie token ids {missing[:5].tolist()} are not among the SID token ids; build both "
                             "from the same tokenizer")
    node_bias = None if item_prior is None else trie.subtree_max(item_prior)
    hidden = step(input_ids, attention_mask, (attention_mask.long().cumsum(-1) - 1).clamp(min=0))
    width = 1  # live hypotheses per prompt (rows are prompt-major: row = prompt * width + beam)
    state = torch.zeros(batch, dtype=torch.int64, device=device)  # trie root
    total = torch.zeros(batch, device=device)
    finished_scores, finished_items = [], []
    for depth in range(trie.depth + 1):
        rows, tokens = trie.allowed(state)
        eos = tokens == trie.eos_token_id
        done = torch.full_like(total, -math.inf)  # each row has at most one EOS candidate
        if cols is None:
            logp = torch.log_softmax(logits(hidden).float(), dim=-1)
            done[rows[eos]] = logp[rows[eos], trie.eos_token_id] + total[rows[eos]]
        else:
            logp = torch.log_softmax(logits(hidden, cols).float(), dim=-1)
            if bool(eos.any()):
                eos_logp = torch.log_softmax(logits(hidden[rows[eos]]).float(), dim=-1)[:, trie.eos_token_id]
                done[rows[eos]] = eos_logp + total[rows[eos]]
        item = torch.where(state >= 0, trie.node_item[state.clamp(min=0)], -1)
        if node_bias is not None and bool(eos.any()):  # the prefix's lookahead gives way to the item's own prior
            closed = rows[eos][state[rows[eos]] >= 0]
            done[closed] += item_prior[closed // width, item[closed]] - node_bias[closed // width, state[closed]]
        finished_scores.append(done.view(batch, width))
        finished_items.append(torch.where(torch.isfinite(done), item, -1).view(batch, width))
        if depth == trie.depth or bool(eos.all()):
            break
        go_rows, go_cols = rows[~eos], tokens[~eos] if col_of is None else col_of[tokens[~eos]]
        masked = torch.full_like(logp, -math.inf)
        masked[go_rows, go_cols] = logp[go_rows, go_cols] + total[go_rows]
        if node_bias is not None:  # swap the parent's lookahead for the child's
            prompt = go_rows // width
            parent = state[go_rows]
            masked[go_rows, go_cols] += (node_bias[prompt, trie.child(parent, tokens[~eos])]
                                         - node_bias[prompt, parent])
        n_cols = masked.shape[-1]
        total, flat = masked.view(batch, width * n_cols).topk(min(num_beams, width * n_cols), dim=-1)
        src = (flat // n_cols + prompt_rows[:, None] * width).flatten()
        token = (flat % n_cols).flatten()
        token = token if cols is None else cols[token]
        total = total.flatten()
        state = torch.where(torch.isfinite(total), trie.child(state[src], token), DEAD)
        width = flat.shape[1]
        attention_mask = torch.cat([attention_mask[src], attention_mask.new_ones(src.shape[0], 1)], dim=1)
        hidden = step(token[:, None], attention_mask, attention_mask.long().sum(-1, keepdim=True) - 1, src)
    scores = torch.cat(finished_scores, dim=1)
    if node_bias is not None:
        scores = scores + node_bias[:, :1]  # the totals started from the root's lookahead
    items = torch.cat(finished_items, dim=1)
    best, pos = scores.topk(min(num_beams, scores.shape[1]), dim=-1)
    return torch.where(torch.isfinite(best), items.gather(1, pos), -1), best


def _stepper(model):
    """``(step, logits)``: `step` runs the model on new tokens with a KV cache (gathering the cache to `src` rows
    first) and returns the last position's hidden state; ``logits(hidden, cols=None)`` projects it onto the
    vocabulary or the `cols` rows of the LM head. Models whose logits are not a plain linear head over the
    decoder's output (soft-capping, logit scaling) run whole and `logits` slices their output instead."""
    from transformers import DynamicCache

    cache = DynamicCache()
    transform = head_transform(model)
    head = model.get_output_embeddings()
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    plain = (isinstance(head, torch.nn.Linear) and decoder is not None
             and getattr(model.config, "final_logit_softcapping", None) is None
             and getattr(model.config, "logit_scale", None) is None)

    def step(ids, mask, positions, src=None):
        if src is not None:
            cache.reorder_cache(src)
        if plain:
            last = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                           use_cache=True).last_hidden_state[:, -1]
            return last if transform is None else transform(last)
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                     use_cache=True, logits_to_keep=1).logits[:, -1]

    def logits(hidden, cols=None):
        if not plain:
            return hidden if cols is None else hidden[:, cols]
        weight = head.weight if cols is None else head.weight[cols]
        bias = head.bias if head.bias is None or cols is None else head.bias[cols]
        return torch.nn.functional.linear(hidden.to(weight.dtype), weight, bias)

    return step, logits


def _collect_items(trie: SIDTrie, items: torch.Tensor, scores: torch.Tensor, k: int) -> list[Recommendation]:
    recs = []
    for row_items, row_scores in zip(items.tolist(), scores.float().tolist(), strict=True):
        keep = [(i, s) for i, s in zip(row_items, row_scores, strict=True) if i >= 0][:k]
        recs.append(Recommendation([trie.item_ids[i] for i, _ in keep], [s for _, s in keep]))
    return recs


def _encode_prompts(model, tokenizer, prompts: Sequence[str], trie: SIDTrie, encode) -> tuple[list, int, torch.device]:
    """Prompt token ids (``encode(text)``; default: the tokenizer without special tokens, so no [CLS]/[SEP] lands
    inside a prompt), the pad id, and the model's device, with the trie moved there."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else trie.eos_token_id
    device = next(model.parameters()).device
    if trie.edge_key.device != device:
        trie.to(device)
    encode = encode or (lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])
    return [encode(p) for p in prompts], pad_id, device


def _left_pad(batch: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    if not all(batch):
        raise ValueError("a prompt encodes to no tokens; every prompt needs at least one token")
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ids in enumerate(batch):
        input_ids[i, width - len(ids):] = torch.tensor(ids)
        attention_mask[i, width - len(ids):] = 1
    return input_ids.to(device), attention_mask.to(device)


@torch.inference_mode()
def trie_sample(
    model,
    tokenizer,
    prompts: Sequence[str],
    trie: SIDTrie,
    *,
    num_samples: int,
    temperature: float = 1.0,
    batch_size: int = 16,
    encode: Callable[[str], list[int]] | None = None,
    generator: torch.Generator | None = None,
) -> list[list[str]]:
    """`num_samples` catalog items per prompt drawn from the model, token by token, among the tokens the trie
    allows (so every draw is a real item; draws may repeat). Each prompt runs once and its KV cache is copied into
    its samples. With a SID softmax or the full one the draw is the same: renormalising over the allowed tokens
    cancels the normaliser.

    Example:
        >>> trie_sample(model, tokenizer, prompts, trie, num_samples=8, temperature=1.0)[0]  # doctest: +SKIP
        ['B00123', 'B00777', 'B00123', ...]
    """
    if num_samples < 1 or temperature <= 0:
        raise ValueError(f"num_samples={num_samples}, temperature={temperature}: need >= 1 and > 0")
    encoded, pad_id, device = _encode_prompts(model, tokenizer, prompts, trie, encode)
    out: list[list[str]] = []
    for start in range(0, len(encoded), batch_size):
        input_ids, attention_mask = _left_pad(encoded[start:start + batch_size], pad_id, device)
        items = _sample_batch(model, input_ids, attention_mask, trie, num_samples, temperature, generator)
        out += [[trie.item_ids[i] for i in row] for row in items.view(-1, num_samples).tolist()]
    return out


def _sample_batch(model, input_ids, attention_mask, trie: SIDTrie, num_samples: int, temperature: float,
                  generator) -> torch.Tensor:
    """Item indices ``(batch * num_samples,)`` drawn for a left-padded batch (Gumbel-max over allowed tokens)."""
    step, logits = _stepper(model)
    hidden = step(input_ids, attention_mask, (attention_mask.long().cumsum(-1) - 1).clamp(min=0))
    src = torch.arange(input_ids.shape[0], device=input_ids.device).repeat_interleave(num_samples)
    hidden, attention_mask = hidden[src], attention_mask[src]
    rows = src.shape[0]
    state = torch.zeros(rows, dtype=torch.int64, device=src.device)
    item = torch.full((rows,), -1, dtype=torch.int64, device=src.device)
    for depth in range(trie.depth + 1):
        pair_rows, tokens = trie.allowed(state)
        scores = logits(hidden).float()[pair_rows, tokens] / temperature
        noise = torch.rand(scores.shape, generator=generator, device=scores.device).clamp(1e-20, 1.0)
        keys = scores - torch.log(-torch.log(noise))
        best = torch.full((rows,), -math.inf, device=scores.device).scatter_reduce(0, pair_rows, keys, "amax")
        chosen = torch.full((rows,), trie.eos_token_id, dtype=torch.int64, device=scores.device)
        chosen[pair_rows[keys == best[pair_rows]]] = tokens[keys == best[pair_rows]]
        live = state >= 0
        closes = live & (chosen == trie.eos_token_id)
        item = torch.where(closes, trie.node_item[state.clamp(min=0)], item)
        state = torch.where(closes | ~live, torch.full_like(state, DEAD), trie.child(state.clamp(min=0), chosen))
        if bool((state < 0).all()) or depth == trie.depth:
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(rows, 1)], dim=1)
        hidden = step(chosen[:, None], attention_mask, attention_mask.long().sum(-1, keepdim=True) - 1,
                      src if depth == 0 else None)
    return item
