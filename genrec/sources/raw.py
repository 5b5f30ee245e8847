"""Raw interaction logs (Amazon Reviews, RecBole .inter files) and MiniOneRec's processing of them.

A raw log can hold tens of millions of interactions, so it is kept as compact arrays while it streams in
(`InteractionLog`: user and item ids interned to integers, about 24 bytes an interaction) and filtered with numpy
(`process`), in MiniOneRec's order:

1. exact duplicates (same user, item and time: double logging) are dropped, the first occurrence kept;
2. the time window: interactions before ``start`` or from ``end`` on are dropped (`day_start`: whole UTC days);
3. items without a usable title (none, empty, one character, or more than ``max_title_words`` words) are dropped;
4. iterated k-core: users and items with fewer than ``k_core`` interactions are dropped, all at once, and the
   counts taken again, until every user and item left has at least ``k_core`` (the rounds are reported).

Each step's report says how many interactions, users and items it removed (a user or item is removed by the step
after which none of its interactions is left). MiniOneRec keeps exact duplicates; genrec drops them, as in every
layout, since each would become a row whose target is its own last history item.

Example:
    >>> log = InteractionLog()
    >>> for n, (user, item, ts) in enumerate([("u1", "a", 1.0), ("u1", "b", 2.0), ("u2", "a", 3.0)], 1):
    ...     log.add(user, item, ts, n)
    >>> kept, report = process(log, np.array([True, True]), RawOptions(k_core=1), "f")
    >>> kept.tolist(), report["kept"]
    ([0, 1, 2], {'interactions': 3, 'users': 2, 'items': 2})
"""

from __future__ import annotations

import html
import logging
from array import array
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import numpy as np

from genrec.io import describe_value

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawOptions:
    """MiniOneRec's processing of a raw log (see the module docstring); genrec.data builds it from DataConfig."""

    start: float | None = None  # unix seconds: interactions from this time on are kept
    end: float | None = None  # unix seconds: interactions from this time on are dropped
    k_core: int = 5
    max_title_words: int = 20


@dataclass
class RawDataset:
    """What a raw source hands the data stage: checked catalog entries of the kept items, the kept interactions
    (user, item, unix seconds) in file order, and what its filters changed (``duplicate_interactions``, ``raw``)."""

    items: list[dict]
    interactions: list[tuple[str, str, float]]
    changes: dict = field(default_factory=dict)


def day_start(text: str | None, option: str, *, after: bool = False) -> float | None:
    """Unix seconds of an ISO date's midnight, UTC (of the next day's with `after`: the end of a window whose last
    day is `text`); None stays None.

    Example:
        >>> day_start("2016-10-01", "data.start"), day_start("2016-10-01", "data.end", after=True)
        (1475280000.0, 1475366400.0)
    """
    if text is None:
        return None
    try:
        day = date.fromisoformat(str(text).strip())
    except ValueError:
        raise ValueError(f"{option}={text!r}: write a date as YYYY-MM-DD, e.g. 2016-10-01") from None
    midnight = datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + timedelta(days=int(after))
    return midnight.timestamp()


def usable_title(value, max_words: int, where: str) -> str | None:
    """An item's title as MiniOneRec keeps it (HTML entities decoded, spaces collapsed, outer quotes stripped), or
    None when it has none that trains: absent, one character at most, more than `max_words` words (0: no limit),
    or the broken HTML (``<span id=...``) of some Amazon 2018 entries. A title that is not text is refused.

    Example:
        >>> usable_title(' "Nitrile &amp; latex gloves" ', 20, "meta.json:1")
        'Nitrile & latex gloves'
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}: title must be a string, got {describe_value(value)}; fix that line")
    if "<span id" in value:
        return None
    title = " ".join(html.unescape(value).split()).strip('"').strip()
    if len(title) <= 1 or (max_words and len(title.split()) > max_words):
        return None
    return title


class InteractionLog:
    """Interactions as they stream in: ids interned to integers (``user_ids[n]`` / ``item_ids[n]`` give them
    back), times and file lines in flat arrays."""

    def __init__(self):
        self.user_index: dict[str, int] = {}
        self.item_index: dict[str, int] = {}
        self._users, self._items, self._times, self._lines = array("i"), array("i"), array("d"), array("q")

    def __len__(self) -> int:
        return len(self._times)

    def add(self, user: str, item: str, ts: float, line: int) -> None:
        self._users.append(self.user_index.setdefault(user, len(self.user_index)))
        self._items.append(self.item_index.setdefault(item, len(self.item_index)))
        self._times.append(ts)
        self._lines.append(line)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(users, items, times, lines) as numpy views of the arrays, no copy."""
        return tuple(np.frombuffer(a, dtype=a.typecode) if len(a) else np.zeros(0, a.typecode)
                     for a in (self._users, self._items, self._times, self._lines))

    def ids(self) -> tuple[list[str], list[str]]:
        """(user ids, item ids), each indexed by its integer."""
        return list(self.user_index), list(self.item_index)


def _counts(users: np.ndarray, items: np.ndarray, keep: np.ndarray) -> dict[str, int]:
    return {"interactions": int(keep.sum()), "users": int(np.count_nonzero(np.bincount(users[keep]))),
            "items": int(np.count_nonzero(np.bincount(items[keep])))}


def _removed(before: dict, after: dict) -> dict[str, int]:
    return {k: before[k] - after[k] for k in before}


def _duplicates(users, items, times, lines, source: str) -> np.ndarray:
    """True at every exact repeat of an earlier line (same user, item and time); a warning names the first."""
    order = np.lexsort((lines, times, items, users))
    same = ((users[order[1:]] == users[order[:-1]]) & (items[order[1:]] == items[order[:-1]])
            & (times[order[1:]] == times[order[:-1]]))
    repeat = np.zeros(len(users), dtype=bool)
    repeat[order[1:][same]] = True
    if same.any():
        # the repeat on the earliest line; the line sorted just before it is its original (a repeat in between
        # would be on an earlier line)
        at = np.flatnonzero(same)
        first = at[np.argmin(lines[order[at + 1]])]
        logger.warning("%s: dropped %d exact duplicate interaction(s) (same user, item and timestamp); the first is "
                       "line %d, a repeat of line %d", source, int(same.sum()), lines[order[first + 1]],
                       lines[order[first]])
    return repeat


def k_core(users: np.ndarray, items: np.ndarray, keep: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """`keep` narrowed until every user and item left has at least `k` interactions, and the rounds it took.

    Example:
        >>> k_core(np.array([0, 0, 1]), np.array([0, 1, 0]), np.ones(3, bool), 2)
        (array([False, False, False]), 2)
    """
    keep, rounds = keep.copy(), 0
    while k > 1:
        user_counts = np.bincount(users[keep], minlength=users.max(initial=0) + 1)
        item_counts = np.bincount(items[keep], minlength=items.max(initial=0) + 1)
        drop = keep & ((user_counts[users] < k) | (item_counts[items] < k))
        if not drop.any():
            break
        keep &= ~drop
        rounds += 1
    return keep, rounds


def process(log: InteractionLog, titled: np.ndarray, options: RawOptions, source: str) -> tuple[np.ndarray, dict]:
    """Indices (file order) of the interactions that pass every filter, and the report of what each removed.

    `titled[n]` says whether item n (`log.item_index`) has a usable title.
    """
    users, items, times, lines = log.arrays()
    keep = np.ones(len(log), dtype=bool)
    report = {"read": _counts(users, items, keep), "removed": {}}
    start = -np.inf if options.start is None else options.start
    end = np.inf if options.end is None else options.end
    for name, drop in (("duplicates", lambda: _duplicates(users, items, times, lines, source)),
                       ("window", lambda: (times < start) | (times >= end)),
                       ("title", lambda: ~titled[items])):
        before = _counts(users, items, keep)
        keep &= ~drop()
        report["removed"][name] = _removed(before, _counts(users, items, keep))
    before = _counts(users, items, keep)
    keep, rounds = k_core(users, items, keep, options.k_core)
    report["removed"]["k_core"] = {**_removed(before, _counts(users, items, keep)), "rounds": rounds}
    report["kept"] = _counts(users, items, keep)
    return np.flatnonzero(keep), report


def raw_dataset(log: InteractionLog, titled: np.ndarray, options: RawOptions, source: str,
                catalog) -> RawDataset:
    """Filter the log (`process`) and gather what the data stage needs; `catalog(kept item ids)` returns the
    checked catalog entries of those items (a second pass over the item file)."""
    kept, report = process(log, titled, options, source)
    user_ids, item_ids = log.ids()
    users, items, times, _ = log.arrays()
    interactions = [(user_ids[u], item_ids[i], t)
                    for u, i, t in zip(users[kept].tolist(), items[kept].tolist(), times[kept].tolist())]
    logger.info("%s: %s interactions read, %s kept (%s users, %s items); removed: %s", source,
                report["read"]["interactions"], report["kept"]["interactions"], report["kept"]["users"],
                report["kept"]["items"], report["removed"])
    catalog_items = catalog({item_ids[i] for i in np.unique(items[kept]).tolist()})
    return RawDataset(catalog_items, interactions,
                      {"duplicate_interactions": report["removed"]["duplicates"]["interactions"], "raw": report})
