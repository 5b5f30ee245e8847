"""The `label` stage (RLDI): interests.jsonl -> interests.jsonl with behavioural labels, classifier scores and
a final decision per interest, a quality per item, plus rldi.joblib (the classifier) and rldi_report.json.

Runs after `mine` (pipeline stage `label`). Steps:
1. read interests.jsonl (genrec.interests.schema) and drop the fields an earlier label run wrote, so running the
   stage twice writes the same file;
2. embed every item's text and every distinct interest text once with the sentence encoder;
3. behavioural labels from the train split only (the rule: genrec.interests.rldi);
4. fit the classifier on the labelled interests, measure it on held-out items (AUC next to trivial scorers), refit
   on every labelled item and score every interest;
5. optionally ask an LLM judge whether each interest is specific and grounded (`judge`);
6. write interests.jsonl atomically.

Fields added per interest: ``label`` (1 / 0 / null: the behavioural label), ``margin`` (the rule's m(t), null
without evidence), ``score`` (classifier probability in [0, 1]), ``judge`` (1 / 0 / null, only with a judge) and
``positive`` (the decision used downstream: the label where defined, else score >= threshold; a judge's 0 vetoes
it when `judge_veto`). Per item: ``quality`` = confidence-weighted mean of ``positive`` (null without interests),
and ``judge_hash`` with a judge (its answers are reused while the hash holds).

Example:
    >>> run_label(Path("runs/demo"), LabelConfig())  # doctest: +SKIP
    {'items': 960, 'interests': 4800, 'positive': 1733, 'negative': 1520, 'unlabelled': 1547, ...}
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from genrec.artifacts import INTERESTS, ITEMS, RLDI_MODEL, RLDI_REPORT, RLDI_VECTORS, Run
from genrec.encoders import DEFAULT_TEMPLATE, item_text
from genrec.interests import rldi
from genrec.io import atomic_path, write_json, write_jsonl

logger = logging.getLogger(__name__)

INTEREST_KEYS = ("label", "margin", "score", "positive", "judge")  # what this stage writes into each interest
ITEM_KEYS = ("quality", "judge_hash")  # ... and into each item's record
Encode = Callable[[list[str]], np.ndarray]


@dataclass
class LabelConfig:
    window: int = field(
        default=2, metadata={"help": "Behavioural neighbours of an item: the items within this many positions "
                                     "before or after it in a user's train sequence."}
    )
    margin: float = field(
        default=0.02,
        metadata={"help": "An interest is labelled positive when its mean cosine to the item's behavioural "
                  "neighbours exceeds that to popularity-matched items by more than this."},
    )
    min_transitions: int = field(
        default=4, metadata={"help": "Items with fewer neighbour occurrences than this get no behavioural label "
                                     "(their interests are decided by the classifier)."}
    )
    min_bucket: int = field(
        default=20, metadata={"help": "Fewest items per popularity bucket of the control (log2 train-count "
                                      "buckets, the rarest merged)."}
    )
    features: list[str] = field(
        default_factory=lambda: list(rldi.FEATURES),
        metadata={"help": f"Classifier feature groups, any of {list(rldi.FEATURES)}."},
    )
    content_k: int = field(
        default=10, metadata={"help": "The 'content' feature: how many nearest items by text form the mean."}
    )
    C: float = field(
        default=3e-4, metadata={"help": "Inverse L2 regularisation of the logistic regression (small: ~1,000 "
                                        "standardised features learnt from a few thousand items)."}
    )
    holdout: float = field(
        default=0.2, metadata={"help": "Fraction of labelled items held out (whole items) to measure AUC."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the held-out item split and the classifier."})
    threshold: float = field(
        default=0.5, metadata={"help": "Interests without a behavioural label are positive when score >= this."}
    )
    encoder: str = field(
        default="minilm", metadata={"help": "Sentence encoder ('minilm' = bundled all-MiniLM-L6-v2, or a local "
                                            "sentence-transformers model)."}
    )
    encoder_max_length: int = field(default=32, metadata={"help": "Tokens the encoder reads per text."})
    batch_size: int = field(default=256, metadata={"help": "Texts per encoder forward pass."})
    template: str = field(
        default=DEFAULT_TEMPLATE, metadata={"help": "Python format string over item fields: the item text embedded."}
    )
    max_chars: int = field(default=400, metadata={"help": "Item text is cut to this many characters."})
    judge: dict | None = field(
        default=None,
        metadata={"help": "Optional LLM judge of interest specificity: one backend mapping as in mine.backends, "
                  "{type: openai, model, base_url, api_key_env, ...} or {type: transformers, model_path, ...}; "
                  "null = no judge."},
    )
    judge_veto: bool = field(
        default=True, metadata={"help": "With a judge: an interest the judge calls vague is never positive."}
    )
    judge_prompt: str | None = field(
        default=None, metadata={"help": "Judge prompt template file ({item}, {interests}, {n}); null = built-in."}
    )

    def __post_init__(self):
        if self.window < 1 or self.min_transitions < 1 or self.min_bucket < 1 or self.content_k < 1:
            raise ValueError("label.window, label.min_transitions, label.min_bucket and label.content_k must be >= 1")
        unknown = [f for f in self.features if f not in rldi.FEATURES]
        if unknown or not self.features or len(set(self.features)) != len(self.features):
            raise ValueError(f"label.features={self.features}: list each of {list(rldi.FEATURES)} at most once "
                             f"(unknown: {unknown or 'none'})")
        if not 0 < self.holdout < 1:
            raise ValueError(f"label.holdout={self.holdout}: use a fraction in (0, 1), e.g. 0.2")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"label.threshold={self.threshold}: use a probability in [0, 1], e.g. 0.5")
        if self.C <= 0:
            raise ValueError(f"label.C={self.C}: use a positive number (smaller = stronger regularisation)")
        if self.encoder_max_length < 8 or self.batch_size < 1 or self.max_chars < 1:
            raise ValueError("label.encoder_max_length must be >= 8, label.batch_size and label.max_chars >= 1")
        if "{" not in self.template:
            raise ValueError("label.template must use item fields, e.g. '{title}. Categories: {categories}'")
        if self.judge is not None:
            rldi.judge_backend(self.judge)
            rldi.load_judge_prompt(self.judge_prompt)


def _encoder(model: str, max_length: int, batch_size: int):
    from genrec.encoders import EmbedConfig, load_encoder

    return load_encoder(EmbedConfig(model=model, max_length=max_length, batch_size=batch_size))


def default_encode(cfg: LabelConfig) -> Encode:
    """The sentence encoder of `cfg`, loaded once per process; progress bar on."""
    return lambda texts: _encoder(cfg.encoder, cfg.encoder_max_length, cfg.batch_size).encode(texts, True)


def _unit(vecs: np.ndarray) -> np.ndarray:
    vecs = np.asarray(vecs, dtype=np.float32)
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


@dataclass
class Table:
    """Every interest of the catalog as one row: its item (catalog index), text, confidence, model count."""

    item_of: np.ndarray
    texts: list[str]
    confidence: np.ndarray
    n_models: np.ndarray


def read_records(run: Run) -> tuple[list[dict], dict[str, tuple[str, list[int]]]]:
    """interests.jsonl, validated: its records in file order without what an earlier label run added (every item
    must be in the catalog), and the judge verdicts that run wrote (item -> (judge_hash, verdicts)), so a re-run
    does not ask the judge again."""
    from genrec.interests.schema import read_interests

    path = run.path(INTERESTS)
    raw = read_interests(path)
    known = {it["item_id"] for it in run.items()}
    unknown = [iid for iid in raw if iid not in known]
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} item(s) not in {run.path(ITEMS)} (e.g. {unknown[0]!r}); the "
                         "interests belong to another catalog: re-run the mine stage")
    judged = {}
    for iid, rec in raw.items():
        verdicts = [i.get("judge") for i in rec["interests"]]
        if isinstance(rec.get("judge_hash"), str) and verdicts and all(v in (0, 1) for v in verdicts):
            judged[iid] = (rec["judge_hash"], [int(v) for v in verdicts])
    records = [{**{k: v for k, v in r.items() if k not in ITEM_KEYS},
                "interests": [{k: v for k, v in i.items() if k not in INTEREST_KEYS} for i in r["interests"]]}
               for r in raw.values()]
    return records, judged


def flatten(records: list[dict], index: dict[str, int]) -> Table:
    rows = [(index[r["item_id"]], i) for r in records for i in r["interests"]]
    return Table(np.array([k for k, _ in rows], dtype=int), [i["text"] for _, i in rows],
                 np.array([float(i["confidence"]) for _, i in rows], dtype=np.float32),
                 np.array([len(i.get("models") or [i["model"]]) for _, i in rows], dtype=np.float32))


def embed(items: list[dict], table: Table, cfg: LabelConfig, encode: Encode, cache: Path,
          encoder_id: list) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of the items' texts and of every interest. Each distinct text is encoded once, in one batched
    call, and only when `cache` (rldi_vectors.npz, the vectors of the last run with the same `encoder_id`) lacks
    it: a re-run with another rule or classifier setting encodes nothing, and gets the very same vectors."""
    item_texts = [item_text(it, cfg.template, cfg.max_chars) for it in items]
    distinct = sorted(set(item_texts) | set(table.texts))
    known = _load_vectors(cache, encoder_id)
    todo = [t for t in distinct if t not in known]
    logger.info("label: %d items, %d interests (%d distinct texts in all): %d cached, %d to encode", len(items),
                len(table.texts), len(distinct), len(distinct) - len(todo), len(todo))
    if todo:
        # float16 halves the cache; fresh vectors are rounded the same way, so a re-run sees exactly these values
        known.update(zip(todo, _unit(encode(todo)).astype(np.float16), strict=True))
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, texts=np.array(json.dumps(distinct)), encoder=np.array(json.dumps(encoder_id)),
                     vectors=np.stack([known[t] for t in distinct]))
    vecs = np.stack([known[t] for t in distinct]).astype(np.float32) if distinct else np.zeros((0, 1), np.float32)
    row = {t: n for n, t in enumerate(distinct)}
    interest_vecs = vecs[[row[t] for t in table.texts]] if table.texts else np.zeros((0, vecs.shape[1]), np.float32)
    return vecs[[row[t] for t in item_texts]], interest_vecs


def _load_vectors(path: Path, encoder_id: list) -> dict[str, np.ndarray]:
    """text -> vector from an earlier run's cache; empty when there is none or another encoder made it."""
    try:
        with np.load(path) as z:
            if json.loads(str(z["encoder"])) != encoder_id:
                return {}
            return dict(zip(json.loads(str(z["texts"])), z["vectors"].astype(np.float16), strict=True))
    except (OSError, ValueError, KeyError):  # missing or unreadable: encode afresh (it is only a cache)
        return {}


def content_means(item_ids: list[str], item_vecs: np.ndarray, k: int) -> np.ndarray:
    """Per item, the mean vector of its `k` nearest other items by text (itself on a one-item catalog)."""
    from genrec.encoders import nearest_items

    k = min(k, len(item_ids) - 1)
    if k < 1:
        return item_vecs.copy()
    near = nearest_items(item_ids, item_vecs, k)
    index = {iid: n for n, iid in enumerate(item_ids)}
    return np.stack([item_vecs[[index[j] for j in near[iid]]].mean(axis=0) for iid in item_ids])


def behavioural_labels(run: Run, index: dict[str, int], table: Table, item_vecs: np.ndarray,
                       interest_vecs: np.ndarray, cfg: LabelConfig) -> tuple[np.ndarray, np.ndarray]:
    """(margins, labels) of every interest from the train split (the only split read)."""
    from genrec.artifacts import train_sequences

    seqs = train_sequences(run.split("train"), index)
    evidence = rldi.behavioural_evidence(seqs, item_vecs, window=cfg.window, min_bucket=cfg.min_bucket)
    margins = rldi.behavioural_margins(interest_vecs, table.item_of, evidence, cfg.min_transitions)
    return margins, rldi.labels_from_margins(margins, cfg.margin)


def classify(X: np.ndarray, labels: np.ndarray, table: Table, trivial: dict[str, np.ndarray],
             cfg: LabelConfig) -> tuple[object, np.ndarray, dict]:
    """Held-out AUCs (by item), then the classifier refit on every labelled interest and its score for all."""
    known = labels >= 0
    y = labels[known]
    aucs = rldi.heldout_auc(X[known], y, table.item_of[known], holdout=cfg.holdout, C=cfg.C, seed=cfg.seed,
                            trivial={name: col[known] for name, col in trivial.items()})
    if len(set(y.tolist())) < 2:
        logger.warning("label: the behavioural labels hold %s; the classifier predicts the prior (check "
                       "label.margin, or the train split)", f"only class {y[0]}" if len(y) else "no labelled interest")
    model = rldi.fit_classifier(X[known], y, cfg.C, cfg.seed)
    scores = rldi.positive_probability(model, X) if len(X) else np.zeros(0)
    return model, scores, aucs


def run_label(run_dir: Path, cfg: LabelConfig, *, encode: Encode | None = None, judge_client=None) -> dict:
    """The `label` stage on one run directory; returns the report (also written to rldi_report.json).

    `encode` replaces the sentence encoder (texts -> vectors) and `judge_client` the judge's LLM client (anything
    with the `complete_json` of genrec.interests.llm); both are for tests.
    """
    start, times = time.perf_counter(), {}
    run = Run(run_dir)
    items = run.items()
    item_ids = [it["item_id"] for it in items]
    index = {iid: n for n, iid in enumerate(item_ids)}
    records, previous = read_records(run)
    table = flatten(records, index)
    encoder_id = [cfg.encoder, cfg.encoder_max_length] if encode is None else ["custom", repr(encode)]
    item_vecs, interest_vecs = embed(items, table, cfg, encode or default_encode(cfg), run.path(RLDI_VECTORS),
                                     encoder_id)
    times["embed"] = time.perf_counter() - start
    margins, labels = behavioural_labels(run, index, table, item_vecs, interest_vecs, cfg)
    content = content_means(item_ids, item_vecs, cfg.content_k)[table.item_of]
    X = rldi.feature_matrix(cfg.features, interest_vecs=interest_vecs, item_vecs=item_vecs[table.item_of],
                            content_vecs=content, catalog_mean=item_vecs.mean(axis=0), confidence=table.confidence,
                            n_models=table.n_models)
    trivial = {"cosine": rldi.row_cosine(interest_vecs, item_vecs[table.item_of]), "confidence": table.confidence,
               "content": rldi.row_cosine(interest_vecs, content)}
    model, scores, aucs = classify(X, labels, table, trivial, cfg)
    times["labels_and_classifier"] = time.perf_counter() - start - times["embed"]
    judgements = {}
    if cfg.judge is not None:
        judgements = rldi.judge_catalog(records, {it["item_id"]: it for it in items}, cfg.judge, cfg.judge_prompt,
                                        previous, client=judge_client, template=cfg.template, max_chars=cfg.max_chars)
        times["judge"] = time.perf_counter() - start - sum(times.values())
    out = annotate(records, margins, labels, scores, judgements, cfg)
    write_jsonl(run.path(INTERESTS), out)
    with atomic_path(run.path(RLDI_MODEL)) as tmp:
        import joblib

        joblib.dump({"classifier": model, "features": list(cfg.features), "config": asdict(cfg)}, tmp)
    report = _report(out, labels, aucs, X.shape[1], cfg, judgements, times, time.perf_counter() - start)
    write_json(run.path(RLDI_REPORT), report)
    logger.info("label: %d positive / %d negative / %d unlabelled; held-out AUC classifier %s, cosine %s, "
                "confidence %s (%.1fs) -> %s", report["positive"], report["negative"], report["unlabelled"],
                aucs["classifier"], aucs["cosine"], aucs["confidence"], report["seconds"], run.path(INTERESTS))
    return report


def annotate(records: list[dict], margins: np.ndarray, labels: np.ndarray, scores: np.ndarray,
             judgements: dict[str, tuple[str, list[int] | None]], cfg: LabelConfig) -> list[dict]:
    """The output records: each interest gets label, margin, score, positive (and judge); each item quality."""
    out, k = [], 0
    for rec in records:
        verdicts = judgements.get(rec["item_id"], (None, None))[1]
        interests = []
        for n, interest in enumerate(rec["interests"]):
            label = None if labels[k] < 0 else int(labels[k])
            score = round(float(scores[k]), 4)
            positive = bool(label) if label is not None else score >= cfg.threshold
            extra = {}
            if cfg.judge is not None:
                extra["judge"] = verdicts[n] if verdicts else None
                positive = positive and not (cfg.judge_veto and extra["judge"] == 0)
            margin = None if np.isnan(margins[k]) else round(float(margins[k]), 4)
            interests.append({**interest, "label": label, "margin": margin, "score": score, **extra,
                              "positive": positive})
            k += 1
        new = {**rec, "interests": interests, "quality": rldi.item_quality(interests)}
        if cfg.judge is not None and rec["item_id"] in judgements:
            new["judge_hash"] = judgements[rec["item_id"]][0]
        out.append(new)
    return out


def _report(out: list[dict], labels: np.ndarray, aucs: dict, n_features: int, cfg: LabelConfig,
            judgements: dict, times: dict, seconds: float) -> dict:
    interests = [i for r in out for i in r["interests"]]
    labelled_items = sum(1 for r in out if any(i["label"] is not None for i in r["interests"]))
    report = {
        "items": len(out), "interests": len(interests), "labelled_items": labelled_items,
        "positive": int((labels == 1).sum()), "negative": int((labels == 0).sum()),
        "unlabelled": int((labels < 0).sum()),
        "unlabelled_scored_positive": sum(1 for i in interests if i["label"] is None and i["score"] >= cfg.threshold),
        "final_positive": sum(1 for i in interests if i["positive"]),
        "mean_quality": round(float(np.mean([r["quality"] for r in out if r["quality"] is not None] or [0.0])), 4),
        "auc_heldout_items": aucs,
        "features": list(cfg.features), "feature_dim": int(n_features),
        "rule": {k: getattr(cfg, k) for k in ("window", "margin", "min_transitions", "min_bucket")},
        "encoder": cfg.encoder,
        "seconds": round(seconds, 2), "seconds_by_step": {k: round(v, 2) for k, v in times.items()},
    }
    if cfg.judge is not None:
        verdicts = [i.get("judge") for i in interests]
        agree = [(i["judge"], i["label"]) for i in interests if i.get("judge") is not None and i["label"] is not None]
        report["judge"] = {"judged": sum(v is not None for v in verdicts), "specific": verdicts.count(1),
                           "vague": verdicts.count(0), "items_failed": sum(1 for _, v in judgements.values() if not v),
                           "agreement_with_label": round(np.mean([a == b for a, b in agree]), 4) if agree else None}
    return report
