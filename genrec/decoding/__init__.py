"""Trie-constrained decoding: every recommendation is a real catalog item.

- `genrec.decoding.trie`: `SIDTrie`, the framework-free core (torch tensors only; never imports transformers);
- `genrec.decoding.beam`: genrec's beam search over the trie, `recommend` and `DecodeConfig`;
- `genrec.decoding.hf`: the transformers adapter (`TrieLogitsProcessor` for ``generate``);
- `genrec.decoding.vllm`: the vLLM adapter (vllm is optional).

Names are imported on first use, so ``import genrec.decoding.trie`` loads neither transformers nor vLLM.

Example:
    >>> trie = SIDTrie.from_sids(sids, tokenizer)  # doctest: +SKIP
    >>> recommend(model, tokenizer, prompts, trie, k=10, num_beams=20)[0].items  # doctest: +SKIP
"""

import importlib

_EXPORTS = {
    "DEAD": "trie", "DONE": "trie", "Recommendation": "trie", "SIDTrie": "trie",
    "DecodeConfig": "beam", "recommend": "beam", "trie_beam_search": "beam",
    "TrieLogitsProcessor": "hf", "generation_config": "hf",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'genrec.decoding' has no attribute {name!r}")
    return getattr(importlib.import_module(f"genrec.decoding.{_EXPORTS[name]}"), name)
