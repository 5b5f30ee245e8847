"""`genrec evaluate`: trie-constrained beam search of a checkpoint over a split, scored with HR@K and NDCG@K.

    genrec evaluate --run-dir runs/demo [--checkpoint DIR] [--split test] [--beam 20] [--batch-size 16] [--softmax sid]
                    [--max-rows N] [--out DIR]

The checkpoint (default ``<run-dir>/checkpoints/sft``, HF ``save_pretrained`` format) and its tokenizer load with
``from_pretrained``; the item -> SID map is the checkpoint's own ``sids.json`` when present, else the run's. Each
row's history becomes a prompt, beam search returns the top items (every one a real, distinct catalog item), and
``<out>/metrics.json`` + ``<out>/predictions.jsonl`` are written in the shared format of `genrec.evaluation`
(default out: ``<run-dir>/eval/<split>``). `evaluate_checkpoint` serves the pipeline's evaluate stage;
`evaluate_model` serves a training callback that already holds the model in memory.

Example:
    >>> evaluate_checkpoint("runs/demo", split="valid", max_rows=500)["HR@10"]  # doctest: +SKIP
    0.0932
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser

from genrec.data import read_split
from genrec.decoding import SIDTrie, recommend
from genrec.evaluation import KS, write_results
from genrec.sid import load_sids, sid_string
from genrec.tasks import encode_prompt, sid_history_prompt

logger = logging.getLogger(__name__)

PromptFn = Callable[[list[str]], str]


@dataclass
class EvaluateArgs:
    run_dir: str = field(metadata={"help": "Run directory holding splits/ and sids.json (and checkpoints/)."})
    checkpoint: str | None = field(
        default=None, metadata={"help": "Model directory (save_pretrained format); default <run-dir>/checkpoints/sft."}
    )
    split: str = field(default="test", metadata={"help": "Split to evaluate: train, valid or test."})
    beam: int = field(default=20, metadata={"help": "Beam width; the top min(20, beam) items are kept per row."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per beam-search batch."})
    softmax: str = field(
        default="sid",
        metadata={"help": "Score SID tokens with a softmax over SID tokens ('sid', as SFT trains with sid_softmax) "
                  "or over the whole vocabulary ('full')."},
    )
    max_rows: int | None = field(default=None, metadata={"help": "Evaluate only the first N rows (quick checks)."})
    out: str | None = field(default=None, metadata={"help": "Output directory; default <run-dir>/eval/<split>."})
    device: str | None = field(default=None, metadata={"help": "torch device; default cuda when available, else cpu."})

    def __post_init__(self):
        if self.beam < 1:
            raise ValueError(f"--beam {self.beam}: must be >= 1 (20 is the benchmark protocol)")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size {self.batch_size}: must be >= 1")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"--max-rows {self.max_rows}: must be >= 1 (or leave it out for the whole split)")
        if self.softmax not in ("sid", "full"):
            raise ValueError(f"--softmax {self.softmax}: use sid or full")


def evaluate_checkpoint(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    *,
    split: str = "test",
    beam: int = 20,
    batch_size: int = 16,
    softmax: str = "sid",
    max_rows: int | None = None,
    out_dir: str | Path | None = None,
    prompt_fn: PromptFn = sid_history_prompt,
    encode_fn: Callable[[str], list[int]] | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Load a checkpoint and its SID map, evaluate it on a split, write metrics.json + predictions.jsonl.

    `prompt_fn` turns a row's history (SID strings, oldest first) into prompt text; `encode_fn` turns that text
    into token ids (default: the tokenizer's plain encoding; pass training's encoder when it adds a chat template).
    Returns the metrics dict.
    """
    run_dir = Path(run_dir)
    checkpoint = Path(checkpoint) if checkpoint else run_dir / "checkpoints" / "sft"
    if not (checkpoint / "config.json").exists():
        raise FileNotFoundError(f"{checkpoint} holds no model (config.json missing); run the sft stage first "
                                "or pass --checkpoint DIR")
    sids_path = checkpoint / "sids.json" if (checkpoint / "sids.json").exists() else run_dir / "sids.json"
    sids = load_sids(sids_path)
    rows = read_split(run_dir, split)[:max_rows]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    logger.info("evaluating %s on %d %s rows (beam %d, SIDs from %s, device %s)",
                checkpoint, len(rows), split, beam, sids_path, device)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).to(device)
    out_dir = Path(out_dir) if out_dir else run_dir / "eval" / split
    return evaluate_model(model, tokenizer, sids, rows, out_dir, split=split, beam=beam, batch_size=batch_size,
                          softmax=softmax, prompt_fn=prompt_fn, encode_fn=encode_fn, progress=progress,
                          extra={"checkpoint": str(checkpoint)})


def evaluate_model(
    model,
    tokenizer,
    sids: dict[str, list[int]],
    rows: Sequence[dict],
    out_dir: str | Path,
    *,
    split: str,
    beam: int = 20,
    batch_size: int = 16,
    softmax: str = "sid",
    prompt_fn: PromptFn = sid_history_prompt,
    encode_fn: Callable[[str], list[int]] | None = None,
    progress: bool = True,
    extra: dict | None = None,
) -> dict:
    """Evaluate an in-memory model (e.g. from a training callback); the model's train/eval mode is restored."""
    if not rows:
        raise ValueError(f"split {split!r} has no rows to evaluate")
    trie = SIDTrie.from_sids(sids, tokenizer)
    prompts = build_prompts(rows, sids, prompt_fn)
    if encode_fn is None:  # the exact prompt tokens training used (chat template when the model has one)
        encode_fn = functools.partial(encode_prompt, tokenizer)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        recs = recommend(model, tokenizer, prompts, trie, k=min(max(KS), beam), num_beams=beam,
                         batch_size=batch_size, progress=progress, encode=encode_fn, softmax=softmax)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    invalid = sum(r.invalid for r in recs)
    short = sum(len(r.items) < min(max(KS), beam, trie.num_items) for r in recs)
    metrics = write_results(
        Path(out_dir), rows, [r.items for r in recs], scores=[r.scores for r in recs], method="genrec",
        split=split, seconds=seconds, beam=beam, invalid=invalid,
        extra={"softmax": softmax, "short_rows": short, "catalog_items": trie.num_items, **(extra or {})},
    )
    logger.info("%s: HR@10 %.4f NDCG@10 %.4f invalid %d (%.1f s) -> %s", split, metrics["HR@10"],
                metrics["NDCG@10"], invalid, seconds, out_dir)
    return metrics


def build_prompts(rows: Sequence[dict], sids: dict[str, list[int]], prompt_fn: PromptFn = sid_history_prompt):
    """One prompt per row from the SIDs of its history; history items without a SID are left out (and counted)."""
    prompts, dropped = [], 0
    for row in rows:
        history = [sid_string(sids[i]) for i in row["history"] if i in sids]
        dropped += len(row["history"]) - len(history)
        prompts.append(prompt_fn(history))
    if dropped:
        logger.warning("%d history items have no SID in the map and were left out of the prompts", dropped)
    return prompts


def make_parser() -> HfArgumentParser:
    return HfArgumentParser(EvaluateArgs, prog="genrec evaluate", description=__doc__.split("\n")[0])


def main(argv: list[str] | None = None) -> dict:
    if argv and argv[0] == "--":  # `genrec evaluate -- --run-dir ...` passes the separator through
        argv = argv[1:]
    (args,) = make_parser().parse_args_into_dataclasses(args=argv)
    return evaluate_checkpoint(args.run_dir, args.checkpoint, split=args.split, beam=args.beam,
                               batch_size=args.batch_size, softmax=args.softmax, max_rows=args.max_rows,
                               out_dir=args.out,
                               device=args.device)


@dataclass
class EvaluateStageConfig:
    split: str = field(default="test", metadata={"help": "Split the pipeline's evaluate stage scores."})
    beam: int = field(default=20, metadata={"help": "Beam width (20 is the benchmark protocol)."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per beam-search batch."})
    softmax: str = field(default="sid", metadata={"help": "SID-token scoring: 'sid' or 'full' (see genrec evaluate)."})
    max_rows: int | None = field(default=None, metadata={"help": "Score only the first N rows (smoke runs)."})

    def __post_init__(self):
        EvaluateArgs(run_dir=".", split=self.split, beam=self.beam, batch_size=self.batch_size,
                     softmax=self.softmax, max_rows=self.max_rows)  # same checks as the CLI
        if self.split not in ("train", "valid", "test"):
            raise ValueError(f"evaluate.split={self.split!r}: use train, valid or test")


def run_evaluate_stage(run_dir: Path, cfg: EvaluateStageConfig) -> None:
    """The pipeline's `evaluate` stage: score <run_dir>/checkpoints/sft on a split -> eval/<split>/metrics.json."""
    evaluate_checkpoint(run_dir, split=cfg.split, beam=cfg.beam, batch_size=cfg.batch_size, softmax=cfg.softmax,
                        max_rows=cfg.max_rows)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
