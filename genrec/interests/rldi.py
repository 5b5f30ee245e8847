"""RLDI (reward-labelled deep interests): behavioural labels for mined interests and a classifier that scores them.

The behavioural rule (train split only; vectors are L2-normalised sentence embeddings, so a dot product is a cosine):

1. Sequences: each user's train interactions in order (genrec.artifacts.train_sequences).
2. Neighbours: N(i) = the multiset of items at distance 1..`window` before or after an occurrence of item i in a
   sequence, item i itself excluded (a repeat purchase says nothing about *which* interest explains it).
3. Popularity buckets: an item's train count c >= 1 falls in bucket floor(log2 c); buckets with fewer than
   `min_bucket` items are merged downwards, from the most popular one, so every control is an average over at
   least that many items (or over every seen item, on a tiny catalog).
4. Margin: for an interest t of item i with |N(i)| >= `min_transitions`,
       m(t) = mean_{n in N(i)} cos(t, n) - mean_{n in N(i)} mean_{r in B(n)} cos(t, r)
   where B(n) is n's popularity bucket. The second term is the exact expectation of the "mean cosine to
   |N(i)| popularity-matched random items" of the suggested rule: no sampling noise and no seed (a sampled control
   of |N(i)| items, often one or two here, is as noisy as the signal it is compared with).
5. Label: 1 when m(t) > `margin`, else 0; an item with fewer than `min_transitions` neighbour occurrences (no
   train interactions, or too few to trust) gives its interests no label (None): the classifier decides those.

Generic interests ("high quality") are about as close to every item, so their margin is near 0; an interest that
names what the item's behavioural neighbours share gets a positive margin. Valid and test rows are never read.

Why these defaults (label stage: window 2, min_transitions 4, margin 0.02), measured on the Industrial benchmark
with a stand-in interests file: train margins of interests predict their lift on the item's *valid* transitions
(AUC .62 vs .60 for the interest-item cosine alone); window 2 beats 1 (.623 vs .615), and for items with fewer
than 4 neighbour occurrences the margin predicts no better than the cosine (.59 vs .61) while with 8 or more it
clearly does (.66 vs .60). The popularity matching changed nothing measurable there (it guards catalogs whose
popular items share a topic).

The classifier (`fit_classifier`) is a standardised logistic regression over `FEATURES` of the interest and its
item; it scores every interest, also those of items without interactions. `heldout_auc` measures it on items held
out whole (GroupShuffleSplit by item), next to trivial scorers.

Example:
    >>> seqs = [[0, 1], [2, 3]]
    >>> neighbours = neighbour_matrix(seqs, n_items=4, window=1)
    >>> neighbours.toarray()[0].tolist()
    [0.0, 1.0, 0.0, 0.0]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

logger = logging.getLogger(__name__)

# feature groups of the classifier, in matrix order: name -> what it is
FEATURES = {
    "interest": "the interest's embedding",
    "item": "its item's text embedding",
    "product": "element-wise product of the two",
    "cosine": "cosine of interest and item",
    "generic": "cosine of the interest and the catalog's mean item vector (how generic it is)",
    "content": "cosine of the interest and the mean of the item's `content_k` nearest items by text",
    "confidence": "the miner's confidence",
    "models": "log(1 + number of models that proposed the interest)",
}


# ----------------------------------------------------------------------------- the behavioural rule


def neighbour_matrix(seqs: Sequence[Sequence[int]], n_items: int, window: int) -> sparse.csr_matrix:
    """(n_items, n_items) counts: row i, column j = how often j occurs within `window` positions of i (either
    side) in a sequence; the diagonal (i next to itself) is dropped."""
    rows, cols = [], []
    for seq in seqs:
        for d in range(1, window + 1):
            a, b = seq[:-d], seq[d:]
            rows += [*a, *b]  # i -> the item d after it, and i -> the item d before it
            cols += [*b, *a]
    rows, cols = np.array(rows, dtype=int), np.array(cols, dtype=int)
    keep = rows != cols
    return sparse.csr_matrix((np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], cols[keep])),
                             shape=(n_items, n_items))  # duplicate (i, j) pairs add up


def popularity_buckets(counts: np.ndarray, min_bucket: int) -> np.ndarray:
    """Bucket id per item from its train count: floor(log2 c) for c >= 1 (-1 for unseen items), buckets under
    `min_bucket` items merged into the next less popular one; what is left over at the bottom joins the last
    bucket formed (all seen items form one bucket when there are fewer than `min_bucket`)."""
    counts = np.asarray(counts)
    raw = np.where(counts > 0, np.floor(np.log2(np.maximum(counts, 1))), -1).astype(int)
    levels = sorted(set(raw[raw >= 0].tolist()), reverse=True)
    merged, pending, size, last = {}, [], 0, None
    for level in levels:
        pending.append(level)
        size += int((raw == level).sum())
        if size >= min_bucket:
            merged.update({p: level for p in pending})
            pending, size, last = [], 0, level
    target = last if last is not None else (pending[-1] if pending else None)
    merged.update({p: target for p in pending})
    return np.array([merged.get(r, -1) if r >= 0 else -1 for r in raw], dtype=int)


@dataclass
class Evidence:
    """Per item: the mean vector of its behavioural neighbours, of their popularity-matched control, and how many
    neighbour occurrences it has (rows follow the item order of the vectors)."""

    neighbour_mean: np.ndarray
    control_mean: np.ndarray
    transitions: np.ndarray


def behavioural_evidence(seqs: Sequence[Sequence[int]], item_vecs: np.ndarray, *, window: int,
                         min_bucket: int) -> Evidence:
    """Neighbour and control mean vectors of every item (zero rows for items without neighbours)."""
    n_items = item_vecs.shape[0]
    counts = np.bincount([i for s in seqs for i in s], minlength=n_items)
    buckets = popularity_buckets(counts, min_bucket)
    centroid = np.zeros_like(item_vecs)  # row j = mean vector of j's bucket: E[cos(t, random item like j)]
    for b in set(buckets.tolist()) - {-1}:
        centroid[buckets == b] = item_vecs[buckets == b].mean(axis=0)
    adj = neighbour_matrix(seqs, n_items, window)
    transitions = np.asarray(adj.sum(axis=1)).ravel()
    scale = sparse.diags(1.0 / np.maximum(transitions, 1.0))
    return Evidence(np.asarray(scale @ (adj @ item_vecs), dtype=np.float32),
                    np.asarray(scale @ (adj @ centroid), dtype=np.float32), transitions.astype(int))


def behavioural_margins(interest_vecs: np.ndarray, item_of: np.ndarray, evidence: Evidence,
                        min_transitions: int) -> np.ndarray:
    """m(t) of every interest (row k of `interest_vecs` belongs to item `item_of[k]`); NaN where the item has
    fewer than `min_transitions` neighbour occurrences."""
    diff = evidence.neighbour_mean[item_of] - evidence.control_mean[item_of]
    margins = np.einsum("kd,kd->k", interest_vecs, diff)
    margins[evidence.transitions[item_of] < max(min_transitions, 1)] = np.nan
    return margins


def labels_from_margins(margins: np.ndarray, margin: float) -> np.ndarray:
    """1 / 0 per interest, -1 where the margin is NaN (no behavioural evidence)."""
    out = np.where(margins > margin, 1, 0)
    out[np.isnan(margins)] = -1
    return out


# ----------------------------------------------------------------------------- the classifier


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of two (n, d) arrays, normalised (rows of zeros give 0)."""
    num = np.einsum("kd,kd->k", a, b)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-12), 0.0).astype(np.float32)


def feature_matrix(groups: Sequence[str], *, interest_vecs: np.ndarray, item_vecs: np.ndarray,
                   content_vecs: np.ndarray, catalog_mean: np.ndarray, confidence: np.ndarray,
                   n_models: np.ndarray) -> np.ndarray:
    """Features of each interest, groups in the order given (see `FEATURES`); row k of `item_vecs` and
    `content_vecs` belongs to interest k's item."""
    build = {
        "interest": lambda: interest_vecs,
        "item": lambda: item_vecs,
        "product": lambda: interest_vecs * item_vecs,
        "cosine": lambda: row_cosine(interest_vecs, item_vecs)[:, None],
        "generic": lambda: (interest_vecs @ catalog_mean)[:, None],
        "content": lambda: row_cosine(interest_vecs, content_vecs)[:, None],
        "confidence": lambda: np.asarray(confidence, dtype=np.float32)[:, None],
        "models": lambda: np.log1p(np.asarray(n_models, dtype=np.float32))[:, None],
    }
    return np.hstack([build[g]() for g in groups]).astype(np.float32)


def make_classifier(C: float, seed: int):
    """The RLDI classifier: standardised features -> logistic regression (probabilities stay calibrated to the
    labels' base rate, so a 0.5 threshold means "more likely grounded than not")."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))


def fit_classifier(X: np.ndarray, y: np.ndarray, C: float, seed: int):
    """Fit on labelled rows; with a single class (or none) the model predicts that class's prior instead."""
    from sklearn.dummy import DummyClassifier

    if len(set(y.tolist())) < 2:
        if not len(y):  # nothing labelled at all: a constant 0 that still has the feature width
            X, y = np.zeros((1, X.shape[1]), dtype=np.float32), np.zeros(1, dtype=int)
        return DummyClassifier(strategy="prior").fit(X, y)
    return make_classifier(C, seed).fit(X, y)


def positive_probability(model, X: np.ndarray) -> np.ndarray:
    """P(label = 1) per row (0 when the model never saw a positive)."""
    proba = model.predict_proba(X)
    classes = list(model.classes_)
    return proba[:, classes.index(1)] if 1 in classes else np.zeros(len(X))


def auc(y: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or None when `y` holds a single class."""
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(y, scores)), 4) if len(set(y.tolist())) == 2 else None


def item_split(groups: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, held out) with every item (`groups` = item index per row) on one side only."""
    from sklearn.model_selection import GroupShuffleSplit

    if len(set(groups.tolist())) < 2:
        return np.arange(len(groups)), np.arange(0)
    split = GroupShuffleSplit(n_splits=1, test_size=holdout, random_state=seed)
    train, test = next(split.split(np.zeros(len(groups)), groups=groups))
    return np.sort(train), np.sort(test)


def heldout_auc(X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, holdout: float, C: float, seed: int,
                trivial: dict[str, np.ndarray]) -> dict:
    """Fit on the items of one fold, measure ROC AUC on the held-out items: the classifier and each trivial scorer
    (a column per labelled row, e.g. the interest-item cosine). Returns counts and AUCs (None: one class only)."""
    train, test = item_split(groups, holdout, seed)
    out = {"train_rows": int(len(train)), "heldout_rows": int(len(test)),
           "heldout_items": int(len(set(groups[test].tolist()))), "classifier": None,
           **{name: None for name in trivial}}
    if len(test) and len(set(y[train].tolist())) == 2:
        model = fit_classifier(X[train], y[train], C, seed)
        out["classifier"] = auc(y[test], positive_probability(model, X[test]))
    for name, col in trivial.items():
        out[name] = auc(y[test], col[test]) if len(test) else None
    return out


# ----------------------------------------------------------------------------- per-item quality


def item_quality(interests: Sequence[dict]) -> float | None:
    """DeepInterestGR's item quality: the confidence-weighted mean of `positive` over the item's interests (plain
    mean when every confidence is 0; None for an item without interests).

    Example:
        >>> item_quality([{"confidence": 0.9, "positive": True}, {"confidence": 0.3, "positive": False}])
        0.75
    """
    if not interests:
        return None
    weights = [float(i.get("confidence") or 0.0) for i in interests]
    hits = [1.0 if i["positive"] else 0.0 for i in interests]
    total = sum(weights)
    if total <= 0:
        return round(sum(hits) / len(hits), 4)
    return round(math.fsum(w * h for w, h in zip(weights, hits, strict=True)) / total, 4)


# ----------------------------------------------------------------------------- optional LLM judge

JUDGE_PROMPT = """You review interests mined for a product recommender: the needs, activities or settings that lead
someone to buy an item.

Item:
{item}

Interests:
{interests}

For each numbered interest, answer 1 when it is specific to this item and grounded in its text, or 0 when it is
vague or generic (it would fit almost any product), a product feature or brand rather than an interest, or not
supported by the item text.

End your answer with exactly one JSON object, and nothing after it: {{"labels": [...]}} with {n} numbers (1 or 0),
in the order of the interests."""
JUDGE_FIELDS = {"item", "interests", "n"}


def judge_backend(entry: dict):
    """The judge's backend spec (genrec.interests.miners.parse_backends); LLM backends only."""
    from genrec.interests.miners import parse_backends

    spec = parse_backends([entry], "label.judge")[0]
    if spec.type == "keyphrase":
        raise ValueError("label.judge: the keyphrase extractor cannot judge; use {type: openai, ...} or "
                         "{type: transformers, ...}, or null for no judge")
    return spec


def load_judge_prompt(path: str | None) -> str:
    """The judge prompt template ({item}, {interests}, {n}; literal braces doubled), checked."""
    import string
    from pathlib import Path

    if path is None:
        return JUDGE_PROMPT
    if not Path(path).is_file():
        raise ValueError(f"label.judge_prompt={path!r} does not exist; fix the path or use null for the built-in")
    text = Path(path).read_text(encoding="utf-8")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as e:
        raise ValueError(f"{path}: not a valid template ({e}); write literal braces as {{{{ and }}}}") from None
    if not {"item", "interests"} <= fields or fields - JUDGE_FIELDS:
        raise ValueError(f"{path}: a judge prompt must contain {{item}} and {{interests}} and may use "
                         f"{sorted(JUDGE_FIELDS)} only, found {sorted(fields)}")
    return text


def parse_judgement(obj, n: int) -> list[int]:
    """``{"labels": [1, 0, ...]}`` (or a bare list) of exactly `n` verdicts, each 1/0 or true/false.

    Example:
        >>> parse_judgement({"labels": [1, False, 0]}, 3)
        [1, 0, 0]
    """
    values = obj.get("labels") if isinstance(obj, dict) else obj
    if not isinstance(values, list) or len(values) != n:
        raise ValueError(f'expected {{"labels": [...]}} with {n} numbers, got {obj!r:.80}')
    if any(v not in (0, 1) or isinstance(v, float) for v in values):
        raise ValueError(f"each label must be 1 or 0, got {values!r:.80}")
    return [int(v) for v in values]


def judge_catalog(records: list[dict], items: dict[str, dict], entry: dict, prompt_path: str | None,
                  previous: dict[str, tuple[str, list[int]]], *, client=None, template: str,
                  max_chars: int) -> dict[str, tuple[str, list[int] | None]]:
    """item_id -> (judge_hash, verdicts per interest, None when the judge gave no valid answer). Items whose hash
    is in `previous` keep those verdicts; the others are asked in one batched call of the project's LLM client."""
    from genrec.interests.keyphrase import render_item
    from genrec.interests.llm import Completion, LLMClient, LocalLLM
    from genrec.interests.miners import prompt_hash

    spec, template_text = judge_backend(entry), load_judge_prompt(prompt_path)
    prompts, out = {}, {}
    for rec in records:
        if not rec["interests"]:
            continue
        listing = "\n".join(f"{n}. {i['text']}" for n, i in enumerate(rec["interests"], 1))
        prompt = template_text.format(item=render_item(items[rec["item_id"]], template, max_chars),
                                      interests=listing, n=len(rec["interests"]))
        key = prompt_hash(prompt, spec.type, spec.name)
        if previous.get(rec["item_id"], ("",))[0] == key:
            out[rec["item_id"]] = previous[rec["item_id"]]
        else:
            out[rec["item_id"]] = (key, None)
            prompts[rec["item_id"]] = (prompt, len(rec["interests"]))
    if prompts:
        if client is None:
            client = LLMClient(spec.config) if spec.type == "openai" else LocalLLM(spec.config)
        answers = {}
        for n in sorted({size for _, size in prompts.values()}):  # one parse per interest count
            batch = {iid: p for iid, (p, size) in prompts.items() if size == n}
            answers.update(client.complete_json(batch, lambda obj, n=n: parse_judgement(obj, n), progress="judge"))
        for iid, result in answers.items():
            if isinstance(result, Completion):
                out[iid] = (out[iid][0], result.value)
        failed = len(prompts) - sum(isinstance(r, Completion) for r in answers.values())
        if failed:
            logger.warning("label: the judge gave no valid answer for %d of %d items; their interests have judge = "
                           "null", failed, len(prompts))
    return out
