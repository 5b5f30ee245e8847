"""Trie-constrained decoding: every recommendation is a real catalog item.

`SIDTrie` (trie.py) is the framework-free core; `TrieLogitsProcessor` and `recommend` (hf.py) adapt it to
transformers' beam search; genrec.decoding.vllm adapts it to vLLM (imported on demand, vllm is optional).

Example:
    >>> trie = SIDTrie.from_sids(load_sids(run_dir / "sids.json"), tokenizer)  # doctest: +SKIP
    >>> recommend(model, tokenizer, prompts, trie, k=10, num_beams=20)[0].items  # doctest: +SKIP
"""

from genrec.decoding.hf import Recommendation, TrieLogitsProcessor, generation_config, recommend
from genrec.decoding.trie import DEAD, DONE, SIDTrie

__all__ = ["DEAD", "DONE", "Recommendation", "SIDTrie", "TrieLogitsProcessor", "generation_config", "recommend"]
