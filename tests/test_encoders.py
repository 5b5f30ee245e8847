import json

import numpy as np
import pytest

from genrec.artifacts import Run
from genrec.encoders import EmbedConfig, item_text, load_encoder, run_embed
from genrec.io import write_jsonl


@pytest.mark.parametrize(
    "item, expected",
    [
        ({"title": "Nitrile Gloves", "brand": "Dynarex", "categories": "Safety"},
         "Nitrile Gloves. Brand: Dynarex. Categories: Safety"),
        # empty fields drop their label instead of leaving "Brand: ."
        ({"title": "Nitrile Gloves", "brand": "", "categories": ""}, "Nitrile Gloves."),
        # missing fields behave like empty ones
        ({"title": "Nitrile Gloves", "categories": "Safety"}, "Nitrile Gloves. Categories: Safety"),
    ],
)
def test_item_text(item, expected):
    assert item_text(item) == expected


@pytest.mark.parametrize("backend", ["sentence-transformers", "hf-mean"])
def test_bundled_minilm_embeds_offline(backend):
    enc = load_encoder(EmbedConfig(backend=backend, batch_size=2))
    vecs = enc.encode(["nitrile exam gloves", "latex examination gloves", "3D printer PLA filament"])
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-4)
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # gloves are nearer to gloves than to filament


def test_embed_stage_records_recipe(tmp_path):
    write_jsonl(tmp_path / "items.jsonl", [{"item_id": "7", "title": "Safety glasses"}, {"item_id": "9", "title": "Ear plugs"}])
    run_embed(tmp_path, EmbedConfig(batch_size=8))
    embeddings = Run(tmp_path).item_embeddings()
    ids, emb = embeddings.item_ids, embeddings.vectors
    assert ids == ["7", "9"] and emb.shape == (2, 384)
    meta = json.loads((tmp_path / "item_emb.json").read_text())
    assert meta["recipe"]["template"] == EmbedConfig().template


def test_bad_backend():
    with pytest.raises(ValueError, match="embed.backend"):
        EmbedConfig(backend="openai")
