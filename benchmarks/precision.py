"""Benchmark: one SFT step of the industrial-cpu model in float32 and in bf16 autocast, side by side, on this machine.

Builds the offline default recommender LM exactly as configs/sft/industrial-cpu.yaml does (4-layer 384-wide Qwen3
with MiniLM's tokenizer and word embeddings, 3 x 256 SID tokens, LM head at label positions with the SID softmax),
then times full training steps (forward, backward, AdamW) on a batch of 64 random SFT-shaped examples in both
precisions, interleaved so machine load hits both alike, and reports the median step time, the ratio, and the
precision `auto` picks here (genrec.precision). The CPU's capability and bf16 flags are printed with the figures:
on AVX2-only CPUs bf16 is emulated and 10-26x slower; with AVX512-BF16 or AMX it is faster than float32.

Run (about 1 minute on 2 CPU cores):

    .venv/bin/python benchmarks/precision.py [--steps 5] [--batch 64] [--length 48] [--threads 2]
                                             [--out benchmarks/results/precision.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_model():
    from genrec.head import add_sid_head
    from genrec.modeling import ModelConfig, add_sid_tokens, build_default_model
    from genrec.sid import sid_token, sid_vocab

    model, tok = build_default_model(ModelConfig())
    add_sid_tokens(model, tok, [sid_token(level, c) for level in range(3) for c in range(256)])
    add_sid_head(model, list(sid_vocab(tok).values()))
    return model, tok


def batch(tok, size: int, length: int, generator: torch.Generator) -> dict:
    """SFT-shaped examples: a text/SID prompt, then 3 SID tokens and EOS as labels (as the seq_sid task)."""
    from genrec.sid import sid_vocab

    sid_ids = torch.tensor(sorted(sid_vocab(tok).values()))
    ids = torch.randint(1000, 20000, (size, length), generator=generator)
    ids[:, -4:-1] = sid_ids[torch.randint(len(sid_ids), (size, 3), generator=generator)]
    ids[:, -1] = tok.eos_token_id
    labels = torch.full_like(ids, -100)
    labels[:, -4:] = ids[:, -4:]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def step_seconds(model, optimizer, inputs: dict, bf16: bool) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(**inputs, sid_head=True).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per precision (after one warm-up each)")
    parser.add_argument("--batch", type=int, default=64, help="examples per step (industrial-cpu: 64)")
    parser.add_argument("--length", type=int, default=48, help="tokens per example")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default="benchmarks/results/precision.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from genrec.precision import cpu_bf16_flags, describe_device, resolve_bf16

    torch.manual_seed(0)
    model, tok = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = batch(tok, args.batch, args.length, torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {"float32": [], "bf16": []}
    for bf16 in (False, True):  # warm-up
        step_seconds(model, optimizer, inputs, bf16)
    for _ in range(args.steps):
        for name, bf16 in (("float32", False), ("bf16", True)):  # interleaved: load hits both alike
            times[name].append(step_seconds(model, optimizer, inputs, bf16))
    fp32, bf16 = statistics.median(times["float32"]), statistics.median(times["bf16"])
    result = {
        "machine": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_flags": cpu_bf16_flags(),
        "device": describe_device("cpu"),
        "threads": torch.get_num_threads(),
        "batch": args.batch, "length": args.length, "steps": args.steps,
        "float32_s_per_step": round(fp32, 4), "bf16_s_per_step": round(bf16, 4),
        "bf16_over_float32": round(bf16 / fp32, 3),
        "auto_choice": "bf16" if resolve_bf16(None, "cpu", "this benchmark") else "float32",
        "all_times": {k: [round(t, 4) for t in v] for k, v in times.items()},
    }
    print(f"device: {result['device']}, {result['threads']} threads")
    print(f"| precision | s / SFT step (batch {args.batch} x {args.length} tokens) |")
    print("|---|---:|")
    print(f"| float32 | {fp32:.3f} |\n| bf16 autocast | {bf16:.3f} ({bf16 / fp32:.2f}x float32) |")
    print(f"auto picks: {result['auto_choice']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
