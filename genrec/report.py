"""`genrec report --run-dir DIR [DIR ...] [--split test]`: one table of every metrics.json in one or more runs
(model evaluations and baselines); with several runs each row names its run (e.g. an ablation side by side).

Example:
    $ genrec report --run-dir runs/demo
    | method | split | rows | HR@5 | NDCG@5 | HR@10 | NDCG@10 | invalid | seconds |
"""

from __future__ import annotations

import argparse
from pathlib import Path

from genrec.io import read_json

COLUMNS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20")


def collect(run_dir: Path) -> list[dict]:
    """metrics.json of eval/<split>/ and baselines/<name>/<split>/, model first."""
    paths = sorted(run_dir.glob("eval/*/metrics.json")) + sorted(run_dir.glob("baselines/*/*/metrics.json"))
    out = []
    for path in paths:
        m = read_json(path)
        m.setdefault("method", path.parent.parent.name)
        out.append(m)
    return out


def markdown_table(metrics: list[dict], runs: bool = False) -> str:
    head = ["run"] * runs + ["method", "split", "rows", *COLUMNS, "invalid", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in metrics:
        cells = [str(m.get("run"))] * runs + [str(m.get("method")), str(m.get("split")), str(m.get("rows"))]
        cells += [f"{m[c]:.4f}" if c in m else "–" for c in COLUMNS]
        cells += [str(m.get("invalid", 0)), f"{m.get('seconds', 0):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="genrec report", description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True, nargs="+", help="run directory (or several), e.g. runs/demo")
    parser.add_argument("--split", help="only rows of this split (train, valid or test)")
    args = parser.parse_args(argv)
    metrics = []
    for run_dir in map(Path, args.run_dir):
        found = [m for m in collect(run_dir) if args.split in (None, m.get("split"))]
        if not found:
            raise FileNotFoundError(f"no {args.split or ''} metrics.json under {run_dir}/eval or {run_dir}/baselines; "
                                    "run `genrec pipeline` (evaluate stage) or `genrec baseline NAME` first")
        metrics += [{**m, "run": run_dir.name} for m in found]
    print(markdown_table(metrics, runs=len(args.run_dir) > 1))
