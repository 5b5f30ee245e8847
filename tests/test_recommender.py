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


def test_item_vectors_travel_with_the_checkpoint_and_steer_the_search(tmp_path, caplog):
    """The content prior: a checkpoint saved with item vectors ranks by log p + weight x cosine(item, history);
    weight 0 (or no vectors, with one warning) is the model alone; a large weight ranks like content kNN."""
    import numpy as np
    from test_evaluate import SIDS
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from genrec.content import ItemContent

    ckpt = tmp_path / "ckpt"
    save_tiny_checkpoint(ckpt)
    model, tok = AutoModelForCausalLM.from_pretrained(ckpt), AutoTokenizer.from_pretrained(ckpt)
    vectors = np.random.default_rng(0).normal(size=(len(SIDS), 8)).astype(np.float32)
    save_checkpoint(model, tok, ckpt, SIDS, checkpoint_metadata(None, False, stage="sft"), item_vectors=vectors)
    rec = load_recommender(ckpt, device="cpu")
    assert rec.content is not None and rec.content.item_ids == rec.trie.item_ids
    history = [list(SIDS)[0], list(SIDS)[5]]
    plain = rec.recommend([history], DecodeConfig(beam=6, content_weight=0.0))[0]
    knn = ItemContent(list(SIDS), vectors).similarity([history], decay=0.5)[0]
    by_content = [list(SIDS)[i] for i in np.argsort(-knn, kind="stable")[:6]]
    steered = rec.recommend([history], DecodeConfig(beam=6, content_weight=1000.0))[0]
    assert steered.items == by_content and steered.items != plain.items
    rec.content = None
    with caplog.at_level("WARNING"):
        alone = [rec.recommend([history], DecodeConfig(beam=6, content_weight=8.0))[0] for _ in range(2)]
    assert [r.items for r in alone] == [plain.items] * 2
    assert sum("no item vectors" in r.message for r in caplog.records) == 1  # said once, not per call
    with pytest.raises(ValueError, match="one row per item"):
        save_checkpoint(model, tok, tmp_path / "bad", SIDS, item_vectors=vectors[:3])
    with pytest.raises(ValueError, match="content_weight"):
        DecodeConfig(content_weight=-1.0)


def test_the_training_stage_chooses_the_content_weight_on_valid(tmp_path):
    """choose_content_weight ranks the valid rows at each weight, keeps the best in genrec.json (a tie keeps the
    smaller weight), and the loaded model then searches with it unless DecodeConfig says otherwise."""
    import numpy as np
    from test_evaluate import SIDS
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from genrec.checkpoint import read_metadata
    from genrec.content import ItemContent
    from genrec.training import choose_content_weight

    ckpt = tmp_path / "ckpt"
    save_tiny_checkpoint(ckpt)
    model, tok = AutoModelForCausalLM.from_pretrained(ckpt), AutoTokenizer.from_pretrained(ckpt)
    vectors = np.random.default_rng(1).normal(size=(len(SIDS), 8)).astype(np.float32)
    save_checkpoint(model, tok, ckpt, SIDS, checkpoint_metadata(None, False, stage="sft"), item_vectors=vectors)
    items = list(SIDS)
    histories = [[items[i], items[(i * 7 + 3) % len(items)]] for i in range(8)]
    sims = ItemContent(items, vectors).similarity(histories, decay=0.5)
    by_content = [{"history": h, "target": items[int(np.argmax(row))]} for h, row in zip(histories, sims)]
    record = choose_content_weight(ckpt, by_content, [1000.0, 0.0], "eval_NDCG@10", beam=10)
    assert record["content_weight"] == 1000.0 and [t["weight"] for t in record["trials"]] == [0.0, 1000.0]
    assert record["trials"][1]["NDCG@10"] == 1.0  # every target is its history's nearest item by content
    rec = load_recommender(ckpt, device="cpu")
    assert rec.content_weight == 1000.0 == read_metadata(ckpt)["content_weight"]
    assert rec.recommend(histories[:1], DecodeConfig(beam=10))[0].items[0] == by_content[0]["target"]
    model_top = [r.items[0] for r in rec.recommend(histories, DecodeConfig(beam=10, content_weight=0.0))]
    by_model = [{"history": h, "target": t} for h, t in zip(histories, model_top)]
    record = choose_content_weight(ckpt, by_model, [1000.0], "NDCG@10", beam=10)
    assert record["content_weight"] == 0.0 and load_recommender(ckpt, device="cpu").content_weight == 0.0


def test_item_content_is_the_recency_weighted_cosine():
    import numpy as np

    from genrec.content import ItemContent

    content = ItemContent(["a", "b", "c"], np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
    # decay 0.5: query = b + 0.25 a (unit rows; a is two steps back), normalised; an item outside the catalog
    # adds nothing but still counts as a step
    query = np.array([0.25, 1.0]) / np.linalg.norm([0.25, 1.0])
    expected = content.vectors @ query
    assert np.allclose(content.similarity([["a", "zz", "b"]], decay=0.5)[0], expected)
    assert np.allclose(content.similarity([["a", "b"]], decay=0.0)[0], content.vectors @ np.array([0.0, 1.0]))
    assert not content.similarity([["zz"]], decay=0.5).any()  # nothing known: no prior
    with pytest.raises(ValueError, match="decay"):
        content.similarity([["a"]], decay=2.0)
    with pytest.raises(ValueError, match="one row per item"):
        ItemContent(["a"], np.zeros((2, 2)))


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
