"""Interest reward: a wrong item earns credit for sharing the target's user interests; a hit earns the target's
interest quality.

Each item's vector is the L2-normalised mean embedding of its RLDI-positive interests (label 1). The reward takes
data (vectors, qualities); `interest_reward_from_interests` builds them from the label stage's interest records
and an embed function, so the GRPO stage runner, which knows the files, only reads and passes them.

Example:
    >>> f = get_interest_reward({"<a_1>": np.array([1.0, 0.0]), "<a_2>": np.array([0.6, 0.8])}, {"<a_1>": 0.8})
    >>> [round(r, 6) for r in f(prompts=["p", "p"], completions=["<a_1>", "<a_2>"], target_sid=["<a_1>", "<a_1>"])]
    [0.4, 0.6]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np

from genrec.sid import parse_sid, sid_string

from .sid_rewards import completion_sid, target_codes

logger = logging.getLogger(__name__)


class InterestReward:
    """Built by `get_interest_reward`; picklable."""

    def __init__(self, vectors: dict[str, np.ndarray], quality: dict[str, float], weight: float, floor: float,
                 hit_bonus: float):
        self.vectors, self.quality = vectors, quality
        self.weight, self.floor, self.hit_bonus = weight, floor, hit_bonus
        self.__name__ = "interest_reward"

    def __call__(self, prompts=None, completions=(), target_sid=None, **kwargs) -> list[float]:
        targets = [sid_string(t) for t in target_codes(target_sid, len(completions), "interest")]
        rewards = []
        for completion, target in zip(completions, targets):
            sid = completion_sid(completion)
            if sid == target:
                rewards.append(self.hit_bonus * self.quality.get(target, 0.0))
                continue
            v, t = self.vectors.get(sid), self.vectors.get(target)
            if v is None or t is None:
                rewards.append(0.0)
                continue
            cos = float(v @ t)
            rewards.append(self.weight * max(0.0, cos - self.floor) / (1.0 - self.floor))
        return rewards


def _canonical(sid: str, where: str) -> str:
    try:
        return sid_string(parse_sid(sid))
    except (TypeError, ValueError) as e:
        raise ValueError(f"interest reward {where}: {e}; keys must be SID strings like '<a_12><b_7><c_200>'") from None


def get_interest_reward(item_vectors: Mapping[str, np.ndarray], quality: Mapping[str, float], weight: float = 1.0,
                        floor: float = 0.0, hit_bonus: float = 0.5) -> InterestReward:
    """For a wrong item, ``weight * max(0, cos(v_generated, v_target) - floor) / (1 - floor)`` (0 when either item
    has no vector); for a hit, ``hit_bonus * quality[target]`` (0 when the target has no quality).

    `item_vectors`: SID string -> the item's mean embedding of its RLDI-positive interests (normalised here too;
    items without positive interests left out). `quality`: SID string -> the item's interest quality in [0, 1].

    Example (floor 0.5: cos 0.6 keeps (0.6 - 0.5) / 0.5 = 0.2):
        >>> f = get_interest_reward({"<a_1>": np.array([1.0, 0.0]), "<a_2>": np.array([0.6, 0.8])}, {}, floor=0.5)
        >>> [round(r, 6) for r in f(prompts=["p"], completions=["<a_2>"], target_sid=["<a_1>"])]
        [0.2]
    """
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"interest reward floor={floor}: use a cosine floor in [0, 1), e.g. 0.0 or 0.3")
    vectors = {}
    for sid, v in item_vectors.items():
        v = np.asarray(v, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(v))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError(f"interest reward item_vectors[{sid!r}] is zero or not finite; leave out items "
                             "without positive interests instead")
        vectors[_canonical(sid, "item_vectors")] = v / norm
    if len({v.shape for v in vectors.values()}) > 1:
        raise ValueError("interest reward item_vectors have different lengths; embed every item with one encoder")
    qualities = {}
    for sid, q in quality.items():
        if not 0.0 <= float(q) <= 1.0:
            raise ValueError(f"interest reward quality[{sid!r}] = {q}; qualities must lie in [0, 1]")
        qualities[_canonical(sid, "quality")] = float(q)
    return InterestReward(vectors, qualities, float(weight), float(floor), float(hit_bonus))


def interest_vectors(records: Mapping[str, dict], sids: Mapping[str, list[int] | str],
                     encoder_fn: Callable[[list[str]], np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """(item_vectors, quality) for `get_interest_reward` from interest records
    ``{item_id: {"interests": [{"text", "label": 0/1, "score"}, ...], "quality": q}}``.

    `sids`: item_id -> SID codes (or SID string); `encoder_fn`: texts -> array (n, d), e.g. ``Encoder.encode``;
    every distinct positive interest text is embedded once, in one call. Items missing from `sids` are skipped.

    Example:
        >>> vecs, q = interest_vectors({"7": {"interests": [{"text": "knots", "label": 1}], "quality": 0.9}},
        ...                            {"7": [1, 2]}, lambda texts: np.ones((len(texts), 4)))
        >>> list(vecs), q
        (['<a_1><b_2>'], {'<a_1><b_2>': 0.9})
    """
    positives: dict[str, list[str]] = {}
    quality: dict[str, float] = {}
    skipped = 0
    for item_id, record in records.items():
        if str(item_id) not in sids:
            skipped += 1
            continue
        codes = sids[str(item_id)]
        sid = sid_string(parse_sid(codes) if isinstance(codes, str) else codes)
        if record.get("quality") is not None:
            quality[sid] = float(record["quality"])
        texts = [i["text"] for i in record.get("interests", []) if i.get("label") == 1 and i.get("text")]
        if texts:
            positives[sid] = texts
    if skipped:
        logger.warning("interest reward: %d interest records name items that are not in the SID map; skipped",
                       skipped)
    unique = sorted({t for texts in positives.values() for t in texts})
    if not unique:
        return {}, quality
    emb = np.asarray(encoder_fn(unique), dtype=np.float32)
    if emb.ndim != 2 or len(emb) != len(unique):
        raise ValueError(f"encoder_fn returned shape {emb.shape} for {len(unique)} texts; it must return one row "
                         "per text, shape (n, d)")
    row = {t: i for i, t in enumerate(unique)}
    vectors = {}
    for sid, texts in positives.items():
        mean = emb[[row[t] for t in texts]].mean(axis=0)
        norm = float(np.linalg.norm(mean))
        if norm > 0.0:
            vectors[sid] = mean / norm
    return vectors, quality


def interest_reward_from_interests(records: Mapping[str, dict], sids: Mapping[str, list[int] | str],
                                   encoder_fn: Callable[[list[str]], np.ndarray], weight: float = 1.0,
                                   floor: float = 0.0, hit_bonus: float = 0.5) -> InterestReward:
    """`get_interest_reward` built from interest records (see `interest_vectors`); what the GRPO runner calls.

    Example:
        >>> f = interest_reward_from_interests(records, sids, encoder.encode, floor=0.3)  # doctest: +SKIP
    """
    vectors, quality = interest_vectors(records, sids, encoder_fn)
    return get_interest_reward(vectors, quality, weight=weight, floor=floor, hit_bonus=hit_bonus)
