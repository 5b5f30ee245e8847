"""Checks shared by every data source: an item's text fields, a catalog entry, an interaction's timestamp.

The loaders of genrec.data (MiniOneRec, generic) and of genrec.sources (Amazon Reviews, RecBole) build their
catalog entries and read their timestamps here, so an item or a time is accepted or refused the same way whatever
file it came from (see genrec.data's module docstring for what is accepted).

Example:
    >>> make_item("B01", {"title": "Nitrile gloves", "categories": ["Lab", "Safety"]}, "items.jsonl:1")["categories"]
    'Lab Safety'
    >>> parse_timestamp("1500000000", "interactions.csv:2")
    1500000000.0
"""

from __future__ import annotations

import ast
import json
from datetime import datetime

from genrec.io import describe_value, json_type

TEXT_FIELDS = ("title", "description", "brand", "categories")
Interaction = tuple[str, str, float]  # (user_id, item_id, unix seconds)

# Latest interaction time accepted: 2100-01-01T00:00:00Z in unix seconds. Later values are nearly always
# milliseconds or a corrupted field, and would sort those rows after every real one, into the test split.
MAX_TIMESTAMP = 4102444800
NOT_A_LITERAL = object()


def literal(text: str):
    """ast.literal_eval, or NOT_A_LITERAL for anything it refuses (including [[[[... and 5000-digit integers)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return NOT_A_LITERAL


def item_text(value, key: str, where: str, lists: bool = False) -> str:
    """One text field of an item, "" when absent.

    str() would turn null, {'en': 'Hammer'} or False into text that trains (and matches) as if it were real, so
    other types are refused. description and categories also take MiniOneRec's two forms: a list of strings, or
    the repr of a Python list (joined into one text); a title is taken as written.
    """
    if value is None:
        return ""
    if lists and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value).strip()
    if not isinstance(value, str):
        expected = "a string or a list of strings" if lists else "a string"
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        hint = f'; quote it ("{key}": "{value}") if it really is the text' if number else ""
        raise ValueError(f"{where}: {key} must be {expected}, got {describe_value(value)}{hint}")
    text = value.strip()
    if lists and text.startswith("[") and text.endswith("]"):
        parsed = literal(text)
        if isinstance(parsed, list):
            return " ".join(str(v) for v in parsed).strip()
    return text


def make_item(item_id: str, record, where: str) -> dict:
    """A catalog entry: a title (plain non-empty text), the other text fields checked, extra fields kept."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: item {item_id!r} must be an object with a title, got {json_type(record)}")
    title = item_text(record.get("title"), "title", where)
    if not title:
        raise ValueError(f"{where}: item {item_id!r} has an empty title; every item needs a title (fix or drop it)")
    item = {k: v for k, v in record.items() if k not in TEXT_FIELDS and k != "item_id"}
    item.update({"item_id": item_id, "title": title})
    for key in ("description", "brand", "categories"):
        item[key] = item_text(record.get(key), key, where, lists=key != "brand")
    try:  # JSON escapes can spell lone surrogates ("\ud800"), which no UTF-8 file can hold: catch them before writing
        json.dumps(item, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where}: item {item_id!r} holds a lone surrogate escape such as \\ud800 (not valid "
                         "Unicode); fix that escape") from None
    return item


def parse_timestamp(value: str, where: str) -> float:
    """Unix seconds (int or float) or an ISO-8601 date/time, between 1970 and 2100 (see MAX_TIMESTAMP)."""
    text, hint = str(value).strip(), ""
    try:
        ts = float(text)
        if MAX_TIMESTAMP < ts <= MAX_TIMESTAMP * 1000:
            hint = "; it looks like milliseconds: divide by 1000"
    except ValueError:
        try:
            ts = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except (ValueError, OverflowError, OSError):
            raise ValueError(
                f"{where}: timestamp {text!r} is neither unix seconds nor an ISO date like 2018-03-01T12:00:00"
            ) from None
    if not 0 <= ts <= MAX_TIMESTAMP:  # also refuses nan
        raise ValueError(f"{where}: timestamp {text!r} is out of range: use unix seconds from 0 (1970-01-01) to "
                         f"{MAX_TIMESTAMP} (2100-01-01), or an ISO date in those years{hint}")
    return ts
