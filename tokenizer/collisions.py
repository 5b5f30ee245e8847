"""Collision resolution: make every item's Semantic ID unique.

Two items collide when a quantizer gives them the same full code list. Two methods:

- ``reassign`` (default, keeps the SID length fixed): items are grouped by their prefix (all codes but the last).
  Within a group of items sharing a full SID, the item whose last residual is closest to its last-level code
  keeps it; the others are displaced. The displaced items of a prefix are matched to the last-level codes that
  no item of that prefix uses, minimising the summed distance between each item's last residual and its new
  codebook vector (an optimal assignment, ``scipy.optimize.linear_sum_assignment``). When a prefix has more
  items than last-level codes, the items still colliding fall back to ``append`` below, so only those SIDs get
  one more level.
- ``append`` (TIGER): every SID gets one extra level holding the item's index among the items sharing its SID
  (0 for the first by distance, then 1, 2, ...), so the length stays uniform at ``levels + 1``.

Both leave no SID a prefix of another: with ``reassign``, the fallback extends *every* member of a colliding
group, including the one numbered 0.

Example:
    >>> codes = np.array([[0, 1], [0, 1], [1, 0]])
    >>> dist = np.array([[0.1, 0.5, 0.9], [0.4, 0.2, 0.3], [0.0, 1.0, 1.0]])
    >>> resolve_collisions(codes, dist)
    [[0, 0], [0, 1], [1, 0]]
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
from scipy.optimize import linear_sum_assignment

logger = logging.getLogger(__name__)

COLLISION_METHODS = ("reassign", "append")


def count_collisions(codes: np.ndarray) -> int:
    """Items that share their full SID with an earlier item (items minus distinct SIDs)."""
    return int(len(codes) - len({tuple(c) for c in np.asarray(codes).tolist()}))


def resolve_collisions(codes: np.ndarray, last_dist: np.ndarray, method: str = "reassign") -> list[list[int]]:
    """Unique SIDs (plain int lists) from raw codes.

    Args:
        codes: [n, levels] integer codes from the quantizer.
        last_dist: [n, codebook_size] distance of each item's last-level residual to each last-level codebook
            vector; it decides which item keeps a shared code and where displaced items go.
        method: ``"reassign"`` or ``"append"`` (see the module docstring).
    """
    codes = np.asarray(codes, dtype=np.int64)
    last_dist = np.asarray(last_dist, dtype=np.float64)
    if codes.ndim != 2 or last_dist.ndim != 2 or len(codes) != len(last_dist):
        raise ValueError(f"codes {codes.shape} and last_dist {last_dist.shape} must be [n, levels] and [n, K]")
    if method not in COLLISION_METHODS:
        raise ValueError(f"collision={method!r}: use one of {COLLISION_METHODS}")
    if method == "append":
        return _append_index(codes, last_dist, extend_all=True)
    out = codes.copy()
    by_prefix: dict[tuple, list[int]] = defaultdict(list)
    for i, row in enumerate(codes.tolist()):
        by_prefix[tuple(row[:-1])].append(i)
    for members in by_prefix.values():
        _reassign_prefix(out, last_dist, members)
    still = count_collisions(out)
    if still:
        logger.warning("%d items still collide after reassignment (a prefix holds more items than codes); "
                       "giving their SIDs one more level", still)
    return _append_index(out, last_dist, extend_all=False)


def _reassign_prefix(codes: np.ndarray, last_dist: np.ndarray, members: list[int]) -> None:
    """In place: move displaced members of one prefix to the unused last-level codes of that prefix."""
    by_code: dict[int, list[int]] = defaultdict(list)
    for i in members:
        by_code[int(codes[i, -1])].append(i)
    displaced = []
    for code, items in by_code.items():
        if len(items) > 1:
            keep = min(items, key=lambda i: (last_dist[i, code], i))
            displaced.extend(i for i in items if i != keep)
    if not displaced:
        return
    free = np.array(sorted(set(range(last_dist.shape[1])) - set(by_code)), dtype=np.int64)
    if len(free) == 0:
        return
    displaced.sort()
    rows, cols = linear_sum_assignment(last_dist[np.ix_(displaced, free)])
    for r, c in zip(rows, cols):
        codes[displaced[r], -1] = free[c]


def _append_index(codes: np.ndarray, last_dist: np.ndarray, extend_all: bool) -> list[list[int]]:
    """Add an index level: to every SID (``extend_all``) or only to SIDs shared by several items."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, row in enumerate(codes.tolist()):
        groups[tuple(row)].append(i)
    sids: list[list[int]] = [[] for _ in range(len(codes))]
    for key, items in groups.items():
        last = key[-1]
        ranked = sorted(items, key=lambda i: (last_dist[i, last], i))
        for rank, i in enumerate(ranked):
            sids[i] = [*key, rank] if extend_all or len(items) > 1 else list(key)
    return [[int(c) for c in sid] for sid in sids]
