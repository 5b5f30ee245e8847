"""The stage pipeline: `genrec pipeline CONFIG [--run-dir DIR] [--stages a,b,c]`.

A pipeline config is one YAML with a section per stage (``data:``, ``embed:``, ``quantize:``, ...); each section
fills that stage's config dataclass (`genrec.config.from_dict`), so only values that differ from the defaults need
to be written; unknown options and values of the wrong type fail when the section is built, before any stage runs.
Every stage reads the previous stages' files from the run directory and writes its own. After a stage finishes,
its fingerprint (hash of its own config, of the content of the user files it reads, and of the fingerprints of the
stages it depends on) is stored under ``<run_dir>/.genrec/``; a stage whose outputs exist with the same
fingerprint is skipped, so a killed pipeline resumes where it stopped, and changing a stage's config or editing
the dataset's files re-runs it and everything downstream.

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
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genrec import artifacts as A
from genrec.checkpoint import CHECKPOINT_CONFIG, CHECKPOINT_SIDS
from genrec.config import from_dict
from genrec.io import (
    describe_value,
    file_sha256,
    read_json,
    read_yaml_mapping,
    remove_stale_temp_files,
    write_json,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    config: Any  # "module:Class" of the stage's config dataclass (or the class itself)
    run: Any  # "module:function" called as run(run_dir, cfg) (or the function itself)
    outputs: tuple[str, ...]
    after: tuple[str, ...] = ()  # stages this one always reads from
    # "module:function" listing the files from outside the pipeline a stage reads for a config (fingerprinted), as
    # function(cfg) or function(cfg, run_dir); None from it: this config reads none
    inputs: Any = None
    needs: Any = None  # "module:function": extra stages this one reads for a given config (e.g. embed -> label)


def _checkpoint(stage: str, name: str) -> str:
    return f"{A.CHECKPOINT.format(stage=stage)}/{name}"


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("data", "genrec.data:DataConfig", "genrec.pipeline:run_data",
              (A.ITEMS, *(A.SPLIT.format(split=s) for s in A.SPLITS)), inputs="genrec.data:input_files"),
        Stage("mine", "genrec.interests.mine:MineConfig", "genrec.interests.mine:run_mine", (A.INTERESTS,),
              ("data",)),
        Stage("label", "genrec.interests.label:LabelConfig", "genrec.interests.label:run_label",
              (A.INTERESTS, A.RLDI_REPORT), ("mine",)),
        Stage("embed", "genrec.encoders:EmbedConfig", "genrec.encoders:run_embed", (A.ITEM_EMB, A.ITEM_EMB_META),
              ("data",), needs="genrec.encoders:embed_needs"),
        Stage("quantize", "genrec.tokenizer:QuantizeConfig", "genrec.tokenizer:run_quantize", (A.SIDS, A.SID_REPORT),
              ("embed",), inputs="genrec.tokenizer.stage:quantize_inputs",
              needs="genrec.tokenizer.stage:quantize_needs"),
        Stage("describe", "genrec.describe:DescribeConfig", "genrec.describe:run_describe", (A.TOKEN_SEMANTICS,),
              ("quantize",)),
        Stage("sft", "genrec.sft:SFTStageConfig", "genrec.sft:run_sft_stage",
              (_checkpoint("sft", CHECKPOINT_CONFIG), _checkpoint("sft", CHECKPOINT_SIDS)), ("describe",)),
        Stage("grpo", "genrec.grpo:GRPOStageConfig", "genrec.grpo:run_grpo_stage",
              (_checkpoint("grpo", CHECKPOINT_CONFIG), _checkpoint("grpo", CHECKPOINT_SIDS)), ("sft",)),
        Stage("evaluate", "genrec.evaluate:EvaluateStageConfig", "genrec.evaluate:run_evaluate_stage",
              (f"{A.EVAL}/{A.METRICS}",), ("sft",), needs="genrec.evaluate:evaluate_needs"),
    ]
}


def dependencies(cfg: PipelineConfig, stage: str) -> list[str]:
    """The stages `stage` reads from in this pipeline: its fixed ones, and those its config needs when the pipeline
    runs them (an embed recipe with {interests} needs label; evaluating the GRPO model needs grpo)."""
    st = STAGES[stage]
    deps = list(st.after)
    if st.needs is not None:
        deps += [d for d in _load(st.needs)(cfg.sections[stage]) if d in cfg.stages]
    return list(dict.fromkeys(deps))


def _load(ref):
    """Resolve "module:attr" lazily (stages import torch-heavy modules only when used); objects pass through."""
    if not isinstance(ref, str):
        return ref
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


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
    where = str(path) + (f" with --set {' '.join(overrides)}" if overrides else "")
    return pipeline_config_from_dict(raw, where=where)


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
    unknown = sorted(str(k) for k in set(raw) - set(STAGES))
    if unknown:
        raise ValueError(f"{where}: unknown section(s) {unknown}; stages are {list(STAGES)}")
    if not isinstance(stages, list):
        raise ValueError(f"{where}: stages must be a list such as [data, embed], got {describe_value(stages)}")
    check_stage_names(stages, where)
    sections = {name: from_dict(_load(st.config), raw.get(name), f"{where}, section '{name}'", name)
                for name, st in STAGES.items()}
    if getattr(sections.get("evaluate"), "checkpoint", None) == "auto":  # derived: the model trained last
        sections["evaluate"].checkpoint = "grpo" if "grpo" in stages else "sft"
    return PipelineConfig(Path(where) if where != "<config>" else None, list(stages), sections)


def parse_stage_list(text: str) -> list[str]:
    """--stages "data,embed" as a list; an empty list is refused (it would otherwise mean every stage)."""
    stages = [s.strip() for s in text.split(",")]
    if not text.strip() or not all(stages):
        raise ValueError(f"--stages {text!r}: name the stages to run, comma-separated, e.g. --stages data,embed")
    check_stage_names(stages, "--stages")
    return stages


def check_stage_names(stages: list, where: str) -> None:
    if not stages:
        raise ValueError(f"{where}: no stages to run; name at least one of {list(STAGES)}")
    bad = [s for s in stages if not isinstance(s, str) or s not in STAGES]
    if bad:
        raise ValueError(f"{where}: unknown stage(s) {bad}; available stages are {list(STAGES)}")


def _hash_cache_path(run_dir: Path) -> Path:
    return run_dir / ".genrec" / "input_hashes.json"


def _input_digests(cfg: PipelineConfig, run_dir: Path | None) -> dict[str, list[list[str]]]:
    """Per stage with input files: [[path, sha256], ...]. Hashes are cached in the run directory by path, size
    and mtime, so an unchanged input is only stat'ed; the cache is rewritten only when the run directory exists."""
    cache_path = _hash_cache_path(run_dir) if run_dir is not None else None
    try:
        saved = read_json(cache_path) if cache_path is not None and cache_path.is_file() else {}
    except ValueError:
        saved = {}
    saved = saved if isinstance(saved, dict) else {}  # a damaged cache only costs re-hashing
    cache, used, out = dict(saved), {}, {}
    for name, st in STAGES.items():
        if st.inputs is None:
            continue
        inputs = _load(st.inputs)
        listed = (inputs(cfg.sections[name], run_dir) if "run_dir" in inspect.signature(inputs).parameters
                  else inputs(cfg.sections[name]))
        if listed is None:  # no payload entry at all, so such configs keep the fingerprints they had
            continue
        files = [str(p) for p in listed]
        out[name] = [[p, file_sha256(p, cache)] for p in files]
        used.update({p: cache[p] for p in files if p in cache})
    if cache_path is not None and run_dir.is_dir() and used != saved:
        write_json(cache_path, used)
    return out


def fingerprinted_config(section) -> dict:
    """A stage config as its fingerprint sees it: every option, except those its class lists in
    ``FINGERPRINT_WHEN_SET`` while they hold their default. Those came after runs existed and change nothing at
    their default (e.g. the raw sources' data options), so adding one leaves existing runs' fingerprints as they were.

    Example:
        >>> "k_core" in fingerprinted_config(DataConfig()), "k_core" in fingerprinted_config(DataConfig(
        ...     source="amazon", path="data/amazon", k_core=10))  # doctest: +SKIP
        (False, True)
    """
    values = dataclasses.asdict(section)
    defaults = {f.name: f.default for f in dataclasses.fields(section)}
    for name in getattr(type(section), "FINGERPRINT_WHEN_SET", ()):
        if values[name] == defaults[name]:
            del values[name]
    return values


def fingerprints(cfg: PipelineConfig, run_dir: Path | None = None) -> dict[str, str]:
    """Per stage: a hash of its config, the fingerprints of the stages it needs and, for stages that read user
    files (data), those files' content; so an edited input re-runs its stage and everything downstream."""
    inputs = _input_digests(cfg, run_dir)
    out: dict[str, str] = {}
    for name in STAGES:
        payload = {"config": fingerprinted_config(cfg.sections[name]),
                   "after": [out[a] for a in dependencies(cfg, name)]}
        if name in inputs:
            payload["inputs"] = inputs[name]
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


@contextmanager
def _run_dir_in_use(run_dir: Path):
    """Create the run directory for a run; if this run created it and fails before writing anything but the input
    hash cache, remove it again, so a typo in a config does not leave empty run directories behind."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} is a file; pass --run-dir a folder (or move the file away)")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"run directory {run_dir}: cannot create it ({e.strerror or e}); pass --run-dir a "
                         "folder you can write to") from None
    try:
        yield
    except BaseException:
        kept = [p for p in run_dir.rglob("*") if p.is_file() and p != _hash_cache_path(run_dir)]
        if created and not kept:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def run_stage(cfg: PipelineConfig, run_dir: Path, stage: str, force: bool = False) -> bool:
    """Run one stage unless it is already done with the same config; return True when it ran."""
    check_stage_names([stage], "stage")
    with _run_dir_in_use(run_dir):
        fps = fingerprints(cfg, run_dir)
        if not force and is_done(run_dir, stage, fps[stage]):
            logger.info("stage %-9s up to date (fingerprint %s), skipped", stage, fps[stage])
            return False
        for dep in dependencies(cfg, stage):
            if not is_done(run_dir, dep, fps[dep]):
                raise RuntimeError(f"stage '{stage}' needs stage '{dep}' first (its outputs in {run_dir} are missing "
                                   "or were made with another config or other input files); run: genrec pipeline "
                                   f"CONFIG --stages {dep},{stage}")
        for path in remove_stale_temp_files(run_dir):
            logger.info("removed %s, left behind by a killed write", path)
        _execute(cfg, run_dir, stage, fps[stage], force)
    return True


def _execute(cfg: PipelineConfig, run_dir: Path, stage: str, fingerprint: str, force: bool) -> None:
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
    write_json(rec, {"fingerprint": fingerprint, "seconds": round(seconds, 2), "finished": time.strftime(
        "%Y-%m-%dT%H:%M:%S"), "config": dataclasses.asdict(cfg.sections[stage])})
    logger.info("stage %-9s done in %.1fs", stage, seconds)


def run_pipeline(cfg: PipelineConfig, run_dir: Path, stages: list[str] | None = None, force: bool = False) -> None:
    """Run `stages` (default: the config's) in pipeline order, skipping those already done."""
    stages = cfg.stages if stages is None else stages
    check_stage_names(stages, "--stages")
    with _run_dir_in_use(run_dir):
        for stage in [s for s in STAGES if s in stages]:
            run_stage(cfg, run_dir, stage, force=force)


def run_data(run_dir: Path, cfg) -> None:
    from genrec.data import load_dataset

    ds = load_dataset(cfg)
    ds.write(run_dir)
    logger.info("data: %s", ds.stats())
