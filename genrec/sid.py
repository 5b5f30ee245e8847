"""Semantic-ID tokens: code lists <-> token strings, and the item-SID map of a run.

An item's SID is a list of integer codes, one per level; level l's code c is the token ``<{letter}_{c}>`` with
letters a, b, c, d, ... (``[12, 7, 200]`` -> ``<a_12><b_7><c_200>``). SIDs are unique per item; they may differ
in length (a collision-resolution level), so nothing here assumes a fixed length.

Example:
    >>> sid_tokens([12, 7, 200])
    ['<a_12>', '<b_7>', '<c_200>']
    >>> parse_sid("<a_12><b_7><c_200>")
    [12, 7, 200]
"""

from __future__ import annotations

import re

LEVEL_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_TOKEN = re.compile(r"<([a-z])_(\d+)>")
SID_TOKEN_RE = re.compile(r"<[a-z]_\d+>")


def sid_token(level: int, code: int) -> str:
    return f"<{LEVEL_LETTERS[level]}_{int(code)}>"


def sid_tokens(codes: list[int]) -> list[str]:
    return [sid_token(level, c) for level, c in enumerate(codes)]


def sid_string(codes: list[int]) -> str:
    return "".join(sid_tokens(codes))


def sid_vocab(tokenizer) -> dict[str, int]:
    """SID token -> id for every SID token the tokenizer holds (its added tokens that look like ``<a_12>``)."""
    return {t: i for t, i in tokenizer.get_added_vocab().items() if SID_TOKEN_RE.fullmatch(t)}


def parse_sid(text: str) -> list[int]:
    """Codes of a SID string; raises ValueError when levels are out of order or the text has other content."""
    matches = list(_TOKEN.finditer(text.strip()))
    if not matches or "".join(m.group(0) for m in matches) != text.strip():
        raise ValueError(f"{text!r} is not a SID string like <a_12><b_7><c_200>")
    codes = []
    for level, m in enumerate(matches):
        if m.group(1) != LEVEL_LETTERS[level]:
            raise ValueError(f"{text!r}: level {level} token should start with '{LEVEL_LETTERS[level]}'")
        codes.append(int(m.group(2)))
    return codes


def all_sid_tokens(sids: dict[str, list[int]], codebook_sizes: list[int] | None = None) -> list[str]:
    """Every SID token of the vocabulary: all codes of each level's codebook when sizes are given (so a
    checkpoint can host any SID map with these codebooks), else only the codes that occur, level by level."""
    depth = max(len(c) for c in sids.values())
    if codebook_sizes:
        if len(codebook_sizes) < depth:
            raise ValueError(f"{len(codebook_sizes)} codebook sizes for SIDs of depth {depth}")
        return [sid_token(level, c) for level, size in enumerate(codebook_sizes) for c in range(size)]
    used = [sorted({codes[level] for codes in sids.values() if len(codes) > level}) for level in range(depth)]
    return [sid_token(level, c) for level, codes in enumerate(used) for c in codes]


def check_sids(raw, where: str = "the SID map") -> dict[str, list[int]]:
    """An item -> SID codes mapping (as read from sids.json), checked: non-empty, codes non-negative ints, every
    SID unique. Returns it with string item ids. `where` names the source in error messages."""
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{where}: expected a non-empty mapping item_id -> list of codes")
    seen: dict[tuple, str] = {}
    sids = {}
    for iid, codes in raw.items():
        if not isinstance(codes, list) or not codes or not all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in codes):
            raise ValueError(f"{where}: item {iid!r} has SID {codes!r}; expected a list of non-negative ints")
        key = tuple(codes)
        if key in seen:
            raise ValueError(f"{where}: items {seen[key]!r} and {iid!r} share SID {codes}; re-run the quantize stage")
        seen[key] = iid
        sids[str(iid)] = codes
    return sids
