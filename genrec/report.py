"""`genrec report --run-dir DIR [DIR ...] [--split test] [--paired]`: one table of every metrics.json in one or
more runs (model evaluations and baselines); with several runs each row names its run (e.g. an ablation side by
side). `--paired` adds each run's difference to the first run on the same rows, with a 95% paired bootstrap
interval, so an ablation says whether a gap is larger than the noise of the test set. When metrics.json files hold
the popularity breakdown (`genrec.evaluation.bucket_metrics`), a second table gives HR@10 / NDCG@10 on the rows
whose target is a head, tail or cold item, with the rows in each bucket.

Example:
    $ genrec report --run-dir runs/demo
    | method | split | rows | HR@5 | NDCG@5 | HR@10 | NDCG@10 | invalid | seconds |
    $ genrec report --run-dir runs/sa runs/random --split test --paired
    | run | vs | split | rows | ΔHR@5 | ΔNDCG@5 | ΔHR@10 | ΔNDCG@10 | ...
    | random | sa | test | 4533 | -0.0055 [-0.0113, +0.0004] | -0.0054 [-0.0093, -0.0016] | ...
    | method | split | head rows | head HR@10 | head NDCG@10 | tail rows | ... | cold NDCG@10 |
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.stats import bootstrap

from genrec import artifacts as A
from genrec.artifacts import METRICS, PLOT, PREDICTIONS, REPORT, Run, read_rows
from genrec.checkpoint import has_model, read_metadata, read_trainer_log
from genrec.evaluation import BUCKET_METRICS, BUCKETS, row_metrics
from genrec.io import read_json, write_text

COLUMNS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20")


def collect(run_dir: Path) -> list[dict]:
    """metrics.json of eval/<split>/ and baselines/<name>/<split>/, model first (or of one evaluation folder)."""
    if (run_dir / METRICS).exists():
        return [read_json(run_dir / METRICS)]
    return Run(run_dir).metrics()


def markdown_table(metrics: list[dict], runs: bool = False) -> str:
    head = ["run"] * runs + ["method", "split", "rows", *COLUMNS, "invalid", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in metrics:
        cells = [str(m.get("run"))] * runs + [str(m.get("method")), str(m.get("split")), str(m.get("rows"))]
        cells += [f"{m[c]:.4f}" if c in m else "–" for c in COLUMNS]
        cells += [str(m.get("invalid", 0)), f"{m.get('seconds', 0):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bucket_table(metrics: list[dict], runs: bool = False) -> str | None:
    """Head / tail / cold HR@10 and NDCG@10 with the rows per bucket, for the metrics that have them (else None)."""
    metrics = [m for m in metrics if isinstance(m.get("buckets"), dict)]
    if not metrics:
        return None
    head = ["run"] * runs + ["method", "split"] + [f"{b} {c}" for b in BUCKETS for c in ("rows", *BUCKET_METRICS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in metrics:
        cells = [str(m.get("run"))] * runs + [str(m.get("method")), str(m.get("split"))]
        for b in BUCKETS:
            part = m["buckets"].get(b) or {}
            cells.append(str(part.get("rows", "–")))
            cells += [f"{part[c]:.4f}" if isinstance(part.get(c), float) else "–" for c in BUCKET_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def row_scores(run_dir: Path, split: str) -> tuple[list, dict[str, np.ndarray]]:
    """The model evaluation's per-row HR@K / NDCG@K on a split, with the (user_id, target) key of each row.
    `run_dir` may also be an evaluation folder itself (e.g. runs/x/eval/test-sft: the SFT model of a GRPO run)."""
    folder = run_dir if (run_dir / PREDICTIONS).exists() else Run(run_dir).eval_dir(split)
    if not (folder / PREDICTIONS).exists():
        raise FileNotFoundError(f"{folder / PREDICTIONS} is missing; --paired compares model evaluations: run "
                                f"`genrec evaluate --run-dir {run_dir} --split {split}` first")
    rows = read_rows(folder / PREDICTIONS)
    keys = [(r.get("user_id"), r["target"]) for r in rows]
    per_row = row_metrics([r["topk"] for r in rows], [r["target"] for r in rows])
    return keys, {name: np.asarray(per_row[name]) for name in COLUMNS}


def paired_differences(runs: list[Path], split: str, resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Each run after the first minus the first, per metric: mean difference over the same rows and the 95%
    bootstrap interval of that mean (rows resampled jointly, so the noise shared by both runs cancels)."""
    ref_keys, ref = row_scores(runs[0], split)
    out = []
    for run in runs[1:]:
        keys, scores = row_scores(run, split)
        if keys != ref_keys:
            raise ValueError(f"{run} and {runs[0]} were evaluated on different {split} rows; re-run "
                             "`genrec evaluate` on both with the same split and row limit")
        diff = {"run": _run_label(run), "vs": _run_label(runs[0]), "split": split, "rows": len(keys)}
        for name in COLUMNS:
            d = scores[name] - ref[name]
            ci = bootstrap((d,), np.mean, n_resamples=resamples, confidence_level=0.95, method="percentile",
                           rng=np.random.default_rng(seed)).confidence_interval
            diff[name] = (float(d.mean()), float(ci.low), float(ci.high))
        out.append(diff)
    return out


def paired_table(diffs: list[dict]) -> str:
    head = ["run", "vs", "split", "rows", *(f"Δ{c}" for c in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in diffs:
        cells = [d["run"], d["vs"], d["split"], str(d["rows"])]
        cells += ["{:+.4f} [{:+.4f}, {:+.4f}]".format(*d[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _run_label(path: Path) -> str:
    """A run's name in tables; an evaluation folder (runs/x/eval/test-sft) is named x/test-sft."""
    return f"{path.parent.parent.name}/{path.name}" if (path / METRICS).exists() else path.name


def guard_note(run_dir: Path) -> str | None:
    """What the GRPO stage's guard decided (`genrec.grpo.guard_final`), in one line; None without a guarded GRPO
    model."""
    checkpoint = Run(run_dir).checkpoint("grpo")
    guard = read_metadata(checkpoint).get("guard") if has_model(checkpoint) else None
    if not isinstance(guard, dict):
        return None
    name, diff = guard["metric"], guard.get("difference", {}).get(guard["metric"])
    beat = "beat it" if guard.get("rule", "better") == "better" else "beat it with an interval above zero"
    shown = f"the SFT model (GRPO did not {beat})" if guard["kept"] == "sft" else "the GRPO model"
    interval = " {:+.4f} [{:+.4f}, {:+.4f}]".format(*diff) if diff else ""
    return (f"GRPO guard on {guard['rows']} {guard['split']} rows: checkpoints/grpo holds {shown}; {name} SFT "
            f"{guard['sft'][name]:.4f}, GRPO {guard['grpo'][name]:.4f}, paired difference{interval}.")


def write_report(run_dir: Path, split: str = "test") -> Path:
    """<run_dir>/report.md with the metrics tables of `split`, the paired difference GRPO made (when the run has
    both models), and plots: HR@K / NDCG@K against the baselines, training curves, SID code usage per level."""
    from genrec import plots

    run = Run(run_dir)
    metrics = [m for m in run.metrics() if m.get("split") == split]
    lines = [f"# genrec run report: {run.root}", ""]
    if metrics:
        lines += [f"## {split} split", "", markdown_table(metrics), ""]
        buckets = bucket_table(metrics)
        if buckets:
            lines += ["Targets by popularity in train (head: top 20% of items; cold: never seen):", "", buckets, ""]
        sft = run.eval_dir(f"{split}-sft")
        if (sft / PREDICTIONS).exists() and (run.eval_dir(split) / PREDICTIONS).exists():
            lines += ["GRPO against the SFT model it started from (same rows, 95% paired bootstrap):", "",
                      paired_table(paired_differences([sft, run.root], split)), ""]
        plot = plots.metrics_plot(metrics, run.path(PLOT, name=f"metrics_{split}"))
        lines += [f"![HR@K and NDCG@K]({plot.relative_to(run.root)})", ""]
    guard = guard_note(run.root)
    if guard:
        lines += [guard, ""]
    histories = {stage: log for stage in ("sft", "grpo") if (log := read_trainer_log(run.checkpoint(stage)))}
    if histories:
        plot = plots.training_curves(histories, run.path(PLOT, name="training"))
        lines += ["## Training", "", f"![training curves]({plot.relative_to(run.root)})", ""]
    if run.exists(A.SIDS) and run.exists(A.SID_REPORT):
        report = read_json(run.path(A.SID_REPORT))
        plot = plots.code_usage(run.sids(), report, run.path(PLOT, name="sid_codes"))
        lines += ["## Semantic IDs", "", f"{report['items']} items, {report['unique_sids']} unique SIDs, "
                  f"{report['collisions_before_resolution']} collisions resolved.", "",
                  f"![SID code usage]({plot.relative_to(run.root)})", ""]
    write_text(run.path(REPORT), "\n".join(lines))
    return run.path(REPORT)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="genrec report", description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True, nargs="+", help="run directory (or several), e.g. runs/demo")
    parser.add_argument("--split", help="only rows of this split (train, valid or test)")
    parser.add_argument("--write", action="store_true",
                        help="also write <run-dir>/report.md with plots (plots/*.png) for each run directory")
    parser.add_argument("--paired", action="store_true",
                        help="also print each run's model metrics minus the first run's, with 95%% paired "
                             "bootstrap intervals (needs --split and two or more runs)")
    args = parser.parse_args(argv)
    if args.paired and (args.split is None or len(args.run_dir) < 2):
        parser.error("--paired needs --split and at least two --run-dir values (the first is the reference)")
    metrics = []
    for run_dir in map(Path, args.run_dir):
        found = [m for m in collect(run_dir) if args.split in (None, m.get("split"))]
        if not found:
            raise FileNotFoundError(f"no {args.split or ''} metrics.json under {run_dir}/eval or {run_dir}/baselines; "
                                    "run `genrec pipeline` (evaluate stage) or `genrec baseline NAME` first")
        metrics += [{**m, "run": _run_label(run_dir)} for m in found]
    print(markdown_table(metrics, runs=len(args.run_dir) > 1))
    buckets = bucket_table(metrics, runs=len(args.run_dir) > 1)
    if buckets:
        print()
        print(buckets)
    for run_dir in map(Path, args.run_dir):
        if guard := guard_note(run_dir):
            print(f"\n{_run_label(run_dir)}: {guard}")
    if args.paired:
        print()
        print(paired_table(paired_differences(list(map(Path, args.run_dir)), args.split)))
    for run_dir in map(Path, args.run_dir) if args.write else ():
        print(f"\nwrote {write_report(run_dir, args.split or 'test')}")
