"""Every file under configs/ is parsed against the code that reads it, and lists only values that differ from
the defaults (a default lives in one place: the dataclass field)."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from trl import TrlParser

from genrec.config import from_dict
from genrec.pipeline import load_pipeline_config
from genrec.sft import SFT_DATACLASSES, parse_sft_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _files(folder: str, *suffixes: str) -> list[Path]:
    return sorted(p for p in (CONFIGS / folder).glob("*") if p.suffix in suffixes)


def test_every_config_file_has_a_parser():
    parsed = {"sft", "grpo", "pipeline", "tokenizer", "accelerate"}
    folders = {p.parent.name for p in CONFIGS.rglob("*") if p.is_file()}
    assert folders <= parsed, f"add a test that parses configs/{sorted(folders - parsed)}"


@pytest.mark.parametrize("path", _files("sft", ".yaml"), ids=lambda p: p.name)
def test_sft_config(path):
    args = ["--config", str(path)]
    if not torch.cuda.is_available():
        args += ["--use_cpu", "true"]  # GPU configs ask for bf16, which TrainingArguments refuses without a GPU
    script_args, model_args, training_args = TrlParser(SFT_DATACLASSES).parse_args_and_config(args)
    values = yaml.safe_load(path.read_text())
    for obj in (script_args, model_args, training_args):
        for f in dataclasses.fields(obj):
            if f.name in values and f.default is not dataclasses.MISSING:
                assert values[f.name] != f.default, f"{path.name}: {f.name}: {values[f.name]!r} is the default"
    # selection ranks with the trie (HR/NDCG@K), never on the loss
    assert training_args.eval_strategy == "no" or re.fullmatch(r"eval_(HR|NDCG)@\d+", training_args.metric_for_best_model)


@pytest.mark.parametrize("path", _files("grpo", ".yaml"), ids=lambda p: p.name)
def test_grpo_config(path):
    from genrec.grpo import GRPO_DATACLASSES

    args = ["--config", str(path)] + (["--use_cpu", "true"] if not torch.cuda.is_available() else [])
    script_args, training_args = TrlParser(GRPO_DATACLASSES).parse_args_and_config(args)
    values = yaml.safe_load(path.read_text())
    for key in ("beta", "loss_type", "scale_rewards"):  # TRL changed these defaults across versions
        assert key in values, f"{path.name} must set {key} explicitly"
    for obj in (script_args, training_args):
        for f in dataclasses.fields(obj):
            if f.name in values and f.default is not dataclasses.MISSING and f.name not in ("beta", "loss_type",
                                                                                            "scale_rewards"):
                assert values[f.name] != f.default, f"{path.name}: {f.name}: {values[f.name]!r} is the default"
    assert training_args.per_device_train_batch_size % training_args.num_generations == 0
    assert training_args.metric_for_best_model == "eval_NDCG@10"


@pytest.mark.parametrize("path", _files("pipeline", ".yaml"), ids=lambda p: p.name)
def test_pipeline_config(path):
    cfg = load_pipeline_config(path)
    assert cfg.stages
    sft = cfg.config("sft")  # the SFT YAML it names exists and its overrides are real options
    parsed = parse_sft_config(CONFIGS.parent / sft.config, sft.overrides)
    for key, value in sft.overrides.items():
        owners = [obj for obj in parsed if key in {f.name for f in dataclasses.fields(obj)}]
        assert owners, f"{path.name}: sft.overrides.{key} is not an SFT option"
        assert getattr(owners[0], key) == value, f"{path.name}: sft.overrides.{key} did not reach the SFT config"


@pytest.mark.parametrize("path", _files("tokenizer", ".yaml"), ids=lambda p: p.name)
def test_tokenizer_config(path):
    from genrec.tokenizer import QuantizeConfig

    from_dict(QuantizeConfig, yaml.safe_load(path.read_text()), str(path))


@pytest.mark.parametrize("path", _files("accelerate", ".yaml"), ids=lambda p: p.name)
def test_accelerate_config(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    ds_file = (cfg.deepspeed_config or {}).get("deepspeed_config_file")
    if ds_file:
        ds = json.loads((CONFIGS.parent / ds_file).read_text())
        assert ds["zero_optimization"]["stage"] == (3 if cfg.deepspeed_config["zero3_init_flag"] else 2)


@pytest.mark.parametrize("path", _files("accelerate", ".json"), ids=lambda p: p.name)
def test_deepspeed_json(path):
    ds = json.loads(path.read_text())
    assert ds["train_micro_batch_size_per_gpu"] == "auto"  # the trainer fills batch sizes from SFTConfig


def test_grpo_reward_flags_take_json_on_the_command_line():
    """`--rewards` / `--reward_params` override a YAML's mappings from the command line, as JSON (their help says so)."""
    from genrec.grpo import GRPO_DATACLASSES

    args = ["--config", str(CONFIGS / "grpo/industrial-cpu.yaml"), "--use_cpu", "true",
            "--rewards", '{"hit": 1.0, "rank": 1.0, "interest": 0.2}', "--reward_params", '{"interest": {"floor": 0.5}}']
    script_args, _ = TrlParser(GRPO_DATACLASSES).parse_args_and_config(args)
    assert script_args.rewards == {"hit": 1.0, "rank": 1.0, "interest": 0.2}
    assert script_args.reward_params == {"interest": {"floor": 0.5}}
    with pytest.raises(ValueError, match="not JSON"):
        TrlParser(GRPO_DATACLASSES).parse_args_and_config(args[:4] + ["--rewards", "hit=1"])
