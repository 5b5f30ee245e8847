"""GRPO post-training with interest-aware rewards (the `grpo` stage and ``training/grpo.py``), on TRL's GRPOTrainer.

After SFT, GRPO draws a group of completions per training prompt, scores each with reward functions
(`genrec.rewards`: hit, rank, prefix, interest, valid; weights in ``rewards``), and moves the policy towards the
completions that beat their group's mean, with a KL penalty to the SFT model. Rollouts never leave the catalog:

- ``rollout: beam`` (default, MiniOneRec's recipe): each distinct prompt is decoded once by genrec's trie-constrained
  beam search with ``num_generations`` beams (`Recommender.rank_prompts`, the decoding module's beam search), and the
  beams are handed out as its group, best first, with their rank in the ``beam_rank`` column the rank reward reads;
- ``rollout: sample``: the group is drawn by trie-constrained sampling (`genrec.decoding.beam.trie_sample`);
- ``rollout: mixed``: the first ``beam_share`` of the group are the policy's best beams (best first), the rest are
  drawn by trie-constrained sampling. The KL penalty (``beta`` > 0) counts only the sampled completions: k3 is an
  estimate of KL(policy || reference) only for samples of the policy, and on beams it explodes (docs/results.md,
  "GRPO on Industrial"); the beam completions get the policy's own log-probabilities as their reference.
  With ``num_iterations`` 1 the importance ratio is 1 for every completion (the rollout is the current policy).

``rollout_prior`` ranks the beams with the search the model is served with: the SFT start's content prior
(``content_weight`` from its genrec.json, genrec.content) added to the policy's scores, so the rank reward penalises
the wrong items at the top of the list users would see.

``inject_target`` replaces the last completion of a group that lacks the target with the target, so every group
has a hit (the zero-signal problem: with hit + rank most groups have no hit and all rewards 0). A completion's
rank (``beam_rank``, which the rank reward reads) is its position in the group: beams best first, then samples in
draw order.

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
from genrec.content import ItemContent
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

ROLLOUTS = ("beam", "sample", "mixed")
GUARD_RULES = ("significant", "better")


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
    # "| str | None": transformers' argument parser then reads the flag as a string (JSON), as TrainingArguments does
    rewards: dict[str, float] | str | None = field(
        default_factory=lambda: {"hit": 1.0, "rank": 1.0},
        metadata={"help": "Reward name (genrec.rewards.REWARDS, or a dotted path) -> weight, as a mapping or JSON. "
                  "E.g. {hit: 1, rank: 1, prefix: 0.5, interest: 0.5}."},
    )
    reward_params: dict[str, dict] | str | None = field(
        default_factory=dict,
        metadata={"help": "Parameters of parametrised rewards, e.g. {prefix: {curve: sqrt}, interest: {floor: 0.3}}."},
    )
    rollout: str = field(
        default="beam", metadata={"help": "'beam' (trie-constrained beam search), 'sample' (constrained sampling) "
                                  "or 'mixed' (the first beam_share of each group from the beam, the rest sampled; "
                                  "the KL penalty counts the sampled ones only)."}
    )
    sample_temperature: float = field(default=1.0, metadata={"help": "rollouts 'sample', 'mixed': temperature."})
    beam_share: float = field(
        default=0.5, metadata={"help": "rollout 'mixed': share of each group taken from the beam (rounded; at least "
                               "one beam and one sample)."}
    )
    rollout_prior: bool = field(
        default=False,
        metadata={"help": "Beam rollouts rank with the start's content prior (the served search) instead of the "
                  "policy's scores alone; no effect when the start chose content weight 0 or has no item vectors."},
    )
    inject_target: bool = field(
        default=False, metadata={"help": "Put the target in every group that lacks it (as its last completion)."}
    )
    train_rows: int = field(
        default=0, metadata={"help": "Train rows used as prompts (a fixed random subset; 0 = all)."}
    )
    guard: bool = field(
        default=True,
        metadata={"help": "After training, rank the whole valid split with the SFT start and with the trained model "
                  "(the evaluate stage's search) and keep GRPO only where it beats the start by "
                  "metric_for_best_model as guard_rule asks (else, ties included, the SFT start), so the stage "
                  "never ships a model worse than its start on valid; the choice and the paired difference go into "
                  "the final checkpoint's genrec.json."},
    )
    guard_rule: str = field(
        default="significant",
        metadata={"help": "When the guard ships GRPO: 'significant' (the paired 95% interval of GRPO minus SFT on "
                  "valid lies above zero) or 'better' (any higher score). Valid gains inside the interval did not "
                  "carry to test (docs/results.md, issue 24), hence the default."},
    )

    def __post_init__(self):
        super().__post_init__()
        from genrec.rewards import REWARDS

        self.rewards = {str(k): float(v) for k, v in _json_mapping(self.rewards or {}, "rewards").items()}
        self.reward_params = _json_mapping(self.reward_params or {}, "reward_params")
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
        if self.guard_rule not in GUARD_RULES:
            raise ValueError(f"guard_rule={self.guard_rule!r}: use one of {', '.join(GUARD_RULES)}")
        if not 0 < self.beam_share < 1:
            raise ValueError(f"beam_share={self.beam_share}: give the share of each group taken from the beam, "
                             "strictly between 0 and 1 (rollout 'beam' or 'sample' for all of one kind)")

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

    def __init__(self, trainer_args: GenRecGRPOArguments, sids: dict, max_history: int | None,
                 content: ItemContent | None = None, content_weight: float = 0.0):
        self.args, self.sids, self.max_history = trainer_args, sids, max_history
        self.content, self.content_weight = content, content_weight
        self._trie = None

    def recommender(self, trainer) -> Recommender:
        rec = Recommender(trainer.accelerator.unwrap_model(trainer.model), trainer.processing_class, self.sids,
                          max_history=self.max_history, bf16=bool(trainer.args.bf16), trie=self._trie,
                          content=self.content, content_weight=self.content_weight)
        self._trie = rec.trie
        self.content = rec.content  # in trie order from now on
        return rec

    def beams_per_group(self, size: int) -> int:
        """How many completions of a group of `size` come from the beam (the rest are sampled)."""
        if self.args.rollout == "beam":
            return size
        if self.args.rollout == "sample":
            return 0
        return min(size - 1, max(1, round(size * self.args.beam_share)))

    @staticmethod
    def ranks(rows: int, process_index: int, size: int) -> list[int]:
        """Each of a process's `rows` completions' rank in its group: its global position modulo `size`."""
        return [(process_index * rows + j) % size for j in range(rows)]

    def sampled(self, rows: int, process_index: int, size: int) -> list[bool]:
        """Which of a process's `rows` completions were sampled (ranks past the group's beams)."""
        beams = self.beams_per_group(size)
        return [rank >= beams for rank in self.ranks(rows, process_index, size)]

    def groups(self, rec: Recommender, prompts: list[str], size: int, bf16: bool,
               histories: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
        """Each distinct prompt's `size` items: its beams best first, then its samples in draw order. `histories`
        (prompt -> item ids) lets ``rollout_prior`` add the content prior to the beams' scores."""
        distinct = list(dict.fromkeys(prompts))
        beams = self.beams_per_group(size)
        groups = {p: [] for p in distinct}
        if beams:
            decode = DecodeConfig(beam=beams, batch_size=16, bf16=bf16, content_weight=0.0)  # the policy's own beams
            prior = None
            if self.args.rollout_prior and histories:
                prior = rec.content_prior([histories[p] for p in distinct], DecodeConfig(content_weight=None))
            for p, r in zip(distinct, rec.rank_prompts(distinct, decode, k=beams, item_prior=prior), strict=True):
                groups[p] = (r.items + r.items[-1:] * beams)[:beams]
        if size - beams:
            drawn = trie_sample_items(rec, distinct, size - beams, self.args.sample_temperature, bf16)
            for p, items in zip(distinct, drawn, strict=True):
                groups[p] = groups[p] + items
        return groups

    def __call__(self, prompts: list[str], trainer) -> dict:
        mode = "train" if trainer.model.training else "eval"
        size = trainer.num_generations if mode == "train" else trainer.num_generations_eval
        rec = self.recommender(trainer)
        inputs = getattr(trainer, "_rollout_inputs", None) or [{}] * len(prompts)
        histories = {p: row["history"] for p, row in zip(prompts, inputs, strict=True) if "history" in row}
        groups = self.groups(rec, prompts, size, bool(trainer.args.bf16), histories)
        ranks = self.ranks(len(prompts), trainer.accelerator.process_index, size)
        items, injected, hits = [], 0, 0
        for j, (prompt, rank) in enumerate(zip(prompts, ranks, strict=True)):
            group, target = groups[prompt], inputs[j].get("target")
            hits += target in group and rank == 0
            if self.args.inject_target and target in self.sids and target not in group:
                group = [*group[:-1], target]
                injected += rank == 0
            items.append(group[rank])
        n_groups = max(1, ranks.count(0))
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
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._rollout_inputs = None
        if self.beta != 0.0 and self.rollout_func.args.rollout == "mixed":
            size = self.num_generations if self.model.training else self.num_generations_eval
            sampled = self.rollout_func.sampled(output["completion_ids"].size(0), self.accelerator.process_index,
                                                size)
            output["ref_per_token_logps"] = self._kl_for_sampled(output, sampled)
        return output

    @torch.no_grad()
    def _kl_for_sampled(self, output: dict, sampled: list[bool]) -> torch.Tensor:
        """The reference log-probs with the beam rows replaced by the policy's own, so that k3 (exp(ref - logp) -
        (ref - logp) - 1, zero where ref = logp) counts the sampled completions only."""
        ref = output["ref_per_token_logps"].clone()
        beam_rows = torch.tensor([not s for s in sampled], device=ref.device)
        if not beam_rows.any():
            return ref
        if "old_per_token_logps" in output:  # TRL computed the policy's log-probs at rollout time already
            ref[beam_rows] = output["old_per_token_logps"][beam_rows]
            return ref
        prompt_ids, completion_ids = output["prompt_ids"][beam_rows], output["completion_ids"][beam_rows]
        mask = torch.cat([output["prompt_mask"][beam_rows], output["completion_mask"][beam_rows]], dim=1)
        own, _, _ = self._get_per_token_logps_and_entropies(
            self.model, torch.cat([prompt_ids, completion_ids], dim=1), mask, completion_ids.size(1),
            self.args.per_device_train_batch_size)
        ref[beam_rows] = own
        return ref

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
    builder), target (item id) and target_sid, the columns the rewards read, and the history (item ids) the
    content prior reads. `n` > 0 keeps a fixed random subset."""
    return [{"prompt": next_item_prompt(history, sid_strings, max_history), "target": target,
             "target_sid": sid_strings[target], "history": list(history)}
            for history, target in selection_rows(rows, sid_strings, n, seed)]


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
    rollout = TrieRollout(args, start.sids, start.max_history, start.content, start.content_weight)
    # selection ranks by the model alone, or as served (content prior included) when the rollouts do
    decode = DecodeConfig(beam=args.eval_num_beams, batch_size=training_args.per_device_eval_batch_size,
                          bf16=bool(training_args.bf16), content_weight=None if args.rollout_prior else 0.0)
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
        guard_final(run, args.start_dir, args.final_dir, training_args.metric_for_best_model or "eval_NDCG@10",
                    rule=args.guard_rule)
    trainer.accelerator.wait_for_everyone()
    return args.final_dir


def guard_keeps_grpo(rule: str, sft: float, grpo: float, difference: tuple[float, float, float]) -> bool:
    """The guard's decision from the two valid scores and the paired difference (mean, low, high) of GRPO minus SFT.

    Example:
        >>> guard_keeps_grpo("better", .1166, .1174, (.0007, -.0003, .0017))
        True
        >>> guard_keeps_grpo("significant", .1166, .1174, (.0007, -.0003, .0017))
        False
    """
    if rule not in GUARD_RULES:
        raise ValueError(f"guard rule {rule!r}: use one of {', '.join(GUARD_RULES)}")
    return difference[1] > 0 if rule == "significant" else grpo > sft


def guard_final(run: Run, start_dir: Path, final_dir: Path, metric: str,
                decode: DecodeConfig | None = None, rule: str = "significant") -> dict:
    """Keep the SFT start or the GRPO model in `final_dir`, judged on the whole valid split with the evaluate
    stage's search (`decode`, default `DecodeConfig()`) by `metric`: GRPO is kept when the paired 95% interval of
    its difference lies above zero (`rule` "significant") or when it scores higher at all ("better"); otherwise,
    ties included, the start. Both rankings are written to eval/valid-sft and eval/valid-grpo; the choice, the rule,
    both scores and the paired difference (95% bootstrap) go into the final checkpoint's genrec.json under "guard".
    Returns that record."""
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
    kept = "grpo" if guard_keeps_grpo(rule, scores["sft"][name], scores["grpo"][name], diff[name]) else "sft"
    record = {"split": "valid", "rows": scores["sft"]["rows"], "metric": name, "rule": rule, "kept": kept,
              "sft": {k: scores["sft"][k] for k in ("HR@10", "NDCG@10", name)},
              "grpo": {k: scores["grpo"][k] for k in ("HR@10", "NDCG@10", name)},
              "difference": {k: list(diff[k]) for k in ("HR@10", "NDCG@10") if k in diff},
              "started_from": str(start_dir)}
    if kept == "sft":
        replace_with_copy(start_dir, final_dir, guard=record, stage="grpo", shipped="sft")
        logger.warning("guard: GRPO did not beat its SFT start on valid%s (%s %.4f vs %.4f, paired difference "
                       "%+.4f [%+.4f, %+.4f]); %s holds the SFT model",
                       " with an interval above zero" if rule == "significant" else "", name, scores["grpo"][name],
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
