"""The `genrec` command line.

    genrec pipeline CONFIG [--run-dir DIR] [--stages data,embed,quantize] [--force] [--set section.key=value ...]
    genrec stage NAME CONFIG [--run-dir DIR] [--force] [--set section.key=value ...]

    genrec mine --run_dir DIR ...  (genrec.interests.mine: deep interests of every item)
    genrec evaluate ...          (genrec.evaluate: constrained beam search over a split)
    genrec baseline NAME ...     (genrec.baselines: popularity, cooc, knn, sasrec, sasrec-faerec)
    genrec report --run-dir DIR [DIR ...] [--split S] [--paired]  (genrec.report: metrics tables, paired differences)
    genrec serve CHECKPOINT ...  (genrec.serving: the HTTP API)
    genrec recommend ...         (genrec.client: one-off queries to a server or a checkpoint)

Sub-commands that own a module take their arguments from that module's `main(argv)`, so
`genrec evaluate --help` shows the module's own options.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _run_dir(args) -> Path:
    return Path(args.run_dir) if args.run_dir else Path("runs") / Path(args.config).stem


def cmd_pipeline(args) -> None:
    from genrec.pipeline import load_pipeline_config, parse_stage_list, run_pipeline

    stages = None if args.stages is None else parse_stage_list(args.stages)  # --stages "" is an error, not "all"
    cfg = load_pipeline_config(args.config, args.set)
    run_pipeline(cfg, _run_dir(args), stages, force=args.force)


def cmd_stage(args) -> None:
    from genrec.pipeline import load_pipeline_config, run_stage

    run_stage(load_pipeline_config(args.config, args.set), _run_dir(args), args.name, force=args.force)


# sub-command -> "module:function" taking the remaining argv
DELEGATED = {
    "mine": ("genrec.interests.mine:main", "mine each item's deep interests with LLMs or the offline extractor"),
    "evaluate": ("genrec.evaluate:main", "evaluate a checkpoint with trie-constrained beam search"),
    "baseline": ("genrec.baselines:main", "run a baseline (popularity, cooc, knn, sasrec, sasrec-faerec) in the same "
                 "harness"),
    "report": ("genrec.report:main", "print one table of every metrics.json in a run directory"),
    "serve": ("genrec.serving.server:main", "serve a checkpoint over HTTP: constrained-decoding recommendations"),
    "recommend": ("genrec.client:main", "one-off recommendations from a server or a checkpoint"),
}


def _delegate(ref: str):
    def run(args) -> None:
        module, name = ref.split(":")
        import importlib

        getattr(importlib.import_module(module), name)(args.rest)

    return run


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genrec", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pipeline", help="run the pipeline stages of a config, skipping finished ones")
    p.add_argument("config", help="pipeline YAML, e.g. configs/pipeline/demo.yaml")
    p.add_argument("--run-dir", help="run directory (default: runs/<config name>)")
    p.add_argument("--stages", help="comma-separated stages to run (default: the config's `stages`)")
    p.add_argument("--force", action="store_true", help="re-run the stages even when up to date")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (YAML), e.g. --set sft.overrides.seed=7 --set evaluate.beam=50")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("stage", help="run one stage of a pipeline config")
    p.add_argument("name", help="stage name, e.g. embed")
    p.add_argument("config")
    p.add_argument("--run-dir")
    p.add_argument("--force", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    p.set_defaults(func=cmd_stage)

    for name, (ref, help_text) in DELEGATED.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_delegate(ref))
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = bool(argv) and argv[0] in ("-v", "--verbose")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    rest = argv[1:] if verbose else argv
    if rest and rest[0] in DELEGATED:
        # argparse.REMAINDER does not capture leading options, so delegated commands get their argv verbatim
        func, args = _delegate(DELEGATED[rest[0]][0]), argparse.Namespace(rest=rest[1:])
    else:
        args = make_parser().parse_args(argv)
        func = args.func
    try:
        func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        logging.getLogger("genrec").error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    main()
