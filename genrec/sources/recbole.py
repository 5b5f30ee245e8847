"""`data.source: recbole`: RecBole atomic files, the format of RecBole and its RecSysDatasets collection.

One folder (``data.path``) holds ``<name>.inter`` and ``<name>.item`` (``data.name``; None picks the only
``.inter``). Each is tab-separated text whose header names every column with its type, ``name:type``, the type one
of ``token``, ``token_seq``, ``float``, ``float_seq``:

    <name>.inter   user_id:token  item_id:token  timestamp:float  [rating:float ...]
    <name>.item    item_id:token  title:token_seq  [description, brand, categories, other columns ...]

The title column is ``title`` or ``movie_title`` (MovieLens); ``categories`` may also be called ``genre``. Other
item columns are kept, as text, in items.jsonl (an embedding template can use them, e.g. ``{release_year}``).
Timestamps are unix seconds (or ISO dates). Interactions of items that the .item file lacks or that have no usable
title are removed by the title filter. The .inter file streams into compact arrays and goes through MiniOneRec's
processing as Amazon's reviews do (genrec.sources.raw); a line with the wrong number of fields, an empty id or a bad
timestamp stops the stage with the file, the line and the fix.

Example:
    >>> ds = load_recbole(Path("data/ml-100k"), None, RawOptions(k_core=5))  # doctest: +SKIP
    >>> ds.changes["raw"]["kept"]  # doctest: +SKIP
    {'interactions': 99287, 'users': 943, 'items': 1349}
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from genrec.io import read_lines
from genrec.sources.raw import InteractionLog, RawDataset, RawOptions, raw_dataset, usable_title
from genrec.sources.records import make_item, parse_timestamp

TYPES = ("token", "token_seq", "float", "float_seq")
ALIASES = {"movie_title": "title", "genre": "categories"}  # column name -> catalog field
_MISSING = "it is an input of data.source=recbole: check data.path and data.name"


def recbole_files(root: Path, name: str | None = None) -> tuple[Path, Path]:
    """(<name>.inter, <name>.item) in `root`."""
    if not root.is_dir():
        raise FileNotFoundError(f"data.path={root} is not a folder; point it at the folder that holds NAME.inter and "
                                "NAME.item")
    if name is None:
        found = sorted(p.stem for p in root.glob("*.inter"))
        if len(found) != 1:
            raise ValueError(f"{root} holds {len(found)} .inter files ({found}); set data.name to one")
        name = found[0]
    return root / f"{name}.inter", root / f"{name}.item"


def _rows(path: Path, required: tuple[str, ...], one_of: tuple[str, ...] = ()
          ) -> Iterator[tuple[int, str, dict[str, str]]]:
    """(line, "file:line", {column: value}) per line of an atomic file, the header checked (every `required` column
    and one of `one_of`) and each column's ``:type`` dropped."""
    lines = read_lines(path, _MISSING)
    head_line, head = next(lines, (0, ""))
    if not head.strip():
        raise ValueError(f"{path}: empty file; a RecBole atomic file starts with a header such as "
                         "user_id:token<TAB>item_id:token<TAB>timestamp:float")
    columns = [c.strip() for c in head.rstrip("\r\n").split("\t")]
    names = []
    for column in columns:
        name, _, kind = column.partition(":")
        if kind not in TYPES:
            raise ValueError(f"{path}:{head_line}: header column {column!r} is not name:type with a type of "
                             f"{', '.join(TYPES)}; write a RecBole header such as "
                             "user_id:token<TAB>item_id:token<TAB>timestamp:float")
        names.append(name)
    absent = [r for r in required if r not in names]
    if one_of and not set(one_of) & set(names):
        absent.append(" or ".join(one_of))
    if absent:
        needed = [*required, " or ".join(one_of)] if one_of else list(required)
        raise ValueError(f"{path}:{head_line}: the header lacks {', '.join(absent)} (it has {' '.join(columns)}); "
                         f"this RecBole file needs {', '.join(needed)}")
    for lineno, line in lines:
        values = line.rstrip("\r\n").split("\t")
        where = f"{path}:{lineno}"
        if len(values) != len(names):
            raise ValueError(f"{where}: expected {len(names)} tab-separated fields (header: {' '.join(columns)}), got "
                             f"{len(values)}; fix that line")
        yield lineno, where, dict(zip(names, values))


def _id(row: dict[str, str], key: str, where: str) -> str:
    value = row[key].strip()
    if not value:
        raise ValueError(f"{where}: empty {key}; every line needs one")
    return value


def read_inter(path: Path, log: InteractionLog) -> None:
    """Stream <name>.inter into `log`."""
    for lineno, where, row in _rows(path, ("user_id", "item_id", "timestamp")):
        log.add(_id(row, "user_id", where), _id(row, "item_id", where), parse_timestamp(row["timestamp"], where),
                lineno)
    if not len(log):
        raise ValueError(f"{path}: no interactions")


def read_catalog(path: Path, item_index: dict[str, int], max_words: int) -> tuple[np.ndarray, dict[str, dict], dict]:
    """Which logged items have a usable title, their catalog entries, and counts of what the file holds."""
    titled = np.zeros(len(item_index), dtype=bool)
    entries, first_line = {}, {}
    stats = {"lines": 0, "without_usable_title": 0}
    for lineno, where, row in _rows(path, ("item_id",), one_of=("title", "movie_title")):
        stats["lines"] += 1
        iid = _id(row, "item_id", where)
        if iid in first_line:
            raise ValueError(f"{where}: item_id {iid!r} again (first on line {first_line[iid]}); keep one line per "
                             "item")
        first_line[iid] = lineno
        fields = {ALIASES.get(k, k): v.strip() for k, v in row.items() if k != "item_id"}
        title = usable_title(fields["title"] or None, max_words, where)
        stats["without_usable_title"] += title is None
        if title is not None and iid in item_index:
            titled[item_index[iid]] = True
            entries[iid] = make_item(iid, {**fields, "title": title}, where)
    stats["logged_items_without_entry"] = len(item_index.keys() - first_line.keys())
    return titled, entries, stats


def load_recbole(root: Path, name: str | None, options: RawOptions) -> RawDataset:
    """<name>.inter and <name>.item through MiniOneRec's processing (see the module docstring)."""
    inter, item = recbole_files(root, name)
    log = InteractionLog()
    read_inter(inter, log)
    titled, entries, stats = read_catalog(item, log.item_index, options.max_title_words)
    ds = raw_dataset(log, titled, options, str(inter), lambda keep: [entries[i] for i in entries if i in keep])
    ds.changes["raw"]["item_file"] = stats
    return ds
