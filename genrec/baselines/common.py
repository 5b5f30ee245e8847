"""Shared parts of the baselines: run data, selection on valid and the output format.

A baseline module provides a config dataclass ``Config`` and ``build(data, cfg, args) -> Scorer`` (``args``: the
shared `BaselineArgs`). A scorer fits on the train split when it is built and then scores any rows:
``scorer.score(rows, **params)`` returns a dense ``(len(rows), n_items)`` float array for one point of
``scorer.grid()``. `run_baseline` picks the grid point (and whether to drop the row's own history items from the
list) on the valid split, never on test, then ranks the requested split and writes the same metrics.json /
predictions.jsonl as `genrec evaluate`, with the head / tail / cold breakdown of the train item counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from tqdm.auto import tqdm

from genrec.artifacts import ITEMS, SPLIT, Run, train_sequences
from genrec.evaluation import KS, item_counts, ranking_metrics, write_results

logger = logging.getLogger(__name__)

TOP_K = max(KS)
METRICS = tuple(f"{m}@{k}" for k in KS for m in ("HR", "NDCG"))


@dataclass
class BaselineArgs:
    run_dir: str = field(
        metadata={"help": "Run directory holding items.jsonl and splits/{train,valid,test}.jsonl (the data stage)."}
    )
    split: Literal["valid", "test"] = field(default="test", metadata={"help": "Split to rank and score."})
    out: str | None = field(
        default=None, metadata={"help": "Output directory; default <run-dir>/baselines/<name>/<split>."}
    )
    select_metric: str = field(
        default="NDCG@10", metadata={"help": "Valid metric that picks hyper-parameters, e.g. NDCG@10 or HR@10."}
    )
    exclude_history: Literal["auto", "yes", "no"] = field(
        default="auto",
        metadata={"help": "Drop the row's own history items from its list: 'yes', 'no', or 'auto' (chosen on "
                  "valid; repeat purchases occur in Amazon data)."},
    )
    seed: int = field(default=0, metadata={"help": "Random seed (used by trained baselines)."})

    def __post_init__(self):
        if self.select_metric not in METRICS:
            raise ValueError(f"--select-metric {self.select_metric!r}: use one of {', '.join(METRICS)}")


@dataclass
class RunData:
    """The catalog as an index (item id -> column) and the rows of the three splits."""

    run_dir: Path
    item_ids: list[str]
    train: list[dict]
    valid: list[dict]
    eval_rows: list[dict]
    split: str
    index: dict[str, int] = field(init=False)

    def __post_init__(self):
        self.index = {iid: i for i, iid in enumerate(self.item_ids)}

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


class Scorer(Protocol):
    info: dict  # facts learned while fitting that belong in metrics.json (e.g. the best epoch)

    def grid(self) -> list[dict]: ...

    def score(self, rows: Sequence[dict], **params) -> np.ndarray: ...


def load_run(run_dir: str | Path, split: str) -> RunData:
    """Read a run directory's catalog and splits; every row's items must be in the catalog."""
    run = Run(run_dir)
    if not run.root.is_dir():
        raise FileNotFoundError(f"--run-dir {run.root} is not a directory; run the data stage first "
                                "(genrec stage data CONFIG --run-dir DIR)")
    needed = [run.path(ITEMS), *(run.path(SPLIT, split=s) for s in ("train", "valid", split))]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise FileNotFoundError(f"missing {', '.join(missing)}; run the data stage for {run.root} first")
    item_ids = [str(it["item_id"]) for it in run.items()]
    known = set(item_ids)
    rows = {s: run.split(s) for s in dict.fromkeys(("train", "valid", split))}
    for s, split_rows in rows.items():
        if not split_rows:
            raise ValueError(f"{run.path(SPLIT, split=s)} has no rows; the baselines need train, valid and {split}")
        for n, r in enumerate(split_rows, 1):
            unknown = [i for i in [*r["history"], r["target"]] if i not in known]
            if unknown:
                raise ValueError(f"{run.path(SPLIT, split=s)} row {n}: item(s) {unknown[:3]} not in {ITEMS}; "
                                 "the run directory is inconsistent, re-run the data stage")
    return RunData(run.root, item_ids, rows["train"], rows["valid"], rows[split], split)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of each row's k best scores, best first (ties: lower column first)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part.sort(axis=1)
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


def rank_rows(scorer: Scorer, data: RunData, rows: Sequence[dict], params: dict, excludes: Sequence[bool],
              chunk: int = 1024) -> dict[bool, tuple[list[list[str]], list[list[float]]]]:
    """Top-K item ids and scores per row, for each exclude-history choice (the scores are computed once)."""
    out = {e: ([], []) for e in excludes}
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        scores = np.asarray(scorer.score(part, **params), dtype=np.float32)
        for exclude in excludes:
            s = scores
            if exclude:
                s = scores.copy()
                for n, r in enumerate(part):
                    s[n, [data.index[i] for i in r["history"]]] = -np.inf
            idx, vals = top_k(s, TOP_K)
            keep = np.isfinite(vals)  # excluded items never fill a short list (tiny catalogs)
            out[exclude][0].extend([[data.item_ids[j] for j in row[k]] for row, k in zip(idx, keep, strict=True)])
            out[exclude][1].extend([row[k].tolist() for row, k in zip(vals, keep, strict=True)])
    return out


def select_on_valid(scorer: Scorer, data: RunData, excludes: Sequence[bool], metric: str) -> dict:
    """Grid search on the valid split; returns the best point as {params, exclude_history, metric, value, ...}."""
    targets = [r["target"] for r in data.valid]
    best, trials = None, []
    grid = scorer.grid()
    for params in tqdm(grid, desc="select on valid", disable=len(grid) < 2):
        for exclude, (ranked, _) in rank_rows(scorer, data, data.valid, params, excludes).items():
            value = ranking_metrics(ranked, targets)[metric]
            trials.append({**params, "exclude_history": exclude, metric: round(value, 5)})
            if best is None or value > best["value"]:
                best = {"params": params, "exclude_history": exclude, "value": value}
    logger.info("valid %s = %.4f at %s, exclude_history=%s (%d trials)", metric, best["value"], best["params"],
                best["exclude_history"], len(trials))
    return {**best, "metric": metric, "trials": trials}


def run_baseline(name: str, module, args: BaselineArgs, cfg) -> dict:
    """Fit one baseline on train, select on valid, rank `args.split` and write the shared output files."""
    start = time.perf_counter()
    data = load_run(args.run_dir, args.split)
    logger.info("%s: %d items, %d train / %d valid / %d %s rows", name, data.n_items, len(data.train),
                len(data.valid), len(data.eval_rows), args.split)
    scorer = module.build(data, cfg, args)
    excludes = {"auto": (False, True), "yes": (True,), "no": (False,)}[args.exclude_history]
    best = select_on_valid(scorer, data, excludes, args.select_metric)
    ranked, scores = rank_rows(scorer, data, data.eval_rows, best["params"], (best["exclude_history"],))[
        best["exclude_history"]]
    seconds = time.perf_counter() - start
    out = Path(args.out) if args.out else Run(data.run_dir).baseline_dir(name, args.split)
    extra = {
        "baseline": name,
        "hyperparameters": {**best["params"], "exclude_history": best["exclude_history"]},
        "selection": {"split": "valid", "metric": best["metric"], "value": round(best["value"], 5),
                      "trials": best["trials"]},
        "fit": scorer.info,
        "config": asdict(cfg),
        "seed": args.seed,
        "train_rows": len(data.train),
        "items": data.n_items,
    }
    counts = item_counts(train_sequences(data.train, data.index), data.n_items)
    metrics = write_results(out, data.eval_rows, ranked, scores=scores, method=name, split=args.split,
                            seconds=seconds, beam=None, invalid=0, extra=extra,
                            item_counts=dict(zip(data.item_ids, counts.astype(int).tolist())))
    logger.info("%s on %s: %s (%.1fs) -> %s", name, args.split,
                "  ".join(f"{m} {metrics[m]:.4f}" for m in METRICS), seconds, out)
    return metrics
