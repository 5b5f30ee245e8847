"""`data.source: amazon`: the public Amazon Reviews files as published, 2018 or 2023 release, plain or gzipped.

One folder (``data.path``) holds one category's two files under their published names (``data.name`` is the
category; None picks the only ``meta_*`` file):

    2023: <name>.jsonl[.gz] (reviews: user_id, parent_asin, timestamp in ms, rating, ...)
          meta_<name>.jsonl[.gz] (parent_asin, title, description, store, categories, ...)
    2018: <name>.json[.gz] or <name>_5.json[.gz] (reviews: reviewerID, asin, unixReviewTime, overall, ...)
          meta_<name>.json[.gz] (asin, title, description, brand, category, ...)

The release is told by the first review's field names (or set with ``data.release``); every later line must have
that release's fields. A line is JSON, or a Python dict literal (as lines of the 2018 meta files are); anything
else stops the stage with the file, the line and the fix. The files stream: the reviews once (into compact arrays,
genrec.sources.raw), the meta file twice (titles, then the kept items' text), so a category of tens of GB never
sits in memory whole. MiniOneRec's processing follows (window, titles, iterated k-core: genrec.sources.raw), then
the rows and the 8:1:1 cut of every layout (genrec.data.build_splits).

Catalog entries: ``title`` (MiniOneRec's cleaning), ``description`` (HTML tags and entities removed),
``brand`` (2018 ``brand``, 2023 ``store``), ``categories`` (joined with ", "). The first meta line of an item wins;
repeats (the 2018 files have some) are counted in ``raw.meta.repeated``.

Example:
    >>> ds = load_amazon(Path("data/amazon18"), "Industrial_and_Scientific", "auto", RawOptions())  # doctest: +SKIP
    >>> ds.changes["raw"]["removed"]["k_core"]  # doctest: +SKIP
    {'interactions': 1203, 'users': 240, 'items': 96, 'rounds': 3}
"""

from __future__ import annotations

import functools
import html
import json
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from genrec.io import describe_value, json_type, read_lines
from genrec.sources.raw import InteractionLog, RawDataset, RawOptions, raw_dataset, usable_title
from genrec.sources.records import MAX_TIMESTAMP, NOT_A_LITERAL, item_text, literal, make_item

RELEASES = ("2018", "2023")
SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
_MISSING = "it is an input of data.source=amazon: check data.path and data.name"
_TAG = re.compile(r"<[^>]+>")


class Release(NamedTuple):
    """The field names of one release."""

    user: str
    item: str
    time: str
    ms: bool  # the review time is in milliseconds
    brand: str
    categories: str


FIELDS = {"2018": Release("reviewerID", "asin", "unixReviewTime", False, "brand", "category"),
          "2023": Release("user_id", "parent_asin", "timestamp", True, "store", "categories")}


def amazon_files(root: Path, name: str | None = None) -> tuple[Path, Path]:
    """(reviews file, meta file) of a category in `root`, by their published names."""
    if not root.is_dir():
        raise FileNotFoundError(f"data.path={root} is not a folder; point it at the folder that holds the category's "
                                "reviews and meta_ files")
    if name is None:
        metas = sorted({p.name.removeprefix("meta_").split(".")[0] for p in root.glob("meta_*.json*")})
        if not metas:
            raise FileNotFoundError(f"{root} holds no meta_<category>.jsonl[.gz] or .json[.gz] file; point data.path "
                                    "at the folder of a category's reviews and meta files")
        if len(metas) > 1:
            raise ValueError(f"{root} holds meta files of {len(metas)} categories ({metas}); set data.name to one")
        name = metas[0]
    found = {}
    for role, stems in (("reviews", (name, f"{name}_5")), ("meta", (f"meta_{name}",))):
        names = [f"{stem}{suffix}" for stem in stems for suffix in SUFFIXES]
        paths = [root / n for n in names if (root / n).is_file()]
        if len(paths) != 1:
            raise FileNotFoundError(f"{root}: expected one {role} file of {name!r} (one of {', '.join(names)}), "
                                    f"found {[p.name for p in paths] or 'none'}; keep one, or check data.path and "
                                    "data.name")
        found[role] = paths[0]
    return found["reviews"], found["meta"]


def parse_line(line: str, where: str) -> dict:
    """One line as an object: JSON, or a Python dict literal (as lines of the 2018 meta files are)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = literal(line)
        if record is NOT_A_LITERAL:
            raise ValueError(f"{where}: neither JSON nor a Python dict literal; fix or remove that line") from None
    except (ValueError, RecursionError) as e:  # an integer of more than 4300 digits, [[[[...
        raise ValueError(f"{where}: not valid JSON ({type(e).__name__}); fix or remove that line") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected one object per line, got {json_type(record)}; fix or remove that line")
    return record


def detect_release(record: dict, where: str) -> str:
    """The release whose review fields a record has."""
    for release, fields in FIELDS.items():
        if {fields.user, fields.item, fields.time} <= record.keys():
            return release
    raise ValueError(f"{where}: this review fits neither the 2018 release (reviewerID, asin, unixReviewTime) nor the "
                     f"2023 release (user_id, parent_asin, timestamp); it has {sorted(map(str, record))[:12]}. Point "
                     "data.path at Amazon Reviews files, or set data.release")


def _text_id(record: dict, key: str, where: str, release: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        found = f"got {describe_value(value)}" if key in record else f"it has {sorted(map(str, record))[:12]}"
        raise ValueError(f"{where}: a {release} line needs {key} as a non-empty string ({found}); fix that line, or "
                         "check data.release")
    return value.strip()


def _seconds(record: dict, fields: Release, where: str) -> float:
    value = record.get(fields.time)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: {fields.time} must be a number, got {describe_value(value)}; fix that line")
    scale = 1000 if fields.ms else 1
    if not 0 <= value <= MAX_TIMESTAMP * scale:  # compared before dividing: also refuses nan and 10**4000
        unit = "milliseconds (2023 release)" if fields.ms else "seconds (2018 release)"
        raise ValueError(f"{where}: {fields.time}={str(value)[:40]} is out of range for unix {unit} between 1970 and "
                         "2100; fix that line, or check data.release")
    return value / scale


def read_reviews(path: Path, release: str, log: InteractionLog) -> str:
    """Stream the reviews into `log`; returns the release (told by the first line when `release` is 'auto')."""
    for lineno, line in read_lines(path, _MISSING):
        where = f"{path}:{lineno}"
        record = parse_line(line, where)
        if release == "auto":
            release = detect_release(record, where)
        fields = FIELDS[release]
        log.add(_text_id(record, fields.user, where, release), _text_id(record, fields.item, where, release),
                _seconds(record, fields, where), lineno)
    if not len(log):
        raise ValueError(f"{path}: no reviews; point data.path at a category's reviews file")
    return release


def _meta_lines(path: Path, release: str):
    """(where, item id, record) for each meta line."""
    for lineno, line in read_lines(path, _MISSING):
        where = f"{path}:{lineno}"
        record = parse_line(line, where)
        yield where, _text_id(record, FIELDS[release].item, where, release), record


def read_titles(path: Path, release: str, item_index: dict[str, int], max_words: int) -> tuple[np.ndarray, dict]:
    """Pass 1 over the meta file: which reviewed items have a usable title, and counts of what the file holds."""
    titled = np.zeros(len(item_index), dtype=bool)
    seen: set[str] = set()
    stats = {"lines": 0, "repeated": 0, "without_usable_title": 0}
    for where, iid, record in _meta_lines(path, release):
        stats["lines"] += 1
        if iid in seen:
            stats["repeated"] += 1
            continue
        seen.add(iid)
        title = usable_title(record.get("title"), max_words, where)
        _texts(record, FIELDS[release], where)
        stats["without_usable_title"] += title is None
        if title is not None and iid in item_index:
            titled[item_index[iid]] = True
    stats["reviewed_items_without_meta"] = len(item_index.keys() - seen)
    return titled, stats


def _clean(text: str) -> str:
    """HTML tags and entities out, whitespace collapsed (MiniOneRec's clean_text)."""
    return " ".join(html.unescape(_TAG.sub(" ", text)).split())


def _texts(record: dict, fields: Release, where: str) -> dict[str, str]:
    """A meta record's description, brand and categories as text, their types checked (every line, kept or not)."""
    categories = record.get(fields.categories)
    if isinstance(categories, list) and all(isinstance(c, str) for c in categories):
        categories = ", ".join(c.strip() for c in categories if c.strip() and "</span>" not in c)
    return {"description": item_text(record.get("description"), "description", where, lists=True),
            "brand": item_text(record.get(fields.brand), fields.brand, where).replace("by\n", ""),
            "categories": item_text(categories, fields.categories, where, lists=True)}


def amazon_item(iid: str, record: dict, fields: Release, max_words: int, where: str) -> dict:
    """A catalog entry from a meta record whose title is usable."""
    texts = {key: _clean(text) for key, text in _texts(record, fields, where).items()}
    return make_item(iid, {"title": usable_title(record.get("title"), max_words, where), **texts}, where)


def read_items(path: Path, release: str, keep: set[str], *, max_words: int) -> list[dict]:
    """Pass 2 over the meta file: the catalog entries of the kept items, in file order (first line of each)."""
    items, seen = [], set()
    for where, iid, record in _meta_lines(path, release):
        if iid in keep and iid not in seen:
            seen.add(iid)
            items.append(amazon_item(iid, record, FIELDS[release], max_words, where))
    return items


def load_amazon(root: Path, name: str | None, release: str, options: RawOptions) -> RawDataset:
    """A category's reviews and meta files through MiniOneRec's processing (see the module docstring)."""
    reviews, meta = amazon_files(root, name)
    log = InteractionLog()
    release = read_reviews(reviews, release, log)
    titled, meta_stats = read_titles(meta, release, log.item_index, options.max_title_words)
    ds = raw_dataset(log, titled, options, str(reviews),
                     functools.partial(read_items, meta, release, max_words=options.max_title_words))
    ds.changes["raw"] = {"release": release, **ds.changes["raw"], "meta": meta_stats}
    return ds
