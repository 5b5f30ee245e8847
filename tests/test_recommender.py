"""One path from a run to a recommendation: the same prompt in training and inference, one loader, one reader per
run artifact, and a decoding core that does not pull in transformers."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_evaluate import save_checkpoint as save_tiny_checkpoint
from test_tasks import make_run_dir

from genrec import artifacts
from genrec.artifacts import Run
from genrec.checkpoint import checkpoint_metadata, save_checkpoint
from genrec.decoding import DecodeConfig
from genrec.modeling import build_default_tokenizer
from genrec.recommender import Recommender, load_recommender
from genrec.sft import GenRecSFTArguments, sft_catalog
from genrec.sid import all_sid_tokens
from genrec.tasks import build_sft_dataset, encode_example, encode_prompt

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("rec_run"))


def test_training_example_and_inference_prompt_are_token_identical(run_dir):
    """A history longer than max_history: the seq_sid example SFT trains on and the prompt the recommender
    decodes from start with the same token ids."""
    run = Run(run_dir)
    tokenizer = build_default_tokenizer()
    tokenizer.add_tokens(all_sid_tokens(run.sids()))
    history = [str(i) for i in range(9)]  # 9 items; the prompt keeps the latest 4
    args = GenRecSFTArguments(run_dir=str(run_dir), max_history=4, task_mix={"seq_sid": 1.0})
    catalog = sft_catalog(run)
    (example,) = build_sft_dataset(catalog, [{"user_id": "u", "history": history, "target": "11"}], tokenizer,
                                   args.task_mix, args.task_options(), epochs=1)
    model = torch.nn.Linear(1, 1)  # the prompt needs no real model
    recommender = Recommender(model, tokenizer, run.sids(), max_history=args.max_history)
    prompt_ids = encode_prompt(tokenizer, recommender.prompt(history))
    n_prompt = example["labels"].index(next(y for y in example["labels"] if y != -100))
    assert example["input_ids"][:n_prompt] == prompt_ids
    assert example["input_ids"] == encode_example(tokenizer, recommender.prompt(history), catalog.sids["11"])[
        "input_ids"]
    shown = tokenizer.decode(prompt_ids)
    assert catalog.sids["5"] in shown and catalog.sids["4"] not in shown  # cut to the latest four


def test_load_recommender_reads_how_the_checkpoint_was_trained(tmp_path):
    ckpt = tmp_path / "ckpt"
    save_tiny_checkpoint(ckpt)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(ckpt), AutoTokenizer.from_pretrained(ckpt)
    from test_evaluate import SIDS

    save_checkpoint(model, tok, ckpt, SIDS, checkpoint_metadata(2, False, stage="sft"),
                    titles={iid: f"Item {iid}" for iid in SIDS})
    rec = load_recommender(ckpt, device="cpu")
    assert rec.max_history == 2 and rec.bf16 is False and rec.titles["i3"] == "Item i3"
    assert not rec.use_bf16(None)  # trained in float32: ranked in float32 on any hardware
    assert rec.prompt(["i1", "i2", "i3"]) == rec.prompt(["i2", "i3"])  # cut as in training
    recs = rec.recommend([["i1", "i2"]], DecodeConfig(beam=5, batch_size=2), k=3)
    assert len(recs[0].items) == 3 and set(recs[0].items) <= set(SIDS)


def test_load_recommender_without_sid_map_says_what_to_do(tmp_path):
    save_tiny_checkpoint(tmp_path / "plain")
    (tmp_path / "plain" / "sids.json").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="sids.json"):
        load_recommender(tmp_path / "plain", device="cpu")


def test_decoding_trie_does_not_import_transformers():
    code = "import sys, genrec.decoding.trie; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_each_artifact_is_parsed_once_per_process(run_dir, monkeypatch):
    calls = []
    original = artifacts.read_json

    def counting(path):
        calls.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(artifacts, "read_json", counting)
    artifacts.read_sids.cache_clear()
    run = Run(run_dir)
    assert run.sids() is Run(run_dir).sids()  # a second reader in the same process shares the parse
    assert calls == ["sids.json"]
    path = run.path(artifacts.SIDS)
    path.write_text(json.dumps({**json.loads(path.read_text()), "new": [9, 9, 9]}))  # a rewritten file
    assert "new" in run.sids() and calls == ["sids.json", "sids.json"]


# Run-artifact and checkpoint file names, and the modules allowed to spell them: the artifacts module (the run
# layout), checkpoint (the checkpoint layout, which shares the name sids.json) and data (the generic layout's own
# input items.jsonl).
ARTIFACT_NAMES = {"items.jsonl", "splits", "item_emb.npy", "item_emb.json", "sids.json", "sid_report.json",
                  "token_semantics.json", "interests.jsonl", "metrics.json", "predictions.jsonl", "genrec.json",
                  "catalog.jsonl", "trainer_log.json", "config.json"}
ALLOWED = {"genrec/artifacts.py", "genrec/checkpoint.py", "genrec/data.py"}


def _path_literals(path: Path) -> list[tuple[int, str]]:
    """String constants that are a file name or path (no spaces) naming a run artifact."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and " " not in node.value:
            if any(part in ARTIFACT_NAMES for part in node.value.split("/")):
                found.append((node.lineno, node.value))
    return found


def test_only_the_artifacts_module_knows_the_run_layout():
    offenders = []
    for path in sorted(ROOT.glob("genrec/**/*.py")) + sorted(ROOT.glob("tokenizer/*.py")) + sorted(
            ROOT.glob("rewards/*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel not in ALLOWED:
            offenders += [f"{rel}:{line}: {text!r}" for line, text in _path_literals(path)]
    assert not offenders, "use genrec.artifacts for run files, genrec.checkpoint for checkpoint files:\n" + "\n".join(
        offenders)
