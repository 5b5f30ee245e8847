"""Ranking metrics and the shared output format of `genrec evaluate` and every `genrec baseline`.

One relevant item per row: HR@K = 1 if the target is in the top K; NDCG@K = 1 / log2(rank + 2) for a
0-based rank < K, else 0. Both are averaged over rows. Every method writes the same files:
``metrics.json`` (rows, beam, HR@K and NDCG@K for K in KS, invalid, seconds, ...) and
``predictions.jsonl`` (per row: user_id, target, the top-K item ids and their scores).

Example:
    >>> ranking_metrics([["a", "b"], ["c", "d"]], ["b", "x"], ks=(1, 2))
    {'HR@1': 0.0, 'NDCG@1': 0.0, 'HR@2': 0.5, 'NDCG@2': 0.31546487678572877}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from genrec.artifacts import METRICS, PREDICTIONS
from genrec.io import write_json, write_jsonl

KS = (1, 3, 5, 10, 20)


def row_metrics(ranked: Sequence[Sequence[str]], targets: Sequence[str], ks: Sequence[int] = KS) -> dict[str, list]:
    """HR@K and NDCG@K of every row (lists in row order); a row's list may be shorter than K (missing slots never hit)."""
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} ranked lists for {len(targets)} targets")
    out = {f"{m}@{k}": [] for k in ks for m in ("HR", "NDCG")}
    for preds, target in zip(ranked, targets):
        rank = next((i for i, p in enumerate(preds) if p == target), None)
        for k in ks:
            hit = rank is not None and rank < k
            out[f"HR@{k}"].append(1.0 if hit else 0.0)
            out[f"NDCG@{k}"].append(1.0 / math.log2(rank + 2) if hit else 0.0)
    return out


def ranking_metrics(ranked: Sequence[Sequence[str]], targets: Sequence[str], ks: Sequence[int] = KS) -> dict:
    """HR@K and NDCG@K averaged over rows (see `row_metrics`)."""
    per_row = row_metrics(ranked, targets, ks)
    return {name: sum(values) / len(values) if values else 0.0 for name, values in per_row.items()}


def write_results(
    out_dir: Path,
    rows: Sequence[dict],
    ranked: Sequence[Sequence[str]],
    *,
    scores: Sequence[Sequence[float]] | None = None,
    method: str,
    split: str,
    seconds: float,
    beam: int | None = None,
    invalid: int = 0,
    extra: dict | None = None,
) -> dict:
    """Write metrics.json and predictions.jsonl for one method on one split; return the metrics."""
    targets = [r["target"] for r in rows]
    metrics = {
        "method": method,
        "split": split,
        "rows": len(rows),
        "beam": beam,
        **ranking_metrics(ranked, targets),
        "invalid": int(invalid),
        "seconds": round(float(seconds), 3),
        **(extra or {}),
    }
    out_dir = Path(out_dir)
    write_jsonl(
        out_dir / PREDICTIONS,
        (
            {"user_id": r.get("user_id"), "target": r["target"], "topk": list(p),
             **({"scores": [round(float(s), 6) for s in scores[i]]} if scores is not None else {})}
            for i, (r, p) in enumerate(zip(rows, ranked))
        ),
    )
    write_json(out_dir / METRICS, metrics)
    return metrics
