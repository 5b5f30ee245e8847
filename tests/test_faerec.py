"""sasrec-faerec: gate, alignment losses, curriculum, the baseline end to end and its fused embeddings as SIDs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genrec.baselines import main
from genrec.baselines.faerec import Config, FAERec, barlow_twins, curriculum, info_nce
from genrec.baselines.sasrec import SASRec
from genrec.io import read_json, write_json, write_jsonl, write_npy
from genrec.tokenizer import QuantizeConfig, run_quantize


def test_info_nce_hand_computed_and_prefers_matching_views():
    # two orthogonal items, identical views, temperature 1: each row's softmax over (cos 1, cos 0)
    a = torch.eye(2)
    expected = -math.log(math.e / (math.e + 1))
    assert info_nce(a, a, 1.0).item() == pytest.approx(expected)
    # property: the same views score lower than the views of other items (rows shuffled)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    assert info_nce(x, x, 0.2) < info_nce(x, x[torch.arange(16).roll(1)], 0.2)


def test_barlow_twins_is_zero_for_identical_decorrelated_views():
    # columns of a 4x4 Hadamard matrix: zero mean, unit variance and uncorrelated -> C = I exactly
    h = torch.tensor([[1.0, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]])[:, 1:]
    assert barlow_twins(h, h, 0.005).item() == pytest.approx(0.0, abs=1e-6)
    assert barlow_twins(h, 3 * h + 1, 0.005).item() == pytest.approx(0.0, abs=1e-6)  # standardised: scale-free
    # anti-correlated dimensions: each diagonal term is (1 - (-1))^2 = 4
    assert barlow_twins(h, -h, 0.0).item() == pytest.approx(12.0, abs=1e-4)


@pytest.mark.parametrize("epoch, weights", [
    (1, (0.1 / 5, 0.0)),  # item-level ramps in over 5 epochs; feature-level off
    (5, (0.1, 0.0)),
    (10, (0.1, 0.01 / 10)),  # feature-level starts at epoch 10 ...
    (19, (0.1, 0.01)),  # ... and is full after 10 epochs of ramp
    (50, (0.1, 0.01)),
])
def test_curriculum(epoch, weights):
    assert curriculum(epoch, Config()) == pytest.approx(weights)


def test_gate_mixes_the_two_views():
    torch.manual_seed(0)
    backbone = SASRec(n_items=5, hidden=8, layers=1, heads=1, dropout=0.0, max_len=4)
    model = FAERec(backbone=backbone, text=np.random.default_rng(0).normal(size=(5, 6)),
                   popularity=np.array([1.0, 0.5, 0.0, 0.0, 0.2]), cfg=Config(hidden=8))
    views = model.views()
    gate = views.gate.squeeze(1)
    assert views.gate.shape == (5, 1) and ((gate[[0, 1, 4]] > 0) & (gate[[0, 1, 4]] < 1)).all()
    assert (gate[[2, 3]] == 0).all()  # cold items (popularity 0): the text view only
    assert torch.allclose(views.fused, views.gate * views.ids + (1 - views.gate) * views.semantic)
    logits = model(torch.tensor([[1, 2, 0]]))
    assert logits.shape == (1, 3, 5)
    loss, parts = model.training_loss(torch.tensor([[1, 2, 0]]), torch.tensor([[1, 2, -100]]), epoch=12)
    assert loss.requires_grad and set(parts) == {"rec", "item", "feat"}


def make_cycle_run(root):
    """Items i0..i5; users walk the cycle i0 -> i1 -> i2 (i3..i5 never occur: cold); 4-d random text vectors."""
    items = [f"i{n}" for n in range(6)]
    cycle = ["i0", "i1", "i2"]
    seq = lambda start, n: [cycle[(start + j) % 3] for j in range(n)]  # noqa: E731
    splits = {"train": [(f"u{u}", seq(u, 5), cycle[(u + 5) % 3]) for u in range(30)],
              "valid": [(f"u{u}", seq(u, 6), cycle[(u + 6) % 3]) for u in range(6)],
              "test": [(f"u{u}", seq(u, 7), cycle[(u + 7) % 3]) for u in range(6)]}
    write_jsonl(root / "items.jsonl", [{"item_id": i, "title": f"item {i}"} for i in items])
    for name, rows in splits.items():
        write_jsonl(root / "splits" / f"{name}.jsonl", [{"user_id": u, "history": h, "target": t} for u, h, t in rows])
    write_npy(root / "item_emb.npy", np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32))
    write_json(root / "item_emb.json", {"item_ids": items, "dim": 4})
    return root


FAST = ["--hidden", "16", "--layers", "1", "--dropout", "0.1", "--lr", "0.01", "--epochs", "12", "--eval-every",
        "4", "--patience", "2", "--exclude-history", "no", "--item-ramp", "2", "--feature-start", "3",
        "--feature-ramp", "2"]


def test_sasrec_faerec_end_to_end_writes_buckets_and_fused_embeddings(tmp_path):
    run = make_cycle_run(tmp_path / "run")
    metrics = main(["sasrec-faerec", "--run-dir", str(run), *FAST, "--export-embeddings", str(tmp_path / "fused")])
    saved = read_json(run / "baselines" / "sasrec-faerec" / "test" / "metrics.json")
    assert saved["method"] == "sasrec-faerec" and metrics["HR@1"] >= 0.9  # the cycle is learned
    assert {b: saved["buckets"][b]["rows"] for b in ("head", "tail", "cold")} == {"head": 6, "tail": 0, "cold": 0}
    assert saved["buckets"]["cold"]["items"] == 3
    assert {"gate_head", "gate_cold", "best_epoch"} <= set(saved["fit"])
    fused = np.load(tmp_path / "fused" / "item_emb.npy")
    assert fused.shape == (6, 16) and read_json(tmp_path / "fused" / "item_emb.json")["item_ids"][0] == "i0"
    # the exported vectors are a quantize input; their content is part of the config (hence of the fingerprint)
    cfg = QuantizeConfig(method="rkmeans", codebook_size=2, levels=2, input=str(tmp_path / "fused"))
    assert cfg.input_digest
    run_quantize(run, cfg)
    report = read_json(run / "sid_report.json")
    assert report["input"] == str(tmp_path / "fused") and report["embedding_dim"] == 16
    assert len(read_json(run / "sids.json")) == 6


def test_quantize_input_fused_reads_the_baselines_export(tmp_path):
    run = make_cycle_run(tmp_path)
    cfg = QuantizeConfig(method="rkmeans", codebook_size=2, levels=2, input="fused")
    # nothing exported yet: the error names the command that writes the vectors
    with pytest.raises(FileNotFoundError, match=r"genrec baseline sasrec-faerec --run-dir \S+ --split valid "
                                                r"--export-embeddings \S+fused"):
        run_quantize(run, cfg)
    main(["sasrec-faerec", "--run-dir", str(run), "--split", "valid", *FAST,
          "--export-embeddings", str(run / "fused")])
    run_quantize(run, cfg)
    report = read_json(run / "sid_report.json")
    assert report["input"] == "fused" and report["embedding_dim"] == 16
    assert len(read_json(run / "sids.json")) == 6
