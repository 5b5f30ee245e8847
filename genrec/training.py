"""What genrec's two trainers (SFT and GRPO) share: run options, model selection, resume, the time budget and the
final save. The trainers import from here, never from each other.

- `TrainingOptions`: the options of a training stage beyond TRL's config (model-selection rows and beams, the
  wall-clock budget, LoRA); `GenRecSFTArguments` and `GenRecGRPOArguments` extend it.
- Model selection: `selection_rows` picks the valid rows decoded every ``eval_steps``, `selection_metrics` ranks
  them with the one ranker (`Recommender.recommend`) across processes.
- Resume: `prepare_resume` removes checkpoints a kill cut short (transformers does not save atomically) and, with
  ``resume_from_checkpoint: auto``, discards checkpoints made from another configuration or other run inputs;
  `find_resume_checkpoint` then picks the latest with transformers' `get_last_checkpoint`.
- `TimeBudgetCallback` stops training (after an evaluation and a save) when the budget is used up.
- `save_final` writes the selected model with its tokenizer, SID map, catalog, how it was trained and, when the run
  has interests, the items' embedded interests that explanations are made of (`explanation_interests`).

Example:
    >>> prepare_resume(run_signature([args, training_args], run.root, ["sids.json"]), training_args)  # doctest: +SKIP
    >>> trainer.train(resume_from_checkpoint=find_resume_checkpoint(training_args))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from genrec.artifacts import INTERESTS, ITEM_EMB, Run
from genrec.checkpoint import (
    checkpoint_metadata,
    save_checkpoint,
    update_metadata,
    write_checkpoint_extras,
    write_trainer_log,
)
from genrec.decoding.beam import DecodeConfig
from genrec.explain import ItemInterests
from genrec.io import write_json
from genrec.precision import describe_device
from genrec.recommender import Recommender

logger = logging.getLogger(__name__)

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
UNSET_OUTPUT_DIR = "trainer_output"  # what TrainingArguments puts in output_dir when none is given
# knobs that may change between a run and its resumption
VOLATILE = {"resume_from_checkpoint", "logging_dir", "max_minutes", "report_to", "disable_tqdm"}


@dataclass
class TrainingOptions:
    """Options every genrec training stage has (the stage's own arguments extend these)."""

    eval_rows: int = field(
        default=1000, metadata={"help": "Valid rows decoded for model selection (a fixed random subset; 0 = all)."}
    )
    eval_num_beams: int = field(
        default=DecodeConfig.beam,
        metadata={"help": "Beams of the constrained beam search during model selection (= items kept)."},
    )
    max_minutes: float | None = field(
        default=None,
        metadata={"help": "Wall-clock budget: when it runs out, training evaluates, saves and stops."},
    )
    use_lora: bool = field(
        default=False,
        metadata={"help": "Train LoRA adapters (plus the full embeddings and LM head, which hold the SID tokens) "
                  "instead of all weights; the final checkpoint is merged."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(LORA_TARGETS), metadata={"help": "Modules that get LoRA adapters."}
    )

    def __post_init__(self):
        if self.eval_rows < 0:
            raise ValueError(f"eval_rows={self.eval_rows}: must be >= 0 (0 = the whole valid split)")
        if self.eval_num_beams < 10:
            raise ValueError(f"eval_num_beams={self.eval_num_beams}: HR@10 needs at least 10 beams")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes={self.max_minutes}: must be > 0, or null for no budget")

    def lora_config(self):
        """peft's LoraConfig, or None without use_lora."""
        if not self.use_lora:
            return None
        from peft import LoraConfig

        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=self.lora_target_modules, task_type="CAUSAL_LM",
                          modules_to_save=["embed_tokens", "lm_head"], ensure_weight_tying=True)


# ----------------------------------------------------------------------------- model selection


def selection_rows(rows: list[dict], sids: dict, n: int, seed: int = 0) -> list[tuple[list[str], str]]:
    """(history, target) of a fixed random subset of `rows` (`n` rows; 0 = all) whose target and at least one
    history item have a SID: the rows model selection decodes."""
    rows = [r for r in rows if r["target"] in sids and any(i in sids for i in r["history"])]
    if n and n < len(rows):
        rows = random.Random(seed).sample(rows, n)
    return [(r["history"], r["target"]) for r in rows]


def selection_metrics(accelerator, recommender: Recommender, rows: Sequence[tuple[Sequence[str], str]],
                      decode: DecodeConfig) -> dict[str, float]:
    """Model selection inside a trainer: HR@K / NDCG@K of `recommender` on (history, target) rows, the rows split
    across processes and gathered (every rank runs the same number of forward passes, as ZeRO-3 needs)."""
    from accelerate.utils import gather_object

    from genrec.evaluation import KS, ranking_metrics

    start = time.time()
    with accelerator.split_between_processes(list(rows), apply_padding=True) as shard:
        recs = recommender.recommend([h for h, _ in shard], decode)
    recs = gather_object([(r.items, r.invalid) for r in recs])[: len(rows)]
    out = ranking_metrics([items for items, _ in recs], [t for _, t in rows], ks=[k for k in KS if k <= decode.beam])
    out["invalid"] = sum(inv for _, inv in recs)
    out["ranking_seconds"] = round(time.time() - start, 1)
    return out


def choose_content_weight(checkpoint: Path, rows: Sequence[dict], weights: Sequence[float], metric: str,
                          beam: int = DecodeConfig.beam) -> dict:
    """Rank `rows` (the whole valid split) with the checkpoint at each content-prior weight (genrec.content) and
    record the best by `metric` (a tie keeps the smaller weight) in its genrec.json as ``content_weight``, with
    every trial under ``content_selection``; `genrec evaluate` and the server then use it. Returns that record.
    A checkpoint without item vectors (no embed stage) keeps weight 0."""
    from genrec.evaluation import ranking_metrics
    from genrec.recommender import load_recommender

    name = metric.removeprefix("eval_")
    weights = sorted({float(w) for w in weights} | {0.0})
    rec = load_recommender(checkpoint)
    if rec.content is None or weights == [0.0]:
        why = "no item vectors" if rec.content is None else "no weight above 0 to try"
        update_metadata(checkpoint, content_weight=0.0, content_selection={"skipped": why})
        return {"content_weight": 0.0, "skipped": why}
    histories, targets = [r["history"] for r in rows], [r["target"] for r in rows]
    trials = []
    for weight in tqdm(weights, desc="content weight on valid", unit="weight"):
        recs = rec.recommend(histories, DecodeConfig(beam=beam, content_weight=weight))
        found = ranking_metrics([r.items for r in recs], targets)
        if name not in found:
            raise ValueError(f"metric {metric!r}: choose the content weight by one of {', '.join(found)}")
        trials.append({"weight": weight, **{k: round(found[k], 5) for k in ("HR@10", "NDCG@10", name)}})
        logger.info("content weight %g on %d valid rows: %s", weight, len(rows), trials[-1])
    best = max(trials, key=lambda t: (t[name], -t["weight"]))
    record = {"split": "valid", "rows": len(rows), "metric": name, "beam": beam, "trials": trials}
    update_metadata(checkpoint, content_weight=best["weight"], content_selection=record)
    logger.info("content weight %g chosen (%s %.4f; weight 0: %.4f)", best["weight"], name, best[name],
                trials[0][name])
    return {"content_weight": best["weight"], **record}


# ----------------------------------------------------------------------------- resume


def _is_complete(checkpoint: Path) -> bool:
    """The trainer writes trainer_state.json last, so a checkpoint whose state parses was saved whole."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def find_resume_checkpoint(training_args) -> str | None:
    """--resume_from_checkpoint: a path, or 'auto' for the latest checkpoint in output_dir (None when there is
    none; 'last' raises instead). `prepare_resume` has already removed checkpoints cut short by a kill."""
    value = training_args.resume_from_checkpoint
    if value not in ("auto", "last", "true", "True"):
        return value
    out = Path(training_args.output_dir)
    found = get_last_checkpoint(str(out)) if out.is_dir() else None
    if found is None and value != "auto":
        raise ValueError(f"--resume_from_checkpoint {value}: no complete checkpoint-* in {out}")
    return found


def run_signature(configs: list, run_dir: Path, inputs: list[str]) -> str:
    """What a resumed run must share with the checkpoints it resumes: the configuration (not resume / logging /
    time-budget knobs) and the contents of the run-directory files `inputs` (a re-quantized SID map, new token
    semantics or another SFT model must not be resumed)."""
    payload: dict = {}
    for cfg in configs:
        payload.update(cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg))
    payload = {k: v for k, v in payload.items() if k not in VOLATILE}
    for name in inputs:
        path = Path(run_dir) / name
        payload[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_resume(signature: str, training_args, fresh: bool = False) -> None:
    """Before resuming: remove checkpoints a kill cut short during their save, and with resume 'auto' discard
    checkpoints of another configuration or other inputs (or all, when `fresh`) instead of resuming them."""
    out = Path(training_args.output_dir)
    marker = out / "genrec_run.json"
    if training_args.process_index == 0:
        for ckpt in out.glob("checkpoint-*"):
            if not _is_complete(ckpt):
                logger.warning("removing %s: it was not saved completely", ckpt)
                shutil.rmtree(ckpt)
    if training_args.resume_from_checkpoint == "auto" and (marker.exists() or fresh):
        stale = fresh or json.loads(marker.read_text()).get("signature") != signature
        if stale and training_args.process_index == 0:
            found = list(out.glob("checkpoint-*"))
            if found:
                logger.warning("%s: discarding %d checkpoint(s) of %s; starting afresh", out, len(found),
                               "an earlier run (--force)" if fresh else "another configuration or run inputs")
            for ckpt in found:
                shutil.rmtree(ckpt)
    training_args.distributed_state.wait_for_everyone()
    if training_args.process_index == 0:
        write_json(marker, {"signature": signature})


class TimeBudgetCallback(TrainerCallback):
    """Stops training (after an evaluation and a save) once `minutes` of wall-clock time have passed."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.start = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        if time.time() - self.start > self.seconds and not control.should_training_stop:
            logger.info("time budget of %.1f min used up at step %d: evaluating, saving, stopping",
                        self.seconds / 60, state.global_step)
            control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"
            control.should_save = True
        return control


# ----------------------------------------------------------------------------- final model


def explanation_interests(run: Run, item_ids: Sequence[str]) -> ItemInterests | None:
    """The items' positive interests embedded with the default encoder (bundled MiniLM), for the checkpoint's
    explanations (genrec.explain); None when the run has no interests.jsonl (no mine stage)."""
    from genrec.encoders import EmbedConfig, load_encoder
    from genrec.interests.schema import positive_interests

    if not run.exists(INTERESTS):
        logger.info("no %s in %s: the checkpoint carries no interests, so it cannot explain", INTERESTS, run.root)
        return None
    positives = positive_interests(run.interests())
    interests = ItemInterests.build({iid: positives.get(iid, []) for iid in item_ids},
                                    load_encoder(EmbedConfig()).encode)
    logger.info("explanations: %d interests of %d items embedded", len(interests.texts), len(interests))
    return interests


def content_vectors(run: Run, item_ids: Sequence[str]) -> np.ndarray | None:
    """The items' text embeddings (the embed stage's) in `item_ids` order, for the checkpoint's content prior
    (genrec.content); None when the run has no embeddings."""
    if not run.exists(ITEM_EMB):
        logger.info("no %s in %s: the checkpoint carries no item vectors, so its search has no content prior",
                    ITEM_EMB, run.root)
        return None
    return run.item_embeddings().aligned(list(item_ids))


def save_final(trainer, out_dir: Path, *, sids: dict, titles: dict[str, str], max_history: int | None, stage: str,
               interests: Callable[[], ItemInterests | None] | None = None,
               content: Callable[[], np.ndarray | None] | None = None, **extra) -> None:
    """The (best, when selection ran) model with tokenizer, SID map, catalog titles and how it was trained
    (genrec.json: prompt settings, precision, selection, `extra`) into `out_dir`; LoRA adapters are merged.
    `interests` returns the items' embedded interests (`explanation_interests`), `content` their text vectors
    (`content_vectors`); both run on the main process only."""
    state = trainer.state
    meta = checkpoint_metadata(
        max_history, bool(trainer.args.bf16), stage=stage, metric=trainer.args.metric_for_best_model,
        best_metric=state.best_metric, best_step=state.best_global_step, global_step=state.global_step,
        best_checkpoint=state.best_model_checkpoint, trained_on=describe_device(trainer.args.device), **extra)
    embedded = interests() if interests is not None and trainer.is_world_process_zero() else None
    vectors = content() if content is not None and trainer.is_world_process_zero() else None
    if trainer.is_deepspeed_enabled:  # ZeRO-3 weights are sharded: let the trainer gather them
        trainer.save_model(str(out_dir))
        if trainer.is_world_process_zero():
            write_checkpoint_extras(out_dir, sids, meta, titles, embedded, vectors)
    else:
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            model = trainer.accelerator.unwrap_model(trainer.model)
            if hasattr(model, "merge_and_unload"):
                model = model.merge_and_unload()
            save_checkpoint(model, trainer.processing_class, out_dir, sids, meta, titles=titles, interests=embedded,
                            item_vectors=vectors)
    if trainer.is_world_process_zero():
        write_trainer_log(out_dir, state.log_history)


# ----------------------------------------------------------------------------- config files and pipeline stages


def parse_yaml_config(path: str | Path, dataclass_types: tuple, what: str, overrides: dict | None = None) -> tuple:
    """The dataclasses of a training YAML (TRL's own way: TrlParser), with `overrides` replacing its values; errors
    name the file."""
    from trl import TrlParser

    from genrec.io import read_yaml_mapping

    path = Path(path)
    values = read_yaml_mapping(path, what)
    try:
        return tuple(TrlParser(dataclass_types).parse_dict({**values, **(overrides or {})}))
    except ValueError as e:
        hint = ""
        if str(e).startswith(("False is not a valid", "True is not a valid")):
            hint = (" (YAML reads an unquoted no/yes/off/on as a boolean: quote the value, e.g. eval_strategy: 'no', "
                    "or --set 'sft.overrides.eval_strategy=\"no\"')")
        raise ValueError(f"{path}: {e}{hint}") from None


@dataclass
class TrainingStageConfig:
    """A training stage in a pipeline YAML: the stage's own YAML (configs/sft/, configs/grpo/) plus overrides."""

    config: str = field(default="", metadata={"help": "Training YAML, relative to the working directory."})
    overrides: dict = field(
        default_factory=dict,
        metadata={"help": "Keys that replace the YAML's, e.g. {num_train_epochs: 1}; run_dir is the pipeline's."},
    )
    config_digest: str = field(
        init=False, default="",
        metadata={"help": "Derived: hash of the YAML's text, so editing the YAML re-runs the stage."},
    )

    def __post_init__(self):
        if not isinstance(self.overrides, dict):
            raise ValueError(f"overrides must be a mapping of option: value, got {self.overrides!r}")
        path = Path(self.config)
        self.config_digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""

    def parse(self, dataclass_types: tuple, what: str, run_dir: Path) -> tuple:
        """The stage's dataclasses for `run_dir`; the last (TRL's config) resumes its own checkpoints by default."""
        parsed = parse_yaml_config(self.config, dataclass_types, what, {**self.overrides, "run_dir": str(run_dir)})
        if parsed[-1].resume_from_checkpoint is None:
            parsed[-1].resume_from_checkpoint = "auto"
        return parsed
