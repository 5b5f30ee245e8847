"""genrec: LLM generative recommendation with Semantic IDs and trie-constrained decoding."""

__version__ = "0.1.0"
