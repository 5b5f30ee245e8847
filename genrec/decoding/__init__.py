"""Trie-constrained decoding."""
