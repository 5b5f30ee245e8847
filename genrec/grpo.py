"""GRPO post-training with interest-aware rewards (the `grpo` stage and ``training/grpo.py``), on TRL's GRPOTrainer.

After SFT, GRPO draws a group of completions per training prompt, scores each with reward functions
(`genrec.rewards`: hit, rank, prefix, interest, valid; weights in ``rewards``), and moves the policy towards the
completions that beat their group's mean, with a KL penalty to the SFT model. Rollouts never leave the catalog:

- ``rollout: beam`` (default, MiniOneRec's recipe): each distinct prompt is decoded once by genrec's trie-constrained
  beam search with ``num_generations`` beams (`Recommender.rank_prompts`, the decoding module's beam search), and the
  beams are handed out as its group, best first, with their rank in the ``beam_rank`` column the rank reward reads;
- ``rollout: sample``: the group is drawn by trie-constrained sampling (`genrec.decoding.beam.trie_sample`).
  ``inject_target`` replaces the last completion of a group that lacks the target with the target, so every group
  has a hit (the zero-signal problem: with hit + rank most groups have no hit and all rewards 0).

The policy's log-probabilities use the SID softmax the model was trained and is decoded with (`genrec.head`).
Logged every step besides TRL's own (``rewards/<name>/mean``, ``frac_reward_zero_std``, ``kl``):
``rollout/hit_in_group`` (share of groups that contain the target), ``rollout/distinct_items`` (distinct items over
the step's completions / completions) and ``rollout/injected``. Every ``eval_steps`` the valid rows are ranked with
the same `Recommender.recommend` as `genrec evaluate`, and ``metric_for_best_model`` picks the checkpoint.

Example:
    >>> script_args, training_args = parse_grpo_config("configs/grpo/demo.yaml", {"run_dir": "runs/demo"})
    >>> train_grpo(script_args, training_args)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from trl import GRPOConfig, GRPOTrainer

from genrec.artifacts import INTERESTS, SIDS, SPLIT, Run
from genrec.checkpoint import CHECKPOINT_META, has_model, replace_with_copy, update_metadata, write_checkpoint_extras
from genrec.decoding.beam import DecodeConfig, trie_sample
from genrec.head import add_sid_head
from genrec.precision import BF16_HELP, resolve_trainer_bf16
from genrec.recommender import Recommender, load_recommender
from genrec.sid import sid_vocab
from genrec.tasks import encode_prompt, next_item_prompt
from genrec.training import (
    UNSET_OUTPUT_DIR,
    TimeBudgetCallback,
    TrainingOptions,
    TrainingStageConfig,
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

ROLLOUTS = ("beam", "sample")


def _json_mapping(value, name: str) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"{name}={value!r} is not JSON; write e.g. '{{\"hit\": 1.0, \"rank\": 1.0}}'") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping, got {value!r}")
    return value


@dataclass
class GenRecGRPOArguments(TrainingOptions):
    run_dir: str = field(
        default="runs/demo",
        metadata={"help": "Run directory with splits/, sids.json and the SFT model; the GRPO model is written to "
                  "<run_dir>/checkpoints/grpo, trainer checkpoints to <run_dir>/checkpoints/grpo-trainer."},
    )
    sft_checkpoint: str | None = field(
        default=None, metadata={"help": "Model to start from; default <run_dir>/checkpoints/sft."}
    )
    rewards: dict[str, float] | str = field(
        default_factory=lambda: {"hit": 1.0, "rank": 1.0},
        metadata={"help": "Reward name (genrec.rewards.REWARDS, or a dotted path) -> weight, as a mapping or JSON. "
                  "E.g. {hit: 1, rank: 1, prefix: 0.5, interest: 0.5}."},
    )
    reward_params: dict[str, dict] | str = field(
        default_factory=dict,
        metadata={"help": "Parameters of parametrised rewards, e.g. {prefix: {curve: sqrt}, interest: {floor: 0.3}}."},
    )
    rollout: str = field(
        default="beam", metadata={"help": "'beam' (trie-constrained beam search) or 'sample' (constrained sampling)."}
    )
    sample_temperature: float = field(default=1.0, metadata={"help": "rollout 'sample': softmax temperature."})
    inject_target: bool = field(
        default=False, metadata={"help": "Put the target in every group that lacks it (as its last completion)."}
    )
    train_rows: int = field(
        default=0, metadata={"help": "Train rows used as prompts (a fixed random subset; 0 = all)."}
    )
    guard: bool = field(
        default=True,
        metadata={"help": "After training, rank the whole valid split with the SFT start and with the trained model "
                  "(the evaluate stage's search) and keep the better by metric_for_best_model (a tie keeps the "
                  "SFT start), so the stage never ships a model worse than its start on valid; the choice and the "
                  "paired difference go into the final checkpoint's genrec.json."},
    )

    def __post_init__(self):
        super().__post_init__()
        from genrec.rewards import REWARDS

        self.rewards = {str(k): float(v) for k, v in _json_mapping(self.rewards, "rewards").items()}
        self.reward_params = _json_mapping(self.reward_params, "reward_params")
        if not self.rewards:
            raise ValueError("rewards is empty; give at least one reward, e.g. {hit: 1.0}")
        unknown = [n for n in self.rewards if n not in REWARDS and "." not in n]
        if unknown:
            raise ValueError(f"unknown reward(s) {unknown}; choose from {sorted(REWARDS)} or a dotted path")
        stray = sorted(set(self.reward_params) - set(self.rewards))
        if stray:
            raise ValueError(f"reward_params names reward(s) {stray} that are not in rewards {list(self.rewards)}")
        if self.rollout not in ROLLOUTS:
            raise ValueError(f"rollout={self.rollout!r}: use one of {', '.join(ROLLOUTS)}")
        if self.sample_temperature <= 0 or self.train_rows < 0:
            raise ValueError("sample_temperature must be > 0 and train_rows >= 0")

    @property
    def final_dir(self) -> Path:
        return Run(self.run_dir).checkpoint("grpo")

    @property
    def start_dir(self) -> Path:
        return Path(self.sft_checkpoint) if self.sft_checkpoint else Run(self.run_dir).checkpoint("sft")


@dataclass
class GenRecGRPOConfig(GRPOConfig):
    """TRL's `GRPOConfig` with precision chosen from the hardware: ``bf16`` unset means auto (genrec.precision)."""

    bf16: bool | None = field(default=None, metadata={"help": BF16_HELP})

    def __post_init__(self):
        resolve_trainer_bf16(self, "GRPO")
        super().__post_init__()


# ----------------------------------------------------------------------------- rollouts


class TrieRollout:
    """TRL ``rollout_func``: the completions of each prompt's group are catalog items from the current policy.

    TRL hands every process its slice of the global batch, in which each prompt repeats `num_generations` times
    consecutively (a group may straddle two processes); a completion's rank in its group is its global position
    modulo the group size, so the processes sharing a group hand out disjoint ranks of the same beam list.
    """

    def __init__(self, trainer_args: GenRecGRPOArguments, sids: dict, max_history: int | None):
        self.args, self.sids, self.max_history = trainer_args, sids, max_history
        self._trie = None

    def recommender(self, trainer) -> Recommender:
        rec = Recommender(trainer.accelerator.unwrap_model(trainer.model), trainer.processing_class, self.sids,
                          max_history=self.max_history, bf16=bool(trainer.args.bf16), trie=self._trie)
        self._trie = rec.trie
        return rec

    def groups(self, rec: Recommender, prompts: list[str], size: int, bf16: bool) -> dict[str, list[str]]:
        """Each distinct prompt's `size` items, best first (beam) or in draw order (sample)."""
        distinct = list(dict.fromkeys(prompts))
        if self.args.rollout == "sample":
            return dict(zip(distinct, trie_sample_items(rec, distinct, size, self.args.sample_temperature, bf16),
                            strict=True))
        decode = DecodeConfig(beam=size, batch_size=16, bf16=bf16, content_weight=0.0)  # the policy's own beams
        recs = rec.rank_prompts(distinct, decode, k=size)
        return {p: (r.items + r.items[-1:] * size)[:size] for p, r in zip(distinct, recs, strict=True)}

    def __call__(self, prompts: list[str], trainer) -> dict:
        mode = "train" if trainer.model.training else "eval"
        size = trainer.num_generations if mode == "train" else trainer.num_generations_eval
        rec = self.recommender(trainer)
        groups = self.groups(rec, prompts, size, bool(trainer.args.bf16))
        inputs = getattr(trainer, "_rollout_inputs", None) or [{}] * len(prompts)
        start = trainer.accelerator.process_index * len(prompts)
        items, ranks, injected, hits = [], [], 0, 0
        for j, prompt in enumerate(prompts):
            rank = (start + j) % size
            group, target = groups[prompt], inputs[j].get("target")
            hits += target in group and rank == 0
            if self.args.inject_target and target in self.sids and target not in group:
                group = [*group[:-1], target]
                injected += rank == 0
            items.append(group[rank])
            ranks.append(rank)
        n_groups = max(1, sum(1 for j in range(len(prompts)) if (start + j) % size == 0))
        trainer._metrics[mode]["rollout/hit_in_group"].append(hits / n_groups)
        trainer._metrics[mode]["rollout/injected"].append(injected / n_groups)
        trainer._metrics[mode]["rollout/distinct_items"].append(len(set(items)) / len(items))
        return {"prompt_ids": [encode_prompt(rec.tokenizer, p) for p in prompts],
                "completion_ids": [rec.completion_ids(i) for i in items], "logprobs": None,
                "beam_rank": ranks, "rollout_item": items}


def trie_sample_items(rec: Recommender, prompts: list[str], size: int, temperature: float, bf16: bool
                      ) -> list[list[str]]:
    """`size` items per prompt drawn by trie-constrained sampling from the policy."""
    model, was_training = rec.model, rec.model.training
    model.eval()
    try:
        with torch.autocast(rec.device.type, dtype=torch.bfloat16, enabled=rec.use_bf16(bf16)):
            return trie_sample(model, rec.tokenizer, prompts, rec.trie, num_samples=size, temperature=temperature,
                               encode=lambda text: encode_prompt(rec.tokenizer, text))
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- trainer


class GenRecGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` with genrec's trie rollouts, the SID softmax for policy and reference log-probs, model
    selection by constrained beam search on valid, and the SID map saved into every checkpoint."""

    def __init__(self, *args, sids: dict, ranking_rows: list, decode: DecodeConfig, max_history: int | None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.sids, self.ranking_rows, self.decode, self.max_history = sids, ranking_rows, decode, max_history
        sid_ids = list(sid_vocab(self.processing_class).values())
        policy = self.accelerator.unwrap_model(self.model)
        add_sid_head(policy.get_base_model() if hasattr(policy, "get_base_model") else policy, sid_ids)
        if self.ref_model is not None:
            add_sid_head(self.accelerator.unwrap_model(self.ref_model), sid_ids)

    def _generate_and_score_completions(self, inputs):
        self._rollout_inputs = inputs  # the rollout reads each group's target (inject_target)
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self._rollout_inputs = None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """HR@K / NDCG@K of constrained beam search on the valid rows (the reward-based eval loop is skipped)."""
        rec = self.rollout_func.recommender(self)
        metrics = {f"{metric_key_prefix}_{k}": v
                   for k, v in selection_metrics(self.accelerator, rec, self.ranking_rows, self.decode).items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        write_checkpoint_extras(Path(output_dir or self.args.output_dir), self.sids)


# ----------------------------------------------------------------------------- building a run


def grpo_rows(rows: list[dict], sid_strings: dict[str, str], max_history: int | None, n: int = 0, seed: int = 0
              ) -> list[dict]:
    """Prompts of the train rows whose target and at least one history item have a SID: prompt (the one prompt
    builder), target (item id) and target_sid, the columns the rewards read. `n` > 0 keeps a fixed random subset."""
    return [{"prompt": next_item_prompt(history, sid_strings, max_history), "target": target,
             "target_sid": sid_strings[target]} for history, target in selection_rows(rows, sid_strings, n, seed)]


def build_rewards(args: GenRecGRPOArguments, run: Run, sid_strings: dict[str, str]) -> list:
    """The reward functions of `args.rewards`, in order; data-bound ones (interest, valid) get the run's data."""
    from genrec.rewards import get_reward, interest_reward_from_interests

    funcs = []
    for name in args.rewards:
        params = dict(args.reward_params.get(name, {}))
        if name == "interest":
            if not run.exists(INTERESTS):
                raise FileNotFoundError(f"the interest reward needs {run.path(INTERESTS)} with RLDI labels: run the "
                                        "mine and label stages first (genrec pipeline CONFIG --stages mine,label), or "
                                        "drop 'interest' from rewards")
            from genrec.encoders import EmbedConfig, load_encoder

            encoder = load_encoder(EmbedConfig())
            funcs.append(interest_reward_from_interests(run.interests(), sid_strings, encoder.encode, **params))
        elif name == "valid":
            funcs.append(get_reward(name, catalog_sids=set(sid_strings.values()), **params))
        else:
            funcs.append(get_reward(name, **params))
    return funcs


def check_groups_stay_whole(per_device_batch: int, steps_per_generation: int, num_generations: int) -> None:
    """TRL scores each process's slice on its own, so a group split across two processes would give the rank
    reward half a group: the completions per process must be a multiple of the group size (TRL checks only the
    global batch)."""
    per_process = per_device_batch * steps_per_generation
    if per_process % num_generations:
        raise ValueError(f"per_device_train_batch_size x steps_per_generation = {per_process} completions per process "
                         f"is not a multiple of num_generations={num_generations}: a group would be split across "
                         "processes and the rank reward would see half a group; make it a multiple")


def resolve_grpo_args(args: GenRecGRPOArguments, training_args: GenRecGRPOConfig) -> GenRecGRPOConfig:
    """Fill what the run decides: checkpoint folder, reward weights (from `rewards`), the selection metric."""
    if training_args.output_dir == UNSET_OUTPUT_DIR:
        training_args.output_dir = str(Run(args.run_dir).checkpoint("grpo-trainer"))
    if training_args.reward_weights is not None:
        raise ValueError("set reward weights in `rewards` ({name: weight}), not in reward_weights")
    training_args.reward_weights = list(args.rewards.values())
    check_groups_stay_whole(training_args.per_device_train_batch_size, training_args.steps_per_generation,
                            training_args.num_generations)
    if training_args.eval_strategy != "no" and training_args.metric_for_best_model in (None, "loss", "eval_loss"):
        training_args.metric_for_best_model = "eval_NDCG@10"
        training_args.greater_is_better = True
    return training_args


def train_grpo(args: GenRecGRPOArguments, training_args: GenRecGRPOConfig, *, fresh: bool = False) -> Path:
    """Post-train the SFT model of `args.run_dir` with GRPO; the selected model goes to <run_dir>/checkpoints/grpo."""
    from datasets import Dataset

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is TRL's supported hook for custom rollouts
    run = Run(args.run_dir)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and training_args.world_size == 1:
        raise ValueError(f"{os.environ['WORLD_SIZE']} processes were launched but each trains alone: without a GPU "
                         "set use_cpu: true (or --use_cpu true) so they run DDP over gloo")
    if not has_model(args.start_dir):
        raise FileNotFoundError(f"{args.start_dir} holds no model: run the sft stage first or set sft_checkpoint")
    training_args = resolve_grpo_args(args, training_args)
    # resumable only with the same SFT model (its genrec.json records the step it was selected at) and inputs
    inputs = [SIDS, SPLIT.format(split="train"), str(args.start_dir.resolve() / CHECKPOINT_META),
              *(f for f in (INTERESTS,) if "interest" in args.rewards)]
    prepare_resume(run_signature([args, training_args], run.root, inputs), training_args, fresh)
    start = load_recommender(args.start_dir, device="cpu")
    model = start.model.train()
    sid_strings = start.sid_strings
    train = Dataset.from_list(grpo_rows(run.split("train"), sid_strings, start.max_history, args.train_rows,
                                        training_args.seed))
    rows = selection_rows(run.split("valid"), start.sids, args.eval_rows, seed=training_args.seed)
    rollout = TrieRollout(args, start.sids, start.max_history)
    decode = DecodeConfig(beam=args.eval_num_beams, batch_size=training_args.per_device_eval_batch_size,
                          bf16=bool(training_args.bf16), content_weight=0.0)  # selection ranks by the model alone
    trainer = GenRecGRPOTrainer(
        model=model, reward_funcs=build_rewards(args, run, sid_strings), args=training_args, train_dataset=train,
        eval_dataset=train.select(range(min(len(train), training_args.num_generations))),
        processing_class=start.tokenizer, peft_config=args.lora_config(), rollout_func=rollout,
        callbacks=[TimeBudgetCallback(args.max_minutes)] if args.max_minutes else None,
        sids=start.sids, ranking_rows=rows, decode=decode, max_history=start.max_history,
    )
    began, resume = time.time(), find_resume_checkpoint(training_args)
    if resume:
        logger.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    logger.info("GRPO finished: %d steps in %.1f min; best %s = %s at step %s", trainer.state.global_step,
                (time.time() - began) / 60, training_args.metric_for_best_model, trainer.state.best_metric,
                trainer.state.best_global_step)
    save_final(trainer, args.final_dir, sids=start.sids, titles=start.titles, max_history=start.max_history,
               stage="grpo", interests=functools.partial(explanation_interests, run, list(start.sids)),
               content=functools.partial(content_vectors, run, list(start.sids)),
               rewards=args.rewards, rollout=args.rollout, started_from=str(args.start_dir),
               content_weight=start.content_weight)  # the prior's weight its SFT start chose on valid
    if args.guard and trainer.is_world_process_zero():
        guard_final(run, args.start_dir, args.final_dir, training_args.metric_for_best_model or "eval_NDCG@10")
    trainer.accelerator.wait_for_everyone()
    return args.final_dir


def guard_final(run: Run, start_dir: Path, final_dir: Path, metric: str,
                decode: DecodeConfig | None = None) -> dict:
    """Keep the better of the SFT start and the GRPO model in `final_dir`, judged on the whole valid split with the
    evaluate stage's search (`decode`, default `DecodeConfig()`) by `metric` (a tie keeps the start). Both
    rankings are written to eval/valid-sft and eval/valid-grpo; the choice, both scores and the paired difference
    (95% bootstrap) go into the final checkpoint's genrec.json under "guard". Returns that record."""
    from genrec.evaluate import evaluate_checkpoint
    from genrec.report import COLUMNS, paired_differences

    name = metric.removeprefix("eval_")
    if name not in COLUMNS:
        raise ValueError(f"metric_for_best_model={metric!r}: the guard compares one of {', '.join(COLUMNS)} "
                         "(with or without the eval_ prefix); set it, or guard: false")
    dirs = {"sft": run.eval_dir("valid-sft"), "grpo": run.eval_dir("valid-grpo")}
    scores = {stage: evaluate_checkpoint(run.root, ckpt, split="valid", decode=decode, out_dir=dirs[stage],
                                         progress=False)
              for stage, ckpt in (("sft", start_dir), ("grpo", final_dir))}
    (diff,) = paired_differences([dirs["sft"], dirs["grpo"]], "valid")
    kept = "grpo" if scores["grpo"][name] > scores["sft"][name] else "sft"
    record = {"split": "valid", "rows": scores["sft"]["rows"], "metric": name, "kept": kept,
              "sft": {k: scores["sft"][k] for k in ("HR@10", "NDCG@10", name)},
              "grpo": {k: scores["grpo"][k] for k in ("HR@10", "NDCG@10", name)},
              "difference": {k: list(diff[k]) for k in ("HR@10", "NDCG@10") if k in diff},
              "started_from": str(start_dir)}
    if kept == "sft":
        replace_with_copy(start_dir, final_dir, guard=record, stage="grpo", shipped="sft")
        logger.warning("guard: GRPO did not beat its SFT start on valid (%s %.4f vs %.4f, paired difference "
                       "%+.4f [%+.4f, %+.4f]); %s holds the SFT model", name, scores["grpo"][name],
                       scores["sft"][name], *diff[name], final_dir)
    else:
        update_metadata(final_dir, guard=record, shipped="grpo")
        logger.info("guard: GRPO beat its SFT start on valid (%s %.4f vs %.4f, paired difference %+.4f "
                    "[%+.4f, %+.4f]); keeping it", name, scores["grpo"][name], scores["sft"][name], *diff[name])
    return record


# ----------------------------------------------------------------------------- config files and the pipeline stage

GRPO_DATACLASSES = (GenRecGRPOArguments, GenRecGRPOConfig)


def parse_grpo_config(path: str | Path, overrides: dict | None = None):
    """(GenRecGRPOArguments, GenRecGRPOConfig) from a GRPO YAML, with `overrides` replacing its values."""
    return parse_yaml_config(path, GRPO_DATACLASSES, "GRPO config (see configs/grpo/)", overrides)


@dataclass
class GRPOStageConfig(TrainingStageConfig):
    config: str = field(
        default="configs/grpo/demo.yaml",
        metadata={"help": "GRPO YAML (keys of GenRecGRPOArguments and GRPOConfig), relative to the working "
                  "directory."},
    )


def run_grpo_stage(run_dir: Path, cfg: GRPOStageConfig, force: bool = False) -> None:
    """The pipeline's `grpo` stage: post-train the run's SFT model in this process, resuming the stage's own
    checkpoints after a kill (unless `force`: then it starts afresh)."""
    args, training_args = cfg.parse(GRPO_DATACLASSES, "GRPO config (see configs/grpo/)", run_dir)
    train_grpo(args, training_args, fresh=force)
