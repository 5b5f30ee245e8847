"""Reader and validator of interests.jsonl, the mine stage's output (later stages add fields to the interests).

One JSON object per line and per item:

    {"item_id": "42",
     "interests": [{"text": "woodworking", "confidence": 0.9, "model": "Qwen/Qwen3-8B", "prompt_hash": "3f2a...",
                    "models": ["Qwen/Qwen3-8B", "llama-3.1-8b"], "mean_confidence": 0.85,
                    "sources": [{"model", "text", "confidence", "prompt_hash"}, ...]}, ...],
     "archetype": "Hobby woodworkers who ..." | null, "archetype_model": "Qwen/Qwen3-8B" | null}

Required: ``item_id`` (unique non-empty string), ``interests`` (a list, possibly empty), and in each interest
``text`` (non-empty string), ``confidence`` (number in [0, 1]) and ``model`` (string). ``models``,
``mean_confidence``, ``prompt_hash``, ``sources``, ``archetype`` and ``archetype_model`` are checked when present;
so are the label stage's fields (RLDI, genrec.interests.label): per interest ``label`` and ``judge`` (0, 1 or null),
``margin`` (a finite number or null), ``score`` (number in [0, 1]) and ``positive`` (bool); per item ``quality``
(number in [0, 1] or null) and ``judge_hash`` (string). Other keys pass through. ``missing`` lists the backends that
gave no answer for the item (only in a run with ``allow_partial``).

Example:
    >>> interests = read_interests("runs/demo/interests.jsonl")  # doctest: +SKIP
    >>> [i["text"] for i in interests["42"]["interests"]]  # doctest: +SKIP
    ['woodworking', 'furniture restoration']
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

FIX = "fix the line or re-run genrec mine"


def read_interests(path: str | os.PathLike) -> dict[str, dict]:
    """item_id -> record, every line checked; errors name the file and line and say what to fix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run the mine stage first (genrec mine --run_dir RUN)")
    out: dict[str, dict] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg}); {FIX}") from None
            check_record(rec, where)
            if rec["item_id"] in out:
                raise ValueError(f"{where}: item_id {rec['item_id']!r} appears twice; keep one line per item or "
                                 "re-run genrec mine")
            out[rec["item_id"]] = rec
    return out


def check_record(rec: Any, where: str) -> None:
    """Raise ValueError naming `where` when `rec` is not a valid interests.jsonl record."""
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object per line, got {type(rec).__name__}; {FIX}")
    if not isinstance(rec.get("item_id"), str) or not rec["item_id"]:
        raise ValueError(f"{where}: 'item_id' must be a non-empty string, got {rec.get('item_id')!r}; {FIX}")
    if not isinstance(rec.get("interests"), list):
        raise ValueError(f"{where}: 'interests' must be a list, got {rec.get('interests')!r:.60}; {FIX}")
    for n, interest in enumerate(rec["interests"]):
        _check_interest(interest, f"{where}: interests[{n}]")
    for key in ("archetype", "archetype_model"):
        if rec.get(key) is not None and (not isinstance(rec[key], str) or not rec[key].strip()):
            raise ValueError(f"{where}: '{key}' must be a non-empty string or null, got {rec[key]!r:.60}; {FIX}")
    if rec.get("quality") is not None and not _unit_number(rec["quality"]):
        raise ValueError(f"{where}: 'quality' must be a number in [0, 1] or null, got {rec['quality']!r:.60}; "
                         "re-run the label stage")
    if "judge_hash" in rec and not isinstance(rec["judge_hash"], str):
        raise ValueError(f"{where}: 'judge_hash' must be a string, got {rec['judge_hash']!r:.60}; re-run label")


def _check_interest(interest: Any, where: str) -> None:
    if not isinstance(interest, dict):
        raise ValueError(f"{where} must be an object with 'text', 'confidence' and 'model', got {interest!r:.60}; "
                         f"{FIX}")
    if not isinstance(interest.get("text"), str) or not interest["text"].strip():
        raise ValueError(f"{where}: 'text' must be a non-empty string, got {interest.get('text')!r:.60}; {FIX}")
    for key in ("confidence", "mean_confidence"):
        if key in interest or key == "confidence":
            if not _unit_number(interest.get(key)):
                raise ValueError(f"{where}: '{key}' must be a number in [0, 1], got {interest.get(key)!r:.60}; {FIX}")
    for key in ("model", "prompt_hash"):
        if (key in interest or key == "model") and not isinstance(interest.get(key), str):
            raise ValueError(f"{where}: '{key}' must be a string, got {interest.get(key)!r:.60}; {FIX}")
    models = interest.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
        raise ValueError(f"{where}: 'models' must be a list of model names, got {models!r:.60}; {FIX}")
    sources = interest.get("sources")
    if sources is not None and (not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources)):
        raise ValueError(f"{where}: 'sources' must be a list of objects, got {sources!r:.60}; {FIX}")
    _check_label_fields(interest, where)


def _check_label_fields(interest: dict, where: str) -> None:
    """The label stage's per-interest fields, when present."""
    fix = "re-run the label stage"
    for key in ("label", "judge"):
        if interest.get(key) is not None and (isinstance(interest[key], bool) or interest[key] not in (0, 1)):
            raise ValueError(f"{where}: '{key}' must be 0, 1 or null, got {interest[key]!r:.60}; {fix}")
    margin = interest.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                               or not math.isfinite(margin)):
        raise ValueError(f"{where}: 'margin' must be a finite number or null, got {margin!r:.60}; {fix}")
    if "score" in interest and not _unit_number(interest["score"]):
        raise ValueError(f"{where}: 'score' must be a number in [0, 1], got {interest['score']!r:.60}; {fix}")
    if "positive" in interest and not isinstance(interest["positive"], bool):
        raise ValueError(f"{where}: 'positive' must be true or false, got {interest['positive']!r:.60}; {fix}")


def _unit_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and 0 <= value <= 1)


def positive_interests(records: dict[str, dict]) -> dict[str, list[str]]:
    """item_id -> its positive interests (the label stage's decision; every interest before labelling), most
    confident first."""
    out = {}
    for iid, rec in records.items():
        kept = [i for i in rec.get("interests", []) if i.get("positive", True)]
        out[iid] = [i["text"] for i in sorted(kept, key=lambda i: -float(i.get("confidence") or 0.0))]
    return out
