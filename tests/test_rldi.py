"""The label stage (RLDI): the behavioural rule on hand-made vectors, train-only labels, the held-out item split,
idempotence, item quality, malformed input, scores for items without interactions, the optional judge, and one
run with the real MiniLM encoder."""

from __future__ import annotations

import json
import random
import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest

from genrec.artifacts import RLDI_VECTORS as VECTORS
from genrec.interests import rldi
from genrec.interests.label import LabelConfig, run_label
from genrec.interests.schema import read_interests

THEMES = ["lab", "wood", "garden", "auto"]
PER_THEME = 8  # the last item of each theme is never bought: no behavioural label, the classifier decides
FAST = {"window": 1, "min_transitions": 1, "min_bucket": 1, "content_k": 3}


class BagOfWords:
    """A stub sentence encoder: each word a fixed random vector (seeded by its crc32), a text the sum of its words;
    texts that share words are similar. Counts what it is asked to encode."""

    def __init__(self, dim: int = 256):
        self.dim, self.encoded = dim, []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.encoded += texts
        out = np.full((len(texts), self.dim), 1e-3, dtype=np.float32)
        for n, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                out[n] += np.random.default_rng(zlib.crc32(word.encode())).standard_normal(self.dim)
        return out


def item_id(theme: int, k: int) -> str:
    return str(theme * PER_THEME + k)


def write_run(root: Path, seed: int = 0) -> Path:
    """A catalog of 4 themes x 8 items; every user buys within one theme (sequences of 6: 4 train, 1 valid, 1
    test); each item has an on-theme interest, an off-theme one and a generic one."""
    rng = random.Random(seed)
    items, records = [], []
    for t, theme in enumerate(THEMES):
        other = THEMES[(t + 1) % len(THEMES)]
        for k in range(PER_THEME):
            items.append({"item_id": item_id(t, k), "title": f"{theme} tool {k}", "description": "", "brand": "",
                          "categories": theme})
            records.append({"item_id": item_id(t, k), "archetype": None, "interests": [
                {"text": f"{theme} projects", "confidence": 0.9, "model": "m1", "prompt_hash": "h"},
                {"text": f"{other} hobby", "confidence": 0.6, "model": "m1", "prompt_hash": "h", "models": ["m1", "m2"]},
                {"text": "everyday value", "confidence": 0.3, "model": "m2", "prompt_hash": "h"}]})
    splits = {"train": [], "valid": [], "test": []}
    for u in range(48):
        t = u % len(THEMES)
        seq = [item_id(t, rng.randrange(PER_THEME - 1)) for _ in range(6)]
        for n in range(1, 4):
            splits["train"].append({"user_id": f"u{u}", "history": seq[:n], "target": seq[n]})
        splits["valid"].append({"user_id": f"u{u}", "history": seq[:4], "target": seq[4]})
        splits["test"].append({"user_id": f"u{u}", "history": seq[:5], "target": seq[5]})
    (root / "splits").mkdir(parents=True, exist_ok=True)
    _write_jsonl(root / "items.jsonl", items)
    _write_jsonl(root / "interests.jsonl", records)
    for name, rows in splits.items():
        _write_jsonl(root / "splits" / f"{name}.jsonl", rows)
    return root


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def labelled(run_dir: Path, **overrides) -> tuple[dict, dict[str, dict]]:
    report = run_label(run_dir, LabelConfig(**{**FAST, **overrides}), encode=BagOfWords())
    return report, read_interests(run_dir / "interests.jsonl")


# ----------------------------------------------------------------------------- the rule, by hand


def test_rule_on_hand_made_vectors():
    e1, e2, e3 = np.eye(3, dtype=np.float32)
    items = np.stack([e1, e2, e3, e2])
    seqs = [[0, 1], [0, 1], [2, 3]]  # train counts 2, 2, 1, 1: buckets {0, 1} (level 1) and {2, 3} (level 0)
    ev = rldi.behavioural_evidence(seqs, items, window=1, min_bucket=1)
    np.testing.assert_allclose(ev.neighbour_mean[0], e2)  # N(0) = {1, 1}
    np.testing.assert_allclose(ev.control_mean[0], [0.5, 0.5, 0])  # the centroid of 1's bucket, {e1, e2}
    np.testing.assert_allclose(ev.control_mean[2], [0, 0.5, 0.5])  # N(2) = {3}; 3's bucket is {e3, e2}
    interests = np.stack([e2, e1, e3, e3, e1])
    item_of = np.array([0, 0, 0, 2, 1])
    margins = rldi.behavioural_margins(interests, item_of, ev, min_transitions=1)
    # item 0: e2 names its neighbour (1 - .5), e1 is its own text but not its neighbours' (0 - .5), e3 is neither;
    # item 2: e3 is not what its neighbour (e2) shares; item 1: N(1) = {0, 0}, e1 - centroid {e1, e2}
    np.testing.assert_allclose(margins, [0.5, -0.5, 0.0, -0.5, 0.5], atol=1e-6)
    assert rldi.labels_from_margins(margins, 0.1).tolist() == [1, 0, 0, 0, 1]
    # an item with fewer neighbour occurrences than min_transitions gets no label
    assert rldi.labels_from_margins(rldi.behavioural_margins(interests, item_of, ev, 2), 0.1).tolist() == \
        [1, 0, 0, -1, 1]


@pytest.mark.parametrize("seqs, window, row0", [
    ([[0, 1, 2]], 1, [0, 1, 0]),  # only the next item of 0
    ([[0, 1, 2]], 2, [0, 1, 1]),  # the window reaches two ahead
    ([[2, 0, 1]], 1, [0, 1, 1]),  # before and after
    ([[0, 0, 1]], 1, [0, 1, 0]),  # a repeat of 0 is not its own neighbour
])
def test_neighbour_matrix(seqs, window, row0):
    assert rldi.neighbour_matrix(seqs, 3, window).toarray()[0].tolist() == row0


@pytest.mark.parametrize("counts, min_bucket, buckets", [
    ([1, 1, 2, 4, 8, 0], 1, [0, 0, 1, 2, 3, -1]),  # log2 levels; unseen items get none
    ([1, 1, 1, 2, 2, 4, 8], 2, [0, 0, 0, 1, 1, 2, 2]),  # the lone 8 joins the 4 (merged downwards)
    ([1, 2, 4], 5, [0, 0, 0]),  # fewer seen items than min_bucket: one bucket
])
def test_popularity_buckets(counts, min_bucket, buckets):
    assert rldi.popularity_buckets(np.array(counts), min_bucket).tolist() == buckets


@pytest.mark.parametrize("interests, q", [
    ([{"confidence": 0.9, "positive": True}, {"confidence": 0.3, "positive": False}], 0.75),  # .9 / 1.2
    ([{"confidence": 0.0, "positive": True}, {"confidence": 0.0, "positive": False}], 0.5),  # no weights: plain mean
    ([], None),  # an item without interests has no quality
])
def test_item_quality(interests, q):
    assert rldi.item_quality(interests) == q


def test_item_split_keeps_items_whole():
    groups = np.repeat(np.arange(50), 3)
    train, test = rldi.item_split(groups, 0.2, seed=0)
    assert set(groups[train]).isdisjoint(groups[test])
    assert len(set(groups[test])) == 10 and len(train) + len(test) == len(groups)


# ----------------------------------------------------------------------------- the stage


def test_stage_labels_scores_and_quality(tmp_path):
    report, out = labelled(write_run(tmp_path))
    for iid, rec in out.items():
        theme, k = divmod(int(iid), PER_THEME)
        on, off, generic = rec["interests"]
        if k == PER_THEME - 1:  # never bought: no label, the classifier decides
            assert [i["label"] for i in rec["interests"]] == [None] * 3
            assert all(i["positive"] == (i["score"] >= 0.5) for i in rec["interests"])
            assert on["score"] > off["score"]
        else:
            assert (on["label"], off["label"]) == (1, 0), iid
            assert on["positive"] is True and off["positive"] is False
        assert all(0 <= i["score"] <= 1 for i in rec["interests"])
        weights = [i["confidence"] for i in rec["interests"]]
        assert rec["quality"] == pytest.approx(np.average([i["positive"] for i in rec["interests"]],
                                                          weights=weights), abs=1e-4)
    assert report["unlabelled"] == 3 * len(THEMES)
    assert report["positive"] + report["negative"] + report["unlabelled"] == report["interests"] == 96
    auc = report["auc_heldout_items"]
    assert auc["heldout_items"] >= 1 and auc["classifier"] is not None
    saved = json.loads((tmp_path / "rldi_report.json").read_text())
    assert saved["positive"] == report["positive"] and (tmp_path / "rldi.joblib").exists()


def test_valid_and_test_rows_change_nothing(tmp_path):
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b")
    for split in ("valid", "test"):  # plant cross-theme transitions: lab tool -> wood tool, many times
        rows = [{"user_id": f"x{n}", "history": [item_id(0, 0)], "target": item_id(1, 0)} for n in range(50)]
        with open(b / "splits" / f"{split}.jsonl", "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
    labelled(a)
    labelled(b)
    assert (a / "interests.jsonl").read_bytes() == (b / "interests.jsonl").read_bytes()


def test_idempotent_and_ignores_stale_label_fields(tmp_path):
    run_dir = write_run(tmp_path)
    labelled(run_dir)
    first = (run_dir / "interests.jsonl").read_bytes()
    labelled(run_dir)
    assert (run_dir / "interests.jsonl").read_bytes() == first
    stale = [{**r, "quality": 0.0, "interests": [{**i, "label": 1, "score": 0.0, "positive": False}
                                                 for i in r["interests"]]}
             for r in map(json.loads, first.decode().splitlines())]
    _write_jsonl(run_dir / "interests.jsonl", stale)
    labelled(run_dir)
    assert (run_dir / "interests.jsonl").read_bytes() == first


def test_vectors_are_cached_between_runs(tmp_path):
    run_dir, encode = write_run(tmp_path), BagOfWords()
    run_label(run_dir, LabelConfig(**FAST), encode=encode)
    asked = len(encode.encoded)
    assert asked == len(set(encode.encoded)) == 32 + 4 + 4 + 1  # item texts, then each distinct interest text once
    run_label(run_dir, LabelConfig(**{**FAST, "margin": 0.1}), encode=encode)
    assert len(encode.encoded) == asked and (run_dir / VECTORS).exists()


def test_malformed_interests_name_file_and_line(tmp_path):
    run_dir = write_run(tmp_path)
    lines = (run_dir / "interests.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"confidence": 0.9', '"confidence": "high"')
    (run_dir / "interests.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"interests\.jsonl:3: interests\[0\]: 'confidence'"):
        labelled(run_dir)


def test_interests_of_another_catalog_are_refused(tmp_path):
    run_dir = write_run(tmp_path)
    with open(run_dir / "interests.jsonl", "a") as f:
        f.write(json.dumps({"item_id": "999", "interests": [], "archetype": None}) + "\n")
    with pytest.raises(ValueError, match="not in .*items.jsonl.*'999'.*re-run the mine stage"):
        labelled(run_dir)


@pytest.mark.parametrize("overrides, message", [
    ({"margin": 0.0, "holdout": 1.5}, "label.holdout=1.5"),
    ({"features": ["cosine", "colour"]}, "unknown: \\['colour'\\]"),
    ({"threshold": 2}, "label.threshold=2"),
    ({"window": 0}, "label.window"),
    ({"judge": {"type": "keyphrase"}}, "keyphrase extractor cannot judge"),
    ({"judge": {"type": "openai"}}, "label.judge\\[0\\] \\(openai\\): model is empty"),
])
def test_config_checks(overrides, message):
    with pytest.raises(ValueError, match=message):
        LabelConfig(**overrides)


def test_config_from_pipeline_yaml_section():
    from genrec.config import from_dict

    cfg = from_dict(LabelConfig, {"margin": 0.05, "features": ["cosine", "confidence"],
                                  "judge": {"type": "openai", "model": "judge-llm"}}, "p.yaml", "label")
    assert cfg.margin == 0.05 and cfg.judge["model"] == "judge-llm"


# ----------------------------------------------------------------------------- the optional judge


def judge_script(asked: list[str]):
    """Answers of the fake endpoint: an interest is vague when it says 'everyday'; 'lab tool 3' (item "3") always
    gets an answer without JSON."""

    def script(prompt: str, n: int) -> str:
        title = re.search(r"Item:\n(.*?)\.", prompt).group(1)
        asked.append(title)
        if title == "lab tool 3":
            return "I cannot tell."
        listing = re.findall(r"^\d+\. (.*)$", prompt, re.M)
        return json.dumps({"labels": [0 if "everyday" in t else 1 for t in listing]})

    return script


def test_judge_labels_veto_and_reuse(tmp_path):
    """The judge through the project's LLM client against a fake OpenAI-compatible endpoint on loopback."""
    from fake_openai import FakeOpenAI

    run_dir, asked = write_run(tmp_path), []
    with FakeOpenAI(judge_script(asked), max_lifetime=30) as server:
        cfg = LabelConfig(**FAST, judge={"type": "openai", "model": "judge-llm", "base_url": server.url,
                                         "max_attempts": 1, "timeout": 5.0, "concurrency": 4})
        report = run_label(run_dir, cfg, encode=BagOfWords())
        out = read_interests(run_dir / "interests.jsonl")
        assert [i["judge"] for i in out["0"]["interests"]] == [1, 1, 0]
        assert out["0"]["interests"][2]["positive"] is False  # vetoed whatever the behaviour said
        assert [i["judge"] for i in out["3"]["interests"]] == [None] * 3  # no valid answer: no verdict, no veto
        assert report["judge"]["items_failed"] == 1 and report["judge"]["vague"] == 31
        assert len(asked) == 32
        run_label(run_dir, cfg, encode=BagOfWords())  # a re-run asks only the failed item again
        assert asked[32:] == ["lab tool 3"]


def test_parse_judgement():
    assert rldi.parse_judgement([True, 0], 2) == [1, 0]
    for bad in ({"labels": [1]}, {"labels": [1, 2]}, {"labels": [0.5, 1]}, "yes"):
        with pytest.raises(ValueError):
            rldi.parse_judgement(bad, 2)


# ----------------------------------------------------------------------------- the real encoder


def test_real_encoder_on_a_handful_of_texts(tmp_path):
    """MiniLM: the lab items' neighbours are lab items, so 'laboratory safety' is a grounded interest of the gloves
    and 'woodworking' is not."""
    titles = ["Nitrile exam gloves", "Chemical splash safety goggles", "Laboratory coat",
              "Wood screws assortment", "Cordless drill bits", "Wood glue"]
    root = tmp_path / "run"
    (root / "splits").mkdir(parents=True)
    _write_jsonl(root / "items.jsonl", [{"item_id": str(n), "title": t, "brand": "", "categories": ""}
                                        for n, t in enumerate(titles)])
    interests = {"0": ["laboratory safety", "woodworking"], "3": ["woodworking", "laboratory safety"]}
    _write_jsonl(root / "interests.jsonl", [
        {"item_id": iid, "archetype": None,
         "interests": [{"text": t, "confidence": 0.8, "model": "m", "prompt_hash": "h"} for t in texts]}
        for iid, texts in interests.items()])
    seqs = [["0", "1", "2"], ["2", "0", "1"], ["3", "4", "5"], ["5", "3", "4"]]
    _write_jsonl(root / "splits" / "train.jsonl", [{"user_id": f"u{n}", "history": s[:k], "target": s[k]}
                                                   for n, s in enumerate(seqs) for k in (1, 2)])
    for split in ("valid", "test"):
        shutil.copy(root / "splits" / "train.jsonl", root / "splits" / f"{split}.jsonl")
    run_label(root, LabelConfig(**FAST))
    out = read_interests(root / "interests.jsonl")
    assert [i["label"] for i in out["0"]["interests"]] == [1, 0]
    assert [i["label"] for i in out["3"]["interests"]] == [1, 0]
