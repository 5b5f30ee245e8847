"""Offline interest phrases for machines with no LLM: KeyBERT-style keyphrase extraction with a sentence encoder.

For each item:
1. candidates = the 1..`max_words`-word runs of the item's own text that cross no stop word, number or punctuation
   (so every phrase is a verbatim piece of the text);
2. the `max_candidates` best by TF-IDF over the catalog are kept (title phrases weighted `title_weight`; phrases
   found in fewer than `min_df` items only when nothing else is left), which bounds the encoding work;
3. every distinct candidate of the whole catalog is embedded once (batched), and each item from the same text;
4. Maximal Marginal Relevance picks `k` phrases close to the item and far from each other
   (score = (1 - diversity) * sim(item, phrase) - diversity * max sim(phrase, picked)).

Confidence is calibrated on the catalog: a phrase's item similarity as a percentile of all candidate similarities,
so 0.9 means "closer to its item than 90 % of the candidate phrases are to theirs". An item whose text yields no
candidate falls back to its title (first 8 words), so every item with a title gets at least one phrase.

Example:
    >>> enc = load_encoder(EmbedConfig())  # doctest: +SKIP
    >>> extract_keyphrases([{"title": "Nitrile gloves", "description": "Lab work"}], enc.encode, 2)  # doctest: +SKIP
    [[('nitrile gloves', 1.0), ('lab work', 0.5)]]
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from genrec.encoders import item_text

logger = logging.getLogger(__name__)

# function words, shop-copy words and units: they say nothing about what an item is for
STOP_WORDS = frozenset("""
a about above after again against all almost also although always am among an and another any are around as at
be because been before being below between both but by can cannot could did do does doing done down during each
either else enough etc even ever every few for from further get gets getting give given go goes had has have having
he her here hers herself him himself his how however i if in into is it its itself just least less let like made
make makes many may me might more most much must my myself near need needs neither no nor not now of off often on
once one only onto or other others otherwise our ours ourselves out over own per perhaps please put quite rather
really same see seem seems several shall she should since so some such than that the their theirs them themselves
then there therefore these they this those though through throughout thus to together too toward towards under
until up upon us use used uses using very via was we well were what whatever when where whether which while who
whoever whole whom whose why will with within without would yet you your yours yourself yourselves
approx best brand count easy features feature great high ideal include included includes including inch inches
item items new pack package pcs perfect piece pieces product products quality set size sizes superior type
awg cfm cm ft gal ghz hz kg khz kw lb lbs mah mhz ml mm oz ppm psi qt rpm vac vdc
""".split())
_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


@dataclass
class KeyphraseConfig:
    template: str = field(
        default="{title}. {categories}. {description}",
        metadata={"help": "Python format string over item fields: the text phrases come from and the item is "
                  "embedded from."},
    )
    max_chars: int = field(default=300, metadata={"help": "Item text is cut to this many characters."})
    max_words: int = field(default=3, metadata={"help": "Longest candidate phrase in words."})
    max_candidates: int = field(
        default=10, metadata={"help": "Candidates per item kept (best TF-IDF) for embedding; bounds the cost."}
    )
    title_weight: float = field(default=2.0, metadata={"help": "TF-IDF weight of phrases that occur in the title."})
    skip_brand: bool = field(
        default=True, metadata={"help": "Drop phrases holding a word of the item's brand name (a name, not a need)."}
    )
    min_df: int = field(
        default=2, metadata={"help": "Phrases must occur in this many items' texts to compete (1 = any phrase)."}
    )
    diversity: float = field(
        default=0.3, metadata={"help": "MMR trade-off: 0 = the most item-like phrases, 1 = the most different ones."}
    )

    def __post_init__(self):
        if min(self.max_words, self.max_candidates, self.max_chars, self.min_df) < 1:
            raise ValueError("max_words, max_candidates, max_chars and min_df must be >= 1")
        if not 0 <= self.diversity <= 1:
            raise ValueError(f"diversity={self.diversity}: use a value in [0, 1] (0.3: relevance first, some variety)")
        if self.title_weight <= 0:
            raise ValueError(f"title_weight={self.title_weight}: must be > 0 (1 = no preference for the title)")


def render_item(item: dict, template: str, max_chars: int) -> str:
    """The item's text from a template over its fields (genrec.encoders.item_text), empty segments tidied.

    Example:
        >>> render_item({"title": "Gloves", "categories": ""}, "{title}. {categories}. {description}", 100)
        'Gloves'
    """
    return re.sub(r"(?:\s*\.){2,}", ".", item_text(item, template, max_chars)).strip(" .")


def candidate_phrases(text: str, max_words: int = 3) -> list[str]:
    """Distinct 1..max_words-word phrases of `text` (lowercased) that cross no stop word, number or punctuation.

    Example:
        >>> candidate_phrases("Nitrile gloves, for the lab (100 pack)", 2)
        ['nitrile', 'nitrile gloves', 'gloves', 'lab']
    """
    text = text.lower()
    runs, run, last_end = [], [], 0
    for m in _TOKEN.finditer(text):
        word, gap = m.group(), text[last_end:m.start()]
        last_end = m.end()
        if gap.strip():  # punctuation between two words ends a phrase
            runs.append(run)
            run = []
        if word in STOP_WORDS or len(word) < 2 or any(c.isdigit() for c in word):
            runs.append(run)
            run = []
            continue
        run.append(word)
    runs.append(run)
    out: dict[str, None] = {}
    for words in runs:
        for i in range(len(words)):
            for n in range(1, min(max_words, len(words) - i) + 1):
                if n == 1 and len(words[i]) < 3:
                    continue
                out[" ".join(words[i:i + n])] = None
    return list(out)


def prerank(candidates: list[list[str]], titles: list[str], max_candidates: int, title_weight: float = 2.0,
            min_df: int = 2, banned: list[set[str]] | None = None) -> list[list[str]]:
    """Each item's `max_candidates` best candidates by TF-IDF over the catalog, title phrases weighted.

    Only phrases found in at least `min_df` items compete: a phrase no other item uses is mostly a model number, a
    brand or a one-off turn of the copy. An item left with none falls back to its title phrases, then to all.
    Phrases holding a word of ``banned[i]`` (item i's brand name) never compete.
    """
    df = Counter(p for cands in candidates for p in cands)
    n = len(candidates)
    out = []
    for i, (cands, title) in enumerate(zip(candidates, titles, strict=True)):
        if banned and banned[i]:
            cands = [p for p in cands if not banned[i].intersection(p.split())]
        title = " " + " ".join(_TOKEN.findall(title.lower())) + " "
        in_title = {p: f" {p} " in title for p in cands}
        pool = [p for p in cands if df[p] >= min_df] or [p for p in cands if in_title[p]] or cands
        score = {p: (math.log((1 + n) / (1 + df[p])) + 1) * (title_weight if in_title[p] else 1.0)
                 * len(p.split()) ** 0.5 for p in pool}  # longer phrases are rarer but no less telling
        out.append(sorted(pool, key=lambda p: -score[p])[:max_candidates])
    return out


def brand_words(brands: list[str], texts: list[str], slack: int = 2) -> list[set[str]]:
    """Per item, the words of its brand that are names, not ordinary words: found in the texts of at most `slack`
    items beyond those of brands containing the word ("uxcell" is a name; "tools" of "Titan Tools" is not)."""
    brand_sets = [set(_TOKEN.findall((b or "").lower())) for b in brands]
    in_brand = Counter(w for words in brand_sets for w in words)
    in_text = Counter(w for t in texts for w in set(_TOKEN.findall(t.lower())))
    return [{w for w in words if in_text[w] <= in_brand[w] + slack} for words in brand_sets]


def mmr(item_sims: np.ndarray, phrase_sims: np.ndarray, k: int, diversity: float) -> list[int]:
    """Maximal Marginal Relevance: indices of `k` phrases, the most item-like first, each next one trading item
    similarity against similarity to those already picked.

    Example:
        >>> sims = np.array([[1, .99, 0], [.99, 1, 0], [0, 0, 1]])
        >>> mmr(np.array([.9, .89, .5]), sims, 2, 0.5)  # the near-duplicate of the first is skipped
        [0, 2]
    """
    k = min(k, len(item_sims))
    if k <= 0:
        return []
    picked = [int(np.argmax(item_sims))]
    redundancy = phrase_sims[picked[0]].astype(np.float64)
    while len(picked) < k:
        score = (1 - diversity) * item_sims - diversity * redundancy
        score[picked] = -np.inf
        best = int(np.argmax(score))
        picked.append(best)
        redundancy = np.maximum(redundancy, phrase_sims[best])
    return picked


def extract_keyphrases(items: list[dict], encode: Callable[[list[str]], np.ndarray], k: int,
                       cfg: KeyphraseConfig | None = None) -> list[list[tuple[str, float]]]:
    """Per item, up to `k` (phrase, confidence) pairs picked by MMR, highest confidence first (module docstring).

    `items` are catalog dicts (title, description, brand, ...); `encode` maps texts to row vectors (e.g.
    ``load_encoder(EmbedConfig()).encode``). An item with no text at all gets an empty list.
    """
    cfg = cfg or KeyphraseConfig()
    texts = [render_item(it, cfg.template, cfg.max_chars) for it in items]
    titles = [" ".join(str(it.get("title") or "").split()) for it in items]
    banned = brand_words([str(it.get("brand") or "") for it in items], texts) if cfg.skip_brand else None
    candidates = [candidate_phrases(t, cfg.max_words) for t in texts]
    kept = prerank(candidates, titles, cfg.max_candidates, cfg.title_weight, cfg.min_df, banned)
    for i, cands in enumerate(kept):
        if not cands and titles[i]:  # nothing usable in the text: the title is the phrase
            kept[i] = [" ".join(titles[i].lower().split()[:8])]
    distinct = sorted({p for cands in kept for p in cands})
    logger.info("keyphrase: %d items, %d candidate phrases (%d distinct) to embed", len(items),
                sum(map(len, kept)), len(distinct))
    if not distinct:
        return [[] for _ in items]
    phrase_vecs = _unit(encode(distinct))
    item_vecs = _unit(encode(texts))
    row = {p: i for i, p in enumerate(distinct)}
    per_item = []
    for i, cands in enumerate(kept):
        vecs = phrase_vecs[[row[p] for p in cands]]  # (0, dim) for an item without text: it gets no phrase
        per_item.append((cands, vecs, vecs @ item_vecs[i]))
    all_sims = np.sort(np.concatenate([sims for _, _, sims in per_item]))
    out = []
    for cands, vecs, sims in per_item:
        picked = mmr(sims, vecs @ vecs.T, k, cfg.diversity)
        conf = np.searchsorted(all_sims, sims[picked], side="right") / max(len(all_sims), 1)
        ranked = sorted(zip(picked, conf), key=lambda jc: -jc[1])  # strongest evidence first, as LLM answers are
        out.append([(cands[j], round(float(c), 4)) for j, c in ranked])
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
