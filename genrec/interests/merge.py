"""Merging the interests several models gave one item: near-duplicates collapse by embedding similarity.

Greedy clustering per item: mentions are taken strongest first; each joins the first cluster whose representative
(its strongest mention) has cosine similarity >= `threshold` with it, else starts a new cluster. A merged interest
keeps the representative's text, model and prompt hash, and its provenance: every model that said it
(``models``, strongest first), the max (``confidence``) and mean (``mean_confidence``, over the mentions) of their
confidences, and each mention (``sources``). Interests said by more models come first, then by confidence.

Example:
    >>> per_item = {"1": [{"text": "woodworking", "confidence": .9, "model": "a", "prompt_hash": "x"},
    ...                   {"text": "wood working", "confidence": .7, "model": "b", "prompt_hash": "y"}]}
    >>> merged = merge_catalog(per_item, encode, threshold=0.8)  # doctest: +SKIP
    >>> merged["1"][0]["models"], merged["1"][0]["mean_confidence"]  # doctest: +SKIP
    (['a', 'b'], 0.8)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def merge_interests(mentions: list[dict], vectors: np.ndarray, threshold: float) -> list[dict]:
    """Merge one item's mentions (``{"text", "confidence", "model", "prompt_hash"}``; row i of `vectors`,
    L2-normalised, embeds mention i) into interests with provenance (see the module docstring)."""
    order = sorted(range(len(mentions)), key=lambda i: -mentions[i]["confidence"])  # stable: source order on ties
    clusters: list[list[int]] = []
    for i in order:
        if clusters:
            sims = vectors[[c[0] for c in clusters]] @ vectors[i]
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                clusters[best].append(i)
                continue
        clusters.append([i])
    merged = [_merged([mentions[i] for i in members]) for members in clusters]
    return sorted(merged, key=lambda m: (-len(m["models"]), -m["confidence"]))


def _merged(members: list[dict]) -> dict:
    head = members[0]
    confs = [m["confidence"] for m in members]
    out = {"text": head["text"], "confidence": head["confidence"], "model": head["model"],
           "prompt_hash": head["prompt_hash"], "models": list(dict.fromkeys(m["model"] for m in members)),
           "mean_confidence": round(float(np.mean(confs)), 4)}
    if len(members) > 1:
        out["sources"] = [{k: m[k] for k in ("model", "text", "confidence", "prompt_hash")} for m in members]
    return out


def single_source(mentions: list[dict]) -> list[dict]:
    """The same format without embeddings, for runs with one source: exact duplicates (case-insensitive) dropped."""
    seen, out = set(), []
    for m in mentions:
        if m["text"].lower() not in seen:
            seen.add(m["text"].lower())
            out.append(_merged([m]))
    return out


def merge_catalog(per_item: dict[str, list[dict]], encode: Callable[[list[str]], np.ndarray],
                  threshold: float) -> dict[str, list[dict]]:
    """`merge_interests` for every item; each distinct interest text of the catalog is embedded once."""
    texts = sorted({m["text"] for mentions in per_item.values() for m in mentions})
    if not texts:
        return {iid: [] for iid in per_item}
    vecs = np.asarray(encode(texts), dtype=np.float32)
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    row = {t: i for i, t in enumerate(texts)}
    return {iid: merge_interests(mentions, vecs[[row[m["text"]] for m in mentions]], threshold) if mentions else []
            for iid, mentions in per_item.items()}
