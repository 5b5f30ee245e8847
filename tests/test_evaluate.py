"""`genrec evaluate`: prompts, checkpoint loading, metrics.json and predictions.jsonl in the shared format."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from genrec.decoding import DecodeConfig
from genrec.evaluate import evaluate_model, main
from genrec.evaluation import KS
from genrec.io import read_jsonl, write_json, write_jsonl
from genrec.recommender import Recommender
from genrec.sid import sid_string, sid_tokens
from genrec.tasks import next_item_prompt, sid_history_prompt

SIDS = {f"i{n}": [n % 3, n % 4, n // 12] for n in range(24)}
WORDS = ["[UNK]", "[PAD]", "[EOS]", "User", "history:", "Next", "item:"]


def save_checkpoint(path, sids=SIDS) -> None:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    tokenizer.add_tokens(sorted({t for codes in sids.values() for t in sid_tokens(codes)}) + [",", "."])
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, eos_token_id=2, pad_token_id=1)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


@pytest.fixture
def run_dir(tmp_path):
    rows = [{"user_id": f"u{n}", "history": [f"i{(n + j) % 24}" for j in range(1 + n % 3)], "target": f"i{n % 24}"}
            for n in range(7)]
    write_jsonl(tmp_path / "splits" / "test.jsonl", rows)
    write_json(tmp_path / "sids.json", SIDS)
    save_checkpoint(tmp_path / "checkpoints" / "sft")
    return tmp_path


def test_sid_history_prompt():
    assert sid_history_prompt(["<a_1><b_2>", "<a_3><b_4>"]) == "User history: <a_1><b_2>, <a_3><b_4>. Next item:"


def test_prompt_leaves_out_items_without_sid():
    sids = {iid: sid_string(codes) for iid, codes in SIDS.items()}
    prompt = next_item_prompt(["i1", "unknown", "i2"], sids)
    assert prompt == "User history: <a_1><b_1><c_0>, <a_2><b_2><c_0>. Next item:"


def test_main_writes_metrics_and_valid_predictions(run_dir):
    metrics = main(["--run-dir", str(run_dir), "--beam", "6", "--batch-size", "4", "--max-rows", "5"])
    saved = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())
    assert saved == metrics
    assert saved["rows"] == 5 and saved["beam"] == 6 and saved["invalid"] == 0 and saved["split"] == "test"
    assert all(f"HR@{k}" in saved and f"NDCG@{k}" in saved for k in KS) and saved["seconds"] >= 0
    preds = read_jsonl(run_dir / "eval" / "test" / "predictions.jsonl")
    assert [p["user_id"] for p in preds] == [f"u{n}" for n in range(5)]
    for p in preds:
        assert len(p["topk"]) == 6 and len(set(p["topk"])) == 6 and set(p["topk"]) <= set(SIDS)
        assert p["scores"] == sorted(p["scores"], reverse=True)


def test_checkpoint_sid_map_wins_over_the_run_map(run_dir, tmp_path):
    own = {k: v for k, v in SIDS.items() if k in ("i1", "i2", "i5")}
    ckpt = tmp_path / "other"
    save_checkpoint(ckpt)
    write_json(ckpt / "sids.json", own)
    out = tmp_path / "out"
    main(["--run-dir", str(run_dir), "--checkpoint", str(ckpt), "--beam", "4", "--out", str(out)])
    preds = read_jsonl(out / "predictions.jsonl")
    assert len(preds) == 7 and all(set(p["topk"]) == set(own) for p in preds)
    assert json.loads((out / "metrics.json").read_text())["checkpoint"] == str(ckpt)


def test_evaluate_model_restores_training_mode(run_dir, tmp_path):
    model = Qwen2ForCausalLM.from_pretrained(run_dir / "checkpoints" / "sft")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(run_dir / "checkpoints" / "sft")
    model.train()
    rows = read_jsonl(run_dir / "splits" / "test.jsonl")
    metrics = evaluate_model(Recommender(model, tokenizer, SIDS), rows, tmp_path / "cb", split="valid",
                             decode=DecodeConfig(beam=3), progress=False)
    assert model.training and metrics["rows"] == 7 and metrics["split"] == "valid"


@pytest.mark.parametrize(
    ("argv", "error", "message"),
    [
        (["--beam", "0"], ValueError, "beam"),  # beam must be positive
        (["--max-rows", "0"], ValueError, "--max-rows"),  # so must max rows
        (["--checkpoint", "/nonexistent/ckpt"], FileNotFoundError, "run the sft stage"),  # no model there
        (["--split", "nope"], ValueError, "split"),  # unknown split
    ],
)
def test_main_rejects_bad_arguments(run_dir, argv, error, message):
    with pytest.raises(error, match=message):
        main(["--run-dir", str(run_dir), *argv])
