"""Ranking metrics and the shared output format of `genrec evaluate` and every `genrec baseline`.

One relevant item per row: HR@K = 1 if the target is in the top K; NDCG@K = 1 / log2(rank + 2) for a
0-based rank < K, else 0. Both are averaged over rows. Every method writes the same files:
``metrics.json`` (rows, beam, HR@K and NDCG@K for K in KS, invalid, seconds, ...) and
``predictions.jsonl`` (per row: user_id, target, the top-K item ids and their scores).

Given the train interactions per item (`train_item_counts`), metrics.json also breaks HR@10 / NDCG@10 down by the
popularity of each row's target (`popularity_buckets`): ``head`` = the most-interacted 20% of the items seen in
train, ``tail`` = the other items seen in train, ``cold`` = items never interacted with in train.

Example:
    >>> ranking_metrics([["a", "b"], ["c", "d"]], ["b", "x"], ks=(1, 2))
    {'HR@1': 0.0, 'NDCG@1': 0.0, 'HR@2': 0.5, 'NDCG@2': 0.31546487678572877}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from genrec.artifacts import METRICS, PREDICTIONS, train_sequences
from genrec.io import write_json, write_jsonl

KS = (1, 3, 5, 10, 20)
BUCKETS = ("head", "tail", "cold")
BUCKET_METRICS = ("HR@10", "NDCG@10")
HEAD_FRACTION = 0.2


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


def item_counts(seqs: Sequence[Sequence[int]], n_items: int) -> np.ndarray:
    """Occurrences of each column 0..n_items-1 in the sequences (float64), e.g. train interactions per item of
    `genrec.artifacts.train_sequences`."""
    counts = np.zeros(n_items, dtype=np.float64)
    for s in seqs:
        np.add.at(counts, np.asarray(s, dtype=np.int64), 1.0)
    return counts


def train_item_counts(train_rows: Sequence[dict], item_ids: Sequence[str] = ()) -> dict[str, int]:
    """Train interactions per item id, each interaction counted once (the user sequences of `train_sequences`:
    a user's rows repeat the same history, so counting history items per row would count them again and again).
    Items in `item_ids` (e.g. the catalog) that never occur get 0.

    Example:
        >>> train_item_counts([{"user_id": "u", "history": ["a"], "target": "b"},
        ...                    {"user_id": "u", "history": ["a", "b"], "target": "a"}], ["a", "b", "c"])
        {'a': 2, 'b': 1, 'c': 0}
    """
    ids = list(dict.fromkeys([*item_ids, *(i for r in train_rows for i in (*r["history"], r["target"]))]))
    counts = item_counts(train_sequences(train_rows, {iid: n for n, iid in enumerate(ids)}), len(ids))
    return {iid: int(c) for iid, c in zip(ids, counts)}


def popularity_buckets(counts: Mapping[str, float], head_fraction: float = HEAD_FRACTION) -> tuple[dict, int]:
    """Item id -> "head" or "tail" for the items with a train count > 0, and the head's smallest count.

    Head: the items whose count is at least that of the ceil(head_fraction * n)-th most-interacted of the n items
    seen in train; ties at that boundary all join the head, so an item's bucket never depends on the order of
    equally popular items (the head can hold slightly more than the fraction). Items with count 0, and items
    absent from `counts`, are cold.

    Example:
        >>> popularity_buckets({"a": 9, "b": 3, "c": 3, "d": 1, "e": 1, "f": 0}, head_fraction=0.2)
        ({'a': 'head', 'b': 'tail', 'c': 'tail', 'd': 'tail', 'e': 'tail'}, 9)
    """
    if not 0.0 < head_fraction <= 1.0:
        raise ValueError(f"head_fraction={head_fraction}: use a value in (0, 1]")
    seen = {iid: c for iid, c in counts.items() if c > 0}
    if not seen:
        return {}, 0
    ranked = sorted(seen.values(), reverse=True)
    threshold = ranked[math.ceil(head_fraction * len(ranked)) - 1]
    return {iid: "head" if c >= threshold else "tail" for iid, c in seen.items()}, threshold


def bucket_metrics(ranked: Sequence[Sequence[str]], targets: Sequence[str], counts: Mapping[str, float]) -> dict:
    """HR@10 / NDCG@10 of the rows whose target is a head, tail or cold item (see `popularity_buckets`), with the
    rows and catalog items per bucket (cold items: the zeros in `counts`) and the rule that made them."""
    buckets, threshold = popularity_buckets(counts)
    per_row = row_metrics(ranked, targets, ks=(10,))
    out = {}
    for name in BUCKETS:
        rows = [n for n, t in enumerate(targets) if buckets.get(t, "cold") == name]
        items = sum(b == name for b in buckets.values()) if name != "cold" else sum(c <= 0 for c in counts.values())
        out[name] = {"rows": len(rows), "items": items,
                     **{m: sum(per_row[m][n] for n in rows) / len(rows) if rows else None for m in BUCKET_METRICS}}
    out["rule"] = {"head_fraction": HEAD_FRACTION, "head_min_count": threshold,
                   "counts": "train interactions per item, each once (user sequences)"}
    return out


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
    item_counts: Mapping[str, float] | None = None,
) -> dict:
    """Write metrics.json and predictions.jsonl for one method on one split; return the metrics.

    With `item_counts` (train interactions per item id, `train_item_counts`; give the whole catalog so cold items
    are counted) metrics.json gets "buckets": head / tail / cold HR@10 and NDCG@10 (see `bucket_metrics`).
    """
    targets = [r["target"] for r in rows]
    metrics = {
        "method": method,
        "split": split,
        "rows": len(rows),
        "beam": beam,
        **ranking_metrics(ranked, targets),
        "invalid": int(invalid),
        # how many different items the method puts first over all rows: a collapsed model repeats a few
        "distinct_top1": len({p[0] for p in ranked if len(p)}),
        "seconds": round(float(seconds), 3),
        **({"buckets": bucket_metrics(ranked, targets, item_counts)} if item_counts is not None else {}),
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
