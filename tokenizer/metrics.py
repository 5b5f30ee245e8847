"""SID quality metrics: codebook usage and perplexity per level, uniqueness, reconstruction error.

Example:
    >>> level_usage([0, 0, 1, 2], codebook_size=4)
    {'codebook_size': 4, 'codes_used': 3, 'perplexity': 2.828}
"""

from __future__ import annotations

import numpy as np


def level_usage(codes, codebook_size: int) -> dict:
    """How many of a level's codes occur, and the perplexity (exp of the entropy) of their distribution.

    Perplexity equals ``codebook_size`` for perfectly even usage and 1 when every item shares one code.
    """
    counts = np.bincount(np.asarray(codes, dtype=np.int64), minlength=codebook_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return {
        "codebook_size": int(codebook_size),
        "codes_used": int((counts > 0).sum()),
        "perplexity": round(float(np.exp(-(p * np.log(p)).sum())), 3),
    }


def sid_report(
    sids: list[list[int]], codebook_sizes: list[int], *, collisions_before: int, reconstruction_mse: float,
    seconds: float, method: str, extra: dict | None = None,
) -> dict:
    """The content of sid_report.json for the final (resolved) SIDs.

    ``levels`` has one entry per SID level; an extra collision level appears last, with the codebook size it
    needs (the largest index it holds plus one) and its usage over the items that have it.
    """
    depth = max(len(s) for s in sids)
    sizes = list(codebook_sizes)
    if depth > len(sizes):
        sizes.append(max(s[len(codebook_sizes)] for s in sids if len(s) > len(codebook_sizes)) + 1)
    levels = [level_usage([s[lv] for s in sids if len(s) > lv], sizes[lv]) for lv in range(depth)]
    report = {
        "method": method,
        "items": len(sids),
        "unique_sids": len({tuple(s) for s in sids}),
        "collisions_before_resolution": int(collisions_before),
        "sid_length": {"min": min(len(s) for s in sids), "max": depth},
        "levels": levels,
        "reconstruction_mse": float(f"{reconstruction_mse:.6g}"),
        "seconds": round(float(seconds), 2),
    }
    report.update(extra or {})
    return report
