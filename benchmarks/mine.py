"""Benchmark the mine stage's LLM client: items/s against a fake OpenAI-compatible server with a fixed latency.

The fake server (tests/fake_openai.py, a threading HTTP server on loopback, in its own process so that its threads
do not compete with the client for the GIL) answers every request after `--latency` seconds (default 1 s, about
what a loaded vLLM server takes for a short chain-of-thought answer). For
each concurrency level the whole stage runs (`run_mine` on a fresh run directory of synthetic items: prompts, HTTP,
JSON repair and validation, one SQLite commit per answer, interests.jsonl), and the table shows items/s next to the
ceiling the server allows (concurrency / latency per request): the client is bounded by the server, not by itself.
Mode ``interests`` asks one prompt per item (the default); ``archetype`` adds the archetype prompt (two per item).

Run (about 30 s with the defaults):

    .venv/bin/python benchmarks/mine.py [--latency 1.0] [--levels 1,8,32,128] [--items N] [--modes interests,archetype]
                                        [--out benchmarks/results/mine.json]

It prints a table and writes the figures as JSON. Items per level default to 4 x concurrency, within [8, 256].
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from genrec.interests.mine import MineConfig, run_mine

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("benchmarks.mine")

WORDS = ("nitrile gloves lab safety glasses woodworking deck screws stainless epoxy syringe brass fitting hex "
         "nipple push button switch extruder nozzle printer filament caliper measuring beaker microscope").split()


def synthetic_items(n: int) -> list[dict]:
    return [{"item_id": str(i), "title": f"{WORDS[i % len(WORDS)].title()} {WORDS[(i * 7) % len(WORDS)]} SKU-{i}",
             "description": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(40)), "brand": "Acme",
             "categories": "Industrial"} for i in range(n)]


@contextlib.contextmanager
def fake_server(latency: float) -> Iterator[str]:
    """tests/fake_openai.py in a child process; yields its base URL and stops it on exit."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--latency", str(latency)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.stdin.close()  # the server exits when its stdin closes
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def server_stats(url: str, reset: bool = False) -> dict:
    return httpx.get(url.removesuffix("/v1") + "/stats" + ("?reset=1" if reset else "")).json()


def bench_level(url: str, latency: float, concurrency: int, n_items: int, archetype: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        (run_dir / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in synthetic_items(n_items)))
        backend = {"type": "openai", "model": "fake", "base_url": url, "concurrency": concurrency,
                   "timeout": 30.0, "max_attempts": 2, "backoff_base": 0.1}
        server_stats(url, reset=True)
        start = time.perf_counter()
        summary = run_mine(run_dir, MineConfig(backends=[backend], archetype=archetype))
        seconds = time.perf_counter() - start
    requests = n_items * (2 if archetype else 1)
    ceiling = concurrency / latency / (2 if archetype else 1)
    return {"concurrency": concurrency, "items": n_items, "requests": requests, "seconds": round(seconds, 2),
            "items_per_s": round(n_items / seconds, 2), "ceiling_items_per_s": round(ceiling, 2),
            "efficiency": round(n_items / seconds / ceiling, 3), "max_in_flight": server_stats(url)["max_in_flight"],
            "failed": summary["failed"]}


def print_table(results: dict) -> None:
    print(f"\nmine: fake OpenAI server, {results['latency_s']} s per request, {platform.node() or 'this machine'}")
    print(f"{'mode':<10} {'concurrency':>11} {'items':>6} {'seconds':>8} {'items/s':>8} {'ceiling':>8} "
          f"{'efficiency':>10} {'in flight':>9}")
    for mode, rows in results["modes"].items():
        for r in rows:
            print(f"{mode:<10} {r['concurrency']:>11} {r['items']:>6} {r['seconds']:>8.2f} {r['items_per_s']:>8.2f} "
                  f"{r['ceiling_items_per_s']:>8.2f} {r['efficiency']:>10.0%} {r['max_in_flight']:>9}")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=1.0, help="seconds the fake server takes per request")
    parser.add_argument("--levels", default="1,8,32,128", help="comma-separated concurrency levels")
    parser.add_argument("--items", type=int, default=None, help="items per level (default 4 x concurrency, 8-256)")
    parser.add_argument("--modes", default="interests,archetype", help="interests and/or archetype (two prompts)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/mine.json"), help="where to write the JSON")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    levels = [int(x) for x in args.levels.split(",")]
    results = {"latency_s": args.latency, "python": platform.python_version(), "cpus": os.cpu_count(), "modes": {}}
    modes = args.modes.split(",")
    if set(modes) - {"interests", "archetype"}:
        raise SystemExit(f"--modes={args.modes}: use interests and/or archetype")
    with fake_server(args.latency) as url:
        for mode in modes:
            results["modes"][mode] = [bench_level(url, args.latency, c, args.items or min(256, max(8, 4 * c)),
                                                  archetype=mode == "archetype") for c in levels]
    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
