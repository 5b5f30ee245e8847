"""In-harness baselines, scored exactly like `genrec evaluate` (same rows, metrics.json and predictions.jsonl).

    genrec baseline NAME --run-dir RUN [--split test] [--out DIR] [options of NAME]
    genrec baseline knn --help

NAME is one of: popularity (train frequency), cooc (next-item co-occurrence with popularity back-off),
knn (cosine similarity of the run's item embeddings to the history), sasrec (self-attentive sequential model on
item ids), sasrec-faerec (SASRec over a gated fusion of ID and text embeddings, after FAERec). Everything is
fitted on train; hyper-parameters are chosen on valid, never on test, and recorded in metrics.json. Output goes
to ``<run-dir>/baselines/<name>/<split>`` unless --out says otherwise.

Example:
    >>> main(["popularity", "--run-dir", "runs/demo", "--split", "test"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import importlib
import sys

from genrec.baselines.common import BaselineArgs, run_baseline

# name -> module with `Config` and `build(data, cfg, args)`; imported on use (sasrec pulls in torch)
BASELINES = {
    "popularity": "genrec.baselines.popularity",
    "cooc": "genrec.baselines.cooc",
    "knn": "genrec.baselines.knn",
    "sasrec": "genrec.baselines.sasrec",
    "sasrec-faerec": "genrec.baselines.faerec",
}


def get_baseline(name: str):
    """The module of a registered baseline."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    return importlib.import_module(BASELINES[name])


def make_parser(name: str):
    """An HfArgumentParser over the shared `BaselineArgs` and the baseline's own `Config`."""
    from transformers import HfArgumentParser

    module = get_baseline(name)
    return HfArgumentParser((BaselineArgs, module.Config), prog=f"genrec baseline {name}",
                            description=module.__doc__.split("\n")[0])


def main(argv: list[str] | None = None) -> dict:
    """Run one baseline from command-line arguments; returns its metrics."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        top = argparse.ArgumentParser(prog="genrec baseline", description=__doc__.split("\n")[0])
        top.add_argument("name", choices=list(BASELINES), help="baseline to run; `NAME --help` lists its options")
        top.parse_args(argv[:1])  # prints usage (or --help) and exits
    name = argv[0]
    args, cfg = make_parser(name).parse_args_into_dataclasses(argv[1:], look_for_args_file=False)
    return run_baseline(name, get_baseline(name), args, cfg)
