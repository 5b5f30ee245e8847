"""Interest miners: the backends of the mine stage, their prompts and the schema of their answers.

A miner answers one task for many catalog items:
- ``interests``: a list of ``{"text", "confidence"}`` (confidence in [0, 1]), strongest evidence first;
- ``archetype``: one string, the item's ideal audience (GenAIR), from LLM backends only.

Backends, one entry each in the stage's ``backends`` list (`parse_backends` validates them):
- ``openai``: an OpenAI-compatible endpoint through `LLMClient` (fields of `ClientConfig`);
- ``transformers``: a local causal LM through `LocalLLM` (fields of `LocalLLMConfig`);
- ``keyphrase``: the offline extractor of genrec.interests.keyphrase (fields of `KeyphraseConfig`).
Every entry may set ``name``, the label its answers carry as their ``model`` (default: the model name, the model
directory's name, or "keyphrase"); names must be unique. Each item's `prompt_hash` covers everything its answer
depends on (the rendered prompt and the generation settings, or the extractor settings and the item text), so the
store asks again exactly the items whose prompt changed.

Example:
    >>> specs = parse_backends([{"type": "openai", "model": "Qwen/Qwen3-8B", "concurrency": 64}])
    >>> specs[0].name, specs[0].config.concurrency
    ('Qwen/Qwen3-8B', 64)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genrec.interests.keyphrase import KeyphraseConfig, extract_keyphrases, render_item
from genrec.interests.llm import ClientConfig, Completion, Failure, LLMClient, LocalLLM, LocalLLMConfig, Usage

PROMPTS = Path(__file__).resolve().parents[1] / "prompts"
DEFAULT_PROMPTS = {"interests": PROMPTS / "mine_interests.txt", "archetype": PROMPTS / "mine_archetype.txt"}
PROMPT_FIELDS = {"item", "max_interests"}
BACKEND_CONFIGS = {"openai": ClientConfig, "transformers": LocalLLMConfig, "keyphrase": KeyphraseConfig}
TEXT_KEYS = ("interest", "descriptor", "text", "name")  # what models call the phrase of an interest
MAX_INTEREST_CHARS = 120
OnResult = Callable[[str, Completion | Failure], None]


# ----------------------------------------------------------------------------- backends from config


@dataclass(frozen=True)
class BackendSpec:
    type: str
    name: str
    config: Any  # ClientConfig | LocalLLMConfig | KeyphraseConfig


def parse_backends(entries: Any, where: str = "mine.backends") -> list[BackendSpec]:
    """Validate the backends list of the mine stage; errors say which entry and what to change."""
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where} must be a non-empty list, e.g. [{{type: keyphrase}}] or "
                         "[{type: openai, base_url: http://localhost:8000/v1, model: Qwen/Qwen3-8B}]")
    specs = []
    for i, entry in enumerate(entries):
        here = f"{where}[{i}]"
        if not isinstance(entry, dict) or entry.get("type") not in BACKEND_CONFIGS:
            got = entry.get("type") if isinstance(entry, dict) else entry
            raise ValueError(f"{here}: type={got!r}; each backend is a mapping whose type is one of "
                             f"{', '.join(BACKEND_CONFIGS)}")
        options = {k: v for k, v in entry.items() if k not in ("type", "name")}
        cls = BACKEND_CONFIGS[entry["type"]]
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise ValueError(f"{here} ({entry['type']}): unknown option(s) {unknown}; valid options are "
                             f"{sorted(valid | {'type', 'name'})}")
        try:
            config = cls(**options)
        except ValueError as e:
            raise ValueError(f"{here} ({entry['type']}): {e}") from None
        name = entry.get("name") or _default_name(entry["type"], config)
        if not isinstance(name, str):
            raise ValueError(f"{here}: name must be a string (the label recorded as the interests' model)")
        specs.append(BackendSpec(entry["type"], name, config))
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{where}: backend name(s) {twice} used twice; give each entry its own `name`")
    return specs


def _default_name(kind: str, config) -> str:
    if kind == "openai":
        return config.model
    if kind == "transformers":
        return Path(config.model_path).name or config.model_path
    return "keyphrase"


# ----------------------------------------------------------------------------- prompts


def load_prompt(path: str | Path | None, task: str) -> str:
    """A prompt template ({item} and optionally {max_interests}; literal braces doubled), checked."""
    path = Path(path) if path else DEFAULT_PROMPTS[task]
    if not path.is_file():
        raise ValueError(f"the {task} prompt file {path} does not exist; fix the path or use null for the default")
    text = path.read_text(encoding="utf-8")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as e:
        raise ValueError(f"{path}: not a valid template ({e}); write literal braces as {{{{ and }}}}") from None
    if "item" not in fields or fields - PROMPT_FIELDS:
        raise ValueError(f"{path}: a {task} prompt must contain {{item}} and may use {sorted(PROMPT_FIELDS)} only, "
                         f"found {sorted(fields)}; write literal braces (the JSON example) as {{{{ and }}}}")
    return text


def prompt_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- answer schemas


def parse_interests(obj: Any, max_interests: int) -> list[dict]:
    """``[{"text", "confidence"}]`` from the JSON of an interests answer; ValueError when nothing valid is left.

    Accepts ``{"interests": [...]}`` or a bare list; each entry ``{"interest" (or "descriptor", "text"): str,
    "confidence": number}``. Entries with an empty phrase, a phrase over 120 characters or no numeric confidence
    are dropped; whole numbers in (1, 100] are read as percentages, other values outside [0, 1] drop the entry;
    case-insensitive duplicates are dropped; at most `max_interests` are kept, in the model's order.

    Example:
        >>> parse_interests({"interests": [{"interest": " Woodworking ", "confidence": 90}]}, 5)
        [{'text': 'Woodworking', 'confidence': 0.9}]
    """
    entries = obj.get("interests") if isinstance(obj, dict) else obj
    if not isinstance(entries, list):
        raise ValueError("expected {\"interests\": [{\"interest\": ..., \"confidence\": ...}, ...]}")
    out, seen, problem = [], set(), "the interests list is empty"
    for entry in entries:
        text = next((entry[k] for k in TEXT_KEYS if isinstance(entry, dict) and isinstance(entry.get(k), str)), None)
        text = " ".join(text.split()).strip(" .;,") if text else ""
        conf = _confidence(entry.get("confidence") if isinstance(entry, dict) else None)
        if not text or len(text) > MAX_INTEREST_CHARS:
            problem = f"an interest needs a phrase of 1-{MAX_INTEREST_CHARS} characters, got {entry!r:.80}"
        elif conf is None:
            problem = f"'confidence' must be a number in [0, 1], got {entry!r:.80}"
        elif text.lower() not in seen:
            seen.add(text.lower())
            out.append({"text": text, "confidence": conf})
    if not out:
        raise ValueError(f"no valid interest ({problem})")
    return out[:max_interests]


def _confidence(value: Any) -> float | None:
    if isinstance(value, str):
        try:
            value = float(value.strip().rstrip("%"))
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if 1 < value <= 100 and value == int(value):  # a percentage; 1.5 is neither that nor a probability
        value = value / 100
    return round(float(value), 4) if 0 <= value <= 1 else None


def parse_archetype(obj: Any) -> str:
    """The ideal-audience text from ``{"archetype": str}``; ValueError when missing or empty.

    Example:
        >>> parse_archetype({"archetype": "  Hobby woodworkers who build furniture. "})
        'Hobby woodworkers who build furniture.'
    """
    text = obj.get("archetype") if isinstance(obj, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise ValueError("expected {\"archetype\": \"who the item is for\"} with a non-empty string")
    return " ".join(text.split())[:1000]


# ----------------------------------------------------------------------------- miners


class LLMMiner:
    """Asks an LLM backend the interests (and archetype) prompts; the client is built on first use, so a run
    whose answers are all stored never loads a model or opens a connection."""

    tasks = ("interests", "archetype")

    def __init__(self, spec: BackendSpec, prompts: dict[str, str], template: str, max_chars: int,
                 max_interests: int, transport=None):
        self.name, self.spec = spec.name, spec
        self.prompts_by_task, self.template, self.max_chars = prompts, template, max_chars
        self.max_interests = max_interests
        self.transport = transport
        self.client = None
        settings = dataclasses.asdict(spec.config)
        for key in ("concurrency", "timeout", "max_attempts", "backoff_base", "backoff_max", "batch_size", "device",
                    "base_url", "api_key_env"):  # how it is asked, not what: changing these must not re-ask
            settings.pop(key, None)
        self.settings = settings

    def prompts(self, items: list[dict], task: str) -> dict[str, str]:
        template = self.prompts_by_task[task]
        return {it["item_id"]: template.format(item=render_item(it, self.template, self.max_chars),
                                               max_interests=self.max_interests) for it in items}

    def prompt_hashes(self, items: list[dict], task: str) -> dict[str, str]:
        return {iid: prompt_hash(p, self.settings) for iid, p in self.prompts(items, task).items()}

    def mine(self, items: list[dict], todo: set[str], task: str, on_result: OnResult) -> None:
        if self.client is None:
            self.client = (LLMClient(self.spec.config, transport=self.transport) if self.spec.type == "openai"
                           else LocalLLM(self.spec.config))
        prompts = {iid: p for iid, p in self.prompts(items, task).items() if iid in todo}
        parse = functools.partial(parse_interests, max_interests=self.max_interests) if task == "interests" \
            else parse_archetype
        self.client.complete_json(prompts, parse, on_result=on_result, progress=f"mine {task} [{self.name}]")


class KeyphraseMiner:
    """The offline extractor as a miner. It needs the whole catalog (document frequencies, calibration), so it
    extracts for every item whenever any is missing, and reports all of them."""

    tasks = ("interests",)

    def __init__(self, spec: BackendSpec, encode: Callable, max_interests: int, encoder_id: Any = None):
        self.name, self.cfg, self.encode = spec.name, spec.config, encode
        self.max_interests, self.encoder_id = max_interests, encoder_id

    def prompt_hashes(self, items: list[dict], task: str) -> dict[str, str]:
        settings = [dataclasses.asdict(self.cfg), self.max_interests, self.encoder_id]
        return {it["item_id"]: prompt_hash(render_item(it, self.cfg.template, self.cfg.max_chars), settings)
                for it in items}

    def mine(self, items: list[dict], todo: set[str], task: str, on_result: OnResult) -> None:
        for it, phrases in zip(items, extract_keyphrases(items, self.encode, self.max_interests, self.cfg)):
            if phrases:
                on_result(it["item_id"], Completion([{"text": p, "confidence": c} for p, c in phrases], "", Usage()))
            else:
                on_result(it["item_id"], Failure("the item has no text to take phrases from", 1))


def build_miner(spec: BackendSpec, *, prompts: dict[str, str], template: str, max_chars: int, max_interests: int,
                encode: Callable, encoder_id: Any = None, transport=None):
    """The miner of one backend spec."""
    if spec.type == "keyphrase":
        return KeyphraseMiner(spec, encode, max_interests, encoder_id)
    return LLMMiner(spec, prompts, template, max_chars, max_interests, transport)
