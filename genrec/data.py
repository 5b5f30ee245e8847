"""Datasets: the MiniOneRec layout, a generic items.jsonl + interactions.csv layout, a synthetic catalog, and raw
published data (Amazon Reviews 2018 / 2023 files, RecBole atomic files: genrec.sources, dispatched to from here).

All end in the same form: a catalog of items (``item_id`` as a string, ``title``, ``description``,
``brand``, ``categories`` and any extra fields) and rows ``{"user_id", "history", "target"}`` split into
train / valid / test. The `data` stage writes them to ``items.jsonl`` and ``splits/{train,valid,test}.jsonl``.

Split protocol (the one behind MiniOneRec's published tables, applied to every layout): each user's
interactions sorted by time; for each position j >= 1 one row with target = item j and history = the
previous min(j, max_history) items; all rows sorted stably by the target's time and cut by row count
8:1:1 into train / valid / test (global and chronological, not leave-one-out).

What the loaders accept (anything else fails with the file, the line and the fix, before anything is written):
UTF-8 text (a BOM is fine); item ids that are strings or integers (integers become strings); a title that is a
non-empty string (a number is refused with "quote it", since 1984 and 1984.0 would be different titles); brand a
string; description and categories a string, a list of strings or the repr of a Python list (MiniOneRec);
timestamps as unix seconds or ISO dates from 1970-01-01 to 2100-01-01 (MAX_TIMESTAMP); CSV rows with exactly
the header's number of fields; and, in the data stage, train, valid and test splits that all have rows.

What the stage changes it counts and says (``data_stats.json``, beside the item and row counts): exact duplicate
interactions (same user, item and timestamp, as double logging writes them) are dropped with a warning that names
the file, the first such line and how many (``duplicate_interactions``), since each would become a row whose target
is its own last history item; the same item at another time stays (a re-purchase). ``users_too_short`` counts
users with a single interaction (no row to make), ``items_without_interactions`` the catalog items that no row
mentions (they keep their place in the catalog). The MiniOneRec layout gives rows, not interactions: its
``duplicate_interactions`` and ``users_too_short`` are null. The raw sources add ``raw``: what was read, what each
of MiniOneRec's filters removed (interactions, users, items) and what was kept (genrec.sources.raw).

Example:
    >>> ds = load_dataset(DataConfig(source="synthetic", synthetic_users=50))  # doctest: +SKIP
    >>> ds.write(Path("runs/demo"))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from genrec.io import describe_value, json_type, read_jsonl_lines, read_text, write_json, write_jsonl
from genrec.sources.amazon import RELEASES, amazon_files, load_amazon
from genrec.sources.raw import RawOptions, day_start
from genrec.sources.recbole import load_recbole, recbole_files
from genrec.sources.records import NOT_A_LITERAL, Interaction, literal, make_item, parse_timestamp
from genrec.synthetic import make_synthetic

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
RAW_SOURCES = ("amazon", "recbole")
SOURCES = ("synthetic", "minionerec", "generic", *RAW_SOURCES)


@dataclass
class DataConfig:
    source: str = field(
        default="synthetic",
        metadata={"help": "Where the data comes from: 'synthetic' (built-in demo catalog), 'minionerec' (MiniOneRec "
                  "layout: index/<name>.item.json + split CSVs), 'generic' (items.jsonl + interactions.csv), "
                  "'amazon' (Amazon Reviews 2018 or 2023 files as published: genrec.sources.amazon) or 'recbole' "
                  "(RecBole atomic files <name>.inter + <name>.item: genrec.sources.recbole)."},
    )
    path: str | None = field(default=None, metadata={"help": "Dataset directory (every source but synthetic)."})
    name: str | None = field(
        default=None,
        metadata={"help": "MiniOneRec dataset name, e.g. 'Industrial_and_Scientific'; the Amazon category of the "
                  "file names (<name>.jsonl.gz, meta_<name>.jsonl.gz); the RecBole dataset (<name>.inter). None "
                  "picks the only one."},
    )
    train_split: str = field(
        default="auto",
        metadata={"help": "MiniOneRec train rows: 'official' (train/*.csv), 'recovered' "
                  "(recovered_partial/<name>.train_recovered_subset.csv) or 'auto' (official when present)."},
    )
    release: str = field(
        default="auto",
        metadata={"help": "amazon: the Amazon Reviews release of the files, '2018', '2023' or 'auto' (told by the "
                  "first review's field names)."},
    )
    start: str | None = field(
        default=None,
        metadata={"help": "amazon, recbole: the first day kept, YYYY-MM-DD (UTC); earlier interactions are dropped "
                  "(MiniOneRec's Industrial_and_Scientific: 2016-10-01)."},
    )
    end: str | None = field(
        default=None,
        metadata={"help": "amazon, recbole: the last day kept, YYYY-MM-DD (UTC); later interactions are "
                  "dropped (MiniOneRec's Industrial_and_Scientific: 2018-11-01)."},
    )
    k_core: int = field(
        default=5,
        metadata={"help": "amazon, recbole: drop users and items with fewer interactions, again and again until "
                  "none is left (iterated k-core, MiniOneRec: 5); 0 or 1 keeps them all."},
    )
    max_title_words: int = field(
        default=20,
        metadata={"help": "amazon, recbole: items whose title has more words are dropped before the k-core, as "
                  "are items without a title (MiniOneRec: 20); 0: no limit."},
    )
    max_history: int = field(default=10, metadata={"help": "Rows keep at most this many previous items."})
    synthetic_items: int = field(default=3000, metadata={"help": "Approximate catalog size of the synthetic data."})
    synthetic_users: int = field(default=4000, metadata={"help": "Number of synthetic users."})
    seed: int = field(default=0, metadata={"help": "Random seed of the synthetic generator."})

    # the raw sources' options and where each applies (elsewhere it must keep its default); they are fingerprinted
    # only when set (genrec.pipeline.fingerprinted_config), so runs of the other sources keep their fingerprints
    RAW_OPTIONS: ClassVar[dict[str, tuple[str, ...]]] = {
        "release": ("amazon",), **dict.fromkeys(("start", "end", "k_core", "max_title_words"), RAW_SOURCES)}
    FINGERPRINT_WHEN_SET: ClassVar[tuple[str, ...]] = tuple(RAW_OPTIONS)

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"data.source={self.source!r}: use {', '.join(map(repr, SOURCES[:-1]))} or "
                             f"{SOURCES[-1]!r}")
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.source={self.source!r} needs data.path (the dataset directory)")
        if self.train_split not in ("auto", "official", "recovered"):
            raise ValueError(f"data.train_split={self.train_split!r}: use 'auto', 'official' or 'recovered'")
        if self.max_history < 1:
            raise ValueError(f"data.max_history={self.max_history}: must be >= 1")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, sources in self.RAW_OPTIONS.items():
            if self.source not in sources and getattr(self, name) != defaults[name]:
                raise ValueError(f"data.{name} applies to data.source {' or '.join(sources)} only, not "
                                 f"{self.source!r}; remove it")
        if self.release not in ("auto", *RELEASES):
            raise ValueError(f"data.release={self.release!r}: use 'auto', {', '.join(map(repr, RELEASES))}")
        options = self.raw_options()
        if options.start is not None and options.end is not None and options.start >= options.end:
            raise ValueError(f"data.start={self.start!r} is after data.end={self.end!r}; swap them")
        if self.k_core < 0 or self.max_title_words < 0:
            raise ValueError(f"data.k_core={self.k_core}, data.max_title_words={self.max_title_words}: must be >= 0")

    def raw_options(self) -> RawOptions:
        """The processing of the raw sources (genrec.sources.raw) these options ask for."""
        return RawOptions(day_start(self.start, "data.start"), day_start(self.end, "data.end", after=True),
                          self.k_core, self.max_title_words)


@dataclass
class Dataset:
    """A catalog plus train/valid/test rows, every item id a string; `changes` counts what the loader dropped or
    could not use (``duplicate_interactions``, ``users_too_short``; absent where the layout has no interactions)."""

    items: list[dict]
    splits: dict[str, list[dict]]
    changes: dict = field(default_factory=dict)

    def write(self, run_dir: Path) -> None:
        from genrec.artifacts import DATA_STATS, ITEMS, SPLIT

        write_jsonl(run_dir / ITEMS, self.items)
        for name in SPLITS:
            write_jsonl(run_dir / SPLIT.format(split=name), self.splits[name])
        write_json(run_dir / DATA_STATS, self.stats())

    def stats(self) -> dict:
        """Items, rows per split and what the stage changed (see the module docstring): data_stats.json."""
        mentioned = {i for rows in self.splits.values() for r in rows for i in (*r["history"], r["target"])}
        return {"items": len(self.items), **{f"{s}_rows": len(self.splits[s]) for s in SPLITS},
                "items_without_interactions": sum(it["item_id"] not in mentioned for it in self.items),
                **{name: self.changes.get(name) for name in ("duplicate_interactions", "users_too_short")},
                **({"raw": self.changes["raw"]} if "raw" in self.changes else {})}


GENERIC_FILES = ("items.jsonl", "interactions.csv")
_GENERIC_MISSING = ("it is an input of the generic layout: check data.path (the folder that holds items.jsonl and "
                    "interactions.csv)")
_MINIONEREC_MISSING = "it is an input of the MiniOneRec layout: check data.path, data.name and data.train_split"


def load_dataset(cfg: DataConfig) -> Dataset:
    """The data stage's dataset; every record is checked and every split must have rows before anything is written."""
    if cfg.source == "synthetic":
        items, interactions = make_synthetic(cfg.synthetic_items, cfg.synthetic_users, seed=cfg.seed)
        records = ((f"interaction {n}", x) for n, x in enumerate(interactions, 1))
        ds = interaction_dataset(items, records, cfg.max_history, "synthetic data")
    elif cfg.source == "minionerec":
        ds = load_minionerec(Path(cfg.path), cfg.name, cfg.train_split)
    elif cfg.source in RAW_SOURCES:
        if cfg.source == "amazon":
            raw = load_amazon(Path(cfg.path), cfg.name, cfg.release, cfg.raw_options())
        else:
            raw = load_recbole(Path(cfg.path), cfg.name, cfg.raw_options())
        ds = interaction_dataset(raw.items, ((cfg.path, x) for x in raw.interactions), cfg.max_history, cfg.path)
        ds.changes.update(raw.changes)  # its duplicates went before the k-core, with their lines named
    else:
        ds = load_generic(Path(cfg.path), cfg.max_history)
    check_splits(ds, cfg)
    return ds


def input_files(cfg: DataConfig) -> list[Path]:
    """The files the data stage reads for `cfg` (none for synthetic data), so the pipeline can fingerprint their
    content and re-run the stage when one is edited, without knowing the layouts.

    Example:
        >>> input_files(DataConfig(source="generic", path="data/shop"))
        [PosixPath('data/shop/items.jsonl'), PosixPath('data/shop/interactions.csv')]
    """
    if cfg.source == "synthetic":
        return []
    if cfg.source == "generic":
        return [Path(cfg.path) / name for name in GENERIC_FILES]
    if cfg.source in RAW_SOURCES:
        return list((amazon_files if cfg.source == "amazon" else recbole_files)(Path(cfg.path), cfg.name))
    item_file, split_files = minionerec_files(Path(cfg.path), cfg.name, cfg.train_split)
    return [item_file, *split_files.values()]


def check_splits(ds: Dataset, cfg: DataConfig) -> None:
    """An empty split would make model selection or the test metrics silently meaningless, so stop here."""
    counts = {s: len(ds.splits[s]) for s in SPLITS}
    empty = [s for s in SPLITS if not counts[s]]
    if not empty:
        return
    if cfg.source == "minionerec":
        fix = "that split's CSV has no rows; check data.path, data.name and data.train_split"
    elif cfg.source in RAW_SOURCES:
        raw = ds.changes["raw"]
        fix = (f"the filters kept {raw['kept']} of {raw['read']} (removed: {raw['removed']}); widen data.start and "
               "data.end, lower data.k_core or raise data.max_title_words")
    else:
        fix = ("the 8:1:1 cut by row count needs at least 10 rows (a user's k interactions give k-1 rows): add "
               "interactions, or users with two or more")
    source = f"data.source={cfg.source!r}" + (f", data.path={cfg.path}" if cfg.path else "")
    splits = f"{' and '.join(empty)} split{'s' if len(empty) > 1 else ''}"
    raise ValueError(f"{source}: the {splits} came out empty ({sum(counts.values())} rows in all: train "
                     f"{counts['train']}, valid {counts['valid']}, test {counts['test']}); {fix}")


# ----------------------------------------------------------------------------- records: items, CSV rows


def _csv_records(path: Path, required: tuple[str, ...], missing: str) -> Iterator[tuple[str, dict]]:
    """("file:line", row) for each non-blank row of a CSV with a header, checking the columns and field counts."""
    reader = csv.reader(io.StringIO(read_text(path, missing), newline=""))
    try:
        header = [name.strip() for name in next(reader, [])]
        absent = sorted(set(required) - set(header))
        if absent:
            raise ValueError(f"{path}: missing column(s) {absent}; found {header}, need {','.join(required)}")
        for row in reader:
            if not row:
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) != len(header):
                raise ValueError(f"{where}: expected {len(header)} fields, got {len(row)} (header: "
                                 f"{','.join(header)}); quote values that contain a comma")
            yield where, dict(zip(header, row))
    except csv.Error as e:
        raise ValueError(f"{path}:{reader.line_num}: not valid CSV ({e}); fix that line") from None


def _check_root(root: Path, layout: str) -> None:
    if not root.exists():
        raise FileNotFoundError(f"data.path={root} does not exist; point it at the {layout} dataset folder")
    if not root.is_dir():
        raise ValueError(f"data.path={root} is a file; point it at the {layout} dataset folder that holds it")


# ----------------------------------------------------------------------------- MiniOneRec layout


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs):
    """json object_pairs_hook: json.loads would silently keep the last of two equal keys."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)
    return dict(pairs)


def _find_name(root: Path, name: str | None) -> str:
    if name:
        return name
    found = sorted(p.name.removesuffix(".item.json") for p in (root / "index").glob("*.item.json"))
    if len(found) != 1:
        raise ValueError(f"{root}/index holds {len(found)} *.item.json catalogs ({found}); set data.name to one")
    return found[0]


def _one_csv(folder: Path, what: str) -> Path:
    files = sorted(folder.glob("*.csv"))
    if len(files) != 1:
        raise FileNotFoundError(f"{folder}: expected exactly one {what} CSV, found {len(files)}; check data.path")
    return files[0]


def minionerec_files(root: Path, name: str | None = None, train_split: str = "auto") -> tuple[Path, dict[str, Path]]:
    """The catalog file and the train/valid/test CSVs that `load_minionerec` reads for these settings."""
    _check_root(root, "MiniOneRec")
    name = _find_name(root, name)
    official = sorted((root / "train").glob("*.csv")) if (root / "train").is_dir() else []
    recovered = root / "recovered_partial" / f"{name}.train_recovered_subset.csv"
    if train_split == "official" or (train_split == "auto" and official):
        train_file = _one_csv(root / "train", "train")
    else:
        if not recovered.exists():
            raise FileNotFoundError(f"no train rows: neither {root}/train/*.csv nor {recovered} exists")
        train_file = recovered
    splits = {"train": train_file, **{s: _one_csv(root / s, s) for s in ("valid", "test")}}
    return root / "index" / f"{name}.item.json", splits


def load_minionerec(root: Path, name: str | None = None, train_split: str = "auto") -> Dataset:
    """Load MiniOneRec's processed Amazon data (see ../shared/data/amazon18/README.md for the layout)."""
    item_file, split_files = minionerec_files(root, name, train_split)
    items = read_minionerec_items(item_file)
    known = {it["item_id"] for it in items}
    logger.info("train rows from %s", split_files["train"])
    return Dataset(items, {split: read_minionerec_csv(path, known) for split, path in split_files.items()})


def read_minionerec_items(path: Path) -> list[dict]:
    """index/<name>.item.json: one JSON object mapping item id -> {title, description, brand, categories}."""
    try:
        raw = json.loads(read_text(path, _MINIONEREC_MISSING), object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as e:
        raise ValueError(f"{path}: duplicate item id or field {e.args[0]!r}; item ids and the fields of an item "
                         "must be unique") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:  # a 5000-digit integer, [[[[...
        if str(path) in str(e):
            raise
        raise ValueError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected one JSON object mapping item id -> item fields, got {json_type(raw)}")
    items, seen = [], set()
    for key, record in raw.items():
        where, iid = f"{path}, item {key!r}", key.strip()
        if not iid or iid in seen:
            problem = "duplicate item id" if iid else "empty item id"
            raise ValueError(f"{where}: {problem}; item ids must be unique and non-empty")
        seen.add(iid)
        items.append(make_item(iid, record, where))
    return items


def _parse_id_list(text: str, where: str) -> list[str]:
    value = literal(text) if text.strip() else []
    if value is NOT_A_LITERAL:
        raise ValueError(f"{where}: history_item_id {text[:60]!r} is not a list like [1, 2, 3]")
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: history_item_id must be a list, got {text[:60]!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, str)) for v in value):
        raise ValueError(f"{where}: history_item_id {text[:60]!r} must list item ids (integers or strings)")
    return [str(v) for v in value]


def read_minionerec_csv(path: Path, known: set[str]) -> list[dict]:
    rows = []
    for where, rec in _csv_records(path, ("user_id", "history_item_id", "item_id"), _MINIONEREC_MISSING):
        history = _parse_id_list(rec["history_item_id"], where)
        target = rec["item_id"].strip()
        for iid in [*history, target]:
            if iid not in known:
                raise ValueError(f"{where}: unknown item id {iid!r} (not in the catalog); fix the row or the catalog")
        if not history:
            raise ValueError(f"{where}: empty history; every row needs at least one previous item")
        if not rec["user_id"].strip():
            raise ValueError(f"{where}: empty user_id; every row needs one")
        rows.append({"user_id": rec["user_id"], "history": history, "target": target})
    return rows


# ----------------------------------------------------------------------------- generic layout


def _item_id(record: dict, where: str) -> str:
    """item_id as a string: a string or an integer in the file (null, true or 1.5 would turn into ids by str())."""
    if "item_id" not in record:
        raise ValueError(f"{where}: record has no item_id; every line needs item_id and title")
    value = record["item_id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{where}: item_id must be a string or an integer, got {describe_value(value)}")
    iid = str(value).strip()
    if not iid:
        raise ValueError(f"{where}: record has an empty item_id; every line needs item_id and title")
    return iid


def read_generic_items(path: Path) -> list[dict]:
    """Read items.jsonl: one object per line with item_id and title (description, brand, categories optional)."""
    items, first_line = [], {}
    for lineno, rec in read_jsonl_lines(path, _GENERIC_MISSING):
        where = f"{path}:{lineno}"
        iid = _item_id(rec, where)
        if iid in first_line:
            raise ValueError(f"{where}: duplicate item_id {iid!r} (first seen on line {first_line[iid]})")
        first_line[iid] = lineno
        items.append(make_item(iid, rec, where))
    if not items:
        raise ValueError(f"{path}: no items")
    return items


def read_interactions(path: Path, known: set[str]) -> Iterator[tuple[str, Interaction]]:
    """("file:line", (user, item, timestamp)) for each row of interactions.csv, checked as it is read."""
    found = False
    for where, rec in _csv_records(path, ("user_id", "item_id", "timestamp"), _GENERIC_MISSING):
        user, iid = rec["user_id"].strip(), rec["item_id"].strip()
        if not user:
            raise ValueError(f"{where}: empty user_id; every row needs user_id,item_id,timestamp")
        if iid not in known:
            raise ValueError(f"{where}: unknown item_id {iid!r} (not in items.jsonl)")
        found = True
        yield where, (user, iid, parse_timestamp(rec["timestamp"], where))
    if not found:
        raise ValueError(f"{path}: no interactions")


def load_generic(root: Path, max_history: int = 10) -> Dataset:
    """The generic layout: items.jsonl and interactions.csv in `root`, checked and split (see the module doc)."""
    _check_root(root, "generic")
    items = read_generic_items(root / GENERIC_FILES[0])
    path = root / GENERIC_FILES[1]
    return interaction_dataset(items, read_interactions(path, {it["item_id"] for it in items}), max_history, str(path))


def drop_duplicates(records: Iterable[tuple[str, Interaction]], source: str) -> tuple[list[Interaction], int]:
    """The interactions of ("where", interaction) records without exact repeats (same user, item and timestamp:
    double logging), and how many were dropped; a warning names `source`, the first repeat and the count. The same
    item at another time is kept: a re-purchase is real.

    Example:
        >>> drop_duplicates([("f:2", ("u", "a", 1.0)), ("f:3", ("u", "a", 1.0)), ("f:4", ("u", "a", 9.0))], "f")
        ([('u', 'a', 1.0), ('u', 'a', 9.0)], 1)
    """
    first: dict[Interaction, str] = {}
    kept, repeat, dropped = [], None, 0
    for where, interaction in records:
        if interaction in first:
            dropped += 1
            repeat = repeat or (where, first[interaction])
            continue
        first[interaction] = where
        kept.append(interaction)
    if dropped:
        logger.warning("%s: dropped %d exact duplicate interaction(s) (same user, item and timestamp); the first is "
                       "%s, a repeat of %s", source, dropped, *repeat)
    return kept, dropped


def interaction_dataset(items: list[dict], records: Iterable[tuple[str, Interaction]], max_history: int,
                        source: str) -> Dataset:
    """A Dataset from ("where", interaction) records: duplicates dropped, rows built, what was left out counted."""
    interactions, duplicates = drop_duplicates(records, source)
    short = sum(n < 2 for n in Counter(user for user, _, _ in interactions).values())
    if short:
        logger.info("%s: %d user(s) with a single interaction make no row (users_too_short)", source, short)
    return Dataset(items, build_splits(interactions, max_history),
                   {"duplicate_interactions": duplicates, "users_too_short": short})


def build_splits(interactions: list[Interaction], max_history: int = 10) -> dict[str, list[dict]]:
    """Per-user chronological rows, sorted stably by target time, cut 8:1:1 by row count (see module doc)."""
    per_user: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    for order, (user, item, ts) in enumerate(interactions):
        per_user[user].append((ts, order, item))
    rows = []
    for user, events in per_user.items():
        events.sort()
        seq = [item for _, _, item in events]
        for j in range(1, len(seq)):
            rows.append((events[j][0], {"user_id": user, "history": seq[max(0, j - max_history):j], "target": seq[j]}))
    rows.sort(key=lambda r: r[0])
    rows = [r for _, r in rows]
    n = len(rows)
    a, b = int(n * 0.8), int(n * 0.9)
    return {"train": rows[:a], "valid": rows[a:b], "test": rows[b:]}
