"""The `mine` stage (MLIM): items.jsonl -> interests.jsonl, the deep interests (and archetype) of every item.

    genrec mine --run_dir RUN [--config mine.yaml] [--backends "[{type: openai, model: Qwen/Qwen3-8B}]"] [...]

Each backend of `MineConfig.backends` (any number: OpenAI-compatible endpoints, local transformers models, the
offline `keyphrase` extractor; the default is the extractor alone) answers every item; LLM backends also answer
the archetype prompt when `archetype` is on. Answers persist as they arrive in ``interests.store.sqlite`` (see
genrec.interests.store), so a killed run resumes without asking again for finished items, and a changed prompt or
item is asked again. When every backend has answered, the interests of several backends are merged
(genrec.interests.merge) and interests.jsonl is written atomically.

Failures: an item that still has no valid answer after the client's retries is recorded in the store with its
reason. The stage then logs how many items failed and which (first few) and raises RuntimeError *without* writing
interests.jsonl; re-running asks just those items again. With ``allow_partial: true`` it writes interests.jsonl
anyway: items keep what the other backends said, and ``missing`` lists the backends that gave nothing.

Example:
    >>> run_mine(Path("runs/demo"), MineConfig())  # doctest: +SKIP
    {'items': 960, 'covered': 960, 'interests_per_item': 5.0, 'failed': 0, ...}
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genrec.artifacts import INTERESTS, INTERESTS_STORE, RLDI_REPORT, Run
from genrec.interests.llm import Completion, Failure
from genrec.interests.merge import merge_catalog, single_source
from genrec.interests.miners import build_miner, load_prompt, parse_backends
from genrec.interests.store import InterestStore
from genrec.io import write_jsonl

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "Title: {title}. Brand: {brand}. Categories: {categories}. Description: {description}"


@dataclass
class MineConfig:
    backends: list[dict] = field(
        default_factory=lambda: [{"type": "keyphrase"}],
        metadata={"help": "Interest sources, each a mapping with a `type` and that type's options: "
                  "{type: openai, model, base_url, api_key_env, concurrency, timeout, max_attempts, backoff_base, "
                  "backoff_max, temperature, max_tokens, extra_body}, {type: transformers, model_path, batch_size, "
                  "max_new_tokens, device, dtype} or {type: keyphrase, template, max_chars, max_words, "
                  "max_candidates, title_weight, skip_brand, min_df, diversity}; any entry may set `name` (the label "
                  "its answers carry as their model). Defaults: genrec.interests.llm and genrec.interests.keyphrase."},
    )
    archetype: bool = field(
        default=True, metadata={"help": "LLM backends also describe each item's ideal audience (GenAIR archetype; "
                                        "one more request per item). The keyphrase extractor has none."}
    )
    max_interests: int = field(default=5, metadata={"help": "Most interests kept per item from each backend."})
    merge_threshold: float = field(
        default=0.8,
        metadata={"help": "Interests of different backends whose text embeddings have cosine similarity >= this "
                  "are one interest (provenance kept). Used only when several backends answer."},
    )
    template: str = field(
        default=DEFAULT_TEMPLATE,
        metadata={"help": "Python format string over item fields: the item text put into LLM prompts."},
    )
    max_chars: int = field(default=1500, metadata={"help": "LLM prompts: item text is cut to this many characters."})
    interests_prompt: str | None = field(
        default=None,
        metadata={"help": "Interests prompt template ({item}, {max_interests}); null = "
                  "genrec/prompts/mine_interests.txt."},
    )
    archetype_prompt: str | None = field(
        default=None,
        metadata={"help": "Archetype prompt template ({item}); null = genrec/prompts/mine_archetype.txt."},
    )
    allow_partial: bool = field(
        default=False,
        metadata={"help": "Write interests.jsonl even when some items have no answer from some backend (they are "
                  "listed in the record's `missing`); otherwise the stage fails after storing what it has."},
    )
    encoder: str = field(
        default="minilm",
        metadata={"help": "Sentence encoder of the keyphrase extractor and of merging ('minilm' = bundled "
                  "all-MiniLM-L6-v2, or a local sentence-transformers model)."},
    )
    encoder_max_length: int = field(
        default=32,
        metadata={"help": "Tokens the encoder reads per text: a keyphrase item is embedded from its title and the "
                  "start of its description (longer costs time: the encoder dominates the extractor's run time)."},
    )
    max_items: int | None = field(default=None, metadata={"help": "Mine only the first N items (smoke runs)."})

    def __post_init__(self):
        parse_backends(self.backends)
        if self.max_interests < 1 or self.max_chars < 1 or self.encoder_max_length < 8:
            raise ValueError("mine.max_interests and mine.max_chars must be >= 1, mine.encoder_max_length >= 8")
        if not 0 < self.merge_threshold <= 1:
            raise ValueError(f"mine.merge_threshold={self.merge_threshold}: use a cosine similarity in (0, 1], "
                             "e.g. 0.8 (higher merges only near-identical phrases)")
        if "{" not in self.template:
            raise ValueError("mine.template must use item fields, e.g. 'Title: {title}. Description: {description}'")
        if self.max_items is not None and self.max_items < 1:
            raise ValueError(f"mine.max_items={self.max_items}: use a positive number or null (all items)")
        try:
            self.prompts()
        except ValueError as e:
            raise ValueError(f"mine: {e}") from None

    def prompts(self) -> dict[str, str]:
        """The prompt templates by task, read and checked."""
        return {"interests": load_prompt(self.interests_prompt, "interests"),
                "archetype": load_prompt(self.archetype_prompt, "archetype")}


class LazyEncoder:
    """The sentence encoder, loaded on first use (a run whose answers are all stored never loads it)."""

    def __init__(self, model: str, max_length: int):
        self.model, self.max_length = model, max_length

    @property
    def id(self) -> list:
        return [self.model, self.max_length]

    def __call__(self, texts: list[str]):
        from genrec.encoders import EmbedConfig, load_encoder

        encoder = load_encoder(EmbedConfig(model=self.model, max_length=self.max_length, batch_size=256))
        return encoder.encode(texts, show_progress=len(texts) > 2000)


def run_mine(run_dir: Path, cfg: MineConfig, *, transport=None) -> dict:
    """The `mine` stage: <run_dir>/items.jsonl -> <run_dir>/interests.jsonl; returns a summary (also logged).

    `transport` is an optional httpx transport for the openai backends (tests).
    """
    start = time.perf_counter()
    run = Run(run_dir)
    items = run.items()[: cfg.max_items]
    specs = parse_backends(cfg.backends)
    encode = LazyEncoder(cfg.encoder, cfg.encoder_max_length)
    prompts = cfg.prompts()
    miners = [build_miner(spec, prompts=prompts, template=cfg.template, max_chars=cfg.max_chars,
                          max_interests=cfg.max_interests, encode=encode, encoder_id=encode.id, transport=transport)
              for spec in specs]
    jobs = [(m, task) for m in miners for task in m.tasks if task == "interests" or cfg.archetype]
    with InterestStore(run.path(INTERESTS_STORE)) as store:
        hashes = {(m.name, task): m.prompt_hashes(items, task) for m, task in jobs}
        for miner, task in jobs:
            _mine_task(store, miner, items, task, hashes[miner.name, task])
        missing = {job: store.missing(job[0], job[1], hashes[job]) for job in hashes}
        if any(missing.values()):
            _report_failures(store, missing, len(items), cfg.allow_partial, run.path(INTERESTS_STORE))
        records = _assemble(items, store, [m.name for m in miners], hashes, missing, cfg, encode)
        tokens = store.tokens()
    write_jsonl(run.path(INTERESTS), records)
    # fresh interests carry no RLDI labels: the label stage's report would vouch for labels that are gone
    run.path(RLDI_REPORT).unlink(missing_ok=True)
    covered = sum(1 for r in records if r["interests"])
    summary = {"items": len(records), "covered": covered,
               "interests_per_item": round(sum(len(r["interests"]) for r in records) / max(len(records), 1), 2),
               "archetypes": sum(1 for r in records if r["archetype"]),
               "failed": len({iid for ids in missing.values() for iid in ids}), **tokens,
               "seconds": round(time.perf_counter() - start, 2)}
    logger.info("mine: %s -> %s", summary, run.path(INTERESTS))
    return summary


def _mine_task(store: InterestStore, miner, items: list[dict], task: str, hashes: dict[str, str]) -> None:
    todo = store.missing(miner.name, task, hashes)
    logger.info("mine %s [%s]: %d items, %d stored, %d to ask", task, miner.name, len(items),
                len(items) - len(todo), len(todo))
    if not todo:
        return

    def on_result(iid: str, result: Completion | Failure) -> None:  # persist at once: a kill loses nothing
        if isinstance(result, Failure):
            store.fail(iid, miner.name, task, hashes[iid], result.reason, answer=result.text, attempts=result.attempts)
        else:
            store.put(iid, miner.name, task, hashes[iid], result.value, answer=result.text or None,
                      prompt_tokens=result.usage.prompt_tokens, completion_tokens=result.usage.completion_tokens,
                      attempts=result.attempts)

    miner.mine(items, set(todo), task, on_result)


def _report_failures(store: InterestStore, missing: dict[tuple[str, str], list[str]], n_items: int,
                     allow_partial: bool, store_path: Path) -> None:
    reasons = store.failures()
    lines = []
    for (source, task), ids in missing.items():
        if ids:
            first = reasons.get((ids[0], source, task), {}).get("reason", "no answer yet (interrupted run?)")
            lines.append(f"{source} ({task}): {len(ids)} of {n_items} items have no valid answer, e.g. item "
                         f"{ids[0]!r}: {first}; first ids: {ids[:10]}")
    for line in lines:
        logger.error("mine: %s", line)
    if not allow_partial:
        raise RuntimeError(f"mine: some items have no valid answer after all retries ({'; '.join(lines)}). Every "
                           f"finished answer is kept in {store_path}; re-run the stage to ask just the failed items "
                           "again, or set mine.allow_partial: true to write interests.jsonl without them")
    logger.warning("mine: allow_partial is on; interests.jsonl lists the missing backends per item")


def _assemble(items: list[dict], store: InterestStore, names: list[str], hashes: dict, missing: dict,
              cfg: MineConfig, encode) -> list[dict]:
    """interests.jsonl records from the store: per item, the mentions of every backend merged, and an archetype."""
    mentions: dict[str, list[dict]] = {it["item_id"]: [] for it in items}
    archetypes: dict[str, tuple[str, str]] = {}
    for name in names:
        if (name, "interests") in hashes:
            ph = hashes[name, "interests"]
            for iid, value in store.results(name, "interests", ph).items():
                mentions[iid] += [{**m, "model": name, "prompt_hash": ph[iid]} for m in value]
        if (name, "archetype") in hashes:
            for iid, text in store.results(name, "archetype", hashes[name, "archetype"]).items():
                archetypes.setdefault(iid, (text, name))  # the first backend in config order wins
    sources = sum(1 for name in names if (name, "interests") in hashes)
    if sources > 1:
        merged = merge_catalog(mentions, encode, cfg.merge_threshold)
    else:
        merged = {iid: single_source(m) for iid, m in mentions.items()}
    gaps: dict[str, list[str]] = {}
    for (source, task), ids in missing.items():
        for iid in ids:
            gaps.setdefault(iid, []).append(f"{source}:{task}")
    records = []
    for it in items:
        iid = it["item_id"]
        text, model = archetypes.get(iid, (None, None))
        rec: dict[str, Any] = {"item_id": iid, "interests": merged[iid], "archetype": text, "archetype_model": model}
        if iid in gaps:
            rec["missing"] = gaps[iid]
        records.append(rec)
    return records


# ----------------------------------------------------------------------------- command line


def make_parser() -> argparse.ArgumentParser:
    """`genrec mine` options: --run_dir, --config (a YAML of MineConfig fields or a pipeline YAML with a `mine:`
    section), and one flag per MineConfig field, which overrides the config file (values are YAML, except text
    fields, taken verbatim)."""
    parser = argparse.ArgumentParser(prog="genrec mine", description=__doc__.split("\n")[0])
    parser.add_argument("--run_dir", "--run-dir", required=True, help="run directory holding items.jsonl")
    parser.add_argument("--config", help="YAML: MineConfig fields, or a pipeline config (its `mine:` section)")
    for f in dataclasses.fields(MineConfig):
        parser.add_argument(f"--{f.name}", metavar="TEXT" if _is_text(f) else "YAML", help=f.metadata.get("help"))
    return parser


def _is_text(f: dataclasses.Field) -> bool:
    """Text options are taken verbatim: a template like "{title}" is no YAML mapping. (The type hint is resolved
    here: HfArgumentParser replaces a field's string annotation with the type object in place.)"""
    return typing.get_type_hints(MineConfig)[f.name] in (str, str | None)


def main(argv: list[str] | None = None) -> dict:
    """`genrec mine`: run the stage on one run directory; returns the summary."""
    from genrec.config import from_dict
    from genrec.io import load_yaml, read_yaml_mapping

    args = make_parser().parse_args(argv)
    values: dict = {}
    if args.config:
        values = read_yaml_mapping(args.config, "mine config")
        if "mine" in values or "data" in values:  # a pipeline config: its mine section
            values = dict(values.get("mine") or {})
    for f in dataclasses.fields(MineConfig):
        raw = getattr(args, f.name)
        if raw is not None and _is_text(f):
            values[f.name] = None if raw == "null" and "None" in str(f.type) else raw
        elif raw is not None:
            values[f.name] = load_yaml(raw)
    return run_mine(Path(args.run_dir), from_dict(MineConfig, values, "genrec mine"))


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        main()
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        logging.getLogger("genrec").error("%s", e)
        sys.exit(2)
