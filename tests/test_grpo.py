"""GRPO post-training: trie rollouts (valid, distinct, ranked), the SID softmax in the policy log-probs, model
selection, resume after a kill, and the 2-process launch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from test_sft import ROOT, VENV_BIN, _env, _flags, _free_port, kill_once_saved
from test_tasks import make_run_dir

from genrec.decoding.beam import DecodeConfig
from genrec.grpo import (
    GenRecGRPOArguments,
    GRPOStageConfig,
    check_groups_stay_whole,
    grpo_rows,
    guard_final,
    run_grpo_stage,
)
from genrec.head import add_sid_head, label_scores
from genrec.recommender import Recommender
from genrec.sft import SFTStageConfig, run_sft_stage
from genrec.sid import parse_sid

TINY_SFT = {"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64, "num_attention_heads": 2,
            "num_key_value_heads": 1, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
            "max_steps": 30, "eval_strategy": "no", "load_best_model_at_end": False, "disable_tqdm": True,
            "warmup_steps": 0, "logging_steps": 10}
# a few GRPO steps: groups of 4 completions, 2 prompts per step, selection on 8 valid rows
TINY_GRPO = {"num_generations": 4, "per_device_train_batch_size": 8, "max_steps": 4, "eval_steps": 2,
             "save_steps": 2, "eval_rows": 8, "eval_num_beams": 10, "logging_steps": 1, "disable_tqdm": True,
             "eval_on_start": False, "warmup_steps": 0, "guard": False}
SEEN: list[dict] = []


def recording_reward(prompts, completions, target_sid, beam_rank, rollout_item, **kwargs) -> list[float]:
    """A zero-weight reward (`tests.test_grpo.recording_reward` by dotted path) that records what TRL passes."""
    SEEN.append({"prompts": list(prompts), "completions": list(completions), "ranks": list(beam_rank),
                 "items": list(rollout_item), "targets": list(target_sid)})
    return [0.0] * len(completions)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """A tiny run with a briefly trained SFT model."""
    run = make_run_dir(tmp_path_factory.mktemp("grpo_run"))
    run_sft_stage(run, SFTStageConfig(config=str(ROOT / "configs/sft/demo.yaml"), overrides=TINY_SFT))
    return run


def test_grpo_steps_roll_out_distinct_catalog_items_in_beam_order(sft_run, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    SEEN.clear()
    overrides = {**TINY_GRPO, "rewards": {"hit": 1.0, "rank": 1.0, "test_grpo.recording_reward": 0.0}}
    run_grpo_stage(sft_run, GRPOStageConfig(config=str(ROOT / "configs/grpo/demo.yaml"), overrides=overrides),
                   force=True)
    sids = json.loads((sft_run / "sids.json").read_text())
    catalog = {tuple(codes) for codes in sids.values()}
    assert len(SEEN) == 4  # one scoring call per step
    for call in SEEN:
        assert all(tuple(parse_sid(c.strip())) in catalog for c in call["completions"])  # every completion is real
        for g in range(0, len(call["completions"]), 4):
            group = call["completions"][g:g + 4]
            assert len(set(group)) == 4, group  # the beams of a group are distinct items
            assert call["ranks"][g:g + 4] == [0, 1, 2, 3]  # handed out best first
            assert len(set(call["prompts"][g:g + 4])) == 1
    meta = json.loads((sft_run / "checkpoints/grpo/genrec.json").read_text())
    assert meta["stage"] == "grpo" and meta["global_step"] == 4 and meta["metric"] == "eval_NDCG@10"
    assert (sft_run / "checkpoints/grpo/catalog.jsonl").exists()
    log = json.loads((sft_run / "checkpoints/grpo-trainer/checkpoint-4/trainer_state.json").read_text())
    logged = {k for entry in log["log_history"] for k in entry}
    assert {"rollout/hit_in_group", "rollout/distinct_items", "frac_reward_zero_std", "rewards/rank_reward/mean",
            "eval_NDCG@10", "kl"} <= logged


def test_injected_targets_give_every_group_a_hit(sft_run, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    SEEN.clear()
    overrides = {**TINY_GRPO, "max_steps": 2, "inject_target": True, "output_dir": str(sft_run / "inject"),
                 "rewards": {"hit": 1.0, "test_grpo.recording_reward": 0.0}}
    run_grpo_stage(sft_run, GRPOStageConfig(config=str(ROOT / "configs/grpo/demo.yaml"), overrides=overrides),
                   force=True)
    for call in SEEN:
        for g in range(0, len(call["completions"]), 4):
            target = call["targets"][g]
            assert any(c.strip() == target for c in call["completions"][g:g + 4])


def test_sampled_rollouts_stay_in_the_catalog(sft_run, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    SEEN.clear()
    overrides = {**TINY_GRPO, "max_steps": 1, "rollout": "sample", "output_dir": str(sft_run / "sample"),
                 "eval_strategy": "no", "load_best_model_at_end": False,
                 "rewards": {"hit": 1.0, "test_grpo.recording_reward": 0.0}}
    run_grpo_stage(sft_run, GRPOStageConfig(config=str(ROOT / "configs/grpo/demo.yaml"), overrides=overrides),
                   force=True)
    sids = {tuple(c) for c in json.loads((sft_run / "sids.json").read_text()).values()}
    assert SEEN and all(tuple(parse_sid(c.strip())) in sids for call in SEEN for c in call["completions"])


def test_mixed_rollouts_hand_out_beams_then_samples(sft_run, monkeypatch):
    """rollout: mixed: the first beam_share of each group are distinct beams, best first; the rest are sampled
    catalog items; ranks run over the whole group."""
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    SEEN.clear()
    overrides = {**TINY_GRPO, "max_steps": 1, "rollout": "mixed", "beam_share": 0.5,
                 "output_dir": str(sft_run / "mixed"), "eval_strategy": "no", "load_best_model_at_end": False,
                 "rewards": {"hit": 1.0, "test_grpo.recording_reward": 0.0}}
    run_grpo_stage(sft_run, GRPOStageConfig(config=str(ROOT / "configs/grpo/demo.yaml"), overrides=overrides),
                   force=True)
    sids = json.loads((sft_run / "sids.json").read_text())
    catalog = {tuple(codes) for codes in sids.values()}
    assert SEEN
    for call in SEEN:
        assert all(tuple(parse_sid(c.strip())) in catalog for c in call["completions"])
        for g in range(0, len(call["completions"]), 4):
            assert call["ranks"][g:g + 4] == [0, 1, 2, 3]
            assert call["completions"][g] != call["completions"][g + 1]  # two distinct beams
    from genrec.grpo import TrieRollout  # with 4 per group: 2 beams, 2 samples; never none of either
    rollout = TrieRollout(GenRecGRPOArguments(rollout="mixed", beam_share=0.9), {}, None)
    assert [rollout.beams_per_group(n) for n in (2, 4, 16)] == [1, 3, 14]


def test_mixed_rollouts_count_the_kl_of_sampled_completions_only(sft_run, monkeypatch):
    """With beta > 0 the beam completions carry the policy's own log-probabilities as their reference (k3 = 0
    there), while the sampled ones keep the reference model's."""
    from genrec.grpo import GenRecGRPOTrainer

    seen = []
    original = GenRecGRPOTrainer._kl_for_sampled

    def spy(self, output, sampled):
        ref = original(self, output, sampled)
        seen.append((output["ref_per_token_logps"].clone(), ref, list(sampled)))
        return ref

    monkeypatch.setattr(GenRecGRPOTrainer, "_kl_for_sampled", spy)
    overrides = {**TINY_GRPO, "max_steps": 2, "rollout": "mixed", "beta": 0.1, "learning_rate": 0.05,
                 "output_dir": str(sft_run / "mixed-kl"), "eval_strategy": "no", "load_best_model_at_end": False,
                 "rewards": {"hit": 1.0, "rank": 1.0}}
    run_grpo_stage(sft_run, GRPOStageConfig(config=str(ROOT / "configs/grpo/demo.yaml"), overrides=overrides),
                   force=True)
    assert len(seen) == 2
    reference, ref, sampled = seen[-1]  # the second step: the policy has moved away from the reference
    rows = torch.tensor(sampled)
    assert rows.any() and (~rows).any()
    assert torch.equal(ref[rows], reference[rows])  # sampled rows: the reference model's log-probs
    assert not torch.allclose(ref[~rows], reference[~rows])  # beam rows: the policy's own


def test_rollout_prior_ranks_beams_as_served(sft_run):
    """rollout_prior: the beams of a group come from the served search (policy + the start's content prior); with a
    prior that dominates, they are the items closest to the history's content, in that order."""
    import numpy as np

    from genrec.content import ItemContent
    from genrec.grpo import TrieRollout
    from genrec.recommender import load_recommender

    start = load_recommender(sft_run / "checkpoints/sft", device="cpu")
    items = list(start.sids)
    vectors = np.random.default_rng(0).normal(size=(len(items), 8)).astype(np.float32)
    content = ItemContent(items, vectors)
    history = items[:2]
    prompt = start.prompt(history)
    for prior, weight in ((False, 0.0), (True, 1e4)):
        args = GenRecGRPOArguments(rollout="beam", rollout_prior=prior)
        rollout = TrieRollout(args, start.sids, start.max_history, content, weight)
        rec = Recommender(start.model, start.tokenizer, start.sids, max_history=start.max_history,
                          content=content, content_weight=weight)
        (group,) = rollout.groups(rec, [prompt], 4, False, {prompt: history}).values()
        served = [r.items for r in rec.recommend([history], DecodeConfig(beam=4, bf16=False), k=4)][0]
        alone = [r.items for r in rec.recommend([history], DecodeConfig(beam=4, bf16=False, content_weight=0.0),
                                                k=4)][0]
        assert group == (served if prior else alone)
    closest = np.argsort(-content.similarity([history], 0.5)[0])[:4]
    assert group == [content.item_ids[i] for i in closest]


def test_fused_head_scores_sid_positions_over_sid_tokens():
    """The log-probs TRL's GRPO reads (fused_lm_head=True) equal the SID softmax SFT trains."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1, intermediate_size=32))
    sid_ids = list(range(30, 40))
    add_sid_head(model, sid_ids)
    ids = torch.tensor([[1, 2, 3, 31, 35, 5]])  # prompt 1 2 3, completion <31> <35> EOS(5)
    labels = ids.clone()
    labels[:, :3] = -100
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    hidden = model.model(input_ids=ids).last_hidden_state[0, 2:5]
    head = model.lm_head.weight
    sid_pos = torch.full((40,), -1)
    sid_pos[sid_ids] = torch.arange(10)
    expected = label_scores(hidden, head, torch.tensor([31, 35, 5]), torch.tensor(sid_ids), sid_pos).logp
    assert torch.allclose(out.log_probs[0, -3:], expected, atol=1e-5)
    assert torch.allclose(out.log_probs[0, :2], torch.zeros(2))  # prompt positions: no label, no score
    manual = torch.log_softmax(hidden[0] @ head[30:].T, -1)[1]  # <31> among the ten SID tokens
    assert torch.allclose(out.log_probs[0, 2], manual, atol=1e-5)


@pytest.mark.parametrize("overrides, error", [
    ({"rewards": {"nope": 1.0}}, "unknown reward"),  # a typo in a reward name lists the choices
    ({"rewards": {}}, "at least one reward"),  # nothing to optimise
    ({"rewards": {"hit": 1.0}, "reward_params": {"prefix": {"curve": "sqrt"}}}, "not in rewards"),  # stray params
    ({"rollout": "greedy"}, "rollout"),  # unknown rollout
    ({"rollout": "mixed", "beam_share": 1.0}, "beam_share"),  # all beams is rollout 'beam'
    ({"guard_rule": "usually"}, "guard_rule"),  # unknown guard rule
])
def test_bad_grpo_arguments(overrides, error):
    with pytest.raises(ValueError, match=error):
        GenRecGRPOArguments(**overrides)


@pytest.mark.parametrize("per_device, steps, group, ok", [
    (8, 1, 4, True),  # two whole groups per process
    (6, 2, 4, True),  # 12 completions per process: three whole groups
    (6, 1, 4, False),  # 6 completions: the second group would straddle two processes
])
def test_groups_must_not_straddle_processes(per_device, steps, group, ok):
    if ok:
        check_groups_stay_whole(per_device, steps, group)
    else:
        with pytest.raises(ValueError, match="multiple of num_generations"):
            check_groups_stay_whole(per_device, steps, group)


def test_grpo_rows_use_the_one_prompt_builder():
    sids = {"a": "<a_1><b_1>", "b": "<a_2><b_1>", "c": "<a_3><b_1>"}
    rows = [{"history": ["a", "x", "b"], "target": "c"}, {"history": ["x"], "target": "a"},
            {"history": ["a"], "target": "x"}]
    out = grpo_rows(rows, sids, max_history=1)
    assert out == [{"prompt": "User history: <a_2><b_1>. Next item:", "target": "c", "target_sid": "<a_3><b_1>",
                    "history": ["a", "x", "b"]}]


def test_guarded_stage_ships_the_model_its_record_names(sft_run, tmp_path):
    """With the guard on (the default), checkpoints/grpo holds the weights of the model that scored higher on the
    whole valid split (the evaluate stage's search), GRPO's own log beside them, and genrec.json and the report
    say which one it is. (Which model wins on a 12-row valid split is chance; the test below fixes a loser.)"""
    from genrec.report import guard_note

    overrides = {**TINY_GRPO, "guard": True, "max_steps": 2, "eval_strategy": "no", "load_best_model_at_end": False,
                 "learning_rate": 30.0, "output_dir": str(tmp_path / "wrecked")}
    run_grpo_stage(sft_run, GRPOStageConfig(config=str(ROOT / "configs/grpo/demo.yaml"), overrides=overrides),
                   force=True)
    final, start = sft_run / "checkpoints/grpo", sft_run / "checkpoints/sft"
    guard = json.loads((final / "genrec.json").read_text())["guard"]
    assert guard["rows"] == len((sft_run / "splits/valid.jsonl").read_text().splitlines())
    assert guard["rule"] == "significant"  # the default: GRPO must beat SFT with the interval above zero
    assert guard["kept"] == ("grpo" if guard["difference"]["NDCG@10"][1] > 0 else "sft")
    same = (final / "model.safetensors").read_bytes() == (start / "model.safetensors").read_bytes()
    assert same == (guard["kept"] == "sft")
    assert any("rollout/hit_in_group" in entry for entry in json.loads((final / "trainer_log.json").read_text()))
    assert ("holds the SFT model" in guard_note(sft_run)) == (guard["kept"] == "sft")


@pytest.mark.parametrize("rule, sft, grpo, difference, keeps", [
    ("significant", .1166, .1174, (.0007, -.0003, .0017), False),  # higher on valid, interval across zero: SFT
    ("significant", .1166, .1226, (.0060, .0021, .0099), True),  # interval above zero: GRPO
    ("better", .1166, .1174, (.0007, -.0003, .0017), True),  # any higher score
    ("better", .1166, .1166, (0.0, 0.0, 0.0), False),  # a tie keeps the start
    ("significant", .1174, .1166, (-.0007, -.0017, .0003), False),
])
def test_guard_decision(rule, sft, grpo, difference, keeps):
    from genrec.grpo import guard_keeps_grpo

    assert guard_keeps_grpo(rule, sft, grpo, difference) is keeps


@pytest.mark.parametrize("rule", ["better", "significant"])
def test_guard_keeps_the_better_model_in_either_order(sft_run, tmp_path, rule):
    """Whichever checkpoint scores higher on valid is shipped ('significant': only with its paired interval above
    zero), whichever of the two is called the start: in one order the trained model loses and the SFT start is
    kept. A tie ships the start; a metric that is not a ranking metric is refused."""
    import shutil

    from safetensors.torch import load_file, save_file

    from genrec.artifacts import Run

    run, models = Run(sft_run), {"sft": sft_run / "checkpoints/sft", "weak": tmp_path / "weak"}
    shutil.copytree(models["sft"], models["weak"])
    weights = load_file(models["weak"] / "model.safetensors")  # the SFT model without its transformer layers
    save_file({k: torch.zeros_like(v) if "layers" in k else v for k, v in weights.items()},
              str(models["weak"] / "model.safetensors"))
    for start, trained in (("sft", "weak"), ("weak", "sft")):
        final = tmp_path / f"final-{trained}"
        shutil.copytree(models[trained], final)
        record = guard_final(run, models[start], final, "eval_NDCG@10", rule=rule)
        assert record["sft"]["NDCG@10"] != record["grpo"]["NDCG@10"]  # the two models really differ
        better = "sft" if record["sft"]["NDCG@10"] > record["grpo"]["NDCG@10"] else "grpo"
        if rule == "significant" and record["difference"]["NDCG@10"][1] <= 0:
            better = "sft"  # higher, but not beyond the interval: the start stays
        assert record["kept"] == better and record["rule"] == rule
        shipped = models[start] if better == "sft" else models[trained]
        assert (final / "model.safetensors").read_bytes() == (shipped / "model.safetensors").read_bytes()
    same = tmp_path / "same"
    shutil.copytree(models["sft"], same)
    assert guard_final(run, models["sft"], same, "NDCG@10", rule=rule)["kept"] == "sft"
    with pytest.raises(ValueError, match="guard compares"):
        guard_final(run, models["sft"], same, "eval_loss", rule=rule)
    with pytest.raises(ValueError, match="guard rule"):
        guard_final(run, models["sft"], same, "NDCG@10", rule="usually")


def test_killed_grpo_run_resumes_to_the_same_final_step(sft_run, tmp_path):
    cmd = [sys.executable, str(ROOT / "training/grpo.py"), "--config", str(ROOT / "configs/grpo/demo.yaml"),
           "--run_dir", str(sft_run), "--output_dir", str(tmp_path / "ckpt"), "--resume_from_checkpoint", "auto",
           *_flags({**TINY_GRPO, "max_steps": 12, "save_steps": 2, "eval_strategy": "no",
                    "load_best_model_at_end": False})]
    kill_once_saved(cmd, tmp_path / "ckpt/checkpoint-2", unfinished=tmp_path / "ckpt/checkpoint-12")
    second = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert any("resuming from" in line for line in second.stderr.splitlines())
    state = json.loads((tmp_path / "ckpt/checkpoint-12/trainer_state.json").read_text())
    assert state["global_step"] == 12
    assert json.loads((sft_run / "checkpoints/grpo/genrec.json").read_text())["global_step"] == 12


@pytest.mark.slow
def test_two_process_cpu_grpo_run(sft_run, tmp_path):
    """`accelerate launch` of 2 CPU processes (DDP over gloo) runs training/grpo.py on a tiny config."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load((ROOT / "configs/grpo/demo.yaml").read_text()),
                                      **TINY_GRPO, "output_dir": str(tmp_path / "ckpt")}))
    cmd = [str(VENV_BIN / "accelerate"), "launch", "--config_file", str(ROOT / "configs/accelerate/ddp_cpu.yaml"),
           "--main_process_port", str(_free_port()), str(ROOT / "training/grpo.py"), "--config", str(config),
           "--run_dir", str(sft_run)]
    proc = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((tmp_path / "ckpt/checkpoint-4/trainer_state.json").read_text())
    assert state["global_step"] == 4 and any("eval_NDCG@10" in e for e in state["log_history"])
