"""Behavioural calibration before quantization (genrec.calibrate) and the quantize stage's optional inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genrec.artifacts import Run
from genrec.calibrate import calibrate, calibration_loss, co_interaction_counts, strengths
from genrec.io import read_json, write_json, write_jsonl, write_npy
from genrec.tokenizer import QuantizeConfig, run_quantize
from genrec.tokenizer.stage import mix_archetypes, train_co_interactions, with_archetypes

INDEX = {"a": 0, "b": 1, "c": 2, "d": 3}


def rows(*seqs):
    """One train row per user sequence (history = all but the last item)."""
    return [{"user_id": f"u{n}", "history": list(s[:-1]), "target": s[-1]} for n, s in enumerate(seqs)]


def test_calibration_loss_matches_a_hand_computation():
    # e0 = (1, 0), e1 = (0, 1), e2 = (-1, 0): ||e0-e1||^2 = 2, ||e0-e2||^2 = 4, ||e1-e2||^2 = 2.
    # Counts C01 = 3, C12 = 1, C02 = 0 -> s01 = log 4 / log 4 = 1, s12 = log 2 / log 4 = 0.5, s02 = 0;
    # gamma 2 -> w01 = e^-2, w12 = e^-1, w02 = 1. Both orders of each pair, over n (n - 1) = 6.
    counts = np.array([[0, 3, 0], [3, 0, 1], [0, 1, 0]])
    s = torch.as_tensor(strengths(counts).toarray(), dtype=torch.float32)
    assert s[0, 1] == pytest.approx(1.0) and s[1, 2] == pytest.approx(0.5) and s[0, 2] == 0
    expected = -2 * (math.exp(-2) * 2 + 1 * 4 + math.exp(-1) * 2) / 6
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert calibration_loss(emb, s, gamma=2.0).item() == pytest.approx(expected, rel=1e-6)
    # the embeddings are L2-normalised inside: scaling a row changes nothing
    assert calibration_loss(emb * torch.tensor([[3.0], [1.0], [0.5]]), s, 2.0).item() == pytest.approx(expected)
    # gamma 0: every pair weighs 1, the plain mean squared distance
    assert calibration_loss(emb, s, gamma=0.0).item() == pytest.approx(-2 * (2 + 4 + 2) / 6)


@pytest.mark.parametrize("seqs, window, pairs", [
    # one sequence a b c, whole sequence: every pair once
    ([["a", "b", "c"]], None, {(0, 1): 1, (0, 2): 1, (1, 2): 1}),
    # window 1: only neighbours
    ([["a", "b", "c"]], 1, {(0, 1): 1, (1, 2): 1}),
    # a b once for the first user, twice for the second (b-a at two offsets); the repeat (a a) is no pair
    ([["a", "b"], ["b", "a", "a"]], None, {(0, 1): 3}),
])
def test_co_interaction_counts(seqs, window, pairs):
    counts = co_interaction_counts(rows(*seqs), INDEX, window=window).toarray()
    assert (counts == counts.T).all() and (np.diag(counts) == 0).all()
    assert {(i, j): int(counts[i, j]) for i, j in zip(*np.nonzero(np.triu(counts)))} == pairs


def test_co_interaction_counts_repeat_rows_of_a_user_count_once():
    user_rows = [{"user_id": "u", "history": ["a"], "target": "b"},
                 {"user_id": "u", "history": ["a", "b"], "target": "c"}]
    assert co_interaction_counts(user_rows, INDEX).toarray()[0, 1] == 1


def make_run(root, train, valid, test, emb):
    items = list(INDEX)
    write_jsonl(root / "items.jsonl", [{"item_id": i, "title": f"item {i}"} for i in items])
    for name, split_rows in (("train", train), ("valid", valid), ("test", test)):
        write_jsonl(root / "splits" / f"{name}.jsonl", split_rows)
    write_npy(root / "item_emb.npy", np.asarray(emb, dtype=np.float32))
    write_json(root / "item_emb.json", {"item_ids": items, "dim": len(emb[0]), "recipe": {"model": "fake"}})
    return Run(root)


def test_stage_counts_only_train_pairs(tmp_path):
    # c and d co-occur only in valid and test rows: the quantize stage must not see that pair
    valid = [{"user_id": "u0", "history": ["a", "b", "c"], "target": "d"}]
    test = [{"user_id": "u0", "history": ["a", "b", "c", "d"], "target": "c"}]
    run = make_run(tmp_path, rows(["a", "b"]), valid, test, np.eye(4))
    counts = train_co_interactions(run, list(INDEX), window=None).toarray()
    assert counts[0, 1] == 1 and counts[2, 3] == 0 and counts.sum() == 2


@pytest.fixture
def one_thread():
    """Tiny matrices: more torch threads only add overhead on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_calibrate_pulls_co_interacted_items_and_keeps_the_rest_near_their_text(one_thread):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 8)).astype(np.float32)
    # items 0..9 pair up (0-1, 2-3, ...) many times
    seqs = [[f"{2 * k}", f"{2 * k + 1}"] for k in range(5) for _ in range(3)]
    index = {str(n): n for n in range(40)}
    counts = co_interaction_counts(rows(*seqs), index)
    cfg = QuantizeConfig(calibration="genair", calibration_steps=60, calibration_batch_size=16, calibration_lr=2e-2,
                         calibration_hidden=32)
    out = calibrate(emb, counts, cfg)
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert out.shape == emb.shape and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    cos = lambda e, i, j: float(e[i] @ e[j])  # noqa: E731
    assert np.mean([cos(out, 2 * k, 2 * k + 1) - cos(x, 2 * k, 2 * k + 1) for k in range(5)]) > 0.05
    assert np.linalg.norm(out - x, axis=1).mean() < 0.8  # the anchor keeps items near their text
    assert np.array_equal(out, calibrate(emb, counts, cfg))  # seeded
    # no co-interacted pair: the input comes back, normalised
    assert np.allclose(calibrate(emb, co_interaction_counts([], index), cfg), x, atol=1e-6)


@pytest.mark.parametrize("bad", [
    dict(calibration="genair2"), dict(calibration_gamma=-1.0), dict(calibration_steps=0),
    dict(calibration_window=0), dict(calibration_lr=0.0), dict(input="no/such/dir"),
    dict(archetype_weight=1.0), dict(archetype_weight=0.5, input="fused"),
])
def test_bad_calibration_or_input_config_raises(bad):
    with pytest.raises(ValueError, match="quantize"):
        QuantizeConfig(**bad)


def test_run_quantize_with_calibration_reports_it(tmp_path):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(4, 6))
    run = make_run(tmp_path, rows(["a", "b", "c"], ["a", "b"]), rows(["a", "d"]), rows(["c", "d"]), emb)
    cfg = QuantizeConfig(method="rkmeans", codebook_size=2, levels=2, calibration="genair", calibration_steps=5,
                         calibration_batch_size=4)
    run_quantize(run.root, cfg)
    report = read_json(run.root / "sid_report.json")
    assert report["input"] == "text" and report["calibration"]["method"] == "genair"
    assert report["calibration"]["pairs"] == 3 and len(read_json(run.root / "sids.json")) == 4


def test_mix_archetypes():
    emb = np.array([[1.0, 0.0], [0.0, 2.0]])
    out = mix_archetypes(emb, np.array([[0.0, 5.0]]), [0], 0.5)
    # item 0 goes halfway between (1, 0) and (0, 1); item 1 keeps its direction, normalised
    assert np.allclose(out, [[2**-0.5, 2**-0.5], [0.0, 1.0]])


def test_with_archetypes_encodes_with_the_embed_recipe(tmp_path, monkeypatch):
    import genrec.encoders

    run = make_run(tmp_path, rows(["a", "b"]), rows(["a", "c"]), rows(["a", "d"]), np.eye(4))
    seen = {}

    class FakeEncoder:
        def encode(self, texts):
            seen["texts"] = texts
            return np.tile([0.0, 0.0, 0.0, 1.0], (len(texts), 1))

    monkeypatch.setattr(genrec.encoders, "load_encoder", lambda cfg: seen.setdefault("model", cfg.model) and
                        FakeEncoder())
    monkeypatch.setattr(Run, "interests", lambda self: {"a": {"archetype": "the tinkerer"}, "b": {"archetype": " "}})
    out, n = with_archetypes(run, list(INDEX), np.eye(4), 0.5)
    assert n == 1 and seen == {"model": "fake", "texts": ["the tinkerer"]}
    assert np.allclose(out[0], [2**-0.5, 0, 0, 2**-0.5]) and np.allclose(out[1:], np.eye(4)[1:])
