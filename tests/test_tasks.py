"""SFT tasks: prompt / response content per task, loss mask on the response only, task mix and schedule."""

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from genrec.artifacts import Run
from genrec.io import write_json, write_jsonl, write_npy
from genrec.sft import GenRecSFTArguments, sft_catalog
from genrec.sid import sid_string
from genrec.tasks import (
    ALIGN_TASKS,
    TASKS,
    Catalog,
    TaskOptions,
    build_sft_dataset,
    build_task_examples,
    check_task_mix,
    encode_example,
    encode_prompt,
    group_by_length,
    next_item_prompt,
    schedule,
    sid_history_prompt,
)


def options(**overrides) -> TaskOptions:
    """Task options as the SFT arguments fill them (their defaults live there)."""
    return GenRecSFTArguments(**overrides).task_options()


def load_catalog(run_dir: Path, knn_neighbours: int = 0) -> Catalog:
    return sft_catalog(Run(run_dir), knn_neighbours)

PRODUCTS = ["nitrile gloves", "safety glasses", "soldering iron", "solder wire", "pla filament", "print bed sheet",
            "beaker", "erlenmeyer flask", "pipe wrench", "ptfe tape"]


def make_run_dir(root: Path, n_items: int = 30, n_users: int = 24, seed: int = 0) -> Path:
    """A tiny run directory: items, splits, hand-made 3-level SIDs, token_semantics.json (hand-written) and item
    embeddings in which items of the same product (i % 10) are each other's nearest neighbours."""
    rng = random.Random(seed)
    items = [{"item_id": str(i), "title": f"Brand{i % 3} {PRODUCTS[i % len(PRODUCTS)]} pack {i}",
              "description": f"{PRODUCTS[i % len(PRODUCTS)]} for the lab", "brand": f"Brand{i % 3}",
              "categories": ""} for i in range(n_items)]
    sids = {str(i): [i % 4, (i // 4) % 4, i // 16] for i in range(n_items)}
    rows = []
    for u in range(n_users):
        seq = [rng.randrange(n_items) for _ in range(6)]
        rows += [{"user_id": f"U{u}", "history": [str(x) for x in seq[:j]], "target": str(seq[j])}
                 for j in range(1, len(seq))]
    n = len(rows)
    splits = {"train": rows[: n * 8 // 10], "valid": rows[n * 8 // 10: n * 9 // 10], "test": rows[n * 9 // 10:]}
    write_jsonl(root / "items.jsonl", items)
    for name, part in splits.items():
        write_jsonl(root / "splits" / f"{name}.jsonl", part)
    write_json(root / "sids.json", sids)
    semantics = {}
    for level, letter in enumerate("abc"):
        for code in sorted({c[level] for c in sids.values()}):
            members = [iid for iid, c in sids.items() if c[level] == code]
            words = sorted({PRODUCTS[int(i) % len(PRODUCTS)].split()[-1] for i in members})[:5]
            semantics[f"<{letter}_{code}>"] = {"level": level, "code": code, "items": members, "keywords": words,
                                               "description": "items about " + ", ".join(words)}
    write_json(root / "token_semantics.json", semantics)
    emb = np.eye(len(PRODUCTS), 16)[[i % len(PRODUCTS) for i in range(n_items)]] + 0.01 * np.arange(n_items)[:, None]
    write_npy(root / "item_emb.npy", emb.astype(np.float32))
    write_json(root / "item_emb.json", {"item_ids": [it["item_id"] for it in items], "dim": 16})
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def tokenizer(run_dir):
    from genrec.modeling import build_default_tokenizer
    from genrec.sid import all_sid_tokens

    tok = build_default_tokenizer()
    tok.add_tokens(all_sid_tokens(Run(run_dir).sids()))
    return tok


def test_sid_history_prompt_lists_history_in_order():
    prompt = sid_history_prompt(["<a_1><b_2><c_3>", "<a_4><b_5><c_6>"])
    assert prompt.index("<a_1><b_2><c_3>") < prompt.index("<a_4><b_5><c_6>")


@pytest.mark.parametrize("task, prompt_has, completion", [
    # next item from SID history: item 0's SID in the prompt, the target's SID out
    ("seq_sid", sid_string([0, 0, 0]), "target_sid"),
    # next item from title history: item 0's title words in the prompt, the target's SID out
    ("seq_title", "Brand0 nitrile gloves pack 0", "target_sid"),
    # title -> SID of item 5
    ("title2sid", "Brand2 print bed sheet pack 5", sid_string([1, 1, 0])),
    # SID -> title of item 5
    ("sid2title", sid_string([1, 1, 0]), "Brand2 print bed sheet pack 5"),
    # TS-Align: token -> its description
    ("token2desc", "<b_3>", "items about "),
    # TS-Align: description -> token
    ("desc2token", "items about ", "<c_1>"),
    # content neighbours as next items: item 0 -> item 10 (the same product)
    ("seq_knn", sid_string([0, 0, 0]), sid_string([2, 2, 0])),
    # the row's own history, answered by the target's nearest item: target 7 -> item 17 (the same product)
    ("seq_near", sid_string([0, 0, 0]), sid_string([1, 0, 1])),
])
def test_task_content(run_dir, task, prompt_has, completion):
    catalog = load_catalog(run_dir, knn_neighbours=2)
    rows = [{"user_id": "u", "history": ["0"], "target": "7"}]
    examples = build_task_examples(task, catalog, rows, options())
    if completion == "target_sid":
        completion = catalog.sids["7"]
    assert any(prompt_has in ex["prompt"] and completion in ex["completion"] for ex in examples), examples[:3]
    assert all(set(ex) == {"prompt", "completion"} for ex in examples)


def test_interest_tasks_pair_sids_with_positive_interests(run_dir):
    catalog = load_catalog(run_dir)
    catalog.interests = {"0": ["protect hands", "lab safety"], "5": ["3d printing"]}
    opts = options(max_interests=1)
    ask = build_task_examples("sid2interest", catalog, [], opts)
    answer = build_task_examples("interest2sid", catalog, [], opts)
    # only items with interests, cut to max_interests, most confident first as given
    assert ask == [{"prompt": f"What needs does item {catalog.sids['0']} serve?", "completion": "protect hands"},
                   {"prompt": f"What needs does item {catalog.sids['5']} serve?", "completion": "3d printing"}]
    assert answer[0] == {"prompt": "Which item serves these needs: protect hands?", "completion": catalog.sids["0"]}
    with pytest.raises(ValueError, match="mine and label"):
        build_task_examples("sid2interest", load_catalog(run_dir), [], opts)


def test_task_pool_sizes(run_dir):
    catalog = load_catalog(run_dir, knn_neighbours=4)
    rows = [{"user_id": "u", "history": ["0", "1"], "target": "2"}] * 3
    catalog.interests = {str(i): ["need"] for i in range(7)}
    sizes = {t: len(build_task_examples(t, catalog, rows, options(knn_neighbours=2, near_neighbours=3)))
             for t in TASKS}
    assert sizes == {"seq_sid": 3, "seq_title": 3, "title2sid": 30, "sid2title": 30, "token2desc": 10,
                     "desc2token": 10, "sid2interest": 7, "interest2sid": 7, "seq_knn": 60, "seq_near": 9}


def test_seq_near_keeps_the_history_and_answers_with_the_targets_neighbours(run_dir):
    catalog = load_catalog(run_dir, knn_neighbours=3)
    rows = [{"user_id": "u", "history": ["0", "1"], "target": "7"}]
    examples = build_task_examples("seq_near", catalog, rows, options(near_neighbours=2))
    assert [ex["completion"] for ex in examples] == [catalog.sids["17"], catalog.sids["27"]]  # nearest first
    assert {ex["prompt"] for ex in examples} == {next_item_prompt(["0", "1"], catalog.sids)}
    with pytest.raises(ValueError, match="seq_near needs item neighbours"):
        build_task_examples("seq_near", load_catalog(run_dir), rows, options())


def test_content_neighbours_closest_first(run_dir):
    catalog = load_catalog(run_dir, knn_neighbours=3)
    assert catalog.neighbours["0"][:2] == ["10", "20"]  # same product; 10 is closer in the 0.01 * i offset
    assert all(iid not in nbs for iid, nbs in catalog.neighbours.items())


def test_history_is_cut_to_the_latest_items(run_dir):
    catalog = load_catalog(run_dir)
    rows = [{"user_id": "u", "history": [str(i) for i in range(8)], "target": "9"}]
    (ex,) = build_task_examples("seq_sid", catalog, rows, options(max_history=3))
    assert ex["prompt"] == sid_history_prompt([catalog.sids[str(i)] for i in (5, 6, 7)])
    # items without a SID are dropped before the cut, so the prompt still shows three items
    (ex,) = build_task_examples("seq_sid", catalog, [{**rows[0], "history": ["4", "5", "x", "6", "7"]}],
                                options(max_history=3))
    assert ex["prompt"] == next_item_prompt(["5", "6", "7"], catalog.sids)


def test_loss_mask_covers_only_the_response(tokenizer):
    prompt, completion = sid_history_prompt(["<a_1><b_2><c_0>"]), "<a_3><b_0><c_1>"
    enc = encode_example(tokenizer, prompt, completion)
    n_prompt = len(encode_prompt(tokenizer, prompt))
    assert enc["labels"][:n_prompt] == [-100] * n_prompt
    assert enc["labels"][n_prompt:] == enc["input_ids"][n_prompt:]
    response = tokenizer.convert_ids_to_tokens(enc["labels"][n_prompt:])
    assert response == ["<a_3>", "<b_0>", "<c_1>", tokenizer.eos_token]
    # no [CLS]/[SEP] around the prompt: training and inference see the same prompt tokens
    assert enc["input_ids"][:n_prompt] == tokenizer(prompt)["input_ids"]


@pytest.mark.parametrize("mix, error", [
    ({"seq_sid": 1, "nope": 1}, "unknown task"),  # a typo in a task name
    ({"seq_sid": -1}, ">= 0"),  # negative ratio
    ({"seq_sid": 0}, "no task"),  # nothing selected
])
def test_bad_task_mix(mix, error):
    with pytest.raises(ValueError, match=error):
        check_task_mix(mix)


def test_schedule_ratios_and_curriculum():
    pools = {"seq_sid": list(range(10)), "title2sid": list(range(10, 30)), "token2desc": list(range(30, 34))}
    mix = {"seq_sid": 2.0, "title2sid": 0.5, "token2desc": 1.0}
    order = schedule(pools, mix, epochs=1, align_epochs=1, seed=0)
    align = 10 + 4  # one alignment pass: half of title2sid + all of token2desc
    assert all(i >= 10 for i in order[:align])  # alignment tasks come first
    counts = Counter("seq" if i < 10 else "title" if i < 30 else "tok" for i in order[align:])
    assert counts == {"seq": 20, "title": 10, "tok": 4}
    assert len(schedule(pools, mix, epochs=1.5, seed=0)) == 34 + 17  # a fractional last pass is cut short
    assert schedule(pools, mix, epochs=2, seed=3) == schedule(pools, mix, epochs=2, seed=3)  # resumable


def test_group_by_length_keeps_examples():
    lengths = [random.Random(i).randrange(5, 50) for i in range(100)]
    order = list(range(100)) * 2
    grouped = group_by_length(order, lengths, batch_size=8, window=4)
    assert sorted(grouped) == sorted(order)
    spread = [max(lengths[i] for i in grouped[b:b + 8]) - min(lengths[i] for i in grouped[b:b + 8])
              for b in range(0, 192, 8)]
    assert sum(spread) / len(spread) < 15  # batches hold similar lengths (random batches spread ~40)


def test_build_sft_dataset(run_dir, tokenizer):
    mix = {t: 0.0 if t in ("sid2interest", "interest2sid") else 1.0 for t in TASKS}
    catalog = load_catalog(run_dir, knn_neighbours=2)
    ds = build_sft_dataset(catalog, Run(run_dir).split("train"), tokenizer, mix, options(knn_neighbours=2),
                           epochs=1, align_epochs=1)
    n_align = 2 * len(catalog.sids) + 2 * len(catalog.semantics)
    # the alignment pass, then one pass over every task: seq_sid, seq_title, seq_near (one neighbour), seq_knn
    assert len(ds) == n_align + n_align + 3 * 96 + 2 * 30
    assert set(ds.column_names) == {"input_ids", "labels", "task"}
    assert set(ds["task"][:n_align]) == set(ALIGN_TASKS) - {"sid2interest", "interest2sid"}
    for ex in ds.select(range(20)):
        first = next(i for i, y in enumerate(ex["labels"]) if y != -100)
        assert all(y == -100 for y in ex["labels"][:first]) and ex["labels"][-1] == tokenizer.eos_token_id
