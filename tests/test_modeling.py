"""The recommender LM: default model, SID tokens, SA-Init and checkpoint I/O (tiny models, CPU, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genrec.artifacts import TOKEN_SEMANTICS, Run
from genrec.checkpoint import load_model_and_tokenizer, save_checkpoint
from genrec.modeling import (
    ModelConfig,
    add_sid_tokens,
    build_default_model,
    init_sid_embeddings,
    prepare_model,
)

TINY = {"num_hidden_layers": 1, "intermediate_size": 32}
SIDS = {"1": [0, 1, 0], "2": [0, 1, 1], "3": [2, 0, 0]}


def tiny_model(**overrides):
    torch.manual_seed(0)
    return build_default_model(ModelConfig(**{**TINY, **overrides}))


@pytest.fixture(scope="module")
def default():
    return tiny_model()


def minilm_rows() -> torch.Tensor:
    from safetensors import safe_open

    from genrec.encoders import minilm_path

    with safe_open(str(Path(minilm_path()) / "model.safetensors"), framework="pt") as f:
        return f.get_tensor("embeddings.word_embeddings.weight")


def expected_sa_row(weight: torch.Tensor, tok, keywords: list[str]) -> torch.Tensor:
    """What SA-Init must give: mean of the keywords' sub-token rows, rescaled to the mean norm of the old rows."""
    ids = [i for kw in keywords for i in tok(" " + kw, add_special_tokens=False)["input_ids"]]
    mean = weight[ids].mean(0)
    return mean * weight.norm(dim=1).mean() / mean.norm()


def test_default_model_has_minilm_tokenizer_and_embeddings(default):
    model, tok = default
    gloves = tok.convert_tokens_to_ids("gloves")
    assert len(tok) == 30522 and type(model).__name__ == "Qwen3ForCausalLM"
    assert torch.equal(model.get_input_embeddings().weight[gloves], minilm_rows()[gloves])
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    # causal-LM conventions: no [CLS]/[SEP] wrapped around text, eos/pad agree everywhere
    assert tok("nitrile gloves")["input_ids"] == tok.convert_tokens_to_ids(["ni", "##tri", "##le", "gloves"])
    assert tok.eos_token == "[SEP]" and tok.pad_token == "[PAD]"
    assert model.config.eos_token_id == model.generation_config.eos_token_id == tok.eos_token_id
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tok.pad_token_id


def test_sid_tokens_are_ordinary_and_round_trip():
    model, tok = tiny_model()
    ids = add_sid_tokens(model, tok, ["<a_12>", "<b_7>", "<c_200>", "<a_3>"])
    assert ids == list(range(30522, 30526))
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == 30526
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert not set(ids) & set(tok.all_special_ids)
    assert tok("<a_12><b_7>")["input_ids"] == ids[:2]
    for text in ["<a_12><b_7>", "<a_12><b_7><c_200>"]:
        enc = tok(text)["input_ids"] + [tok.eos_token_id]  # what generation ends with
        assert tok.decode(enc, skip_special_tokens=True) == text
    # consecutive SIDs stay apart, text keeps BERT's lowercasing
    mixed = tok("Next: <a_12><b_7><c_200> <a_3><b_7>")["input_ids"]
    assert tok.decode(mixed, skip_special_tokens=True) == "next : <a_12><b_7><c_200> <a_3><b_7>"
    assert add_sid_tokens(model, tok, ["<a_12>"]) == [ids[0]]  # idempotent


def test_sa_init_is_rescaled_keyword_mean():
    model, tok = tiny_model()
    old = model.get_input_embeddings().weight.detach().clone()
    (gloves_id, other_id) = add_sid_tokens(model, tok, ["<a_0>", "<a_1>"])
    init_sid_embeddings(model, tok, {"<a_0>": {"keywords": ["gloves", "nitrile"]}}, "sa")
    new = model.get_input_embeddings().weight.detach()
    assert torch.allclose(new[gloves_id], expected_sa_row(old, tok, ["gloves", "nitrile"]), atol=1e-6)
    # no keywords: the rescaled mean of all original rows
    mean = old.mean(0) * old.norm(dim=1).mean() / old.mean(0).norm()
    assert torch.allclose(new[other_id], mean, atol=1e-6)
    assert torch.equal(new[:30522], old)  # pretrained rows untouched


def test_sa_init_untied_sets_output_rows_from_output_matrix():
    model, tok = tiny_model(tie_word_embeddings=False)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    (tid,) = add_sid_tokens(model, tok, ["<b_4>"])
    init_sid_embeddings(model, tok, {"<b_4>": {"keywords": ["safety glasses"]}}, "sa")
    assert torch.allclose(model.get_input_embeddings().weight[tid], expected_sa_row(old_in, tok, ["safety glasses"]),
                          atol=1e-6)
    assert torch.allclose(model.get_output_embeddings().weight[tid],
                          expected_sa_row(old_out, tok, ["safety glasses"]), atol=1e-6)


def test_mean_and_random_modes():
    model, tok = tiny_model()
    old_norm = model.get_input_embeddings().weight.detach().norm(dim=1).mean()
    ids = add_sid_tokens(model, tok, ["<a_0>", "<a_1>", "<b_0>"])
    init_sid_embeddings(model, tok, {}, "mean")
    rows = model.get_input_embeddings().weight.detach()[ids]
    assert torch.allclose(rows, rows[0].expand_as(rows)) and torch.allclose(rows.norm(dim=1), old_norm)
    init_sid_embeddings(model, tok, {}, "random")
    rows = model.get_input_embeddings().weight.detach()[ids]
    assert 0.01 < rows.std().item() < 0.03  # normal(0, initializer_range=0.02)
    with pytest.raises(ValueError, match="sid_init"):
        init_sid_embeddings(model, tok, {}, "zeros")


def write_run(run_dir: Path, semantics: bool = True) -> None:
    (run_dir / "sids.json").write_text(json.dumps(SIDS))
    (run_dir / "sid_report.json").write_text(json.dumps({"levels": [{"codebook_size": n} for n in (4, 3, 2)]}))
    if semantics:
        entry = {"level": 0, "code": 0, "items": ["1", "2"], "keywords": ["gloves"], "description": "Gloves."}
        (run_dir / "token_semantics.json").write_text(json.dumps({"<a_0>": entry}))


def prepare(cfg: ModelConfig, run_dir: Path):
    """prepare_model on a run directory's files, read as the sft stage reads them."""
    run = Run(run_dir)
    semantics = run.token_semantics() if run.exists(TOKEN_SEMANTICS) else None
    return prepare_model(cfg, run.sids(), codebook_sizes=run.codebook_sizes(), semantics=semantics)


def test_prepare_model_adds_every_codebook_token(tmp_path):
    write_run(tmp_path)
    model, tok = prepare(ModelConfig(**TINY), tmp_path)
    assert len(tok) == 30522 + 4 + 3 + 2
    a0 = tok.convert_tokens_to_ids("<a_0>")
    gloves = minilm_rows()[tok.convert_tokens_to_ids("gloves")]
    expected = gloves * minilm_rows().norm(dim=1).mean() / gloves.norm()  # one keyword of one piece, rescaled
    assert torch.allclose(model.get_input_embeddings().weight[a0], expected, atol=1e-6)


def test_prepare_model_sa_needs_token_semantics(tmp_path):
    write_run(tmp_path, semantics=False)
    with pytest.raises(ValueError, match="describe stage"):
        prepare(ModelConfig(**TINY), tmp_path)


def test_minilm_backbone_is_the_pretrained_encoder_run_causally():
    from safetensors import safe_open

    from genrec.encoders import minilm_path

    model, tok = build_default_model(ModelConfig(backbone="minilm"))
    assert type(model).__name__ == "BertLMHeadModel" and model.config.is_decoder
    with safe_open(str(Path(minilm_path()) / "model.safetensors"), framework="pt") as f:
        for name in ("encoder.layer.5.attention.self.query.weight", "encoder.layer.0.output.dense.weight",
                     "embeddings.position_embeddings.weight", "embeddings.word_embeddings.weight"):
            assert torch.equal(model.bert.state_dict()[name], f.get_tensor(name)), name
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tok.model_max_length == 512  # MiniLM's position embeddings end there
    ids = tok("nitrile gloves and safety glasses", return_tensors="pt")["input_ids"]
    with torch.no_grad():  # causal: the first positions do not see the later tokens
        full = model.bert(ids).last_hidden_state
        prefix = model.bert(ids[:, :3]).last_hidden_state
    assert torch.allclose(full[:, :3], prefix, atol=1e-5)


@pytest.mark.parametrize("backbone", ["random", "minilm"])
def test_save_load_round_trip(tmp_path, backbone):
    model, tok = tiny_model(backbone=backbone)
    add_sid_tokens(model, tok, ["<a_0>", "<b_1>", "<c_0>"])
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "stale.txt").write_text("from an older save")
    save_checkpoint(model, tok, out, SIDS, {"stage": "sft"})
    assert not (out / "stale.txt").exists() and json.loads((out / "sids.json").read_text()) == SIDS
    assert json.loads((out / "genrec.json").read_text()) == {"stage": "sft"}
    assert not (out / "catalog.jsonl").exists()  # written only when titles are given
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp dirs left behind
    loaded, ltok = load_model_and_tokenizer(out)
    ids = ltok("gloves <a_0><b_1><c_0>", return_tensors="pt")["input_ids"]
    assert ids.tolist() == tok("gloves <a_0><b_1><c_0>", return_tensors="pt")["input_ids"].tolist()
    assert ltok.decode(ids[0, 1:], skip_special_tokens=True) == "<a_0><b_1><c_0>"
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-5)
    assert loaded.generation_config.eos_token_id == ltok.eos_token_id


@pytest.mark.parametrize("overrides, match", [
    ({"sid_init": "zeros"}, "sid_init"),  # unknown init mode
    ({"torch_dtype": "float8"}, "torch_dtype"),  # unknown dtype
    ({"torch_dtype": "auto"}, "auto"),  # 'auto' needs a checkpoint to read the dtype from
    ({"hidden_size": 380}, "divisible"),  # heads must split the width
    ({"num_key_value_heads": 4}, "divisible"),  # GQA groups must split the heads
    ({"num_hidden_layers": 0}, "num_hidden_layers"),  # sizes must be positive
    ({"backbone": "bert"}, "backbone"),  # unknown backbone of the default model
])
def test_bad_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**overrides)


def test_hidden_size_other_than_minilm():
    model, _ = tiny_model(hidden_size=192, num_attention_heads=3, num_key_value_heads=1)
    emb = model.get_input_embeddings().weight
    assert emb.shape == (30522, 192)
    assert torch.allclose(emb.norm(dim=1).mean(), minilm_rows().norm(dim=1).mean(), atol=1e-3)
    with pytest.raises(ValueError, match="hidden_size <= 384"):
        tiny_model(hidden_size=512, num_attention_heads=8)


def write_tiny_qwen2(path: Path) -> None:
    """A checkpoint shaped like Qwen2.5: byte-level BPE tokenizer, untied head, spare embedding rows."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

    vocab = {"<|endoftext|>": 0, **{ch: i + 1 for i, ch in enumerate(sorted(ByteLevel.alphabet()))}}
    Qwen2Tokenizer(vocab=vocab, merges=[]).save_pretrained(path)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    Qwen2ForCausalLM(config).save_pretrained(path)


def test_any_causal_lm_end_to_end(tmp_path):
    base, run = tmp_path / "qwen", tmp_path / "run"
    write_tiny_qwen2(base)
    run.mkdir()
    write_run(run)
    model, tok = prepare(ModelConfig(model_name_or_path=str(base), sid_init="sa"), run)
    assert model.get_input_embeddings().weight.shape[0] == 300  # 257 + 9 tokens fit in the spare rows
    assert tok.pad_token_id == model.config.pad_token_id == tok.eos_token_id
    old, _ = load_model_and_tokenizer(base)
    a0 = tok.convert_tokens_to_ids("<a_0>")
    for new_w, old_w in [(model.get_input_embeddings().weight, old.get_input_embeddings().weight[:257]),
                         (model.get_output_embeddings().weight, old.get_output_embeddings().weight[:257])]:
        assert torch.allclose(new_w[a0], expected_sa_row(old_w.detach(), tok, ["gloves"]), atol=1e-6)
    save_checkpoint(model, tok, tmp_path / "ckpt", SIDS)
    _, ltok = load_model_and_tokenizer(tmp_path / "ckpt")
    ids = ltok("<a_0><b_1><c_0>")["input_ids"]
    assert len(ids) == 3 and ltok.decode(ids + [ltok.eos_token_id], skip_special_tokens=True) == "<a_0><b_1><c_0>"
