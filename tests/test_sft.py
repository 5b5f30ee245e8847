"""SFT: the label-position SID head, config parsing, a 2-process CPU run of training/sft.py, kill + resume."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from test_tasks import make_run_dir

from genrec.head import add_sid_head, label_nll
from genrec.sft import (
    GenRecSFTArguments,
    SFTStageConfig,
    parse_sft_config,
    run_sft_stage,
)

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# A tiny model and run on top of configs/sft/demo.yaml; every key here is also a valid CLI flag.
TINY = {"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64, "num_attention_heads": 2,
        "num_key_value_heads": 1, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8,
        "eval_rows": 8, "eval_num_beams": 10, "logging_steps": 1, "disable_tqdm": True, "warmup_steps": 0}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("sft_run"))


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _flags(values: dict) -> list[str]:
    return [item for k, v in values.items() for item in (f"--{k}", str(v))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_once_saved(cmd: list[str], checkpoint: Path, unfinished: Path) -> None:
    """Start a training command, SIGKILL it (and its children) as soon as `checkpoint` is saved completely, and check
    it had not reached `unfinished` yet."""
    first = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.time() + 240
    while not (checkpoint / "trainer_state.json").exists() and first.poll() is None:
        assert time.time() < deadline, "no checkpoint written"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not unfinished.exists(), "the run finished before it could be killed"


# ----------------------------------------------------------------------------- head


def test_label_nll_restricts_sid_positions_to_sid_tokens():
    torch.manual_seed(0)
    hidden, weight = torch.randn(5, 8), torch.randn(20, 8)
    labels = torch.tensor([3, 15, 16, 4, 19])
    sid_ids = torch.tensor([15, 16, 17, 18, 19])
    sid_pos = torch.full((20,), -1)
    sid_pos[sid_ids] = torch.arange(5)
    full, _ = label_nll(hidden, weight, labels)
    assert torch.allclose(full, F.cross_entropy(hidden @ weight.T, labels, reduction="sum"))
    restricted, _ = label_nll(hidden, weight, labels, sid_ids, sid_pos)
    is_sid = sid_pos[labels] >= 0
    expected = (F.cross_entropy(hidden[is_sid] @ weight[sid_ids].T, sid_pos[labels[is_sid]], reduction="sum")
                + F.cross_entropy(hidden[~is_sid] @ weight.T, labels[~is_sid], reduction="sum"))
    assert torch.allclose(restricted, expected)


def tiny_causal_lm(arch: str):
    from transformers import BertConfig, BertLMHeadModel, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if arch == "bert":  # the minilm backbone's class: a head transform and a head bias between decoder and logits
        model = BertLMHeadModel(BertConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, is_decoder=True))
        with torch.no_grad():
            model.get_output_embeddings().bias.normal_()
        return model.eval()
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1))


@pytest.mark.parametrize("arch", ["qwen2", "bert"])
def test_sid_head_matches_the_model_loss(arch):
    model = tiny_causal_lm(arch)
    ids = torch.randint(0, 50, (2, 7))
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt of 4 tokens
    reference = model(input_ids=ids, labels=labels).loss
    add_sid_head(model, None)
    out = model(input_ids=ids, labels=labels, sid_head=True)
    assert torch.allclose(out.loss, reference, atol=1e-5)
    assert int(out.num_tokens) == 2 * 3
    assert model(input_ids=ids).logits.shape == (2, 7, 50)  # the plain forward (generation) is untouched


# ----------------------------------------------------------------------------- configs


def test_parse_sft_config_overrides_and_errors(tmp_path):
    args, model_args, training_args = parse_sft_config(ROOT / "configs/sft/demo.yaml",
                                                       {"run_dir": "x", "learning_rate": 0.5, "hidden_size": 64})
    assert (args.run_dir, training_args.learning_rate, model_args.hidden_size) == ("x", 0.5, 64)
    with pytest.raises(ValueError, match="not_an_option"):
        parse_sft_config(ROOT / "configs/sft/demo.yaml", {"not_an_option": 1})
    with pytest.raises(FileNotFoundError):
        parse_sft_config(tmp_path / "missing.yaml")


def test_unquoted_yaml_no_gets_a_hint_to_quote_it(tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text("eval_strategy: no\n")
    with pytest.raises(ValueError, match=r"sft.yaml: False is not a valid IntervalStrategy.*quote the value"):
        parse_sft_config(config)
    assert parse_sft_config(config, {"eval_strategy": "no"})[2].eval_strategy == "no"


def test_exponent_without_a_dot_is_a_float_in_configs_and_set(tmp_path):
    # PyYAML alone reads `2e-4` as a string, which only failed once the optimizer compared it.
    from genrec.pipeline import load_pipeline_config

    config = tmp_path / "sft.yaml"
    config.write_text((ROOT / "configs/sft/demo.yaml").read_text() + "\nlearning_rate: 2e-4\n")
    assert parse_sft_config(config)[2].learning_rate == pytest.approx(2e-4)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"data:\n  source: synthetic\nsft:\n  config: {config}\n")
    cfg = load_pipeline_config(pipeline, ["sft.overrides.learning_rate=2e-3"])
    assert parse_sft_config(config, cfg.config("sft").overrides)[2].learning_rate == pytest.approx(2e-3)


@pytest.mark.parametrize("kwargs, error", [
    ({"task_mix": "{not json"}, "not JSON"),  # a CLI value that is not JSON
    ({"task_mix": {"seq_sid": 1, "sid2titel": 1}}, "unknown task"),  # a typo in a task name
    ({"eval_num_beams": 5}, "at least 10 beams"),  # HR@10 needs 10 items
])
def test_bad_sft_arguments(kwargs, error):
    with pytest.raises(ValueError, match=error):
        GenRecSFTArguments(**kwargs)


def test_task_mix_from_cli_json():
    assert GenRecSFTArguments(task_mix='{"seq_sid": 1, "title2sid": 0.5}').task_mix == {"seq_sid": 1.0,
                                                                                        "title2sid": 0.5}


def test_stage_config_digest_follows_the_yaml(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("learning_rate: 0.1\n")
    first = SFTStageConfig(config=str(path)).config_digest
    path.write_text("learning_rate: 0.2\n")
    assert SFTStageConfig(config=str(path)).config_digest not in ("", first)


# ----------------------------------------------------------------------------- training runs


@pytest.mark.slow
def test_two_process_cpu_run(run_dir, tmp_path):
    """`accelerate launch` of 2 CPU processes (DDP over gloo) runs a few steps and writes the final model."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load((ROOT / "configs/sft/demo.yaml").read_text()), **TINY}))
    cmd = [str(VENV_BIN / "accelerate"), "launch", "--config_file", str(ROOT / "configs/accelerate/ddp_cpu.yaml"),
           "--main_process_port", str(_free_port()), str(ROOT / "training/sft.py"), "--config", str(config), "--run_dir", str(run_dir),
           "--max_steps", "4", "--eval_steps", "2", "--save_steps", "2"]
    proc = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = run_dir / "checkpoints" / "sft"
    meta = json.loads((final / "genrec.json").read_text())
    assert meta["global_step"] == 4 and meta["metric"] == "eval_HR@10" and meta["best_step"] in (2, 4)
    assert json.loads((final / "sids.json").read_text()) == json.loads((run_dir / "sids.json").read_text())
    state = json.loads((run_dir / "checkpoints/sft-trainer/checkpoint-4/trainer_state.json").read_text())
    assert any("eval_HR@10" in entry for entry in state["log_history"])
    # 2 ranks x 4 rows per step: 4 steps cover 32 examples of the schedule
    assert state["log_history"][-1]["epoch"] == pytest.approx(32 / _schedule_length(run_dir), abs=0.01)


def test_pipeline_stage_in_process_with_lora(run_dir, tmp_path):
    """The pipeline's sft stage trains in this process; LoRA adapters are merged into a plain, still tied model."""
    from genrec.checkpoint import load_model_and_tokenizer

    overrides = {**TINY, "max_steps": 2, "eval_strategy": "no", "load_best_model_at_end": False, "use_lora": True,
                 "output_dir": str(tmp_path / "ckpt")}
    run_sft_stage(run_dir, SFTStageConfig(config=str(ROOT / "configs/sft/demo.yaml"), overrides=overrides))
    model, tokenizer = load_model_and_tokenizer(run_dir / "checkpoints" / "sft")
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert json.loads((run_dir / "checkpoints/sft/genrec.json").read_text())["global_step"] == 2


def test_same_seed_trains_the_same_model(run_dir, tmp_path):
    """The seed covers the model's initialisation (the Trainer seeds only after the model exists), so a rerun with
    the same seed reproduces the model and another seed does not."""
    from safetensors.torch import load_file

    def weights(seed: int, name: str) -> dict:
        overrides = {**TINY, "max_steps": 2, "eval_strategy": "no", "load_best_model_at_end": False, "seed": seed,
                     "output_dir": str(tmp_path / name)}
        run_sft_stage(run_dir, SFTStageConfig(config=str(ROOT / "configs/sft/demo.yaml"), overrides=overrides),
                      force=True)
        return load_file(run_dir / "checkpoints/sft/model.safetensors")

    torch.manual_seed(1)  # whatever state the process is in
    first = weights(3, "a")
    torch.manual_seed(2)
    second, other = weights(3, "b"), weights(4, "c")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def _schedule_length(run_dir: Path) -> int:
    n_train = len((run_dir / "splits/train.jsonl").read_text().splitlines())
    n_items, n_tokens = 30, len(json.loads((run_dir / "token_semantics.json").read_text()))
    return 2 * n_train + 2 * n_items + 2 * n_tokens


def test_killed_run_resumes_to_the_same_final_step(run_dir, tmp_path):
    cmd = [sys.executable, str(ROOT / "training/sft.py"), "--config", str(ROOT / "configs/sft/demo.yaml"),
           "--run_dir", str(run_dir), "--output_dir", str(tmp_path / "ckpt"), "--max_steps", "40",
           "--save_steps", "5", "--eval_strategy", "no", "--load_best_model_at_end", "false",
           "--resume_from_checkpoint", "auto", *_flags(TINY)]
    kill_once_saved(cmd, tmp_path / "ckpt/checkpoint-5", unfinished=tmp_path / "ckpt/checkpoint-40")
    (tmp_path / "ckpt/checkpoint-39").mkdir()  # as if killed while saving: no trainer_state.json yet
    second = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = [line for line in second.stderr.splitlines() if "resuming from" in line]
    assert resumed and "checkpoint-39" not in resumed[0]
    assert json.loads((run_dir / "checkpoints/sft/genrec.json").read_text())["global_step"] == 40
    state = json.loads((tmp_path / "ckpt/checkpoint-40/trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == list(range(1, 41))


def test_auto_resume_discards_checkpoints_of_other_inputs_or_when_fresh(tmp_path):
    """A re-quantized SID map (same YAML) must not resume the old run's checkpoints; --force starts afresh too."""
    from genrec.sft import SIGNATURE_INPUTS, resolve_training_args
    from genrec.training import prepare_resume, run_signature

    run = tmp_path / "run"
    run.mkdir()
    (run / "sids.json").write_text('{"i1": [0, 1]}')
    args, model_args, training_args = parse_sft_config(ROOT / "configs/sft/demo.yaml", {
        "run_dir": str(run), "use_cpu": True, "resume_from_checkpoint": "auto"})
    training_args = resolve_training_args(args, training_args)
    ckpt = Path(training_args.output_dir) / "checkpoint-5"

    def check(fresh=False):
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / "trainer_state.json").write_text("{}")  # a complete save
        signature = run_signature([args, model_args, training_args], run, list(SIGNATURE_INPUTS))
        prepare_resume(signature, training_args, fresh)
        return ckpt.exists()

    assert check()  # first run writes the marker; nothing to discard
    assert check()  # same inputs: resumable
    (run / "sids.json").write_text('{"i1": [1, 0]}')
    assert not check()  # new SID map: discarded
    assert check()
    assert not check(fresh=True)
