"""Tests of the SID stage (genrec.tokenizer): collision resolution, metrics, both quantizers, run_quantize."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from genrec.artifacts import read_sids
from genrec.io import read_json, write_json, write_npy
from genrec.tokenizer import QuantizeConfig, count_collisions, level_usage, resolve_collisions, run_quantize
from genrec.tokenizer.rqvae import load_rqvae

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "tokenizer"
# Small and fast: a few hundred points, codebooks of 16, a short training run.
SMALL = dict(codebook_size=16, latent_dim=8, hidden_dims=[32], epochs=8, warmup_epochs=2, batch_size=128)


def clustered_embeddings(n: int = 400, dim: int = 24, clusters: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    x = centers[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_run(tmp_path: Path, emb: np.ndarray) -> Path:
    write_npy(tmp_path / "item_emb.npy", emb)
    write_json(tmp_path / "item_emb.json", {"item_ids": [f"i{k}" for k in range(len(emb))], "dim": emb.shape[1]})
    return tmp_path


def dist_rows(*rows):
    return np.array(rows, dtype=float)


# (codes, last_dist, method, expected SIDs); last_dist[i, k] = distance of item i's last residual to code k.
RESOLVE_CASES = [
    # no collision: SIDs come back unchanged
    ([[0, 1], [1, 1]], dist_rows([0, 0, 0], [0, 0, 0]), "reassign", [[0, 1], [1, 1]]),
    # item 1 is closer to code 1, so it keeps it; item 0 moves to its nearest free code (0, not 2)
    ([[0, 1], [0, 1], [1, 0]], dist_rows([0.1, 0.5, 0.9], [0.4, 0.2, 0.3], [0, 1, 1]), "reassign",
     [[0, 0], [0, 1], [1, 0]]),
    # free codes are per prefix: code 0 is taken under prefix 0, so item 1 goes to code 2 although prefix 1 has 0 free
    ([[0, 1], [0, 1], [0, 0], [1, 1]], dist_rows([0, 0.1, 9], [0, 0.5, 0.8], [0, 1, 1], [1, 0, 1]), "reassign",
     [[0, 1], [0, 2], [0, 0], [1, 1]]),
    # three items on one SID: the optimal assignment gives code 0 to item 2 and code 2 to item 1
    ([[3, 1], [3, 1], [3, 1]], dist_rows([9, 0.1, 9], [0.3, 0.5, 0.2], [0.1, 0.5, 0.9]), "reassign",
     [[3, 1], [3, 2], [3, 0]]),
    # prefix full (3 items, codebook of 2): the two still sharing [0, 1] get an extra level; item 2 keeps [0, 0]
    ([[0, 1], [0, 1], [0, 1]], dist_rows([0.2, 0.3], [0.5, 0.1], [0.1, 0.9]), "reassign",
     [[0, 1, 1], [0, 1, 0], [0, 0]]),
    # append (TIGER): every SID gets an index level, numbered by distance to the shared last code
    ([[0, 1], [0, 1], [2, 2]], dist_rows([0, 0.7, 0], [0, 0.3, 0], [0, 0, 0]), "append",
     [[0, 1, 1], [0, 1, 0], [2, 2, 0]]),
    # ties in distance are broken by item order, so the result never depends on dict or sort instability
    ([[5, 5], [5, 5]], dist_rows([1] * 8, [1] * 8), "reassign", [[5, 5], [5, 0]]),
]


@pytest.mark.parametrize("codes, last_dist, method, expected", RESOLVE_CASES)
def test_resolve_collisions_hand_made(codes, last_dist, method, expected):
    sids = resolve_collisions(np.array(codes), last_dist, method=method)
    assert sids == expected
    assert len({tuple(s) for s in sids}) == len(sids)
    assert all(type(c) is int for s in sids for c in s)


@pytest.mark.parametrize("method", ["reassign", "append"])
def test_resolve_collisions_random_is_unique_and_prefix_free(method):
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 3, size=(300, 3))  # 27 possible SIDs for 300 items: prefixes overflow
    sids = resolve_collisions(codes, rng.random((300, 3)), method=method)
    keys = {tuple(s) for s in sids}
    assert len(keys) == 300
    assert not any(tuple(s[:k]) in keys for s in sids for k in range(1, len(s)))
    assert count_collisions(codes) > 0


def test_resolve_collisions_rejects_bad_input():
    with pytest.raises(ValueError, match="use one of"):
        resolve_collisions(np.zeros((2, 2), int), np.zeros((2, 2)), method="tiger")
    with pytest.raises(ValueError, match="must be"):
        resolve_collisions(np.zeros((2, 2), int), np.zeros((3, 2)))


def test_level_usage():
    assert level_usage([1, 1, 1], 4) == {"codebook_size": 4, "codes_used": 1, "perplexity": 1.0}
    assert level_usage([0, 1, 2, 3], 4)["perplexity"] == 4.0


@pytest.mark.parametrize("bad", [
    dict(method="vqvae"), dict(collision="drop"), dict(levels=0), dict(codebook_size=1), dict(epochs=0),
    dict(warmup_epochs=5, epochs=5), dict(lr=0), dict(ema_decay=1.0), dict(hidden_dims=[0]),
    dict(dead_code_threshold=-1),
])
def test_bad_config_raises(bad):
    with pytest.raises(ValueError, match="quantize"):
        QuantizeConfig(**bad)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_tokenizer_yaml_configs_parse(path):
    values = yaml.safe_load(path.read_text()) or {}
    defaults = {f.name: f.default for f in dataclasses.fields(QuantizeConfig)}
    assert set(values) <= set(defaults)
    assert not [k for k, v in values.items() if defaults[k] == v], "a YAML lists only values that differ"
    QuantizeConfig(**values)


def check_report(report: dict, items: int, cfg: QuantizeConfig) -> None:
    assert report["items"] == report["unique_sids"] == items
    assert report["method"] == cfg.method
    assert 0 <= report["collisions_before_resolution"] < items
    assert report["reconstruction_mse"] >= 0 and report["seconds"] >= 0
    assert len(report["levels"]) >= cfg.levels
    for level in report["levels"]:
        assert 1 <= level["codes_used"] <= level["codebook_size"]
        assert 1 <= level["perplexity"] <= level["codes_used"] + 1e-6


@pytest.mark.parametrize("method", ["rqvae", "rkmeans"])
def test_run_quantize_writes_unique_sids_and_report(tmp_path, method):
    run = make_run(tmp_path, clustered_embeddings())
    cfg = QuantizeConfig(method=method, **SMALL)
    run_quantize(run, cfg)
    sids = read_sids(run / "sids.json")  # raises on duplicates
    assert len(sids) == 400 and all(len(s) in (3, 4) for s in sids.values())  # 4 only where a prefix overflowed
    check_report(read_json(run / "sid_report.json"), 400, cfg)
    assert (run / ("rqvae.pt" if method == "rqvae" else "rkmeans.joblib")).exists()


def test_saved_rqvae_reproduces_the_codes(tmp_path):
    emb = clustered_embeddings(n=300)
    run_quantize(make_run(tmp_path, emb), QuantizeConfig(collision="append", **SMALL))
    codes = load_rqvae(tmp_path / "rqvae.pt").quantize(torch.from_numpy(emb)).codes
    sids = read_json(tmp_path / "sids.json")
    assert [s[:3] for s in sids.values()] == codes.tolist()  # append keeps the quantizer's codes as the prefix


def test_run_quantize_append_adds_a_level(tmp_path):
    run = make_run(tmp_path, clustered_embeddings(n=300))
    run_quantize(run, QuantizeConfig(method="rkmeans", collision="append", codebook_size=4, levels=2))
    sids = read_sids(run / "sids.json")
    assert {len(s) for s in sids.values()} == {3}
    report = read_json(run / "sid_report.json")
    assert report["collisions_before_resolution"] > 0 and len(report["levels"]) == 3


def test_rqvae_is_deterministic_with_a_seed(tmp_path):
    emb = clustered_embeddings(n=300)
    runs = [make_run(tmp_path / name, emb) for name in ("a", "b", "c")]
    for run, seed in zip(runs, (7, 7, 8)):
        run_quantize(run, QuantizeConfig(seed=seed, **SMALL))
    a, b, c = (read_json(run / "sids.json") for run in runs)
    assert a == b
    assert a != c


def test_run_quantize_rejects_too_few_items(tmp_path):
    run = make_run(tmp_path, clustered_embeddings(n=10))
    with pytest.raises(ValueError, match="codebook_size"):
        run_quantize(run, QuantizeConfig(**SMALL))
