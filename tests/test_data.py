import json
from pathlib import Path

import pytest

from genrec.data import DataConfig, build_splits, load_dataset, load_generic, load_minionerec, make_synthetic


def write_generic(root: Path, items: list[dict], interactions: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    (root / "interactions.csv").write_text(interactions)
    return root


ITEMS = [{"item_id": i, "title": f"Item {i}", "brand": "B"} for i in "abcdef"]


def test_generic_split_protocol_known_answer(tmp_path):
    # u1 buys a, b, c, d (days 1, 2, 5, 9); u2 buys e, f, a (days 3, 4, 6). Rows per user from position 1,
    # sorted stably by target day: (u1,b,2) (u2,f,4) (u1,c,5) (u2,a,6) (u1,d,9) -> 5 rows.
    # 8:1:1 by row count: int(5*.8)=4 train, int(5*.9)-4=0 valid, 1 test.
    inter = "user_id,item_id,timestamp\nu1,c,5\nu1,a,1\nu2,e,3\nu1,b,2\nu2,f,4\nu1,d,9\nu2,a,6\n"
    ds = load_generic(write_generic(tmp_path, ITEMS, inter), max_history=2)
    train = [(r["user_id"], r["history"], r["target"]) for r in ds.splits["train"]]
    assert train == [
        ("u1", ["a"], "b"),
        ("u2", ["e"], "f"),
        ("u1", ["a", "b"], "c"),
        ("u2", ["e", "f"], "a"),
    ]
    assert ds.splits["valid"] == []
    # max_history=2 keeps only the last two items
    assert [(r["history"], r["target"]) for r in ds.splits["test"]] == [(["b", "c"], "d")]


def test_split_ratios_match_minionerec_counts():
    # 45,324 rows in MiniOneRec's Industrial data were cut into 36,259 / 4,532 / 4,533.
    inter = [("u", str(i % 7), float(i)) for i in range(45325)]
    splits = build_splits(inter, max_history=10)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [36259, 4532, 4533]


def test_iso_timestamps_and_ties_keep_file_order(tmp_path):
    inter = "user_id,item_id,timestamp\nu1,a,2018-01-01\nu1,b,2018-01-01\nu1,c,2018-01-02T10:00:00Z\n"
    ds = load_generic(write_generic(tmp_path, ITEMS, inter))
    rows = ds.splits["train"] + ds.splits["valid"] + ds.splits["test"]
    assert [(r["history"], r["target"]) for r in rows] == [(["a"], "b"), (["a", "b"], "c")]


@pytest.mark.parametrize(
    "items, interactions, message",
    [
        # a history/target item that the catalog does not have, named with file and line
        (ITEMS, "user_id,item_id,timestamp\nu1,a,1\nu1,zzz,2\n", r"interactions.csv:3: unknown item_id 'zzz'"),
        # missing timestamp column
        (ITEMS, "user_id,item_id\nu1,a\n", r"missing column\(s\) \['timestamp'\]"),
        # a timestamp that is neither unix seconds nor ISO
        (ITEMS, "user_id,item_id,timestamp\nu1,a,yesterday\n", r"interactions.csv:2: timestamp 'yesterday'"),
        # an empty title
        ([{"item_id": "a", "title": "  "}], "user_id,item_id,timestamp\nu1,a,1\n", r"items.jsonl:1: .*empty title"),
        # the same item id twice
        ([{"item_id": "a", "title": "x"}, {"item_id": "a", "title": "y"}], "user_id,item_id,timestamp\n",
         r"items.jsonl:2: duplicate item_id 'a' \(first seen on line 1\)"),
        # a record without item_id
        ([{"title": "x"}], "user_id,item_id,timestamp\n", r"items.jsonl:1: record has no item_id"),
    ],
)
def test_generic_bad_input(tmp_path, items, interactions, message):
    with pytest.raises(ValueError, match=message):
        load_generic(write_generic(tmp_path, items, interactions))


def write_minionerec(root: Path, catalog_text: str, csv_text: str) -> Path:
    (root / "index").mkdir(parents=True)
    (root / "index" / "Toy.item.json").write_text(catalog_text)
    for split in ("valid", "test"):
        (root / split).mkdir()
        (root / split / "Toy_5.csv").write_text(csv_text)
    (root / "recovered_partial").mkdir()
    (root / "recovered_partial" / "Toy.train_recovered_subset.csv").write_text(csv_text)
    return root


CATALOG = json.dumps({"0": {"title": "A", "description": "['x', 'y']"}, "1": {"title": "B"}})


def test_minionerec_layout_and_description_cleanup(tmp_path):
    root = write_minionerec(tmp_path, CATALOG, 'user_id,history_item_id,item_id\nA1,"[0]",1\n')
    ds = load_minionerec(root)
    assert ds.items[0]["description"] == "x y"  # repr of a Python list joined into text
    assert ds.splits["test"] == [{"user_id": "A1", "history": ["0"], "target": "1"}]


@pytest.mark.parametrize(
    "catalog, csv_text, message",
    [
        # unknown id in a history
        (CATALOG, 'user_id,history_item_id,item_id\nA1,"[0, 7]",1\n', r"\.csv:2: unknown item id '7'"),
        # missing column
        (CATALOG, "user_id,item_id\nA1,1\n", r"missing column\(s\) \['history_item_id'\]"),
        # duplicate keys in the catalog JSON (json.loads would silently keep the last one)
        ('{"0": {"title": "A"}, "0": {"title": "B"}}', "user_id,history_item_id,item_id\n",
         r"duplicate item id or field '0'"),
        # empty title
        ('{"0": {"title": ""}}', "user_id,history_item_id,item_id\n", r"item '0' has an empty title"),
        # history that is not a list
        (CATALOG, "user_id,history_item_id,item_id\nA1,zero,1\n", r"\.csv:2: history_item_id 'zero'"),
    ],
)
def test_minionerec_bad_input(tmp_path, catalog, csv_text, message):
    with pytest.raises(ValueError, match=message):
        load_minionerec(write_minionerec(tmp_path, catalog, csv_text))


def test_industrial_benchmark_protocol(amazon18):
    ds = load_minionerec(amazon18, "Industrial_and_Scientific", train_split="recovered")
    # the layout gives rows, not interactions: no duplicates or short users to count; 145 items occur in no row
    assert ds.stats() == {"items": 3686, "train_rows": 8350, "valid_rows": 4532, "test_rows": 4533,
                          "items_without_interactions": 145, "duplicate_interactions": None, "users_too_short": None}


def test_synthetic_is_not_solved_by_popularity():
    items, inter = make_synthetic(n_items=600, n_users=400, seed=1)
    assert len({it["item_id"] for it in items}) == len(items) >= 480
    ds = load_dataset(DataConfig(source="synthetic", synthetic_items=600, synthetic_users=400, seed=1))
    from collections import Counter

    top10 = [i for i, _ in Counter(r["target"] for r in ds.splits["train"]).most_common(10)]
    hr10 = sum(r["target"] in top10 for r in ds.splits["test"]) / len(ds.splits["test"])
    # the next item follows the last one's theme and journey step, so popularity alone stays weak
    assert hr10 < 0.1
    same_theme = sum(items[int(r["target"])]["theme"] == items[int(r["history"][-1])]["theme"]
                     for r in ds.splits["test"]) / len(ds.splits["test"])
    assert same_theme > 0.7


def test_config_errors():
    with pytest.raises(ValueError, match="needs data.path"):
        DataConfig(source="generic")
    with pytest.raises(ValueError, match="use 'synthetic'"):
        DataConfig(source="csv")


# ----------------------------------------------------------------------------- what the data stage changes, counted


def test_exact_duplicate_interactions_are_dropped_counted_and_named(tmp_path, caplog):
    # u1 logged a at time 1 three times (double logging) and b at time 2 twice: 3 repeats, the first on line 3
    inter = "user_id,item_id,timestamp\nu1,a,1\nu1,a,1\nu1,b,2\nu1,a,1\nu1,b,2\nu1,c,3\n"
    root = write_generic(tmp_path / "ds", ITEMS, inter)
    with caplog.at_level("WARNING", logger="genrec.data"):
        ds = load_generic(root)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "dropped 3 exact duplicate interaction(s)" in warning
    assert f"the first is {root / 'interactions.csv'}:3, a repeat of {root / 'interactions.csv'}:2" in warning
    rows = ds.splits["train"] + ds.splits["valid"] + ds.splits["test"]
    # no row whose target is its own last history item
    assert [(r["history"], r["target"]) for r in rows] == [(["a"], "b"), (["a", "b"], "c")]
    ds.write(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "data_stats.json").read_text())["duplicate_interactions"] == 3


def test_the_same_item_at_another_time_is_a_repurchase_and_stays(tmp_path, caplog):
    inter = "user_id,item_id,timestamp\nu1,a,1\nu1,a,2\nu1,a,3\n"
    with caplog.at_level("WARNING", logger="genrec.data"):
        ds = load_generic(write_generic(tmp_path, ITEMS, inter))
    assert not caplog.records
    rows = ds.splits["train"] + ds.splits["valid"] + ds.splits["test"]
    assert [(r["history"], r["target"]) for r in rows] == [(["a"], "a"), (["a", "a"], "a")]
    assert ds.stats()["duplicate_interactions"] == 0


def test_items_without_interactions_are_counted_and_kept(tmp_path):
    # d, e and f are in the catalog but no row mentions them; they stay in items.jsonl (they still get SIDs)
    ds = load_generic(write_generic(tmp_path, ITEMS, "user_id,item_id,timestamp\nu1,a,1\nu1,b,2\nu2,c,1\nu2,b,2\n"))
    assert ds.stats()["items_without_interactions"] == 3 and len(ds.items) == 6


def test_users_too_short_to_make_a_row_are_counted(tmp_path):
    # u2 and u3 have one interaction each: no history to predict from, so no row; c is then in no row either
    inter = "user_id,item_id,timestamp\nu1,a,1\nu1,b,2\nu2,c,5\nu3,a,7\n"
    ds = load_generic(write_generic(tmp_path, ITEMS, inter))
    stats = ds.stats()
    assert (stats["users_too_short"], stats["items_without_interactions"]) == (2, 4)
    assert [r["user_id"] for s in ("train", "valid", "test") for r in ds.splits[s]] == ["u1"]


def test_synthetic_data_stats_count_nothing_dropped():
    # the generator moves each user's clock forward at every purchase: no exact duplicates, no user under 5 items
    stats = load_dataset(DataConfig(source="synthetic", synthetic_items=240, synthetic_users=60)).stats()
    assert (stats["duplicate_interactions"], stats["users_too_short"]) == (0, 0)
