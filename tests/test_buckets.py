"""Head / tail / cold breakdown of metrics.json (genrec.evaluation) and its table in `genrec report`."""

from __future__ import annotations

import json

import pytest

from genrec.evaluation import bucket_metrics, popularity_buckets, train_item_counts, write_results


@pytest.mark.parametrize("counts, fraction, expected, threshold", [
    # 5 items seen: ceil(0.2 * 5) = 1 -> only the most interacted item is head; f (0) is cold, so absent
    ({"a": 9, "b": 3, "c": 3, "d": 1, "e": 1, "f": 0}, 0.2, {"a": "head", "b": "tail", "c": "tail", "d": "tail",
                                                            "e": "tail"}, 9),
    # ceil(0.4 * 5) = 2 -> the 2nd item has count 3, and c ties with it: ties at the boundary all join the head
    ({"a": 9, "b": 3, "c": 3, "d": 1, "e": 1}, 0.4, {"a": "head", "b": "head", "c": "head", "d": "tail",
                                                     "e": "tail"}, 3),
    # every item equally popular: all of them are head (no order among equals decides)
    ({"a": 2, "b": 2, "c": 2}, 0.2, {"a": "head", "b": "head", "c": "head"}, 2),
    # nothing seen in train: everything is cold
    ({"a": 0}, 0.2, {}, 0),
])
def test_popularity_buckets(counts, fraction, expected, threshold):
    assert popularity_buckets(counts, head_fraction=fraction) == (expected, threshold)


def test_popularity_buckets_rejects_a_bad_fraction():
    with pytest.raises(ValueError, match="head_fraction"):
        popularity_buckets({"a": 1}, head_fraction=0.0)


def test_train_item_counts_counts_each_interaction_once():
    rows = [{"user_id": "u", "history": ["a", "b"], "target": "c"},
            {"user_id": "u", "history": ["a", "b", "c"], "target": "a"},  # repeats u's history: a, b, c not again
            {"user_id": "v", "history": ["c"], "target": "d"}]
    assert train_item_counts(rows, ["a", "b", "c", "d", "e"]) == {"a": 2, "b": 1, "c": 2, "d": 1, "e": 0}


# 10 items seen in train with counts 10, 9, ..., 1 -> head = the top 2 (i0, i1); z never seen (cold)
COUNTS = {**{f"i{n}": 10 - n for n in range(10)}, "z": 0, "y": 0}


def test_bucket_metrics_on_a_known_table():
    targets = ["i0", "i1", "i5", "i9", "z", "z"]
    ranked = [["i0"],  # head, hit at rank 0
              ["x", "i1"],  # head, hit at rank 1: NDCG 1/log2(3)
              ["x"] * 10 + ["i5"],  # tail, rank 10: outside the top 10
              ["i9"],  # tail, hit
              ["z"],  # cold, hit
              ["x"]]  # cold, miss
    out = bucket_metrics(ranked, targets, COUNTS)
    assert out["head"] == {"rows": 2, "items": 2, "HR@10": 1.0, "NDCG@10": pytest.approx((1 + 1 / 1.5849625) / 2)}
    assert out["tail"] == {"rows": 2, "items": 8, "HR@10": 0.5, "NDCG@10": 0.5}
    assert out["cold"] == {"rows": 2, "items": 2, "HR@10": 0.5, "NDCG@10": 0.5}
    assert out["rule"]["head_min_count"] == 9
    # a bucket without rows has no score (None), not 0
    assert bucket_metrics([["i0"]], ["i0"], COUNTS)["tail"] == {"rows": 0, "items": 8, "HR@10": None, "NDCG@10": None}


def test_write_results_adds_buckets_only_with_counts(tmp_path):
    rows = [{"user_id": "u", "target": "i0"}, {"user_id": "v", "target": "z"}]
    with_counts = write_results(tmp_path / "a", rows, [["i0"], ["i0"]], method="m", split="test", seconds=0.0,
                                item_counts=COUNTS)
    assert with_counts["buckets"]["head"]["HR@10"] == 1.0 and with_counts["buckets"]["cold"]["HR@10"] == 0.0
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["buckets"] == with_counts["buckets"]
    assert "buckets" not in write_results(tmp_path / "b", rows, [["i0"], ["i0"]], method="m", split="test",
                                          seconds=0.0)


def test_report_prints_the_bucket_table(tmp_path, capsys):
    from genrec.report import main as report_main

    rows = [{"user_id": "u", "target": "i0"}, {"user_id": "v", "target": "i5"}]
    write_results(tmp_path / "eval" / "test", rows, [["i0"], ["x"]], method="genrec", split="test", seconds=1.0,
                  item_counts=COUNTS)
    report_main(["--run-dir", str(tmp_path)])
    tables = capsys.readouterr().out.strip().split("\n\n")
    assert len(tables) == 2 and tables[1].startswith("| method | split | head rows | head HR@10 | head NDCG@10 |")
    assert tables[1].splitlines()[2] == ("| genrec | test | 1 | 1.0000 | 1.0000 | 1 | 0.0000 | 0.0000 "
                                         "| 0 | – | – |")
