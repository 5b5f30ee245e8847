"""Plots of a run (matplotlib, PNG): training curves, SID code usage per level, HR@K / NDCG@K against baselines.

Functions take data (log histories, a SID report, metrics dicts) and a path; `genrec report --write` calls them
for a run directory and links the images from its report.md.

Example:
    >>> metrics_plot([genrec_metrics, knn_metrics], Path("runs/demo/plots/metrics.png"))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from genrec.evaluation import KS
from genrec.io import atomic_path


def _figure(ncols: int, width: float = 4.6, height: float = 3.4):
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return plt, fig, axes[0]


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(e["step"], e[key]) for e in history if key in e and "step" in e]
    return [p[0] for p in points], [float(p[1]) for p in points]


def training_curves(histories: dict[str, list[dict]], path: Path) -> Path:
    """Per training stage: the training loss (and GRPO's mean reward) and the valid HR@10 / NDCG@10 of model
    selection, against the optimizer step. `histories` maps a stage name to a trainer's ``log_history``."""
    plt, fig, axes = _figure(2)
    for stage, history in histories.items():
        for key, style in (("loss", "-"), ("reward", "--")):
            steps, values = _series(history, key)
            if steps:
                axes[0].plot(steps, values, style, label=f"{stage} {key}")
        for key, style in (("eval_HR@10", "-o"), ("eval_NDCG@10", "-s")):
            steps, values = _series(history, key)
            if steps:
                axes[1].plot(steps, values, style, markersize=3, label=f"{stage} {key[5:]}")
    axes[0].set(title="training", xlabel="step")
    axes[1].set(title="model selection (valid)", xlabel="step")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def code_usage(sids: dict[str, list[int]], report: dict, path: Path) -> Path:
    """Items per code at each SID level (sorted, log scale) with the level's perplexity and codes used (from
    sid_report.json): a flat curve is a well-used codebook, a steep one a few codes carrying most items."""
    from collections import Counter

    plt, fig, axes = _figure(1, width=6)
    ax = axes[0]
    for n, level in enumerate(report.get("levels", [])):
        counts = sorted(Counter(c[n] for c in sids.values() if len(c) > n).values(), reverse=True)
        label = (f"level {n + 1}: {level.get('codes_used')}/{level.get('codebook_size')} used, "
                 f"perplexity {level.get('perplexity', 0):.0f}")
        ax.plot(range(1, len(counts) + 1), counts, label=label)
    ax.set(title=f"SID code usage ({report.get('items')} items, {report.get('unique_sids')} unique SIDs)",
           xlabel="code rank", ylabel="items", yscale="log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def metrics_plot(metrics: list[dict], path: Path) -> Path:
    """HR@K and NDCG@K for K in 1, 3, 5, 10, 20, one line per method (the model and every baseline)."""
    plt, fig, axes = _figure(2)
    for m in metrics:
        ks = [k for k in KS if f"HR@{k}" in m]
        label = f"{m.get('run', '')} {m.get('method')}".strip()
        style = "-o" if str(m.get("method", "")).startswith("genrec") else "--"
        axes[0].plot(ks, [m[f"HR@{k}"] for k in ks], style, markersize=4, label=label)
        axes[1].plot(ks, [m[f"NDCG@{k}"] for k in ks], style, markersize=4, label=label)
    for ax, name in zip(axes, ("HR@K", "NDCG@K"), strict=True):
        ax.set(title=f"{name} ({metrics[0].get('split', '')})", xlabel="K", xticks=list(KS))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(plt, fig, path)
