"""The stage pipeline: `genrec pipeline CONFIG [--run-dir DIR] [--stages a,b,c]`.

A pipeline config is one YAML with a section per stage (``data:``, ``embed:``, ``quantize:``, ...); each section
fills that stage's config dataclass, so only values that differ from the defaults need to be written. Every stage
reads the previous stages' files from the run directory and writes its own. After a stage finishes, its
fingerprint (hash of its own config and of the fingerprints of the stages it depends on) is stored under
``<run_dir>/.genrec/``; a stage whose outputs exist with the same fingerprint is skipped, so a killed pipeline
resumes where it stopped, and changing a stage's config re-runs it and everything downstream.

Example:
    >>> cfg = load_pipeline_config("configs/pipeline/demo.yaml")  # doctest: +SKIP
    >>> run_pipeline(cfg, Path("runs/demo"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genrec.io import read_json, read_yaml_mapping, write_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    config: Any  # "module:Class" of the stage's config dataclass (or the class itself)
    run: Any  # "module:function" called as run(run_dir, cfg) (or the function itself)
    outputs: tuple[str, ...]
    after: tuple[str, ...] = ()


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("data", "genrec.data:DataConfig", "genrec.pipeline:run_data",
              ("items.jsonl", "splits/train.jsonl", "splits/valid.jsonl", "splits/test.jsonl")),
        Stage("embed", "genrec.encoders:EmbedConfig", "genrec.encoders:run_embed",
              ("item_emb.npy", "item_emb.json"), ("data",)),
        Stage("quantize", "genrec.tokenizer:QuantizeConfig", "genrec.tokenizer:run_quantize",
              ("sids.json", "sid_report.json"), ("embed",)),
        Stage("describe", "genrec.describe:DescribeConfig", "genrec.describe:run_describe",
              ("token_semantics.json",), ("quantize",)),
        Stage("sft", "genrec.sft:SFTStageConfig", "genrec.sft:run_sft_stage",
              ("checkpoints/sft/config.json", "checkpoints/sft/sids.json"), ("describe",)),
        Stage("evaluate", "genrec.evaluate:EvaluateStageConfig", "genrec.evaluate:run_evaluate_stage",
              ("eval/{split}/metrics.json",), ("sft",)),
    ]
}


def _load(ref):
    """Resolve "module:attr" lazily (stages import torch-heavy modules only when used); objects pass through."""
    if not isinstance(ref, str):
        return ref
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def from_dict(cls, values: dict | None, where: str):
    """Build a config dataclass from a YAML mapping; unknown keys fail with the list of valid ones."""
    values = dict(values or {})
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of options, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; valid options are {sorted(names)}")
    return cls(**values)


@dataclass
class PipelineConfig:
    path: Path | None
    stages: list[str]
    sections: dict[str, Any]  # stage name -> config dataclass instance

    def config(self, stage: str):
        return self.sections[stage]


def load_pipeline_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a pipeline YAML; `overrides` are ``section.key=value`` strings (value parsed as YAML) applied on top,
    e.g. ``sft.overrides.seed=7`` or ``evaluate.beam=50``."""
    raw = read_yaml_mapping(path, "pipeline config")
    for item in overrides or []:
        apply_override(raw, item)
    return pipeline_config_from_dict(raw, where=str(path) + (f" with --set {' '.join(overrides)}" if overrides else ""))


def apply_override(raw: dict, item: str) -> None:
    """Set ``a.b.c=value`` in a nested mapping (creating missing mappings); the value is parsed as YAML."""
    import yaml

    from genrec.io import load_yaml

    key, sep, value = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ValueError(f"--set {item!r}: write section.key=value, e.g. --set sft.overrides.seed=7")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {item!r}: {part!r} holds a value, not a mapping")
    try:
        node[parts[-1]] = load_yaml(value)
    except yaml.YAMLError as e:
        raise ValueError(f"--set {item!r}: the value is not valid YAML ({e})") from None


def pipeline_config_from_dict(raw: dict, where: str = "<config>") -> PipelineConfig:
    raw = dict(raw)
    stages = raw.pop("stages", list(STAGES))
    unknown = sorted(set(raw) - set(STAGES))
    if unknown:
        raise ValueError(f"{where}: unknown section(s) {unknown}; stages are {list(STAGES)}")
    _check_stage_names(stages, where)
    sections = {name: from_dict(_load(st.config), raw.get(name), f"{where}, section '{name}'")
                for name, st in STAGES.items()}
    return PipelineConfig(Path(where) if where != "<config>" else None, list(stages), sections)


def _check_stage_names(stages, where: str) -> None:
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"{where}: unknown stage(s) {bad}; available stages are {list(STAGES)}")


def fingerprints(cfg: PipelineConfig) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, st in STAGES.items():
        payload = {"config": dataclasses.asdict(cfg.sections[name]), "after": [out[a] for a in st.after]}
        out[name] = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return out


def _record_path(run_dir: Path, stage: str) -> Path:
    return run_dir / ".genrec" / f"{stage}.json"


def stage_outputs(stage: str, config: dict) -> list[str]:
    """A stage's output paths; "{field}" in a path is filled from the stage's config (e.g. eval/{split}/...)."""
    return [out.format(**config) for out in STAGES[stage].outputs]


def is_done(run_dir: Path, stage: str, fingerprint: str) -> bool:
    rec_path = _record_path(run_dir, stage)
    if not rec_path.exists():
        return False
    rec = read_json(rec_path)
    if rec.get("fingerprint") != fingerprint:
        return False
    return all((run_dir / out).exists() for out in stage_outputs(stage, rec.get("config", {})))


def run_stage(cfg: PipelineConfig, run_dir: Path, stage: str, force: bool = False) -> bool:
    """Run one stage unless it is already done with the same config; return True when it ran."""
    fp = fingerprints(cfg)[stage]
    if not force and is_done(run_dir, stage, fp):
        logger.info("stage %-9s up to date (fingerprint %s), skipped", stage, fp)
        return False
    for dep in STAGES[stage].after:
        if not is_done(run_dir, dep, fingerprints(cfg)[dep]):
            raise RuntimeError(f"stage '{stage}' needs stage '{dep}' first (its outputs in {run_dir} are missing or "
                               f"were made with another config); run: genrec pipeline CONFIG --stages {dep},{stage}")
    logger.info("stage %-9s running", stage)
    start = time.time()
    rec = _record_path(run_dir, stage)
    if rec.exists():
        rec.unlink()  # a crash mid-stage must not leave an old record that vouches for new outputs
    run = _load(STAGES[stage].run)
    if "force" in inspect.signature(run).parameters:  # stages with their own resume state (sft) start afresh
        run(run_dir, cfg.sections[stage], force=force)
    else:
        run(run_dir, cfg.sections[stage])
    seconds = time.time() - start
    write_json(rec, {"fingerprint": fp, "seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "config": dataclasses.asdict(cfg.sections[stage])})
    logger.info("stage %-9s done in %.1fs", stage, seconds)
    return True


def run_pipeline(cfg: PipelineConfig, run_dir: Path, stages: list[str] | None = None, force: bool = False) -> None:
    stages = stages or cfg.stages
    _check_stage_names(stages, "--stages")
    run_dir.mkdir(parents=True, exist_ok=True)
    order = [s for s in STAGES if s in stages]
    for stage in order:
        run_stage(cfg, run_dir, stage, force=force)


def run_data(run_dir: Path, cfg) -> None:
    from genrec.data import load_dataset

    ds = load_dataset(cfg)
    ds.write(run_dir)
    logger.info("data: %s", ds.stats())
