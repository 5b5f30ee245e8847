"""What the API answers, and the catalog it answers from: request/response models, `ItemIndex` (history resolution
and answers) and `check_query`.

`genrec.client` uses the same index and checks to print the answer a server would give, from a model loaded in its
own process.

Example:
    >>> query = RecommendRequest(history=["i1", "Gloves"], k=5)
    >>> k = check_query(query, beam=20, max_history=100)  # doctest: +SKIP
    >>> index.answer(index.resolve(query.history), rec, k=k, exclude_history=False, beam=20,
    ...              explain=True)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from genrec.decoding.trie import Recommendation
from genrec.explain import ItemInterests
from genrec.serving.middleware import RequestError

# A query's float32 scores move by 1-2 ulp with the shapes of the batch it ran in (GEMM blocking, padding): about
# 2e-6 at |score| ~ 10, measured. Rounded to 4 decimals, batched and lone answers agree (items always; in a
# measured 1,920 scores all but 5, where the noise straddled a rounding boundary). 6 decimals left 375 apart.
SCORE_DECIMALS = 4
EXPLAIN_TOP = 3  # connections per recommended item
# Weaker connections are no reason. Under MiniLM, unrelated interest phrases score 0.0-0.2 ("laboratory safety" /
# "cooking dinner" .04) and related ones 0.35-0.65 ("home plumbing repair" / "fixing leaky pipes" .63), measured.
EXPLAIN_MIN_SCORE = 0.3
NO_INTERESTS = ("this model carries no item interests, so it cannot explain: its run had no mine stage, or it was "
                "trained before checkpoints kept them; re-run its sft or grpo stage on a run with interests.jsonl")

# ----------------------------------------------------------------------------- request and response models


class RecommendRequest(BaseModel):
    """One query: a history (oldest first) of item ids or exact titles."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"history": ["i1", "i7"], "k": 5}]})

    history: list[StrictStr] = Field(
        min_length=1, description="Items the user interacted with, oldest first: item ids, or exact titles.")
    k: StrictInt | None = Field(
        default=None, ge=1, description="How many items to return: 1 to the server's beam width (default 10, or "
                                        "the beam width when smaller).")
    exclude_history: StrictBool = Field(default=False, description="Leave the history's own items out.")
    explain: StrictBool = Field(
        default=False, description="Say why each item is recommended: its interests closest to the history items' "
                                   "interests (each item's 'explanation'). Needs a model trained on a run with "
                                   "interests; otherwise 'explanation_note' says so.")


class BatchRecommendRequest(BaseModel):
    """Several queries in one call; each is answered as if it came alone."""

    model_config = ConfigDict(extra="forbid")

    requests: list[RecommendRequest] = Field(min_length=1, description="The queries, answered in this order.")


class InterestMatch(BaseModel):
    """One reason for a recommendation: an interest of the item and the history's interest closest to it."""

    interest: str = Field(description="An interest of the recommended item (RLDI-positive when labelled).")
    score: float = Field(description="Cosine similarity of the two interests' MiniLM embeddings (4 decimals).")
    history_item: str = Field(description="The history item whose interest it matches (an item id).")
    history_interest: str = Field(description="That history item's interest.")


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    sid: str = Field(description="Semantic ID, e.g. <a_12><b_7><c_200>.")
    score: float = Field(description="Log-probability of the item's SID under the model, plus the content prior "
                         "(content_weight x the item's text similarity to the history) when the model has one (4 "
                         "decimals); higher is better.")
    explanation: list[InterestMatch] | None = Field(
        default=None, exclude_if=lambda value: value is None,
        description="With explain: true, the item's interests closest to the history's, best first (at most "
                    f"{EXPLAIN_TOP}, each scoring at least {EXPLAIN_MIN_SCORE}; empty when none connects or the item "
                    "has no interests). Absent otherwise.")


class RecommendResponse(BaseModel):
    items: list[RecommendedItem] = Field(description="Best first; every one a real catalog item.")
    k: int
    returned: int = Field(description="len(items); fewer than k when beam search or exclusion left fewer.")
    history: list[str] = Field(description="The history as resolved to item ids.")
    note: str | None = Field(default=None, description="Why fewer than k items came back, when they did.")
    explanation_note: str | None = Field(
        default=None, exclude_if=lambda value: value is None,
        description="With explain: true, why there are no explanations, when there are none (the model carries no "
                    "interests, or no history item has any). Absent otherwise.")


class BatchRecommendResponse(BaseModel):
    results: list[RecommendResponse]


class ItemResponse(BaseModel):
    item_id: str
    title: str
    sid: str


class StatusResponse(BaseModel):
    status: str
    items: int | None = None
    backend: str | None = None


# ----------------------------------------------------------------------------- history resolution and answers


def _shown(values: Sequence[str], n: int = 20) -> list[str]:
    return [v if len(v) <= 80 else v[:77] + "..." for v in values[:n]]


class ItemIndex:
    """The catalog as the API sees it: item id -> SID string and title, exact title -> item ids.

    Example:
        >>> index = ItemIndex({"i1": "<a_1><b_1>", "i2": "<a_2><b_1>"}, {"i1": "Gloves", "i2": "Gloves"})
        >>> index.resolve(["i1"])
        ['i1']
    """

    def __init__(self, sids: Mapping[str, str], titles: Mapping[str, str], interests: ItemInterests | None = None):
        self.sids, self.titles, self.interests = dict(sids), dict(titles), interests
        self.by_title: dict[str, list[str]] = {}
        for iid in self.sids:
            if self.titles.get(iid):
                self.by_title.setdefault(self.titles[iid], []).append(iid)

    def resolve(self, history: Sequence[str]) -> list[str]:
        """Item ids of a history of ids or exact titles (ids first); `RequestError` 400 names what is unknown or
        ambiguous."""
        ids, unknown, ambiguous = [], [], {}
        for entry in history:
            if entry in self.sids:
                ids.append(entry)
            elif len(self.by_title.get(entry, ())) == 1:
                ids.append(self.by_title[entry][0])
            elif entry in self.by_title:
                ambiguous[entry] = self.by_title[entry]
            else:
                unknown.append(entry)
        if unknown:
            raise RequestError(400, f"unknown items (neither an item id nor an exact title): {_shown(unknown)}",
                               {"unknown": _shown(unknown, 100)})
        if ambiguous:
            listed = "; ".join(f"{t!r} -> {ids[:10]}" for t, ids in list(ambiguous.items())[:10])
            raise RequestError(400, f"ambiguous titles, each shared by several items; send an item id instead: "
                               f"{listed}", {"candidates": {t: ids[:50] for t, ids in ambiguous.items()}})
        return ids

    def item(self, item_id: str) -> ItemResponse:
        if item_id not in self.sids:
            raise RequestError(404, f"unknown item id {_shown([item_id])[0]!r}")
        return ItemResponse(item_id=item_id, title=self.titles.get(item_id, ""), sid=self.sids[item_id])

    def answer(self, history: Sequence[str], rec: Recommendation, *, k: int, exclude_history: bool,
               beam: int, explain: bool = False) -> RecommendResponse:
        """The top `k` of a beam-search result, without the history's items when asked, scores rounded; with
        `explain`, each item's interests closest to the history's (`explanations`)."""
        drop = set(history) if exclude_history else set()
        kept = [(i, s) for i, s in zip(rec.items, rec.scores) if i not in drop][:k]
        items = [RecommendedItem(item_id=i, title=self.titles.get(i, ""), sid=self.sids[i],
                                 score=round(float(s), SCORE_DECIMALS)) for i, s in kept]
        explanation_note = self.explanations(history, items) if explain else None
        note = None
        if len(items) < k:
            excluded = sum(i in drop for i in rec.items)
            note = (f"{len(items)} of k={k}: beam search (beam {beam}) found {len(rec.items)} items"
                    + (f", {excluded} of them in the history" if excluded else "")
                    + ("; a larger --beam finds more" if len(rec.items) >= beam else ""))
        return RecommendResponse(items=items, k=k, returned=len(items), history=list(history), note=note,
                                 explanation_note=explanation_note)

    def explanations(self, history: Sequence[str], items: list[RecommendedItem]) -> str | None:
        """Fill each item's explanation (a cheap match of precomputed interest vectors, no model call); the note
        that says why there are none, when there are none."""
        if self.interests is None:
            return NO_INTERESTS
        found = self.interests.explain(history, [it.item_id for it in items], top=EXPLAIN_TOP,
                                       min_score=EXPLAIN_MIN_SCORE)
        for item, connections in zip(items, found):
            item.explanation = [InterestMatch(interest=c.interest, score=round(c.score, SCORE_DECIMALS),
                                              history_item=c.history_item, history_interest=c.history_interest)
                                for c in connections]
        if not any(iid in self.interests.items for iid in history):
            return "no history item has interests to connect to"
        return None


def check_query(query: RecommendRequest, *, beam: int, max_history: int) -> int:
    """The query's k after the checks that depend on the server (k within the beam, history length)."""
    if len(query.history) > max_history:
        raise RequestError(413, f"history has {len(query.history)} entries; this server takes at most {max_history} "
                           "(only the latest ones shape the prompt anyway)")
    k = min(10, beam) if query.k is None else query.k
    if not 1 <= k <= beam:
        raise RequestError(422, f"k={k} is outside [1, {beam}]: beam search keeps {beam} items per query; ask for "
                           f"fewer or restart the server with --beam {k}")
    return k
