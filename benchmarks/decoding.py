"""Benchmark genrec's trie-constrained decoding against the dict-of-prefixes constraint of MiniOneRec / LC-Rec.

The reference is transformers' `PrefixConstrainedLogitsProcessor` driven by a function that looks the generated
prefix up in a dict ``prefix tuple -> allowed token ids``. Both run on the same model and inputs. Measured:

  (a) the top-K items (and scores) of both are identical;
  (b) the masking step alone at vocabulary 152,064 (Qwen size) for 640 rows (batch 32 x beam 20), plus the
      vectorised alternative that rewrites the whole rows x vocab tensor each step;
  (c) end-to-end ms/query at batch 1, 8 and 32 with beam 20 on a small random Qwen2: the reference, transformers'
      generate with genrec's trie processor, genrec's own beam search (one prompt pass per prompt) with the
      full-vocabulary softmax (identical top-K to the reference), and with the default SID-token softmax;
  (d) scale: build time, memory and per-step time of the trie for 10^4, 10^5 and 10^6 synthetic items.

Run (about 1 minute on 2 CPU cores; --quick about 40 s; --threads 1 gives stable figures on a shared machine):

    .venv/bin/python benchmarks/decoding.py [--quick] [--threads 1] [--e2e-vocab 152064]
                                            [--out benchmarks/results/decoding.json]

It prints a table and writes the measured figures as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import platform
import random
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PrefixConstrainedLogitsProcessor, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from genrec.decoding import SIDTrie, TrieLogitsProcessor, recommend
from genrec.sid import sid_string, sid_token

logger = logging.getLogger("benchmarks.decoding")

QWEN_VOCAB = 152_064
EOS, PAD = 2, 1


# ----------------------------------------------------------------------------- catalog, tokenizer, reference


def synthetic_codes(n: int, levels: int = 3, codebook: int = 256, seed: int = 0) -> np.ndarray:
    """`n` distinct random SIDs ``(n, levels)``, codes in [0, codebook)."""
    flat = np.random.default_rng(seed).choice(codebook**levels, size=n, replace=False)
    return np.stack([(flat // codebook**(levels - 1 - lv)) % codebook for lv in range(levels)], axis=1)


def build_tokenizer(levels: int, codebook: int, vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with prompt words, filler words up to `vocab_size`, and every SID token."""
    words = ["[UNK]", "[PAD]", "[EOS]", "User", "history:", "Next", "item:", ","]
    n_sid = levels * codebook
    words += [f"w{i}" for i in range(max(0, vocab_size - n_sid - len(words)))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    tokenizer.add_tokens([sid_token(lv, c) for lv in range(levels) for c in range(codebook)])
    return tokenizer


def prefix_dict(trie: SIDTrie, seqs: np.ndarray) -> dict[tuple, list[int]]:
    """The MiniOneRec / LC-Rec structure: every SID prefix (as a tuple of token ids) -> allowed next tokens."""
    allowed: dict[tuple, set] = {}
    for row in seqs.tolist():
        for j in range(len(row)):
            allowed.setdefault(tuple(row[:j]), set()).add(row[j])
        allowed.setdefault(tuple(row), set()).add(trie.eos_token_id)
    return {k: sorted(v) for k, v in allowed.items()}


class DictPrefixFn:
    """``prefix_allowed_tokens_fn`` over a prefix dict; the first sentence it sees gives the prompt length."""

    def __init__(self, table: dict[tuple, list[int]], eos: int):
        self.table, self.eos, self.prompt_len = table, eos, None

    def __call__(self, batch_id: int, sent: torch.Tensor) -> list[int]:
        if self.prompt_len is None:
            self.prompt_len = sent.shape[0]
        return self.table.get(tuple(sent[self.prompt_len:].tolist()), [self.eos])


class FullRewrite(TrieLogitsProcessor):
    """The trie with the obvious vectorised masking: a fresh rows x vocab -inf tensor per step, then a scatter."""

    def __call__(self, input_ids, scores):
        if self._prompt_len is None or input_ids.shape[1] != self._last_len + 1:
            self._prompt_len = input_ids.shape[1]
        self._last_len = input_ids.shape[1]
        state, _ = self.trie.walk(input_ids[:, self._prompt_len:])
        rows, tokens = self.trie.allowed(state)
        out = torch.full_like(scores, -math.inf)
        out[rows, tokens] = scores[rows, tokens]
        return out


# ----------------------------------------------------------------------------- (b) masking step


def masking_inputs(seqs: np.ndarray, rows: int, prompt_len: int, seed: int = 0) -> list[torch.Tensor]:
    """input_ids of one simulated generation: prompt, then each step's SID prefixes of random items."""
    rng = np.random.default_rng(seed)
    chosen = torch.from_numpy(seqs[rng.integers(0, len(seqs), rows)])
    prompt = torch.from_numpy(rng.integers(10, 100, (rows, prompt_len)))
    return [torch.cat([prompt, chosen[:, :t]], dim=1) for t in range(seqs.shape[1] + 1)]


def time_generation_steps(make_processor, steps: list[torch.Tensor], scores: torch.Tensor, repeats: int) -> list:
    """Per-step median ms of one processor over repeated simulated generations (after one untimed warm-up)."""
    proc = make_processor()
    per_step: list[list[float]] = [[] for _ in steps]
    for rep in range(repeats + 1):
        for i, ids in enumerate(steps):
            t0 = time.perf_counter()
            proc(ids, scores)
            if rep:
                per_step[i].append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in per_step]


def bench_masking(n_items: int, rows: int, repeats: int, ref_repeats: int) -> dict:
    seqs = synthetic_codes(n_items) + 1000 + np.arange(3) * 256
    trie = SIDTrie.from_token_ids(seqs, [str(i) for i in range(n_items)], eos_token_id=EOS)
    table = prefix_dict(trie, seqs)
    steps = masking_inputs(seqs, rows, prompt_len=40)
    scores = torch.randn(rows, QWEN_VOCAB).log_softmax(-1)
    num_beams = 20
    ours = time_generation_steps(lambda: TrieLogitsProcessor(trie), steps, scores, repeats)
    full = time_generation_steps(lambda: FullRewrite(trie), steps, scores, repeats)
    ref = time_generation_steps(
        lambda: PrefixConstrainedLogitsProcessor(DictPrefixFn(table, EOS), num_beams), steps, scores, ref_repeats)
    same = _same_masks(trie, table, steps, scores, num_beams)
    return {"vocab": QWEN_VOCAB, "rows": rows, "items": n_items, "steps": len(steps), "identical_masks": same,
            "ms_per_step": {"reference_prefix_dict": _mean(ref), "trie_full_rewrite": _mean(full),
                            "trie_sparse": _mean(ours)},
            "ms_by_step": {"reference_prefix_dict": ref, "trie_full_rewrite": full, "trie_sparse": ours},
            "speedup_vs_reference": _mean(ref) / _mean(ours), "speedup_vs_full_rewrite": _mean(full) / _mean(ours)}


def _same_masks(trie, table, steps, scores, num_beams) -> bool:
    ours, ref = TrieLogitsProcessor(trie), PrefixConstrainedLogitsProcessor(DictPrefixFn(table, EOS), num_beams)
    return all(torch.equal(ours(ids, scores), ref(ids, scores)) for ids in steps)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


# ----------------------------------------------------------------------------- (a) + (c) end to end


def small_model(vocab_size: int, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, eos_token_id=EOS, pad_token_id=PAD)
    return Qwen2ForCausalLM(config).eval()


def make_prompts(sids: dict[str, list[int]], n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    ids = list(sids)
    return [f"User history: {' , '.join(sid_string(sids[i]) for i in rng.sample(ids, rng.randint(3, 10)))} Next item:"
            for _ in range(n)]


def bench_end_to_end(n_items: int, vocab_size: int, queries: int, batch_sizes: list[int], repeats: int) -> dict:
    """ms/query of `recommend` with the trie and with the reference, alternating runs, best of `repeats`."""
    codes = synthetic_codes(n_items, seed=1)
    sids = {f"item{i}": c for i, c in enumerate(codes.tolist())}
    tokenizer = build_tokenizer(3, 256, vocab_size)
    model = small_model(len(tokenizer))
    trie = SIDTrie.from_sids(sids, tokenizer)
    table = prefix_dict(trie, _token_rows(tokenizer, codes))
    prompts = make_prompts(sids, queries)
    reference = lambda: PrefixConstrainedLogitsProcessor(DictPrefixFn(table, EOS), 20)  # noqa: E731
    recommend(model, tokenizer, prompts[:2], trie, k=10, num_beams=20, batch_size=2)  # warm-up
    rows, identical, max_diff = [], True, 0.0
    for bs in batch_sizes:
        n = max(bs, (queries // bs) * bs)
        args = (model, tokenizer, prompts[:n], trie)
        t_ours, t_sid, t_gen, t_ref = math.inf, math.inf, math.inf, math.inf
        for _ in range(repeats):
            t, ours = _timed(recommend, *args, k=10, num_beams=20, batch_size=bs, softmax="full")
            t_ours = min(t, t_ours)
            t, sid = _timed(recommend, *args, k=10, num_beams=20, batch_size=bs)  # default: SID softmax
            t_sid = min(t, t_sid)
            t, gen = _timed(recommend, *args, k=10, num_beams=20, batch_size=bs, engine="generate", softmax="full")
            t_gen = min(t, t_gen)
            t, ref = _timed(recommend, *args, k=10, num_beams=20, batch_size=bs, engine="generate",
                            softmax="full", processor_factory=reference)
            t_ref = min(t, t_ref)
        identical &= [r.items for r in ours] == [r.items for r in ref] == [r.items for r in gen]
        max_diff = max([max_diff] + [abs(x - y) for a, b in zip(ours, ref) for x, y in zip(a.scores, b.scores)])
        valid = all(len(set(r.items)) == len(r.items) == 10 and r.invalid == 0 for r in ours + sid)
        rows.append({"batch": bs, "queries": n, "ms_per_query_reference": t_ref / n,
                     "ms_per_query_generate_trie": t_gen / n, "ms_per_query_genrec": t_ours / n,
                     "ms_per_query_genrec_sid_softmax": t_sid / n, "speedup": t_ref / t_ours,
                     "speedup_sid_softmax": t_ref / t_sid, "all_10_distinct_valid": valid})
    return {"items": n_items, "vocab": len(tokenizer), "beam": 20, "k": 10, "model": "Qwen2 hidden 64, 2 layers",
            "topk_identical": identical, "max_abs_score_diff": max_diff, "by_batch": rows}


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return (time.perf_counter() - t0) * 1e3, out


# ----------------------------------------------------------------------------- (d) scale


def bench_scale(n_items: int, rows: int, repeats: int) -> dict:
    """Build a trie from an item -> codes map through the tokenizer path, then time its masking steps."""
    codes = synthetic_codes(n_items, seed=2)
    sids = {f"item{i}": c for i, c in enumerate(codes.tolist())}
    tokenizer = build_tokenizer(3, 256, 2_000)
    gc.collect()
    rss0 = psutil.Process().memory_info().rss
    tracemalloc.start()
    t0 = time.perf_counter()
    trie = SIDTrie.from_sids(sids, tokenizer)
    build_s = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_delta = psutil.Process().memory_info().rss - rss0
    seqs = _token_rows(tokenizer, codes)
    steps = masking_inputs(seqs, rows, prompt_len=40)
    scores = torch.randn(rows, QWEN_VOCAB)
    per_step = time_generation_steps(lambda: TrieLogitsProcessor(trie), steps, scores, repeats)
    return {"items": n_items, "nodes": trie.num_nodes, "build_s": build_s, "trie_tensor_mb": trie.nbytes / 2**20,
            "build_peak_traced_mb": peak / 2**20, "rss_delta_mb": rss_delta / 2**20,
            "ms_per_step": _mean(per_step), "ms_by_step": per_step}


def _token_rows(tokenizer, codes: np.ndarray) -> np.ndarray:
    lookup = np.array([tokenizer.convert_tokens_to_ids([sid_token(lv, c) for c in range(256)]) for lv in range(3)])
    return lookup[np.arange(3), codes]


# ----------------------------------------------------------------------------- report


def print_table(results: dict) -> None:
    m = results["masking"]
    ms = m["ms_per_step"]
    print(f"\n(b) masking step, vocab {m['vocab']:,}, {m['rows']} rows, {m['items']:,} items "
          f"(mean of {m['steps']} steps; identical masks: {m['identical_masks']})")
    for name, value in ms.items():
        print(f"    {name:<24}{value:10.2f} ms   x{ms['reference_prefix_dict'] / value:6.1f} vs reference")
    e = results["end_to_end"]
    print(f"\n(a)+(c) end to end, beam {e['beam']}, {e['items']:,} items, vocab {e['vocab']:,}, {e['model']}: "
          f"top-{e['k']} identical: {e['topk_identical']} (max |score diff| {e['max_abs_score_diff']:.2e})")
    print(f"    {'batch':>5} {'reference ms/q':>15} {'generate+trie ms/q':>19} {'genrec ms/q':>12} {'speedup':>8} "
          f"{'genrec SID-softmax ms/q':>24} {'speedup':>8}")
    for r in e["by_batch"]:
        print(f"    {r['batch']:>5} {r['ms_per_query_reference']:>15.1f} {r['ms_per_query_generate_trie']:>19.1f} "
              f"{r['ms_per_query_genrec']:>12.1f} {r['speedup']:>7.1f}x "
              f"{r['ms_per_query_genrec_sid_softmax']:>24.1f} {r['speedup_sid_softmax']:>7.1f}x")
    print(f"\n(d) scale (masking at vocab {QWEN_VOCAB:,}, {results['masking']['rows']} rows)")
    header = [("items", 9), ("nodes", 9), ("build s", 8), ("tensors MB", 11), ("peak MB", 8), ("RSS+ MB", 8),
              ("ms/step", 8)]
    print("    " + " ".join(f"{name:>{width}}" for name, width in header))
    for r in results["scale"]:
        print(f"    {r['items']:>9,} {r['nodes']:>9,} {r['build_s']:>8.2f} {r['trie_tensor_mb']:>11.1f} "
              f"{r['build_peak_traced_mb']:>8.1f} {r['rss_delta_mb']:>8.1f} {r['ms_per_step']:>8.2f}")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (about 1 minute)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--e2e-vocab", type=int, default=32_000,
                        help="vocabulary of the end-to-end model (32k ~ the MiniLM default LM; 152064 = Qwen)")
    parser.add_argument("--out", default="benchmarks/results/decoding.json", help="where to write the JSON")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    results = {"quick": quick, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
               "machine": platform.machine(), "cpus": psutil.cpu_count()}
    logger.info("(b) masking step")
    results["masking"] = bench_masking(5_000, rows=640, repeats=3 if quick else 10, ref_repeats=1 if quick else 3)
    logger.info("(a)+(c) end to end")
    results["end_to_end"] = bench_end_to_end(5_000, vocab_size=args.e2e_vocab, queries=32 if quick else 96,
                                             batch_sizes=[1, 8, 32], repeats=1 if quick else 3)
    logger.info("(d) scale")
    sizes = [10**4, 10**5] if quick else [10**4, 10**5, 10**6]
    results["scale"] = [bench_scale(n, rows=640, repeats=3 if quick else 10) for n in sizes]
    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s", out)
    return results


if __name__ == "__main__":
    main()
