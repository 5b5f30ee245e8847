"""Supervised fine-tuning with TS-Align (the `sft` stage and ``training/sft.py``), on TRL's `SFTTrainer`.

One flat YAML fills three dataclasses, as in TRL's own scripts: `GenRecSFTArguments` (run directory, task mix,
curriculum, model selection, LoRA), `genrec.modeling.ModelConfig` (base model, SA-Init) and TRL's `SFTConfig`
(optimiser, batch, steps, eval / save cadence). `train_sft`:

1. builds the model with every SID token added and SA-initialised (`genrec.modeling.prepare_model`);
2. materialises the task schedule (`genrec.tasks.build_sft_dataset`: curriculum, mix, one pass per epoch, batches
   grouped by length), so the trainer reads it in order and a resumed run sees the same batches;
3. trains with `GenRecSFTTrainer`: the LM head runs only at label positions, and at positions whose label is a SID
   token the softmax is over SID tokens only (``sid_softmax``); every ``eval_steps`` a valid subset is decoded
   with trie-constrained beam search and ``eval_HR@10`` picks the best checkpoint (``metric_for_best_model``);
4. writes the best model with its tokenizer and SID map to ``<run_dir>/checkpoints/sft`` (LoRA merged).

Example:
    >>> script_args, model_args, training_args = parse_sft_config("configs/sft/demo.yaml", {"run_dir": "runs/demo"})
    >>> train_sft(script_args, model_args, training_args)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import set_seed
from trl import SFTConfig, SFTTrainer

from genrec.artifacts import SIDS, SPLIT, TOKEN_SEMANTICS, Run
from genrec.checkpoint import write_checkpoint_extras
from genrec.decoding.beam import DecodeConfig
from genrec.head import add_sid_head
from genrec.interests.schema import positive_interests
from genrec.modeling import ModelConfig, prepare_model
from genrec.precision import BF16_HELP, resolve_trainer_bf16
from genrec.recommender import Recommender
from genrec.sid import sid_string, sid_vocab
from genrec.tasks import (
    OFF_BY_DEFAULT,
    TASKS,
    Catalog,
    TaskOptions,
    build_sft_dataset,
    check_task_mix,
    encode_example,
    next_item_prompt,
)
from genrec.training import (
    UNSET_OUTPUT_DIR,
    TimeBudgetCallback,
    TrainingOptions,
    TrainingStageConfig,
    choose_content_weight,
    content_vectors,
    explanation_interests,
    find_resume_checkpoint,
    parse_yaml_config,
    prepare_resume,
    run_signature,
    save_final,
    selection_metrics,
    selection_rows,
)

logger = logging.getLogger(__name__)

DEFAULT_TASK_MIX = {task: 0.0 if task in OFF_BY_DEFAULT else 1.0 for task in TASKS}  # TS-Rec's six tasks


@dataclass
class GenRecSFTArguments(TrainingOptions):
    run_dir: str = field(
        default="runs/demo",
        metadata={"help": "Run directory with items.jsonl, splits/, sids.json and token_semantics.json; the model "
                  "is written to <run_dir>/checkpoints/sft, trainer checkpoints to <run_dir>/checkpoints/sft-trainer "
                  "unless output_dir is set."},
    )
    task_mix: dict[str, float] | str | None = field(
        default_factory=lambda: dict(DEFAULT_TASK_MIX),
        metadata={"help": f"Passes over each task's examples per epoch (0 leaves a task out; 0.5 draws a random "
                  f"half each epoch), as a mapping or a JSON string. Tasks: {', '.join(TASKS)}."},
    )
    align_epochs: float = field(
        default=0.0,
        metadata={"help": "Curriculum: passes over the alignment tasks (title2sid, sid2title, token2desc, "
                  "desc2token, at their task_mix ratios) before the num_train_epochs passes over the whole mix."},
    )
    max_history: int | None = field(
        default=None,
        metadata={"help": "History items in a next-item prompt (the latest); None = all the items a row holds (the "
                  "data stage keeps data.max_history). Recorded in the checkpoint, so inference builds the same "
                  "prompt."},
    )
    content_weights: list[float] = field(
        default_factory=lambda: [0.0, 2.0, 4.0, 8.0, 16.0],
        metadata={"help": "Content-prior weights tried on the whole valid split after training (the beam search "
                  "adds weight x the item's text similarity to the history, genrec.content); the best by "
                  "metric_for_best_model goes into the checkpoint, and evaluate and serve use it. [] or [0]: no "
                  "prior."},
    )
    max_title_words: int = field(default=20, metadata={"help": "Titles are cut to this many words."})
    max_description_words: int = field(default=40, metadata={"help": "Token descriptions are cut to this many words."})
    knn_neighbours: int = field(
        default=5, metadata={"help": "seq_knn: nearest items (by item_emb.npy) per item that serve as next items."}
    )
    near_neighbours: int = field(
        default=1, metadata={"help": "seq_near: nearest items of each train row's target that serve as its answer "
                             "(one example each)."}
    )
    max_interests: int = field(
        default=5, metadata={"help": "sid2interest / interest2sid: an item's positive interests in its example."}
    )
    sid_softmax: bool = field(
        default=True,
        metadata={"help": "At positions whose label is a SID token, normalise over SID tokens only (constrained "
                  "decoding never picks anything else); other positions use the full vocabulary."},
    )
    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.task_mix, str):
            try:
                self.task_mix = json.loads(self.task_mix)
            except json.JSONDecodeError:
                raise ValueError(f"task_mix={self.task_mix!r} is not JSON; write e.g. '{{\"seq_sid\": 1.0}}'") from None
        if not isinstance(self.task_mix, dict):
            raise ValueError(f"task_mix must map task names to ratios, got {self.task_mix!r}")
        self.task_mix = check_task_mix(self.task_mix)
        if self.align_epochs < 0:
            raise ValueError(f"align_epochs={self.align_epochs}: must be >= 0")
        for name in ("knn_neighbours", "near_neighbours"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1 (set the task's ratio to 0 to leave it "
                                 "out)")
        if self.max_history is not None and self.max_history < 1:
            raise ValueError(f"max_history={self.max_history}: must be >= 1, or null for the whole history")
        if any(not (float(w) >= 0 and math.isfinite(float(w))) for w in self.content_weights):
            raise ValueError(f"content_weights={self.content_weights}: each must be a finite number >= 0 (0 = the "
                             "model alone; [] = no content prior)")

    @property
    def final_dir(self) -> Path:
        return Run(self.run_dir).checkpoint("sft")

    def task_options(self) -> TaskOptions:
        return TaskOptions(self.max_history, self.max_title_words, self.max_description_words, self.knn_neighbours,
                           self.max_interests, self.near_neighbours)


# ----------------------------------------------------------------------------- trainer


@dataclass
class GenRecSFTConfig(SFTConfig):
    """TRL's `SFTConfig` with precision chosen from the hardware: ``bf16`` unset means auto (genrec.precision)."""

    bf16: bool | None = field(default=None, metadata={"help": BF16_HELP})

    def __post_init__(self):
        resolve_trainer_bf16(self, "SFT")
        super().__post_init__()


class GenRecSFTTrainer(SFTTrainer):
    """`SFTTrainer` with the label-position SID head, ranking evaluation by constrained beam search (the same
    `Recommender.recommend` as `genrec evaluate`), and the SID map saved into every checkpoint. `ranking_rows` are
    (history item ids, target item) pairs decoded at evaluation; `max_history` is the prompt length."""

    def __init__(self, *args, sids: dict, ranking_rows: list[tuple[list[str], str]], num_beams: int,
                 sid_softmax: bool, max_history: int | None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sids = sids
        self.ranking_rows = ranking_rows
        self.decode = DecodeConfig(beam=num_beams, batch_size=self.args.per_device_eval_batch_size,
                                   softmax="sid" if sid_softmax else "full", bf16=bool(self.args.bf16),
                                   content_weight=0.0)  # selection ranks by the model alone
        self.max_history = max_history
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        add_sid_head(base, list(sid_vocab(self.processing_class).values()) if sid_softmax else None)
        self._trie = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        outputs = model(**inputs, sid_head=True, num_items_in_batch=num_items_in_batch)
        loss = outputs.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the NLL is over all ranks' tokens
        tokens = self.accelerator.gather_for_metrics(outputs.num_tokens.detach()).sum()
        correct = self.accelerator.gather_for_metrics(outputs.num_correct.detach()).sum()
        self._metrics[mode]["mean_token_accuracy"].append((correct / tokens.clamp(min=1)).item())
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Eval loss (TRL) plus HR@K / NDCG@K of constrained beam search on `ranking_rows`."""
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        ranking = {f"{metric_key_prefix}_{k}": v for k, v in self.ranking_metrics().items()}
        self.log(ranking)
        return {**metrics, **ranking}

    def recommender(self) -> Recommender:
        """The model being trained as a `Recommender` (the trie is built once)."""
        rec = Recommender(self.accelerator.unwrap_model(self.model), self.processing_class, self.sids,
                          max_history=self.max_history, bf16=bool(self.args.bf16), trie=self._trie)
        self._trie = rec.trie
        return rec

    def ranking_metrics(self) -> dict[str, float]:
        return selection_metrics(self.accelerator, self.recommender(), self.ranking_rows, self.decode)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        write_checkpoint_extras(Path(output_dir or self.args.output_dir), self.sids)


# ----------------------------------------------------------------------------- building a run


def resolve_training_args(args: GenRecSFTArguments, training_args: SFTConfig) -> SFTConfig:
    """Fill what the run directory decides: the checkpoint folder and the fixed (pre-shuffled) data order."""
    if training_args.output_dir == UNSET_OUTPUT_DIR:
        training_args.output_dir = str(Run(args.run_dir).checkpoint("sft-trainer"))
    training_args.train_sampling_strategy = "sequential"  # the schedule is already shuffled, by epoch and phase
    if training_args.eval_strategy != "no" and training_args.metric_for_best_model in (None, "loss", "eval_loss"):
        training_args.metric_for_best_model = "eval_HR@10"
        training_args.greater_is_better = True
    return training_args


# run-directory inputs a checkpoint depends on: a re-quantized SID map or new token semantics must not be resumed
SIGNATURE_INPUTS = (SIDS, TOKEN_SEMANTICS, SPLIT.format(split="train"))


def sft_catalog(run: Run, knn_neighbours: int = 0, interests: bool = False) -> Catalog:
    """The run's items as the SFT tasks read them; `knn_neighbours` > 0 adds content neighbours (seq_knn),
    `interests` the items' positive interests (sid2interest, interest2sid)."""
    sids = run.sids()
    semantics = run.token_semantics() if run.exists(TOKEN_SEMANTICS) else {}
    neighbours = {}
    if knn_neighbours > 0:
        from genrec.encoders import nearest_items

        ids = list(sids)
        neighbours = nearest_items(ids, run.item_embeddings().aligned(ids), knn_neighbours)
    return Catalog(run.titles(), {iid: sid_string(c) for iid, c in sids.items()}, semantics, neighbours,
                   positive_interests(run.interests()) if interests else {})


def train_sft(args: GenRecSFTArguments, model_args: ModelConfig, training_args: SFTConfig, *, fresh: bool = False
              ) -> Path:
    """Train on the run's SFT tasks and write the selected model to <run_dir>/checkpoints/sft; returns that path.
    `fresh` discards the output folder's checkpoints instead of resuming them (the pipeline's --force)."""
    from datasets import Dataset

    run = Run(args.run_dir)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and training_args.world_size == 1:
        raise ValueError(f"{os.environ['WORLD_SIZE']} processes were launched but each trains alone: without a GPU "
                         "set use_cpu: true (or --use_cpu true) so they run DDP over gloo")
    training_args = resolve_training_args(args, training_args)
    signature = run_signature([args, model_args, training_args], run.root, list(SIGNATURE_INPUTS))
    prepare_resume(signature, training_args, fresh)
    neighbours = max([args.knn_neighbours if args.task_mix.get("seq_knn", 0) > 0 else 0,
                      args.near_neighbours if args.task_mix.get("seq_near", 0) > 0 else 0])
    catalog = sft_catalog(run, neighbours,
                          interests=any(args.task_mix.get(t, 0) > 0 for t in ("sid2interest", "interest2sid")))
    sids = run.sids()
    set_seed(training_args.seed)  # the Trainer seeds only after the model exists: seed its initialisation too
    model, tokenizer = prepare_model(model_args, sids, codebook_sizes=run.codebook_sizes(),
                                     semantics=catalog.semantics if model_args.sid_init == "sa" else None)
    train = build_sft_dataset(catalog, run.split("train"), tokenizer, args.task_mix, args.task_options(),
                              epochs=training_args.num_train_epochs, align_epochs=args.align_epochs,
                              seed=training_args.seed, batch_size=training_args.per_device_train_batch_size)
    logger.info("schedule: %d examples (%.2f align + %.2f mix epochs) in one pass", len(train), args.align_epochs,
                training_args.num_train_epochs)
    training_args.num_train_epochs = 1  # the schedule already holds every epoch
    rows = selection_rows(run.split("valid"), sids, args.eval_rows, seed=training_args.seed)
    eval_set = Dataset.from_list([encode_example(tokenizer, next_item_prompt(h, catalog.sids, args.max_history),
                                                 catalog.sids[t]) for h, t in rows])
    trainer = GenRecSFTTrainer(
        model=model, args=training_args, train_dataset=train,
        eval_dataset=eval_set if training_args.eval_strategy != "no" else None, processing_class=tokenizer,
        peft_config=args.lora_config(),
        callbacks=[TimeBudgetCallback(args.max_minutes)] if args.max_minutes else None,
        sids=sids, ranking_rows=rows, num_beams=args.eval_num_beams, sid_softmax=args.sid_softmax,
        max_history=args.max_history,
    )
    start, resume = time.time(), find_resume_checkpoint(training_args)
    if resume:
        logger.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    logger.info("SFT finished: %d steps in %.1f min; best %s = %s at step %s", trainer.state.global_step,
                (time.time() - start) / 60, training_args.metric_for_best_model, trainer.state.best_metric,
                trainer.state.best_global_step)
    save_final(trainer, args.final_dir, sids=sids, titles=catalog.titles, max_history=args.max_history, stage="sft",
               interests=functools.partial(explanation_interests, run, list(sids)),
               content=functools.partial(content_vectors, run, list(sids)), sid_softmax=args.sid_softmax)
    if trainer.is_world_process_zero():
        metric = training_args.metric_for_best_model or ""
        choose_content_weight(args.final_dir, run.split("valid"), args.content_weights,
                              metric if "@" in metric else "NDCG@10", beam=DecodeConfig.beam)
    trainer.accelerator.wait_for_everyone()
    return args.final_dir


# ----------------------------------------------------------------------------- config files and the pipeline stage

SFT_DATACLASSES = (GenRecSFTArguments, ModelConfig, GenRecSFTConfig)


def parse_sft_config(path: str | Path, overrides: dict | None = None):
    """(GenRecSFTArguments, ModelConfig, SFTConfig) from an SFT YAML, with `overrides` replacing its values."""
    return parse_yaml_config(path, SFT_DATACLASSES, "SFT config (see configs/sft/)", overrides)


@dataclass
class SFTStageConfig(TrainingStageConfig):
    config: str = field(
        default="configs/sft/demo.yaml",
        metadata={"help": "SFT YAML (keys of GenRecSFTArguments, ModelConfig and SFTConfig), relative to the "
                  "working directory."},
    )


def run_sft_stage(run_dir: Path, cfg: SFTStageConfig, force: bool = False) -> None:
    """The pipeline's `sft` stage: train in this process, resuming the stage's own checkpoints after a kill
    (unless `force`: then it starts afresh)."""
    args, model_args, training_args = cfg.parse(SFT_DATACLASSES, "SFT config (see configs/sft/)", run_dir)
    train_sft(args, model_args, training_args, fresh=force)
