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

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import ModelOutput
from trl import SFTConfig, SFTTrainer

from genrec.artifacts import SIDS, SPLIT, TOKEN_SEMANTICS, Run
from genrec.decoding.beam import DecodeConfig
from genrec.evaluation import KS, ranking_metrics
from genrec.io import write_json
from genrec.modeling import ModelConfig, prepare_model, save_checkpoint, write_checkpoint_extras
from genrec.precision import default_device, describe_device, resolve_bf16
from genrec.recommender import Recommender, checkpoint_metadata
from genrec.sid import sid_string, sid_vocab
from genrec.tasks import (
    TASKS,
    Catalog,
    TaskOptions,
    build_sft_dataset,
    check_task_mix,
    encode_example,
    next_item_prompt,
)

logger = logging.getLogger(__name__)

DEFAULT_TASK_MIX = {task: 0.0 if task == "seq_knn" else 1.0 for task in TASKS}  # TS-Rec's six tasks
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_UNSET_OUTPUT_DIR = "trainer_output"  # what TrainingArguments puts in output_dir when none is given


@dataclass
class GenRecSFTArguments:
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
    max_title_words: int = field(default=20, metadata={"help": "Titles are cut to this many words."})
    max_description_words: int = field(default=40, metadata={"help": "Token descriptions are cut to this many words."})
    knn_neighbours: int = field(
        default=5, metadata={"help": "seq_knn: nearest items (by item_emb.npy) per item that serve as next items."}
    )
    sid_softmax: bool = field(
        default=True,
        metadata={"help": "At positions whose label is a SID token, normalise over SID tokens only (constrained "
                  "decoding never picks anything else); other positions use the full vocabulary."},
    )
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
        if isinstance(self.task_mix, str):
            try:
                self.task_mix = json.loads(self.task_mix)
            except json.JSONDecodeError:
                raise ValueError(f"task_mix={self.task_mix!r} is not JSON; write e.g. '{{\"seq_sid\": 1.0}}'") from None
        if not isinstance(self.task_mix, dict):
            raise ValueError(f"task_mix must map task names to ratios, got {self.task_mix!r}")
        self.task_mix = check_task_mix(self.task_mix)
        if self.align_epochs < 0 or self.eval_rows < 0 or self.eval_num_beams < 1:
            raise ValueError("align_epochs and eval_rows must be >= 0 and eval_num_beams >= 1")
        if self.max_history is not None and self.max_history < 1:
            raise ValueError(f"max_history={self.max_history}: must be >= 1, or null for the whole history")
        if self.eval_num_beams < 10:
            raise ValueError(f"eval_num_beams={self.eval_num_beams}: HR@10 needs at least 10 beams")

    @property
    def final_dir(self) -> Path:
        return Run(self.run_dir).checkpoint("sft")

    def task_options(self) -> TaskOptions:
        return TaskOptions(self.max_history, self.max_title_words, self.max_description_words, self.knn_neighbours)


# ----------------------------------------------------------------------------- LM head at label positions


@dataclass
class SIDHeadOutput(ModelOutput):
    loss: torch.Tensor | None = None
    num_tokens: torch.Tensor | None = None
    num_correct: torch.Tensor | None = None


def label_nll(hidden, weight, labels, sid_ids=None, sid_pos=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL and top-1 hits of `labels` given `hidden` states (one row per label) and the LM head `weight`.

    With `sid_ids` (token ids of the SID tokens) and `sid_pos` (vocab -> index in sid_ids, or -1), rows whose label
    is a SID token are scored against the SID rows of the head only.
    """
    groups = [(torch.ones_like(labels, dtype=torch.bool), weight, labels)]
    if sid_ids is not None:
        pos = sid_pos[labels]
        groups = [(pos >= 0, weight[sid_ids], pos), (pos < 0, weight, labels)]
    nll, correct = hidden.new_zeros((), dtype=torch.float32), labels.new_zeros(())
    for rows, w, target in groups:
        if rows.any():
            logits = F.linear(hidden[rows], w).float()
            nll = nll + F.cross_entropy(logits, target[rows], reduction="sum")
            correct = correct + (logits.argmax(-1) == target[rows]).sum()
    return nll, correct


def add_sid_head(model, sid_token_ids: list[int] | None) -> None:
    """Patch `model.forward`: called with ``sid_head=True`` and labels it runs the backbone, projects only the
    positions that have a next-token label, and returns a `SIDHeadOutput` (loss = summed NLL / num_items_in_batch,
    or / label count). Without ``sid_head`` the forward is unchanged, so generation is too."""
    original_forward = model.forward
    vocab = model.get_output_embeddings().weight.shape[0]
    sid_ids = sid_pos = None
    if sid_token_ids:
        sid_ids = torch.tensor(sorted(sid_token_ids))
        sid_pos = torch.full((vocab,), -1, dtype=torch.long)
        sid_pos[sid_ids] = torch.arange(len(sid_ids))

    def forward(self, *args, sid_head=False, labels=None, num_items_in_batch=None, **kwargs):
        if not sid_head:
            extra = {k: v for k, v in (("labels", labels), ("num_items_in_batch", num_items_in_batch)) if v is not None}
            return original_forward(*args, **kwargs, **extra)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        mask = targets != -100
        head = self.get_output_embeddings().weight
        device = head.device
        nll, correct = label_nll(hidden[mask].to(device), head, targets[mask].to(device),
                                 None if sid_ids is None else sid_ids.to(device),
                                 None if sid_pos is None else sid_pos.to(device))
        count = mask.sum()
        loss = nll / (num_items_in_batch if num_items_in_batch is not None else count.clamp(min=1))
        return SIDHeadOutput(loss=loss, num_tokens=count, num_correct=correct)

    model.forward = forward.__get__(model)


# ----------------------------------------------------------------------------- trainer


@dataclass
class GenRecSFTConfig(SFTConfig):
    """TRL's `SFTConfig` with precision chosen from the hardware: ``bf16`` unset means auto (genrec.precision)."""

    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision for training and in-training ranking: unset = auto (bf16 only where "
                  "the device runs it natively: bf16 GPUs, CPUs with AVX512-BF16 or AMX; float32 elsewhere); "
                  "true forces it (with a warning where it would be emulated, 10-26x slower); false = float32."},
    )

    def __post_init__(self):
        if not self.fp16:
            device = default_device(self.use_cpu)
            if self.bf16 is None and device == "cpu" and not self.use_cpu:
                self.bf16 = False  # transformers accepts bf16 on a CPU only with use_cpu: true
            self.bf16 = resolve_bf16(self.bf16, device, "SFT")
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
                                   softmax="sid" if sid_softmax else "full", bf16=bool(self.args.bf16))
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
        from accelerate.utils import gather_object

        start = time.time()
        # apply_padding: equal shards, so ranks run the same number of forward passes (needed under ZeRO-3)
        with self.accelerator.split_between_processes(self.ranking_rows, apply_padding=True) as shard:
            recs = self.recommender().recommend([h for h, _ in shard], self.decode)
        recs = gather_object([(r.items, r.invalid) for r in recs])[: len(self.ranking_rows)]
        out = ranking_metrics([items for items, _ in recs], [t for _, t in self.ranking_rows],
                              ks=[k for k in KS if k <= self.decode.beam])
        out["invalid"] = sum(inv for _, inv in recs)
        out["ranking_seconds"] = round(time.time() - start, 1)
        return out

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        write_checkpoint_extras(Path(output_dir or self.args.output_dir), self.sids)


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


# ----------------------------------------------------------------------------- building a run


def selection_rows(rows: list[dict], sids: dict, n: int, seed: int = 0) -> list[tuple[list[str], str]]:
    """(history, target) of a fixed random subset of `rows` (`n` rows; 0 = all) whose target and at least one
    history item have a SID: the rows model selection decodes."""
    rows = [r for r in rows if r["target"] in sids and any(i in sids for i in r["history"])]
    if n and n < len(rows):
        rows = random.Random(seed).sample(rows, n)
    return [(r["history"], r["target"]) for r in rows]


def lora_config(args: GenRecSFTArguments):
    from peft import LoraConfig

    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=args.lora_target_modules, task_type="CAUSAL_LM",
                      modules_to_save=["embed_tokens", "lm_head"], ensure_weight_tying=True)


def resolve_training_args(args: GenRecSFTArguments, training_args: SFTConfig) -> SFTConfig:
    """Fill what the run directory decides: the checkpoint folder and the fixed (pre-shuffled) data order."""
    if training_args.output_dir == _UNSET_OUTPUT_DIR:
        training_args.output_dir = str(Path(args.run_dir) / "checkpoints" / "sft-trainer")
    training_args.train_sampling_strategy = "sequential"  # the schedule is already shuffled, by epoch and phase
    if training_args.eval_strategy != "no" and training_args.metric_for_best_model in (None, "loss", "eval_loss"):
        training_args.metric_for_best_model = "eval_HR@10"
        training_args.greater_is_better = True
    return training_args


def _is_complete(checkpoint: Path) -> bool:
    """The trainer writes trainer_state.json last, so a checkpoint whose state parses was saved whole."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def find_resume_checkpoint(training_args: SFTConfig) -> str | None:
    """--resume_from_checkpoint: a path, or 'auto' for the latest checkpoint in output_dir (None when there is
    none; 'last' raises instead). `_check_auto_resume` has already removed checkpoints cut short by a kill."""
    value = training_args.resume_from_checkpoint
    if value not in ("auto", "last", "true", "True"):
        return value
    out = Path(training_args.output_dir)
    found = get_last_checkpoint(str(out)) if out.is_dir() else None
    if found is None and value != "auto":
        raise ValueError(f"--resume_from_checkpoint {value}: no complete checkpoint-* in {out}")
    return found


# run-directory inputs a checkpoint depends on: a re-quantized SID map or new token semantics must not be resumed
SIGNATURE_INPUTS = (SIDS, TOKEN_SEMANTICS, SPLIT.format(split="train"))


def _run_signature(args: GenRecSFTArguments, model_args: ModelConfig, training_args: SFTConfig) -> str:
    """What a resumed run must share with the checkpoints it resumes: the configuration (not resume / logging /
    time-budget knobs) and the contents of the run directory's `SIGNATURE_INPUTS`."""
    volatile = {"resume_from_checkpoint", "logging_dir", "max_minutes", "report_to", "disable_tqdm"}
    payload = {**dataclasses.asdict(args), **dataclasses.asdict(model_args), **training_args.to_dict()}
    payload = {k: v for k, v in payload.items() if k not in volatile}
    for name in SIGNATURE_INPUTS:
        path = Path(args.run_dir) / name
        payload[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_auto_resume(signature: str, training_args: SFTConfig, fresh: bool = False) -> None:
    """Before resuming: remove checkpoints a kill cut short during their save (the trainer does not save
    atomically), and with resume 'auto' discard checkpoints of another configuration or other inputs (or all, when
    `fresh`) instead of resuming them."""
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
                               "an earlier run (--force)" if fresh else "another SFT configuration or run inputs")
            for ckpt in found:
                shutil.rmtree(ckpt)
    training_args.distributed_state.wait_for_everyone()
    if training_args.process_index == 0:
        write_json(marker, {"signature": signature})


def save_final(trainer: GenRecSFTTrainer, args: GenRecSFTArguments, titles: dict[str, str]) -> None:
    """The (best, when selection ran) model with tokenizer, SID map, catalog titles and how it was trained
    (genrec.json: prompt settings, precision, selection) into <run_dir>/checkpoints/sft."""
    state = trainer.state
    extra = checkpoint_metadata(
        trainer.max_history, bool(trainer.args.bf16), stage="sft", metric=trainer.args.metric_for_best_model,
        best_metric=state.best_metric, best_step=state.best_global_step, global_step=state.global_step,
        best_checkpoint=state.best_model_checkpoint, sid_softmax=args.sid_softmax,
        trained_on=describe_device(trainer.args.device))
    if trainer.is_deepspeed_enabled:  # ZeRO-3 weights are sharded: let the trainer gather them
        trainer.save_model(str(args.final_dir))
        if trainer.is_world_process_zero():
            write_checkpoint_extras(args.final_dir, trainer.sids, extra, titles)
        return
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        model = trainer.accelerator.unwrap_model(trainer.model)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        save_checkpoint(model, trainer.processing_class, args.final_dir, trainer.sids, extra, titles=titles)


def sft_catalog(run: Run, knn_neighbours: int = 0) -> Catalog:
    """The run's items as the SFT tasks read them; `knn_neighbours` > 0 adds content neighbours (seq_knn)."""
    sids = run.sids()
    semantics = run.token_semantics() if run.exists(TOKEN_SEMANTICS) else {}
    neighbours = {}
    if knn_neighbours > 0:
        from genrec.encoders import nearest_items

        ids = list(sids)
        neighbours = nearest_items(ids, run.item_embeddings().aligned(ids), knn_neighbours)
    return Catalog(run.titles(), {iid: sid_string(c) for iid, c in sids.items()}, semantics, neighbours)


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
    _check_auto_resume(_run_signature(args, model_args, training_args), training_args, fresh)
    catalog = sft_catalog(run, args.knn_neighbours if args.task_mix.get("seq_knn", 0) > 0 else 0)
    sids = run.sids()
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
        peft_config=lora_config(args) if args.use_lora else None,
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
    save_final(trainer, args, catalog.titles)
    return args.final_dir


# ----------------------------------------------------------------------------- config files and the pipeline stage

SFT_DATACLASSES = (GenRecSFTArguments, ModelConfig, GenRecSFTConfig)


def parse_sft_config(path: str | Path, overrides: dict | None = None):
    """(GenRecSFTArguments, ModelConfig, SFTConfig) from an SFT YAML, with `overrides` replacing its values."""
    from trl import TrlParser

    from genrec.io import read_yaml_mapping

    path = Path(path)
    values = read_yaml_mapping(path, "SFT config (see configs/sft/)")
    try:
        return TrlParser(SFT_DATACLASSES).parse_dict({**values, **(overrides or {})})
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


@dataclass
class SFTStageConfig:
    config: str = field(
        default="configs/sft/demo.yaml",
        metadata={"help": "SFT YAML (keys of GenRecSFTArguments, ModelConfig and SFTConfig), relative to the "
                  "working directory."},
    )
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
            raise ValueError(f"sft.overrides must be a mapping of option: value, got {self.overrides!r}")
        path = Path(self.config)
        self.config_digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""


def run_sft_stage(run_dir: Path, cfg: SFTStageConfig, force: bool = False) -> None:
    """The pipeline's `sft` stage: train in this process, resuming the stage's own checkpoints after a kill
    (unless `force`: then it starts afresh)."""
    args, model_args, training_args = parse_sft_config(cfg.config, {**cfg.overrides, "run_dir": str(run_dir)})
    if training_args.resume_from_checkpoint is None:
        training_args.resume_from_checkpoint = "auto"
    train_sft(args, model_args, training_args, fresh=force)
