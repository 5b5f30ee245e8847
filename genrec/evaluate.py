"""`genrec evaluate`: trie-constrained beam search of a checkpoint over a split, scored with HR@K and NDCG@K.

    genrec evaluate --run-dir runs/demo [--checkpoint DIR] [--split test] [--beam 20] [--batch-size 16]
                    [--softmax sid] [--bf16 true|false] [--max-rows N] [--out DIR]

The checkpoint (default ``<run-dir>/checkpoints/sft``) loads through `genrec.recommender.load_recommender`, the one
loading path, with its own SID map, prompt settings and precision; the run directory supplies the split's rows.
Each row's history becomes the same prompt training used, beam search returns the top items (every one a real,
distinct catalog item), and ``<out>/metrics.json`` + ``<out>/predictions.jsonl`` are written in the shared format
of `genrec.evaluation` (default out: ``<run-dir>/eval/<split>``). `evaluate_checkpoint` serves the CLI and the
pipeline's evaluate stage; `evaluate_model` scores a `Recommender` already in memory.

Example:
    >>> evaluate_checkpoint("runs/demo", split="valid", max_rows=500)["HR@10"]  # doctest: +SKIP
    0.0932
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from genrec.artifacts import ITEMS, SPLIT, SPLITS, Run
from genrec.checkpoint import has_model, has_sid_map
from genrec.decoding.beam import DecodeConfig
from genrec.evaluation import KS, train_item_counts, write_results
from genrec.recommender import Recommender, load_recommender

logger = logging.getLogger(__name__)


@dataclass
class EvaluateArgs:
    run_dir: str = field(metadata={"help": "Run directory holding splits/ (and checkpoints/sft, sids.json)."})
    checkpoint: str | None = field(
        default=None, metadata={"help": "Model directory (save_pretrained format); default <run-dir>/checkpoints/sft."}
    )
    split: str = field(default="test", metadata={"help": "Split to evaluate: train, valid or test."})
    max_rows: int | None = field(default=None, metadata={"help": "Evaluate only the first N rows (quick checks)."})
    out: str | None = field(default=None, metadata={"help": "Output directory; default <run-dir>/eval/<split>."})
    device: str | None = field(default=None, metadata={"help": "torch device; default cuda when available, else cpu."})

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"--split {self.split}: use one of {', '.join(SPLITS)}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"--max-rows {self.max_rows}: must be >= 1 (or leave it out for the whole split)")


def evaluate_checkpoint(run_dir: str | Path, checkpoint: str | Path | None = None, *, split: str = "test",
                        decode: DecodeConfig | None = None, max_rows: int | None = None,
                        out_dir: str | Path | None = None, device: str | None = None, progress: bool = True,
                        method: str = "genrec") -> dict:
    """Load a checkpoint, evaluate it on a split of the run, write metrics.json + predictions.jsonl; return the
    metrics. A checkpoint without its own sids.json (a plain save_pretrained model) uses the run's."""
    run = Run(run_dir)
    checkpoint = Path(checkpoint) if checkpoint else run.checkpoint("sft")
    if not has_model(checkpoint):
        raise FileNotFoundError(f"{checkpoint} holds no model (config.json missing); run the sft stage first "
                                "or pass --checkpoint DIR")
    recommender = load_recommender(checkpoint, device=device, sids=None if has_sid_map(checkpoint) else run.sids())
    rows = run.split(split)[:max_rows]
    logger.info("evaluating %s on %d %s rows", checkpoint, len(rows), split)
    counts = None  # the head / tail / cold breakdown needs the train rows and the catalog
    if run.exists(SPLIT, split="train") and run.exists(ITEMS):
        counts = train_item_counts(run.split("train"), [it["item_id"] for it in run.items()])
    return evaluate_model(recommender, rows, Path(out_dir) if out_dir else run.eval_dir(split), split=split,
                          decode=decode, progress=progress, extra={"checkpoint": str(checkpoint)}, item_counts=counts,
                          method=method)


def evaluate_model(recommender: Recommender, rows: Sequence[dict], out_dir: str | Path, *, split: str,
                   decode: DecodeConfig | None = None, progress: bool = True, extra: dict | None = None,
                   item_counts: dict[str, int] | None = None, method: str = "genrec") -> dict:
    """Rank `rows` with an in-memory `Recommender` and write the shared output files; returns the metrics.
    `item_counts` (train interactions per item) adds the head / tail / cold breakdown."""
    if not rows:
        raise ValueError(f"split {split!r} has no rows to evaluate")
    decode = decode or DecodeConfig()
    dropped = sum(i not in recommender.sids for r in rows for i in r["history"])
    if dropped:
        logger.warning("%d history items have no SID in the map and were left out of the prompts", dropped)
    start = time.perf_counter()
    recs = recommender.recommend([r["history"] for r in rows], decode, k=min(max(KS), decode.beam),
                                 progress=progress)
    seconds = time.perf_counter() - start
    invalid = sum(r.invalid for r in recs)
    short = sum(len(r.items) < min(max(KS), decode.beam, recommender.trie.num_items) for r in recs)
    metrics = write_results(
        Path(out_dir), rows, [r.items for r in recs], scores=[r.scores for r in recs], method=method,
        split=split, seconds=seconds, beam=decode.beam, invalid=invalid,
        extra={"softmax": decode.softmax, "bf16": recommender.use_bf16(decode.bf16), "short_rows": short,
               "content_weight": recommender.resolved_content_weight(decode) if recommender.content is not None
               else 0.0,
               "content_decay": decode.content_decay,
               "catalog_items": recommender.trie.num_items, **(extra or {})}, item_counts=item_counts,
    )
    logger.info("%s: HR@10 %.4f NDCG@10 %.4f invalid %d (%.1f s) -> %s", split, metrics["HR@10"],
                metrics["NDCG@10"], invalid, seconds, out_dir)
    return metrics


def make_parser() -> HfArgumentParser:
    return HfArgumentParser((EvaluateArgs, DecodeConfig), prog="genrec evaluate", description=__doc__.split("\n")[0])


def main(argv: list[str] | None = None) -> dict:
    if argv and argv[0] == "--":  # `genrec evaluate -- --run-dir ...` passes the separator through
        argv = argv[1:]
    args, decode = make_parser().parse_args_into_dataclasses(args=argv)
    return evaluate_checkpoint(args.run_dir, args.checkpoint, split=args.split, decode=decode,
                               max_rows=args.max_rows, out_dir=args.out, device=args.device)


@dataclass
class EvaluateStageConfig(DecodeConfig):
    """The pipeline's evaluate stage: the search settings of `DecodeConfig` plus which rows to score."""

    split: str = field(default="test", metadata={"help": "Split the pipeline's evaluate stage scores."})
    max_rows: int | None = field(default=None, metadata={"help": "Score only the first N rows (smoke runs)."})
    checkpoint: str = field(
        default="auto",
        metadata={"help": "Model to score: 'sft', 'grpo', or 'auto' (the last training stage the pipeline runs; "
                  "the pipeline resolves it when it reads the config)."},
    )
    compare_sft: bool = field(
        default=True,
        metadata={"help": "When the scored model is GRPO's, also score the SFT model it started from on the same "
                  "rows (eval/<split>-sft, method genrec-sft), so the report shows what GRPO added."},
    )

    def __post_init__(self):
        super().__post_init__()
        EvaluateArgs(run_dir=".", split=self.split, max_rows=self.max_rows)  # same checks as the CLI
        if self.checkpoint not in ("auto", "sft", "grpo"):
            raise ValueError(f"evaluate.checkpoint={self.checkpoint!r}: use auto, sft or grpo")


def evaluate_needs(cfg: EvaluateStageConfig) -> tuple[str, ...]:
    """The evaluate stage reads the GRPO model only when it scores it."""
    return ("grpo",) if cfg.checkpoint == "grpo" else ()


def run_evaluate_stage(run_dir: Path, cfg: EvaluateStageConfig) -> None:
    """The pipeline's `evaluate` stage: score the run's final model (sft or grpo) on a split ->
    eval/<split>/metrics.json, and with grpo and `compare_sft` the SFT model too -> eval/<split>-sft/."""
    decode = DecodeConfig(**{f: v for f, v in asdict(cfg).items() if f in DecodeConfig.__dataclass_fields__})
    run = Run(run_dir)
    stage = "sft" if cfg.checkpoint == "auto" else cfg.checkpoint
    evaluate_checkpoint(run_dir, run.checkpoint(stage), split=cfg.split, decode=decode, max_rows=cfg.max_rows)
    if stage == "grpo" and cfg.compare_sft:
        evaluate_checkpoint(run_dir, run.checkpoint("sft"), split=cfg.split, decode=decode, max_rows=cfg.max_rows,
                            out_dir=run.eval_dir(f"{cfg.split}-sft"), method="genrec-sft")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
