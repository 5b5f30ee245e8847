"""Trie-constrained decoding: the trie, the transformers processor and `recommend`, the vLLM masker, speed."""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertLMHeadModel,
    GenerationConfig,
    PrefixConstrainedLogitsProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from genrec.decoding import DEAD, DONE, SIDTrie, TrieLogitsProcessor, recommend
from genrec.decoding.vllm import TrieBatchMasker, trie_extra_args
from genrec.sid import sid_string, sid_tokens, sid_vocab

EOS = 2
WORDS = ["[UNK]", "[PAD]", "[EOS]", "User", "history:", "Next", "item:", ","]


def make_tokenizer(sids: dict[str, list[int]]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    tokenizer.add_tokens(sorted({t for codes in sids.values() for t in sid_tokens(codes)}))
    return tokenizer


def tiny_model(vocab_size: int, seed: int = 0, arch: str = "qwen2"):
    torch.manual_seed(seed)
    if arch == "bert":  # the minilm backbone's class: absolute positions, a head transform and a head bias
        model = BertLMHeadModel(BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, intermediate_size=64, is_decoder=True,
                                           eos_token_id=EOS, pad_token_id=1))
        with torch.no_grad():
            model.get_output_embeddings().bias.normal_()
        return model.eval()
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, eos_token_id=EOS, pad_token_id=1)
    return Qwen2ForCausalLM(config).eval()


def random_catalog(n: int, lengths: tuple[int, ...], codebook: int, seed: int = 0) -> dict[str, list[int]]:
    assert n <= sum(codebook**length for length in set(lengths)), "not enough distinct SIDs"
    rng = random.Random(seed)
    seen, sids = set(), {}
    while len(sids) < n:
        codes = tuple(rng.randrange(codebook) for _ in range(rng.choice(lengths)))
        if codes not in seen:
            seen.add(codes)
            sids[f"i{len(sids)}"] = list(codes)
    return sids


def prompts_for(sids: dict[str, list[int]], n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    ids = list(sids)
    histories = [rng.sample(ids, rng.randint(1, min(4, len(ids)))) for _ in range(n)]
    return [f"User history: {' , '.join(sid_string(sids[i]) for i in h)} Next item:" for h in histories]


def prefix_table(seqs: list[list[int]]) -> dict[tuple, set]:
    """The dict-of-prefixes reference (MiniOneRec / LC-Rec): prefix -> allowed next tokens."""
    table: dict[tuple, set] = {}
    for s in seqs:
        for j in range(len(s)):
            table.setdefault(tuple(s[:j]), set()).add(s[j])
        table.setdefault(tuple(s), set()).add(EOS)
    return table


# ----------------------------------------------------------------------------- trie

# Items: "x" = 5 7, "y" = 5 8 9, "z" = 5 8 (a prefix of "y"), "w" = 6 (length 1).
SMALL = {"x": [5, 7], "y": [5, 8, 9], "z": [5, 8], "w": [6]}


@pytest.mark.parametrize(
    ("prefix", "allowed"),
    [
        ([], [5, 6]),  # root: first tokens of all SIDs
        ([5], [7, 8]),  # shared prefix branches
        ([5, 7], [EOS]),  # complete SID: only EOS
        ([5, 8], [EOS, 9]),  # complete SID that another SID extends: EOS or continue
        ([5, 8, 9], [EOS]),  # longest SID complete
        ([6], [EOS]),  # length-1 SID
        ([7], [EOS]),  # prefix outside the catalog: dead, only EOS
        ([5, 7, EOS], [EOS]),  # after EOS: done, only EOS (padding)
        ([5, 7, 9], [EOS]),  # continuing past a complete SID: dead
    ],
)
def test_allowed_tokens_table(prefix, allowed):
    trie = SIDTrie.from_token_ids(list(SMALL.values()), list(SMALL), eos_token_id=EOS)
    assert trie.allowed_tokens(prefix) == sorted(allowed)


def test_walk_states_and_lookup():
    trie = SIDTrie.from_token_ids(list(SMALL.values()), list(SMALL), eos_token_id=EOS)
    gen = torch.tensor([[5, 8, EOS, 1], [5, 8, 9, EOS], [7, EOS, 1, 1], [5, 8, -1, -1], [6, EOS, EOS, EOS]])
    state, item = trie.walk(gen)
    assert state[0] == DONE and state[2] == DEAD and state[3] >= 0
    assert [trie.item_ids[i] if i is not None else None for i in trie.lookup(gen)] == ["z", "y", None, None, "w"]


def test_allowed_batch_matches_prefix_dict():
    sids = random_catalog(300, lengths=(2, 3, 4), codebook=6, seed=1)
    seqs = [[10 + 10 * lv + c for lv, c in enumerate(codes)] for codes in sids.values()]
    trie = SIDTrie.from_token_ids(seqs, list(sids), eos_token_id=EOS)
    table = prefix_table(seqs)
    rng = random.Random(0)
    prefixes = [s[: rng.randint(0, len(s))] for s in rng.sample(seqs, 100)]
    prefixes += [[10 + rng.randrange(6), 20 + rng.randrange(6), 99] for _ in range(20)]  # some are dead
    width = max(len(p) for p in prefixes)
    gen = torch.tensor([p + [-1] * (width - len(p)) for p in prefixes])
    rows, tokens = trie.allowed(trie.walk(gen)[0])
    got = [set() for _ in prefixes]
    for r, t in zip(rows.tolist(), tokens.tolist(), strict=True):
        got[r].add(t)
    assert got == [table.get(tuple(p), {EOS}) for p in prefixes]


@pytest.mark.parametrize(
    ("seqs", "message"),
    [
        ([[5, 7], [5, 7]], "share a SID"),  # duplicate SID
        ([[5, EOS]], "EOS"),  # SID containing the EOS token
        ([[5, 7], []], "at least one token"),  # empty SID
        ([], "empty"),  # no items
    ],
)
def test_build_rejects_bad_catalogs(seqs, message):
    with pytest.raises(ValueError, match=message):
        SIDTrie.from_token_ids(seqs, [f"i{i}" for i in range(len(seqs))], eos_token_id=EOS)


def test_from_sids_uses_tokenizer_ids_and_rejects_missing_tokens(tmp_path):
    sids = {"a": [1, 2, 3], "b": [1, 2], "c": [0, 3]}
    tokenizer = make_tokenizer(sids)
    trie = SIDTrie.from_sids(sids, tokenizer)
    ids = tokenizer.convert_tokens_to_ids(sid_tokens([1, 2]))
    assert trie.allowed_tokens(ids) == sorted([EOS, tokenizer.convert_tokens_to_ids("<c_3>")])
    trie.save(tmp_path / "trie")
    loaded = SIDTrie.load(tmp_path / "trie")
    gen = torch.tensor([ids + [EOS], tokenizer.convert_tokens_to_ids(sid_tokens([0, 3])) + [EOS]])
    assert [loaded.item_ids[i] for i in loaded.lookup(gen)] == ["b", "c"]
    with pytest.raises(ValueError, match="not in the tokenizer"):
        SIDTrie.from_sids({**sids, "d": [9, 9]}, tokenizer)


# ----------------------------------------------------------------------------- transformers processor


def _simulated_steps(seqs: list[list[int]], rows: int, prompt_len: int, seed: int = 0) -> list[torch.Tensor]:
    rng = random.Random(seed)
    chosen = [rng.choice(seqs) for _ in range(rows)]
    depth = max(len(s) for s in chosen)
    padded = torch.tensor([s + [EOS] * (depth + 1 - len(s)) for s in chosen])
    prompt = torch.randint(10, 100, (rows, prompt_len), generator=torch.Generator().manual_seed(seed))
    return [torch.cat([prompt, padded[:, :t]], 1) for t in range(depth + 1)]


def _reference(table: dict[tuple, set], num_beams: int) -> PrefixConstrainedLogitsProcessor:
    state = {}

    def allowed(batch_id, sent):
        start = state.setdefault("prompt_len", sent.shape[0])
        return sorted(table.get(tuple(sent[start:].tolist()), {EOS}))

    return PrefixConstrainedLogitsProcessor(allowed, num_beams)


def test_processor_output_equals_prefix_constrained_reference():
    sids = random_catalog(200, lengths=(2, 3), codebook=6, seed=2)
    seqs = [[10 + 10 * lv + c for lv, c in enumerate(codes)] for codes in sids.values()]
    trie = SIDTrie.from_token_ids(seqs, list(sids), eos_token_id=EOS)
    ours, ref = TrieLogitsProcessor(trie), _reference(prefix_table(seqs), num_beams=4)
    for ids in _simulated_steps(seqs, rows=12, prompt_len=7):
        scores = torch.randn(12, 64).log_softmax(-1)
        assert torch.equal(ours(ids, scores.clone()), ref(ids, scores))


def test_processor_finds_prompt_length_and_restarts():
    trie = SIDTrie.from_token_ids(list(SMALL.values()), list(SMALL), eos_token_id=EOS)
    proc = TrieLogitsProcessor(trie)
    scores = torch.zeros(1, 16)
    allowed = lambda out: sorted(torch.isfinite(out[0]).nonzero().flatten().tolist())  # noqa: E731
    assert allowed(proc(torch.tensor([[3, 4, 5, 8]]), scores)) == [5, 6]  # first call: all of it is prompt
    assert allowed(proc(torch.tensor([[3, 4, 5, 8, 5]]), scores)) == [7, 8]
    assert allowed(proc(torch.tensor([[3, 4, 5]]), scores)) == [5, 6]  # shorter input: a new generation
    proc.reset()
    assert allowed(proc(torch.tensor([[3, 4, 5, 8]]), scores)) == [5, 6]  # reset: a new generation


def test_processor_dead_rows_get_only_eos_and_are_counted():
    trie = SIDTrie.from_token_ids(list(SMALL.values()), list(SMALL), eos_token_id=EOS)
    proc = TrieLogitsProcessor(trie)
    proc(torch.tensor([[3, 3], [3, 3]]), torch.zeros(2, 16))
    out = proc(torch.tensor([[3, 3, 7], [3, 3, 5]]), torch.zeros(2, 16))
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [EOS]
    assert sorted(torch.isfinite(out[1]).nonzero().flatten().tolist()) == [7, 8]
    assert proc.dead_rows == 1


# ----------------------------------------------------------------------------- recommend on a tiny random model

CATALOGS = {
    "fixed": random_catalog(80, lengths=(3,), codebook=5, seed=3),
    "variable": {**random_catalog(60, lengths=(1, 2, 3, 4), codebook=4, seed=4), "p1": [5, 0], "p2": [5, 0, 1]},
    # every prefix but the root has a single continuation, so most beams have one way forward
    "single_continuation": {f"c{i}": [i, i, i] for i in range(12)},
    "fewer_items_than_k": {"a": [0, 1, 2], "b": [0, 1, 3], "c": [1, 0]},
}


@pytest.mark.parametrize("name", list(CATALOGS))
def test_recommend_returns_distinct_valid_items(name):
    sids = CATALOGS[name]
    tokenizer = make_tokenizer(sids)
    model = tiny_model(len(tokenizer))
    trie = SIDTrie.from_sids(sids, tokenizer)
    recs = recommend(model, tokenizer, prompts_for(sids, 5), trie, k=10, num_beams=12, batch_size=3)
    assert len(recs) == 5
    for rec in recs:
        assert len(rec.items) == min(10, len(sids))
        assert len(set(rec.items)) == len(rec.items) and set(rec.items) <= set(sids)
        assert rec.invalid == 0
        assert rec.scores == sorted(rec.scores, reverse=True) and all(s <= 0 for s in rec.scores)


def test_recommend_batched_equals_one_by_one():
    sids = CATALOGS["variable"]
    tokenizer = make_tokenizer(sids)
    model = tiny_model(len(tokenizer), seed=1)
    trie = SIDTrie.from_sids(sids, tokenizer)
    prompts = prompts_for(sids, 6, seed=1)
    batched = recommend(model, tokenizer, prompts, trie, k=5, num_beams=8, batch_size=6)
    single = recommend(model, tokenizer, prompts, trie, k=5, num_beams=8, batch_size=1)
    assert [r.items for r in batched] == [r.items for r in single]
    assert np.allclose([r.scores for r in batched], [r.scores for r in single], atol=1e-4)


def test_recommend_ignores_the_checkpoint_generation_config(tmp_path):
    sids = CATALOGS["fixed"]
    tokenizer = make_tokenizer(sids)
    model = tiny_model(len(tokenizer), seed=2)
    trie = SIDTrie.from_sids(sids, tokenizer)
    prompts = prompts_for(sids, 4, seed=2)
    clean = recommend(model, tokenizer, prompts, trie, k=10, num_beams=12)
    model.generation_config = GenerationConfig(
        do_sample=True, top_k=2, top_p=0.5, temperature=5.0, repetition_penalty=10.0, no_repeat_ngram_size=1,
        min_new_tokens=8, suppress_tokens=[EOS], num_beams=1, max_new_tokens=1)
    model.save_pretrained(tmp_path)
    poisoned = Qwen2ForCausalLM.from_pretrained(tmp_path).eval()
    assert poisoned.generation_config.do_sample and poisoned.generation_config.top_k == 2
    recs = recommend(poisoned, tokenizer, prompts, trie, k=10, num_beams=12)
    assert [r.items for r in recs] == [r.items for r in clean]
    assert np.allclose([r.scores for r in recs], [r.scores for r in clean], atol=1e-5)
    assert poisoned.generation_config.do_sample  # the model's own config is restored afterwards


def exact_scores(model, tokenizer, prompt: str, sids: dict[str, list[int]], softmax: str) -> dict[str, float]:
    """Teacher-forced log p(SID tokens + EOS | prompt) of every catalog item: the ranking beam search approximates.
    softmax="sid": SID tokens are normalised over the tokenizer's SID tokens, EOS over the whole vocabulary."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    sid_ids = sorted(sid_vocab(tokenizer).values())
    out = {}
    for item, codes in sids.items():
        target = tokenizer.convert_tokens_to_ids(sid_tokens(codes))
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + target])).logits[0, len(prompt_ids) - 1:].float()
        if softmax == "sid":
            sid_logp = torch.log_softmax(logits[:-1, sid_ids], -1)
            score = sum(float(sid_logp[j, sid_ids.index(t)]) for j, t in enumerate(target))
        else:
            score = sum(float(torch.log_softmax(logits[j], -1)[t]) for j, t in enumerate(target))
        out[item] = score + float(torch.log_softmax(logits[-1], -1)[EOS])
    return out


@pytest.mark.parametrize("arch", ["qwen2", "bert"])
@pytest.mark.parametrize("softmax", ["sid", "full"])
@pytest.mark.parametrize("name", ["fixed", "variable"])
def test_trie_engine_with_wide_beams_returns_the_exact_top_k(name, softmax, arch):
    """With at least as many beams as items nothing is pruned, so the result must be the exact top-k by probability
    (and for the variable-length catalog, better than generate, which drops finished SIDs outside its top beams).
    The BERT decoder (the minilm backbone) checks that the cached search applies its head transform and bias."""
    sids = CATALOGS[name]
    tokenizer = make_tokenizer(sids)
    model = tiny_model(len(tokenizer), seed=5, arch=arch)
    trie = SIDTrie.from_sids(sids, tokenizer)
    prompts = prompts_for(sids, 3, seed=2)
    recs = recommend(model, tokenizer, prompts, trie, k=10, num_beams=len(sids), batch_size=2, softmax=softmax)
    for prompt, rec in zip(prompts, recs):
        exact = exact_scores(model, tokenizer, prompt, sids, softmax)
        best = sorted(exact, key=exact.get, reverse=True)[:10]
        assert rec.items == best
        assert np.allclose(rec.scores, [exact[i] for i in best], atol=1e-4)


def test_subtree_max_gives_each_prefix_its_best_reachable_item():
    sids = CATALOGS["variable"]
    trie = SIDTrie.from_sids(sids, make_tokenizer(sids))
    values = torch.from_numpy(np.random.default_rng(0).normal(size=(2, trie.num_items)).astype(np.float32))
    best = trie.subtree_max(values)
    tokenizer = make_tokenizer(sids)
    parents, paths = trie._parents(), {(): 0}
    for node in range(1, trie.num_nodes):  # parents are numbered before their children
        parent_path = next(p for p, n in paths.items() if n == int(parents[node - 1]))
        paths[(*parent_path, int(trie.edge_token[node - 1]))] = node
    for row in range(2):
        assert float(best[row, 0]) == float(values[row].max())  # the root reaches every item
        for node_path, node in paths.items():
            reach = [values[row, i] for i, iid in enumerate(trie.item_ids)
                     if tuple(tokenizer.convert_tokens_to_ids(sid_tokens(sids[iid])))[:len(node_path)] == node_path]
            assert float(best[row, node]) == float(max(reach))
    with pytest.raises(ValueError, match="expected"):
        trie.subtree_max(values[:, :3])


@pytest.mark.parametrize("name", ["fixed", "variable"])
def test_item_prior_with_wide_beams_returns_the_exact_top_k_of_logp_plus_prior(name):
    """The prior enters as an exact lookahead: with as many beams as items the result is the exact top-k of
    log p(item) + prior(item), also where one SID is a prefix of another (the variable catalog's p1 / p2)."""
    sids = CATALOGS[name]
    tokenizer = make_tokenizer(sids)
    model = tiny_model(len(tokenizer), seed=5)
    trie = SIDTrie.from_sids(sids, tokenizer)
    prompts = prompts_for(sids, 3, seed=2)
    prior = torch.from_numpy(np.random.default_rng(1).normal(scale=3.0, size=(3, len(sids))).astype(np.float32))
    recs = recommend(model, tokenizer, prompts, trie, k=10, num_beams=len(sids), batch_size=2, item_prior=prior)
    for row, (prompt, rec) in enumerate(zip(prompts, recs)):
        exact = exact_scores(model, tokenizer, prompt, sids, "sid")
        total = {iid: exact[iid] + float(prior[row, n]) for n, iid in enumerate(trie.item_ids)}
        best = sorted(total, key=total.get, reverse=True)[:10]
        assert rec.items == best
        assert np.allclose(rec.scores, [total[i] for i in best], atol=1e-4)


def test_item_prior_zero_changes_nothing_and_a_large_one_decides():
    sids = CATALOGS["fixed"]
    tokenizer = make_tokenizer(sids)
    model = tiny_model(len(tokenizer), seed=2)
    trie = SIDTrie.from_sids(sids, tokenizer)
    prompts = prompts_for(sids, 4, seed=3)
    plain = recommend(model, tokenizer, prompts, trie, k=5, num_beams=8)
    zero = recommend(model, tokenizer, prompts, trie, k=5, num_beams=8, item_prior=torch.zeros(4, len(sids)))
    assert [r.items for r in zero] == [r.items for r in plain]
    # a narrow beam still finds a boosted item the model ranks last: the lookahead keeps its prefix alive
    worst = [min(exact_scores(model, tokenizer, p, sids, "sid").items(), key=lambda kv: kv[1])[0] for p in prompts]
    prior = torch.zeros(4, len(sids))
    for row, iid in enumerate(worst):
        prior[row, trie.item_ids.index(iid)] = 100.0
    boosted = recommend(model, tokenizer, prompts, trie, k=2, num_beams=2, item_prior=prior)
    assert [r.items[0] for r in boosted] == worst
    with pytest.raises(ValueError, match="one row per prompt"):
        recommend(model, tokenizer, prompts, trie, k=5, num_beams=8, item_prior=torch.zeros(3, len(sids)))
    with pytest.raises(ValueError, match="engine='trie'"):
        recommend(model, tokenizer, prompts, trie, k=5, num_beams=8, engine="generate", softmax="full",
                  item_prior=torch.zeros(4, len(sids)))


def test_trie_engine_matches_generate_on_a_fixed_depth_catalog():
    sids = CATALOGS["fixed"]
    tokenizer = make_tokenizer(sids)
    model = tiny_model(len(tokenizer), seed=5)
    trie = SIDTrie.from_sids(sids, tokenizer)
    prompts = prompts_for(sids, 7, seed=2)
    ours = recommend(model, tokenizer, prompts, trie, k=10, num_beams=12, batch_size=3, softmax="full")
    theirs = recommend(model, tokenizer, prompts, trie, k=10, num_beams=12, batch_size=3, engine="generate",
                       softmax="full")
    assert [r.items for r in ours] == [r.items for r in theirs]
    assert np.allclose([r.scores for r in ours], [r.scores for r in theirs], atol=1e-4)


def test_recommend_rejects_unknown_engine_and_stray_processor():
    sids = CATALOGS["fixed"]
    tokenizer = make_tokenizer(sids)
    model, trie = tiny_model(len(tokenizer)), SIDTrie.from_sids(sids, tokenizer)
    with pytest.raises(ValueError, match="engine='beam'"):
        recommend(model, tokenizer, ["x"], trie, engine="beam")
    with pytest.raises(ValueError, match="only applies to engine='generate'"):
        recommend(model, tokenizer, ["x"], trie, processor_factory=lambda: TrieLogitsProcessor(trie))
    with pytest.raises(ValueError, match="softmax='sid' needs engine='trie'"):
        recommend(model, tokenizer, ["x"], trie, engine="generate")


def test_recommend_rejects_k_above_beam():
    sids = CATALOGS["fixed"]
    tokenizer = make_tokenizer(sids)
    with pytest.raises(ValueError, match="raise num_beams"):
        recommend(tiny_model(len(tokenizer)), tokenizer, ["x"], SIDTrie.from_sids(sids, tokenizer), k=5, num_beams=3)


# ----------------------------------------------------------------------------- speed and scale


def _codes(n: int, seed: int) -> list[list[int]]:
    flat = np.random.default_rng(seed).choice(256**3, size=n, replace=False)
    return np.stack([flat // 65536, (flat // 256) % 256, flat % 256], 1).tolist()


def test_million_item_trie_builds_small():
    # build time and per-step speed against the reference live in benchmarks/decoding.py (timings are noisy here)
    sids = {f"item{i}": c for i, c in enumerate(_codes(10**6, seed=1))}
    tokenizer = make_tokenizer({f"t{c}": [c, c, c] for c in range(256)})  # every SID token of 3 x 256 codes
    tracemalloc.start()
    trie = SIDTrie.from_sids(sids, tokenizer)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert trie.num_items == 10**6
    assert peak < 2**30 and trie.nbytes < 2**30, f"peak {peak / 2**20:.0f} MB, tensors {trie.nbytes / 2**20:.0f} MB"
    # a random sample of the million SIDs walks to its own item
    paths = _paths(trie, 64)
    eos = torch.full((64, 1), trie.eos_token_id)
    items = trie.lookup(torch.cat([torch.tensor(paths), eos], dim=1))
    assert all(i is not None for i in items) and len(set(items)) == 64


def _paths(trie: SIDTrie, n: int) -> list[list[int]]:
    """Token sequences of `n` random items of a trie (read back from its leaves)."""
    leaves = torch.nonzero(trie.node_terminal).flatten()
    chosen = leaves[torch.randperm(len(leaves), generator=torch.Generator().manual_seed(0))[:n]]
    parents = trie._parents()
    paths = []
    for node in chosen.tolist():
        path = []
        while node > 0:
            path.append(int(trie.edge_token[node - 1]))
            node = int(parents[node - 1])
        paths.append(path[::-1])
    return paths


# ----------------------------------------------------------------------------- vLLM


def test_vllm_masker_tracks_batch_moves_without_vllm(tmp_path):
    trie = SIDTrie.from_token_ids(list(SMALL.values()), list(SMALL), eos_token_id=EOS)
    trie.save(tmp_path / "trie")
    args = trie_extra_args(tmp_path / "trie")
    masker = TrieBatchMasker("cpu")
    outputs = {0: [], 1: [5], 2: [5, 8]}
    masker.add(0, args, outputs[0])
    masker.add(1, None, outputs[1])  # unconstrained request
    masker.add(2, args, outputs[2])
    masker.move(2, 1, swap=True)  # rows 1 and 2 swap places
    logits = masker.apply(torch.zeros(3, 16))
    allowed = [sorted(torch.isfinite(row).nonzero().flatten().tolist()) for row in logits]
    assert allowed == [[5, 6], [EOS, 9], list(range(16))]
    outputs[2].append(9)  # the live output list grows between steps
    masker.remove(0)
    logits = masker.apply(torch.zeros(3, 16))
    assert [torch.isfinite(row).sum().item() for row in logits] == [16, 1, 16]


@pytest.mark.gpu
def test_vllm_generation_stays_in_catalog(tmp_path):
    vllm = pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from genrec.decoding.vllm import PROCESSOR

    sids = CATALOGS["variable"]
    tokenizer = make_tokenizer(sids)
    tiny_model(len(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    trie = SIDTrie.from_sids(sids, tokenizer)
    trie.save(tmp_path / "trie")
    llm = vllm.LLM(model=str(tmp_path / "model"), logits_processors=[PROCESSOR], gpu_memory_utilization=0.2,
                   enforce_eager=True)
    params = vllm.SamplingParams(temperature=1.0, max_tokens=trie.depth + 1, n=8,
                                 extra_args=trie_extra_args(tmp_path / "trie"))
    by_sid = {tuple(tokenizer.convert_tokens_to_ids(sid_tokens(c))): iid for iid, c in sids.items()}
    for out in llm.generate(prompts_for(sids, 4), params):
        assert len(out.outputs) == 8
        for completion in out.outputs:
            ids = list(completion.token_ids)
            sid = tuple(ids[:-1] if ids and ids[-1] == EOS else ids)
            assert sid in by_sid, f"{ids} is not the SID of a catalog item"
            item = trie.lookup(torch.tensor([[*sid, EOS]]))[0]
            assert trie.item_ids[item] == by_sid[sid]
