"""The GPU check: a Qwen2.5-0.5B-shaped recommender through SFT, GRPO and constrained decoding on one GPU, timed.

For sessions lent a GPU machine (no model hub there either, 15 minutes of device time in all): builds a model of
Qwen2.5-0.5B's shape from its config (random weights, a small offline tokenizer, the vocabulary padded to Qwen's
151,936 rows), a synthetic run directory (items, splits, unique 3 x 256-code SIDs, token semantics), then

1. SFT: ``accelerate launch training/sft.py --config configs/sft/qwen2.5-0.5b.yaml`` for a few steps (bf16 auto);
2. GRPO: ``accelerate launch training/grpo.py --config configs/grpo/qwen2.5-0.5b.yaml`` for a few steps from it;
3. decoding: genrec's trie beam search against transformers' generate + a prefix-dict constraint (the MiniOneRec
   approach) on the SFT model, one batch, ms per query and whether the top-10 lists agree;

and writes everything it ran, how long each part took and what failed to ``<out>/gpu_check.json``. Run it through
``bash benchmarks/gpu_check.sh`` (which installs the carried wheels first); ``--dry-run`` does the same with a tiny
model on the CPU in about a minute, so the tests keep it from rotting.

    python benchmarks/gpu_check.py [--dry-run] [--out benchmarks/results/gpu_check]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QWEN05 = dict(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
              num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True)
TINY = dict(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)


def build_model(path: Path, shape: dict) -> dict:
    """A Qwen2 model of `shape` with random weights and a word-level tokenizer, saved to `path`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    words = ["[UNK]", "[PAD]", "[EOS]", *"User history: Next item: Item Title SID Description , . ;".split()]
    words += [f"w{i}" for i in range(200)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**shape, eos_token_id=2, pad_token_id=1))
    model.to(torch.bfloat16 if torch.cuda.is_available() else torch.float32).save_pretrained(path)
    tok.save_pretrained(path)
    return {"parameters": sum(p.numel() for p in model.parameters()), "shape": shape}


def build_run(run: Path, n_items: int, n_users: int, codebook: int) -> dict:
    """A synthetic run directory: items, train/valid/test rows, unique SIDs and token semantics."""
    from genrec.artifacts import ITEMS, SID_REPORT, SIDS, SPLIT, TOKEN_SEMANTICS
    from genrec.io import write_json, write_jsonl

    rng = random.Random(0)
    items = [{"item_id": str(i), "title": f"Item w{i % 200} w{(i * 7) % 200}"} for i in range(n_items)]
    codes = rng.sample(range(codebook ** 3), n_items)
    sids = {str(i): [c // codebook ** 2, (c // codebook) % codebook, c % codebook] for i, c in enumerate(codes)}
    rows = []
    for u in range(n_users):
        seq = [str(rng.randrange(n_items)) for _ in range(8)]
        rows += [{"user_id": f"u{u}", "history": seq[max(0, j - 10):j], "target": seq[j]} for j in range(1, 8)]
    cut = [int(len(rows) * 0.8), int(len(rows) * 0.9)]
    write_jsonl(run / ITEMS, items)
    for name, part in zip(("train", "valid", "test"), (rows[:cut[0]], rows[cut[0]:cut[1]], rows[cut[1]:])):
        write_jsonl(run / SPLIT.format(split=name), part)
    write_json(run / SIDS, sids)
    write_json(run / SID_REPORT, {"levels": [{"codebook_size": codebook}] * 3})
    semantics = {f"<{letter}_{c}>": {"level": lv, "code": c, "items": [], "keywords": ["item"],
                                     "description": f"items of code {c}"}
                 for lv, letter in enumerate("abc") for c in range(codebook)}
    write_json(run / TOKEN_SEMANTICS, semantics)
    return {"items": n_items, "train_rows": cut[0]}


def launch(script: str, args: list[str], dry_run: bool, log: Path) -> dict:
    """`accelerate launch` a training script; its wall time and exit code (the log goes to `log`)."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    config = "configs/accelerate/single_gpu.yaml" if not dry_run else None
    cmd = [*launcher, *(["--config_file", config] if config else ["--num_processes", "1", "--cpu"]), script, *args]
    start = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=900,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"})
    return {"command": " ".join(cmd[2:]), "seconds": round(time.time() - start, 1), "returncode": proc.returncode,
            "log_tail": log.read_text()[-1500:] if proc.returncode else ""}


def _decoding_benchmark():
    """benchmarks/decoding.py as a module: its reference (a prefix dict behind PrefixConstrainedLogitsProcessor)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("genrec_decoding_benchmark", ROOT / "benchmarks" / "decoding.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decode_bench(checkpoint: Path, run: Path, batch: int, beam: int) -> dict:
    """genrec's trie beam search vs generate + a prefix-dict constraint on one batch of valid prompts."""
    import numpy as np
    import torch
    from transformers import PrefixConstrainedLogitsProcessor

    from genrec.artifacts import Run
    from genrec.decoding.beam import DecodeConfig
    from genrec.recommender import load_recommender
    from genrec.sid import sid_tokens

    bench = _decoding_benchmark()
    rec = load_recommender(checkpoint)
    prompts = [rec.prompt(r["history"]) for r in Run(run).split("valid")[:batch]]
    rows = np.array([rec.tokenizer.convert_tokens_to_ids(sid_tokens(c)) for c in rec.sids.values()])
    table = bench.prefix_dict(rec.trie, rows)
    decode = DecodeConfig(beam=beam, batch_size=batch, softmax="full")

    def timed(**kwargs):
        rec.rank_prompts(prompts, decode, k=10, **kwargs)  # warm-up (kernels, caches)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = rec.rank_prompts(prompts, decode, k=10, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out, (time.perf_counter() - start) * 1e3 / len(prompts)

    ours, ours_ms = timed()
    reference = lambda: PrefixConstrainedLogitsProcessor(bench.DictPrefixFn(table, rec.trie.eos_token_id), beam)  # noqa: E731
    theirs, theirs_ms = timed(engine="generate", processor_factory=reference)
    same = sum(a.items == b.items for a, b in zip(ours, theirs, strict=True))
    return {"batch": len(prompts), "beam": beam, "genrec_ms_per_query": round(ours_ms, 2),
            "reference_ms_per_query": round(theirs_ms, 2), "speedup": round(theirs_ms / max(ours_ms, 1e-9), 2),
            "top10_identical_rows": same, "invalid": sum(r.invalid for r in ours)}


def environment() -> dict:
    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info.update(device=torch.cuda.get_device_name(0), bf16=torch.cuda.is_bf16_supported())
    for name in ("trl", "vector_quantize_pytorch", "vllm", "peft", "datasets"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001 - report what is missing, keep checking the rest
            info[name] = f"missing ({type(e).__name__})"
    return info


def step(report: dict, name: str, fn) -> None:
    """Run one part of the check; record its result, time and any error without stopping the others."""
    start = time.time()
    try:
        report[name] = {"ok": True, **(fn() or {})}
    except Exception as e:  # noqa: BLE001 - a failed part is a finding, not the end of the check
        report[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]}
    report[name]["wall_seconds"] = round(time.time() - start, 1)
    print(f"{name}: {'ok' if report[name]['ok'] else 'FAILED'} ({report[name]['wall_seconds']} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU (what the tests run)")
    parser.add_argument("--out", default="benchmarks/results/gpu_check")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shape, steps = (TINY, 3) if args.dry_run else (QWEN05, 20)
    report: dict = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    step(report, "environment", environment)
    step(report, "model", lambda: build_model(work / "base", shape))
    step(report, "run", lambda: build_run(work / "run", 400 if args.dry_run else 3000, 60 if args.dry_run else 800,
                                          8 if args.dry_run else 256))
    device = ["--use_cpu", "true", "--bf16", "false"] if args.dry_run else []
    sft = ["--config", "configs/sft/qwen2.5-0.5b.yaml", "--run_dir", str(work / "run"), "--model_name_or_path",
           str(work / "base"), "--sid_init", "mean", "--torch_dtype", "float32", "--max_steps", str(steps),
           "--eval_steps", str(steps), "--save_steps", str(steps), "--eval_rows", "32", "--logging_steps", "1",
           "--task_mix", '{"seq_sid": 1, "title2sid": 1}', "--report_to", "none", *device]
    step(report, "sft", lambda: launch("training/sft.py", sft, args.dry_run, out / "sft.log"))
    grpo = ["--config", "configs/grpo/qwen2.5-0.5b.yaml", "--run_dir", str(work / "run"), "--max_steps",
            str(max(2, steps // 4)), "--eval_steps", "2", "--save_steps", "2", "--eval_rows", "32", "--logging_steps",
            "1", "--per_device_train_batch_size", "32", "--report_to", "none", *device]
    step(report, "grpo", lambda: launch("training/grpo.py", grpo, args.dry_run, out / "grpo.log"))
    step(report, "decoding", lambda: decode_bench(work / "run" / "checkpoints" / "sft", work / "run",
                                                  8 if args.dry_run else 32, 20))
    report["all_ok"] = all(v.get("ok", True) for v in report.values() if isinstance(v, dict))
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "environment"}, indent=1)[:3000])


if __name__ == "__main__":
    main()
