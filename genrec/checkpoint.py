"""The checkpoint layout, written and read here only: what a genrec model directory holds.

A checkpoint is a ``save_pretrained`` directory (weights, ``config.json``, tokenizer files) plus genrec's files:

- ``sids.json``: item id -> SID codes, the catalog the model recommends from;
- ``genrec.json``: how it was trained (`checkpoint_metadata`: prompt settings, precision, selection, stage extras);
- ``catalog.jsonl``: item_id and title per item (the server shows titles);
- ``trainer_log.json``: the trainer's log history by step (losses, rewards, selection metrics), for the report;
- ``interests.json`` + ``interest_vectors.npy``: each item's positive interests and their embeddings
  (`genrec.explain.ItemInterests`), when the run had interests: what explanations are made of;
- ``item_vectors.npy``: each item's text embedding, rows in ``sids.json`` order (`genrec.content.ItemContent`):
  what the beam search's content prior is made of.

The trainers write it (`save_checkpoint`, and `write_checkpoint_extras` beside checkpoints the trainer saves
itself), the loader reads it (`load_model_and_tokenizer`, `load_catalog`, `trained_with`, `load_item_interests`,
`load_item_content`),
and so do the server (`load_catalog`, `load_item_interests`) and the report (`read_trainer_log`). Where a run keeps
its checkpoints (``checkpoints/<stage>``) is the artifacts reader's business (`genrec.artifacts.Run.checkpoint`).

Example:
    >>> save_checkpoint(model, tok, Path("runs/demo/checkpoints/sft"), sids,
    ...                 checkpoint_metadata(10, False, stage="sft"), titles=titles)  # doctest: +SKIP
    >>> model, tok = load_model_and_tokenizer("runs/demo/checkpoints/sft")  # doctest: +SKIP
    >>> sids, titles = load_catalog("runs/demo/checkpoints/sft")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from genrec.artifacts import read_rows, read_sids
from genrec.content import ItemContent, unit_rows
from genrec.explain import ItemInterests
from genrec.io import read_json, write_json, write_jsonl, write_npy

logger = logging.getLogger(__name__)

CHECKPOINT_CONFIG = "config.json"  # written by save_pretrained: its presence says "a model lives here"
CHECKPOINT_SIDS = "sids.json"
CHECKPOINT_META = "genrec.json"
CHECKPOINT_CATALOG = "catalog.jsonl"
CHECKPOINT_LOG = "trainer_log.json"
CHECKPOINT_INTERESTS = "interests.json"
CHECKPOINT_INTEREST_VECTORS = "interest_vectors.npy"
CHECKPOINT_ITEM_VECTORS = "item_vectors.npy"


# ----------------------------------------------------------------------------- writing


def checkpoint_metadata(max_history: int | None, bf16: bool, **extra) -> dict:
    """genrec.json's content: what `trained_with` reads back (the prompt's history length, the training
    precision) plus `extra` (stage, selection, ...)."""
    return {"prompt": {"max_history": max_history}, "bf16": bool(bf16), **extra}


def save_checkpoint(model, tokenizer, out_dir: Path, sids: dict, extra: dict | None = None,
                    titles: dict[str, str] | None = None, interests: ItemInterests | None = None,
                    item_vectors: np.ndarray | None = None) -> None:
    """save_pretrained model + tokenizer, plus sids.json, genrec.json (= extra, see `checkpoint_metadata`),
    catalog.jsonl (item_id, title), the items' interests and text vectors (when given), into out_dir atomically.

    Everything is written to a temporary sibling directory that then replaces out_dir, so a killed save never
    leaves a half-written checkpoint. Call it on the main process only.

    Example:
        >>> save_checkpoint(model, tok, Path("runs/demo/checkpoints/sft"), sids, {"stage": "sft"})  # doctest: +SKIP
    """
    with _replacing(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_checkpoint_extras(tmp, sids, extra, titles, interests, item_vectors)
    logger.info("saved checkpoint to %s", out_dir)


@contextlib.contextmanager
def _replacing(out_dir: str | Path) -> Iterator[Path]:
    """A temporary sibling directory to write a checkpoint into; when the block ends without an error it replaces
    `out_dir` (a killed or failed write leaves the old `out_dir` as it was)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_checkpoint_extras(out_dir: Path, sids: dict, extra: dict | None = None,
                            titles: dict[str, str] | None = None, interests: ItemInterests | None = None,
                            item_vectors: np.ndarray | None = None) -> None:
    """genrec's files beside the save_pretrained ones: sids.json, genrec.json (when `extra`), catalog.jsonl (when
    `titles`), interests.json and interest_vectors.npy (when `interests`), item_vectors.npy (when `item_vectors`,
    one row per item of `sids`, in its order); vectors in float16, which halves them."""
    write_json(Path(out_dir) / CHECKPOINT_SIDS, sids)
    if extra is not None:
        write_json(Path(out_dir) / CHECKPOINT_META, extra)
    if titles:
        write_jsonl(Path(out_dir) / CHECKPOINT_CATALOG, ({"item_id": i, "title": titles.get(i, "")} for i in sids))
    if interests is not None:
        write_npy(Path(out_dir) / CHECKPOINT_INTEREST_VECTORS, interests.vectors.astype(np.float16))
        write_json(Path(out_dir) / CHECKPOINT_INTERESTS, {"texts": interests.texts, "items": interests.items},
                   indent=None)
    if item_vectors is not None:
        if item_vectors.ndim != 2 or item_vectors.shape[0] != len(sids):
            raise ValueError(f"item vectors of shape {item_vectors.shape} for {len(sids)} items: one row per item")
        write_npy(Path(out_dir) / CHECKPOINT_ITEM_VECTORS, item_vectors.astype(np.float16))


def update_metadata(checkpoint: str | Path, **fields) -> dict:
    """Add `fields` to a checkpoint's genrec.json (written atomically); returns the new content."""
    meta = {**read_metadata(checkpoint), **fields}
    write_json(Path(checkpoint) / CHECKPOINT_META, meta)
    return meta


def replace_with_copy(src: str | Path, out_dir: str | Path, *, keep: tuple[str, ...] = (CHECKPOINT_LOG,),
                      **fields) -> None:
    """Make `out_dir` a copy of checkpoint `src`, keeping `out_dir`'s own files named in `keep` (its trainer log)
    and adding `fields` to the copy's genrec.json; atomic like `save_checkpoint` (a kill leaves the old out_dir)."""
    src, out_dir = Path(src), Path(out_dir)
    if not has_model(src):
        raise FileNotFoundError(f"{src} holds no model (no {CHECKPOINT_CONFIG}); nothing to copy")
    with _replacing(out_dir) as tmp:
        shutil.copytree(src, tmp)
        for name in keep:
            if (out_dir / name).is_file():
                shutil.copy2(out_dir / name, tmp / name)
        update_metadata(tmp, **fields)


def write_trainer_log(out_dir: Path, log_history: list[dict]) -> None:
    """trainer_log.json: the trainer's ``state.log_history``."""
    write_json(Path(out_dir) / CHECKPOINT_LOG, log_history)


# ----------------------------------------------------------------------------- reading


def has_model(checkpoint: str | Path) -> bool:
    """Whether a directory holds a saved model (its config.json)."""
    return (Path(checkpoint) / CHECKPOINT_CONFIG).is_file()


def has_sid_map(checkpoint: str | Path) -> bool:
    """Whether a checkpoint carries its own SID map (genrec's trainers write one; a plain save_pretrained has none)."""
    return (Path(checkpoint) / CHECKPOINT_SIDS).is_file()


def load_model_and_tokenizer(path, torch_dtype: str = "float32"):
    """(model, tokenizer) from a checkpoint directory written by save_checkpoint (or any save_pretrained dir).

    Example:
        >>> model, tok = load_model_and_tokenizer("runs/demo/checkpoints/sft")  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from genrec.modeling import DTYPES, sync_special_tokens  # torch-heavy: only when weights load

    path = Path(path)
    if not has_model(path):
        raise FileNotFoundError(f"{path} is not a model checkpoint (no config.json); train or pass another path")
    if torch_dtype not in DTYPES:
        raise ValueError(f"torch_dtype={torch_dtype!r}: use one of {', '.join(DTYPES)}")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[torch_dtype])
    sync_special_tokens(model, tok)
    return model, tok


def load_catalog(checkpoint: str | Path) -> tuple[dict[str, list[int]], dict[str, str]]:
    """A checkpoint's item -> SID map and item -> title (empty without catalog.jsonl), without its weights (the
    server validates requests with them while the model runs elsewhere)."""
    checkpoint = Path(checkpoint)
    if not has_sid_map(checkpoint):
        raise FileNotFoundError(f"{checkpoint} has no {CHECKPOINT_SIDS}: it was not written by genrec's sft or "
                                "grpo stage; pass the run's SID map (genrec evaluate --run-dir RUN does)")
    titles = {}
    if (checkpoint / CHECKPOINT_CATALOG).is_file():
        titles = {str(r["item_id"]): str(r.get("title", "")) for r in read_rows(checkpoint / CHECKPOINT_CATALOG)}
    return read_sids(checkpoint / CHECKPOINT_SIDS), titles


def load_item_interests(checkpoint: str | Path) -> ItemInterests | None:
    """The items' interests and their embeddings saved with a checkpoint (explanations), or None when it has none
    (its run had no interests, or it was trained before genrec saved them).

    Example:
        >>> load_item_interests("runs/demo/checkpoints/sft").explain(["0", "1"], ["24"])  # doctest: +SKIP
    """
    path, vectors_path = Path(checkpoint) / CHECKPOINT_INTERESTS, Path(checkpoint) / CHECKPOINT_INTEREST_VECTORS
    if not path.is_file():
        return None
    raw = read_json(path)
    fix = "delete it and re-run the training stage that wrote the checkpoint"
    if not isinstance(raw, dict) or not isinstance(raw.get("texts"), list) or not isinstance(raw.get("items"), dict):
        raise ValueError(f"{path}: expected {{'texts': [...], 'items': {{item_id: [rows]}}}}; {fix}")
    try:
        vectors = np.load(vectors_path)
        return ItemInterests(raw["texts"], unit_rows(vectors), {str(k): list(v) for k, v in raw["items"].items()})
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{path} and {vectors_path.name} do not fit together ({e}); {fix}") from None


def load_item_content(checkpoint: str | Path, item_ids: list[str] | None = None) -> ItemContent | None:
    """The items' text vectors saved with a checkpoint (the search's content prior), or None when it has none (a
    checkpoint from before genrec saved them, or a run without the embed stage). `item_ids`: the checkpoint's
    sids.json order when the caller has already read it."""
    path = Path(checkpoint) / CHECKPOINT_ITEM_VECTORS
    if not path.is_file():
        return None
    item_ids = item_ids or list(read_sids(Path(checkpoint) / CHECKPOINT_SIDS))
    try:
        return ItemContent(item_ids, np.load(path))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} does not fit {CHECKPOINT_SIDS} ({e}); delete it and re-run the training stage "
                         "that wrote the checkpoint") from None


class TrainedWith(NamedTuple):
    """What inference must repeat of training: the prompt's history length (None: the whole history a row holds),
    the training precision (None: unknown, the hardware decides) and the content prior's weight its training stage
    chose on valid (0 when none was chosen)."""

    max_history: int | None
    bf16: bool | None
    content_weight: float = 0.0


def read_metadata(checkpoint: str | Path) -> dict:
    """genrec.json: how a checkpoint was trained (empty for a plain save_pretrained model)."""
    path = Path(checkpoint) / CHECKPOINT_META
    meta = read_json(path) if path.is_file() else {}
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object; delete it and re-run the stage that wrote the checkpoint")
    return meta


def trained_with(checkpoint: str | Path) -> TrainedWith:
    """The settings `checkpoint_metadata` recorded in genrec.json (all None for a plain save_pretrained model)."""
    meta = read_metadata(checkpoint)
    return TrainedWith((meta.get("prompt") or {}).get("max_history"), meta.get("bf16"),
                       float(meta.get("content_weight") or 0.0))


def read_trainer_log(checkpoint: str | Path) -> list[dict] | None:
    """The trainer's log history saved with a checkpoint (losses, rewards, selection metrics), or None."""
    path = Path(checkpoint) / CHECKPOINT_LOG
    return read_json(path) if path.is_file() else None
