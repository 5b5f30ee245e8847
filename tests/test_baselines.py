"""Baselines on tiny hand-made run directories whose answers are known by construction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genrec.artifacts import train_sequences
from genrec.baselines import BASELINES, main
from genrec.baselines.common import top_k
from genrec.baselines.sasrec import training_windows
from genrec.content import history_matrix
from genrec.evaluation import KS
from genrec.io import write_json, write_jsonl, write_npy


def make_run(root, items, train, valid, test, emb=None):
    """Write items.jsonl, splits/*.jsonl and (optionally) item_emb.npy/json; rows are (history, target)."""
    write_jsonl(root / "items.jsonl", [{"item_id": i, "title": f"item {i}"} for i in items])
    for name, rows in (("train", train), ("valid", valid), ("test", test)):
        write_jsonl(root / "splits" / f"{name}.jsonl",
                    [{"user_id": u, "history": list(h), "target": t} for u, h, t in rows])
    if emb is not None:
        write_npy(root / "item_emb.npy", np.asarray(emb, dtype=np.float32))
        write_json(root / "item_emb.json", {"item_ids": list(items), "dim": len(emb[0])})
    return root


def read_out(out):
    metrics = json.loads((out / "metrics.json").read_text())
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return metrics, preds


ITEMS = ["a", "b", "c", "d", "e"]
# interactions per user: u1 a b c, u2 b c, u3 c d -> counts c 3, b 2, a 1, d 1, e 0
TRAIN = [("u1", "a", "b"), ("u1", "ab", "c"), ("u2", "b", "c"), ("u3", "c", "d")]


def test_popularity_ranks_by_train_counts_and_writes_the_shared_format(tmp_path):
    run = make_run(tmp_path, ITEMS, TRAIN, [("u4", "e", "c")], [("u5", "e", "c"), ("u6", "d", "b")])
    main(["popularity", "--run-dir", str(run), "--exclude-history", "no"])
    metrics, preds = read_out(run / "baselines" / "popularity" / "test")
    assert [p["topk"] for p in preds] == [["c", "b", "a", "d", "e"]] * 2  # tie a/d: catalog order
    assert preds[0]["scores"][:2] == [3.0, 2.0] and preds[1]["user_id"] == "u6"
    assert metrics["HR@1"] == 0.5 and metrics["HR@3"] == 1.0
    for k in KS:
        assert f"HR@{k}" in metrics and f"NDCG@{k}" in metrics
    assert (metrics["method"], metrics["split"], metrics["rows"], metrics["beam"], metrics["invalid"]) == (
        "popularity", "test", 2, None, 0)
    assert metrics["hyperparameters"] == {"exclude_history": False}
    assert metrics["selection"]["split"] == "valid" and metrics["seconds"] >= 0
    # head = c (3 train interactions, the top 20% of the 4 items seen), b is tail, e cold (never in train)
    assert {b: (metrics["buckets"][b]["rows"], metrics["buckets"][b]["items"]) for b in ("head", "tail", "cold")} == {
        "head": (1, 1), "tail": (1, 3), "cold": (0, 1)}


def test_popularity_counts_targets_option(tmp_path):
    run = make_run(tmp_path, ITEMS, TRAIN, [("u4", "e", "c")], [("u5", "e", "c")])
    main(["popularity", "--run-dir", str(run), "--counts", "targets", "--exclude-history", "no"])
    _, preds = read_out(run / "baselines" / "popularity" / "test")
    assert preds[0]["topk"][:3] == ["c", "b", "d"]  # targets only: c 2, b 1, d 1 (a never a target)


def test_cooc_predicts_the_transition_and_backs_off_to_popularity(tmp_path):
    items = [f"i{n}" for n in range(30)]
    # i0 -> i1 five times; i5 (8 interactions) is the most popular item; i9 never appears in train
    train = [(f"u{n}", ["i0"], "i1") for n in range(5)] + [(f"v{n}", [f"i{10 + n}"], "i5") for n in range(8)]
    run = make_run(tmp_path, items, train, [("w", ["i0"], "i1")], [("x", ["i0"], "i1"), ("y", ["i9"], "i5")])
    out = tmp_path / "out"
    main(["cooc", "--run-dir", str(run), "--out", str(out), "--windows", "1", "--reverse-weights", "0"])
    metrics, preds = read_out(out)
    assert preds[0]["topk"][0] == "i1"
    assert preds[1]["topk"][:4] == ["i5", "i0", "i1", "i10"]  # unseen history: popularity order (8, 5, 5, 1)
    assert all(len(p["topk"]) == 20 for p in preds)  # filled up to K
    assert metrics["HR@1"] == 1.0 and set(metrics["hyperparameters"]) >= {"window", "reverse", "decay", "pop_weight"}


def test_knn_returns_the_nearest_item_and_chooses_exclusion_on_valid(tmp_path):
    # a and b nearly parallel, c orthogonal to both, d opposite to a
    emb = [[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]]
    items = ["a", "b", "c", "d"]
    train = [("u1", ["c"], "a"), ("u2", ["a"], "b")]
    run = make_run(tmp_path, items, train, [("v", ["a"], "b")], [("t", ["a"], "b"), ("s", ["c"], "a")], emb=emb)
    main(["knn", "--run-dir", str(run), "--pop-weights", "0", "--decays", "0"])
    metrics, preds = read_out(run / "baselines" / "knn" / "test")
    assert preds[0]["topk"] == ["b", "c", "d"]  # the history item a itself dropped: chosen on valid
    assert metrics["hyperparameters"] == {"decay": 0.0, "pop_weight": 0.0, "exclude_history": True}
    assert preds[0]["scores"][0] == pytest.approx(0.9 / np.hypot(0.9, 0.1), abs=1e-5)


def test_knn_history_decay_mixes_earlier_items(tmp_path):
    emb = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]]
    items = ["a", "b", "c", "d"]
    run = make_run(tmp_path, items, [("u", ["a"], "b")], [("v", ["a", "b"], "c")], [("t", ["a", "b"], "c")], emb=emb)
    main(["knn", "--run-dir", str(run), "--decays", "1", "--pop-weights", "0", "--exclude-history", "yes"])
    _, preds = read_out(run / "baselines" / "knn" / "test")
    assert set(preds[0]["topk"]) == {"c", "d"}  # mean of a and b is equally close to c and d


def test_sasrec_learns_a_deterministic_cycle(tmp_path):
    items = [f"i{n}" for n in range(6)]
    cycle = ["i0", "i1", "i2"]
    seq = lambda start, n: [cycle[(start + j) % 3] for j in range(n)]  # noqa: E731
    train = [(f"u{u}", seq(u, 5), cycle[(u + 5) % 3]) for u in range(30)]
    valid = [(f"v{u}", seq(u, 3), cycle[u % 3]) for u in range(6)]
    test = [(f"t{u}", seq(u, 4), cycle[(u + 4) % 3]) for u in range(6)]
    run = make_run(tmp_path, items, train, valid, test)
    metrics = main(["sasrec", "--run-dir", str(run), "--hidden", "16", "--layers", "1", "--dropout", "0.1", "--lr",
                    "0.01", "--epochs", "30", "--eval-every", "5", "--patience", "3", "--exclude-history", "no"])
    assert metrics["HR@1"] >= 0.9
    assert metrics["fit"]["best_epoch"] >= 5 and metrics["fit"]["max_len"] == 5


@pytest.mark.parametrize(
    "argv, error, match",
    [
        (["nope", "--run-dir", "x"], ValueError, "unknown baseline 'nope'"),  # typo in the name
        (["popularity", "--run-dir", "{missing}"], FileNotFoundError, "not a directory"),  # no run dir
        (["popularity", "--run-dir", "{empty}"], FileNotFoundError, "run the data stage"),  # no items/splits
        (["knn", "--run-dir", "{run}"], FileNotFoundError, "embed stage"),  # knn without item_emb.npy
        (["popularity", "--run-dir", "{run}", "--select-metric", "HR@7"], ValueError, "--select-metric"),
        (["knn", "--run-dir", "{run}", "--decays", "1.5"], ValueError, "--decays"),
        (["sasrec", "--run-dir", "{run}", "--hidden", "10", "--heads", "3"], ValueError, "divisible"),
    ],
)
def test_bad_input_gives_a_clear_error(tmp_path, argv, error, match):
    (tmp_path / "empty").mkdir()
    run = make_run(tmp_path / "run", ITEMS, TRAIN, [("u4", "e", "c")], [("u5", "e", "c")])
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "run": run}
    with pytest.raises(error, match=match):
        main([a.format(**paths) for a in argv])


def test_no_name_prints_usage_and_exits():
    with pytest.raises(SystemExit):
        main([])
    assert set(BASELINES) == {"popularity", "cooc", "knn", "sasrec", "sasrec-faerec"}


def test_unknown_catalog_item_in_a_split_is_rejected(tmp_path):
    run = make_run(tmp_path, ITEMS, TRAIN, [("u4", "e", "zz")], [("u5", "e", "c")])
    with pytest.raises(ValueError, match="not in items.jsonl"):
        main(["popularity", "--run-dir", str(run)])


def test_helpers():
    index = {i: n for n, i in enumerate(ITEMS)}
    rows = [{"user_id": "u", "history": ["a", "b"], "target": "c"}, {"user_id": "u", "history": ["a", "b", "c"],
                                                                      "target": "d"}]
    # a user's rows are prefixes of each other: one sequence, every interaction once
    assert train_sequences(rows, index) == [[0, 1, 2, 3]]
    # decay 0.5: last item 1, the one before 0.5; decay 0: last item only
    assert history_matrix([rows[0]["history"]], index, 0.5, 5).toarray().tolist() == [[0.5, 1.0, 0, 0, 0]]
    assert history_matrix([rows[0]["history"]], index, 0.0, 5).toarray().tolist() == [[0, 1.0, 0, 0, 0]]
    # ties keep the lower column first
    idx, vals = top_k(np.array([[0.1, 0.5, 0.5, 0.9]]), 3)
    assert idx.tolist() == [[3, 1, 2]] and vals.tolist() == [[0.9, 0.5, 0.5]]
    # windows of max_len + 1 from the end, overlapping by one item: each item after the first is a target once
    assert training_windows([[1, 2, 3, 4, 5, 6]], 2) == [[4, 5, 6], [2, 3, 4], [1, 2]]
    assert training_windows([[7]], 3) == []


def test_cli_delegates_and_reports_errors_with_exit_code_2(tmp_path):
    from genrec.cli import main as cli_main

    run = make_run(tmp_path, ITEMS, TRAIN, [("u4", "e", "c")], [("u5", "e", "c")])
    cli_main(["baseline", "popularity", "--run-dir", str(run), "--split", "valid"])
    assert json.loads((run / "baselines" / "popularity" / "valid" / "metrics.json").read_text())["split"] == "valid"
    with pytest.raises(SystemExit) as exc:
        cli_main(["baseline", "nope", "--run-dir", str(run)])
    assert exc.value.code == 2


def test_report_puts_several_runs_side_by_side(tmp_path, capsys):
    from genrec.report import main as report_main

    runs = []
    for name in ("sa", "random"):
        run = make_run(tmp_path / name, ITEMS, TRAIN, [("u4", "e", "c")], [("u5", "e", "c")])
        for split in ("valid", "test"):
            main(["popularity", "--run-dir", str(run), "--split", split])
        runs.append(str(run))
    report_main(["--run-dir", *runs, "--split", "test"])
    table, buckets = capsys.readouterr().out.strip().split("\n\n")  # the metrics, then head / tail / cold
    lines = table.splitlines()
    assert lines[0].startswith("| run | method | split |")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| sa", "| random"]  # one test row per run
    assert buckets.startswith("| run | method | split | head rows |") and len(buckets.splitlines()) == 4
    with pytest.raises(FileNotFoundError, match="no train metrics.json"):
        report_main(["--run-dir", runs[0], "--split", "train"])


def test_report_paired_gives_differences_on_the_same_rows_with_intervals(tmp_path, capsys):
    from genrec.evaluation import write_results
    from genrec.report import main as report_main
    from genrec.report import paired_differences

    rows = [{"user_id": f"u{i}", "target": str(i % 7)} for i in range(60)]
    good = [[r["target"], "x"] for r in rows]  # target first: every row hits
    half = [[r["target"]] if i % 2 else ["x", "y"] for i, r in enumerate(rows)]  # every other row hits
    runs = []
    for name, ranked in (("a", good), ("b", half), ("c", good)):
        write_results(tmp_path / name / "eval" / "test", rows, ranked, method="genrec", split="test", seconds=1.0)
        runs.append(tmp_path / name)
    b, c = paired_differences(runs, "test", resamples=200)
    assert (b["run"], b["vs"], b["rows"]) == ("b", "a", 60)
    mean, low, high = b["HR@10"]
    assert mean == pytest.approx(-0.5) and low < mean < high < 0  # a real drop: the interval excludes 0
    assert c["NDCG@5"] == (0.0, 0.0, 0.0)  # identical predictions: no difference, no noise
    report_main(["--run-dir", *map(str, runs), "--split", "test", "--paired"])
    out = capsys.readouterr().out
    assert "| b | a | test | 60 | -0.5000 [" in out

    write_results(tmp_path / "d" / "eval" / "test", rows[:30], good[:30], method="genrec", split="test", seconds=1.0)
    with pytest.raises(ValueError, match="different test rows"):
        paired_differences([runs[0], tmp_path / "d"], "test")
    with pytest.raises(FileNotFoundError, match="genrec evaluate"):
        paired_differences([runs[0], tmp_path / "nope"], "test")
    with pytest.raises(SystemExit):
        report_main(["--run-dir", str(runs[0]), str(runs[1]), "--paired"])  # no --split
