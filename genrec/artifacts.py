"""The files of a run directory: one typed, validating reader per artifact, and the layout in one place.

A run directory holds what every stage wrote (DESIGN.md, "Data flow and artifacts"). Library code takes data
(rows, SID maps, arrays); only the stage runners and the CLI open a run, and they do it through `Run`, so the
layout lives here and nowhere else. Each file is parsed once per process: readers cache their result keyed by the
file's path, size and modification time (a rewritten file is read again). Cached values are shared between
callers: treat them as read-only.

Example:
    >>> run = Run("runs/demo")  # doctest: +SKIP
    >>> run.sids()["42"], len(run.split("valid")), run.item_embeddings().vectors.shape  # doctest: +SKIP
    ([12, 7, 200], 763, (960, 384))
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genrec.io import read_json, read_jsonl

SPLITS = ("train", "valid", "test")

# run-relative paths of every artifact; "{split}" / "{stage}" / "{name}" are filled by the reader
ITEMS = "items.jsonl"
SPLIT = "splits/{split}.jsonl"
DATA_STATS = "data_stats.json"
INTERESTS = "interests.jsonl"
INTERESTS_STORE = "interests.store.sqlite"  # the mine stage's answers as they arrive (resume, retries)
RLDI_MODEL = "rldi.joblib"
RLDI_REPORT = "rldi_report.json"
RLDI_VECTORS = "rldi_vectors.npz"  # the label stage's cache of encoded texts
ITEM_EMB = "item_emb.npy"
FUSED = "fused"  # sasrec-faerec's exported ID/text item vectors (item_emb.npy + .json), quantize's input: fused
ITEM_EMB_META = "item_emb.json"
SIDS = "sids.json"
SID_REPORT = "sid_report.json"
TOKEN_SEMANTICS = "token_semantics.json"
TOKEN_SEMANTICS_CACHE = "token_semantics.cache.jsonl"
CHECKPOINT = "checkpoints/{stage}"
EVAL = "eval/{split}"
BASELINE = "baselines/{name}/{split}"
METRICS = "metrics.json"  # inside an EVAL or BASELINE folder, with PREDICTIONS
REPORT = "report.md"
PLOT = "plots/{name}.png"
PREDICTIONS = "predictions.jsonl"
TOKEN_ENTRY_KEYS = ("level", "code", "items", "keywords", "description")


@dataclass(frozen=True)
class ItemEmbeddings:
    """The embed stage's output: one row per item id, and the text recipe that produced it."""

    item_ids: list[str]
    vectors: np.ndarray
    recipe: dict

    def aligned(self, item_ids: list[str], *, normalize: bool = True) -> np.ndarray:
        """Rows in the order of `item_ids` (float32, L2-normalised unless told otherwise); every id must exist."""
        row = {iid: n for n, iid in enumerate(self.item_ids)}
        missing = [i for i in item_ids if i not in row]
        if missing:
            raise ValueError(f"item embeddings lack {len(missing)} item(s) (e.g. {missing[0]!r}); re-run the embed "
                             "stage (genrec stage embed CONFIG --force)")
        out = self.vectors[[row[i] for i in item_ids]].astype(np.float32)
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def _cached(parse: Callable[[Path], Any]) -> Callable[[Path], Any]:
    """Memoise `parse(path)` per (path, size, mtime): a file is parsed once per process until it changes."""
    memo = functools.lru_cache(maxsize=64)(lambda path, size, mtime: parse(path))

    @functools.wraps(parse)
    def read(path: str | os.PathLike) -> Any:
        path = Path(path).resolve()
        try:
            st = path.stat()
        except FileNotFoundError:
            return parse(path)  # the parser raises the stage-specific "run ... first" message
        return memo(path, st.st_size, st.st_mtime_ns)

    read.cache_clear = memo.cache_clear
    return read


@_cached
def read_rows(path: Path) -> list[dict]:
    """A JSONL file of objects (items.jsonl, a split)."""
    return read_jsonl(path)


def train_sequences(rows: Sequence[dict], index: dict[str, int]) -> list[list[int]]:
    """Each user's train interactions in order (as column numbers of `index`): the history of the user's first row,
    then every row's target.

    Rows of one user are prefixes of each other (history = the previous items), and within a user the file order
    is chronological (how the data stage writes a split), so this counts every train interaction once instead of
    once per row that repeats it.

    Example:
        >>> train_sequences([{"user_id": "u", "history": ["a"], "target": "b"},
        ...                  {"user_id": "u", "history": ["a", "b"], "target": "c"}], {"a": 0, "b": 1, "c": 2})
        [[0, 1, 2]]
    """
    seqs: dict[str, list[int]] = {}
    for r in rows:
        user = str(r.get("user_id"))
        if user not in seqs:
            seqs[user] = [index[i] for i in r["history"]]
        seqs[user].append(index[r["target"]])
    return list(seqs.values())


@_cached
def read_sids(path: Path) -> dict[str, list[int]]:
    """sids.json (item_id -> list of codes), checked: non-empty, codes non-negative ints, every SID unique."""
    from genrec.sid import check_sids

    return check_sids(read_json(path), str(path))


@_cached
def read_sid_report(path: Path) -> dict:
    return read_json(path)


def codebook_sizes(report: dict, where: str = SID_REPORT) -> list[int]:
    """Codes per level from a sid_report.json."""
    try:
        return [int(level["codebook_size"]) for level in report["levels"]]
    except (TypeError, KeyError, ValueError):
        raise ValueError(f"{where}: expected 'levels': [{{'codebook_size': int, ...}}, ...]; "
                         "re-run the quantize stage") from None


@_cached
def read_token_semantics(path: Path) -> dict[str, dict]:
    """token_semantics.json: SID token -> {"level", "code", "items", "keywords", "description"}, checked."""
    raw = read_json(path)
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected a non-empty mapping SID token -> entry; re-run the describe stage")
    for tok, entry in raw.items():
        missing = [k for k in TOKEN_ENTRY_KEYS if not isinstance(entry, dict) or k not in entry]
        if missing or not isinstance(entry["keywords"], list) or not isinstance(entry["description"], str):
            raise ValueError(f"{path}: entry {tok!r} is malformed (missing {missing or 'nothing'}; keywords must be "
                             "a list, description a string); re-run the describe stage")
    return raw


@_cached
def read_item_embeddings(npy: Path) -> ItemEmbeddings:
    """item_emb.npy and its item_emb.json beside it, checked against each other."""
    meta_path = npy.with_name(ITEM_EMB_META)
    meta = read_json(meta_path)
    if not npy.exists():
        raise FileNotFoundError(f"{npy} does not exist; run the embed stage first")
    vectors = np.load(npy)
    ids = meta.get("item_ids") if isinstance(meta, dict) else None
    if not isinstance(ids, list) or vectors.ndim != 2 or vectors.shape[0] != len(ids):
        raise ValueError(f"{npy} ({vectors.shape}) and {meta_path} disagree on the items; delete both and re-run "
                         "the embed stage")
    return ItemEmbeddings([str(i) for i in ids], vectors, meta.get("recipe", {}))


class Run:
    """A run directory: where each artifact lives and its reader.

    Example:
        >>> run = Run("runs/demo")  # doctest: +SKIP
        >>> run.titles()["42"]  # doctest: +SKIP
        'Apex Precision Nozzle Set - Small'
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r})"

    def path(self, artifact: str, **fields: str) -> Path:
        """Path of an artifact, e.g. ``run.path(SPLIT, split="test")``."""
        return self.root / artifact.format(**fields)

    def exists(self, artifact: str, **fields: str) -> bool:
        return self.path(artifact, **fields).exists()

    # ------------------------------------------------------------------------- data stage

    def items(self) -> list[dict]:
        """The catalog: one dict per item (item_id, title, description, brand, categories, extra fields)."""
        return read_rows(self.path(ITEMS))

    def titles(self) -> dict[str, str]:
        return {it["item_id"]: it["title"] for it in self.items()}

    def split(self, split: str) -> list[dict]:
        """Rows {"user_id", "history", "target"} of train, valid or test."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: use one of {', '.join(SPLITS)}")
        return read_rows(self.path(SPLIT, split=split))

    # ------------------------------------------------------------------------- embed, quantize, describe

    def item_embeddings(self) -> ItemEmbeddings:
        return read_item_embeddings(self.path(ITEM_EMB))

    def fused_embeddings(self) -> ItemEmbeddings:
        """The fused ID/text item vectors the sasrec-faerec baseline exported into the run (quantize.input: fused);
        the quantize stage reads them as a file instead of training that baseline itself."""
        path = self.path(FUSED) / ITEM_EMB
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: quantize.input=fused quantizes the sasrec-faerec "
                                    f"baseline's fused item vectors; export them first with: genrec baseline "
                                    f"sasrec-faerec --run-dir {self.root} --split valid --export-embeddings "
                                    f"{self.path(FUSED)}")
        return read_item_embeddings(path)

    def sids(self) -> dict[str, list[int]]:
        """item_id -> SID codes (sids.json)."""
        return read_sids(self.path(SIDS))

    def codebook_sizes(self) -> list[int] | None:
        """Codes per level (sid_report.json), or None when the report is missing."""
        path = self.path(SID_REPORT)
        return codebook_sizes(read_sid_report(path), str(path)) if path.exists() else None

    def token_semantics(self) -> dict[str, dict]:
        return read_token_semantics(self.path(TOKEN_SEMANTICS))

    def interests(self) -> dict[str, dict]:
        """item_id -> {"interests": [...], "archetype": ...} (the mine and label stages)."""
        from genrec.interests.schema import read_interests

        return read_interests(self.path(INTERESTS))

    # ------------------------------------------------------------------------- training and evaluation

    def checkpoint(self, stage: str = "sft") -> Path:
        """Where a training stage's model is; what the folder holds is genrec.checkpoint's (its one reader)."""
        return self.path(CHECKPOINT, stage=stage)

    def eval_dir(self, split: str) -> Path:
        return self.path(EVAL, split=split)

    def baseline_dir(self, name: str, split: str) -> Path:
        return self.path(BASELINE, name=name, split=split)

    def metrics(self) -> list[dict]:
        """Every metrics.json of the run: model evaluations (eval/<split>) first, then baselines; each gets a
        "method" (the baseline's folder name when it names none)."""
        paths = sorted(self.root.glob(f"eval/*/{METRICS}")) + sorted(self.root.glob(f"baselines/*/*/{METRICS}"))
        return [{"method": path.parent.parent.name, **read_json(path)} for path in paths]

    def predictions(self, split: str) -> list[dict]:
        """The model evaluation's per-row predictions on a split (user_id, target, topk, scores)."""
        return read_rows(self.eval_dir(split) / PREDICTIONS)
