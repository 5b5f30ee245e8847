"""`genrec report --write`: report.md with the tables, GRPO's paired difference to its SFT model, and the plots."""

import json

from genrec.artifacts import Run
from genrec.evaluation import write_results
from genrec.io import write_json
from genrec.report import main

ROWS = [{"user_id": f"u{n}", "history": ["a"], "target": t} for n, t in enumerate("abcabc")]


def test_write_report_tables_paired_difference_and_plots(tmp_path):
    run = Run(tmp_path)
    ranked_grpo = [["a", "b"], ["b", "a"], ["c", "a"], ["a", "c"], ["b", "c"], ["c", "b"]]  # 6 hits at rank 0
    ranked_sft = [["b", "a"], ["a", "b"], ["a", "c"], ["a", "c"], ["c", "b"], ["c", "b"]]  # 3 hits at rank 0
    write_results(run.eval_dir("test"), ROWS, ranked_grpo, method="genrec", split="test", seconds=1)
    write_results(run.eval_dir("test-sft"), ROWS, ranked_sft, method="genrec-sft", split="test", seconds=1)
    write_results(run.baseline_dir("popularity", "test"), ROWS, [["a", "b"]] * 6, method="popularity",
                  split="test", seconds=0)
    write_json(run.path("sids.json"), {"a": [0, 1], "b": [1, 1], "c": [1, 0]})
    write_json(run.path("sid_report.json"), {"items": 3, "unique_sids": 3, "collisions_before_resolution": 0,
                                            "levels": [{"codebook_size": 2, "codes_used": 2, "perplexity": 1.9}] * 2})
    ckpt = run.checkpoint("grpo")
    ckpt.mkdir(parents=True)
    write_json(ckpt / "trainer_log.json", [{"step": 1, "loss": 0.5, "reward": 0.1},
                                           {"step": 2, "eval_HR@10": 0.3, "eval_NDCG@10": 0.2}])
    main(["--run-dir", str(tmp_path), "--split", "test", "--write"])
    report = run.path("report.md").read_text()
    assert "| genrec-sft | test | 6 |" in report and "| popularity | test | 6 |" in report
    # both models hit every target within 5; GRPO's first, the SFT model's at rank 1 in four rows:
    # ΔHR@5 = 0 and ΔNDCG@5 = 4/6 * (1 - 1/log2(3)) = 0.2460
    paired = [line for line in report.splitlines() if line.startswith("| ") and "/test-sft" in line][0]
    cells = paired.split(" | ")
    assert cells[4].startswith("+0.0000") and cells[5].startswith("+0.2460")
    for name in ("metrics_test", "training", "sid_codes"):
        png = run.path("plots/{name}.png", name=name)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plots/{name}.png" in report
    json.loads(run.path("sid_report.json").read_text())  # untouched
