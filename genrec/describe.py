"""Token semantics (the `describe` stage -> token_semantics.json): what the items sharing a SID token have in common.

For every SID token that occurs, the items that carry it, ~15 keywords and a one-sentence description. A token is
one (level, code) pair: ``<b_7>`` covers every item whose level-1 code is 7, whatever its level-0 code, because
that is the token the vocabulary has. The keywords drive SA-Init (genrec.modeling); the descriptions drive the
TS-Align SFT tasks (genrec.tasks).

Teachers:
- ``tfidf`` (default, offline): class-based TF-IDF. A term's weight for a token = the share of the token's items
  whose title contains it (plus ``detail_weight`` x the share whose description does: marketing copy is noisy) x
  its IDF over the whole catalog; stop words, numbers and terms in more than ``max_df`` of the catalog are
  dropped, and terms the LM tokenizer splits into n pieces are down-weighted by n ** -piece_penalty so the keywords
  tend to be whole words of the model's vocabulary. Description: ``Items such as "A", "B" and "C", sharing: kw1,
  kw2, ...`` (the top 8 keywords).
- ``openai``: any OpenAI-compatible chat endpoint (OpenAI, a vLLM server, ...) through genrec's one LLM client
  (genrec.interests.llm), with the prompt in genrec/prompts/describe_token.txt. Answers are parsed as JSON and
  retried when malformed; every answer is cached in ``token_semantics.cache.jsonl`` so a killed run resumes
  without asking again.

Example:
    >>> run_describe(Path("runs/demo"), DescribeConfig(teacher="tfidf"))  # doctest: +SKIP
    >>> Run("runs/demo").token_semantics()["<a_12>"]["keywords"][:3]  # doctest: +SKIP
    ['gloves', 'nitrile', 'disposable']
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genrec.encoders import item_text
from genrec.io import write_json
from genrec.sid import sid_token

logger = logging.getLogger(__name__)

PROMPT_FILE = Path(__file__).parent / "prompts" / "describe_token.txt"


@dataclass
class DescribeConfig:
    teacher: str = field(
        default="tfidf",
        metadata={"help": "'tfidf' (offline class-based TF-IDF keywords + templated description) or 'openai' (an "
                  "OpenAI-compatible chat endpoint such as a vLLM server)."},
    )
    num_keywords: int = field(default=15, metadata={"help": "Keywords per SID token."})
    title_template: str = field(
        default="{title}. {categories}",
        metadata={"help": "Python format string over item fields: the short item text whose words count fully "
                  "(tfidf) and that lists the items in LLM prompts."},
    )
    detail_template: str = field(
        default="{description}",
        metadata={"help": "tfidf: the longer item text whose words count detail_weight (marketing copy is noisy)."},
    )
    detail_weight: float = field(
        default=0.25, metadata={"help": "tfidf: weight of detail_template words against title words (0 = ignore)."}
    )
    max_chars: int = field(default=600, metadata={"help": "Item text is cut to this many characters."})
    keyword_tokenizer: str | None = field(
        default="default",
        metadata={"help": "tfidf: tokenizer of the LM whose vocabulary keywords should come from ('default' = the "
                  "default model's MiniLM WordPiece; a local dir / hub id, e.g. the Qwen checkpoint; null = none)."},
    )
    piece_penalty: float = field(
        default=0.5,
        metadata={"help": "tfidf: a term the keyword tokenizer splits into n pieces has its weight multiplied by "
                  "n ** -piece_penalty (0 = no preference for whole words, 1 = divide by n)."},
    )
    max_df: float = field(
        default=0.5, metadata={"help": "tfidf: ignore terms found in more than this share of the catalog's items."}
    )
    num_titles: int = field(default=3, metadata={"help": "tfidf: example titles quoted in each description."})
    base_url: str = field(
        default="http://localhost:8000/v1", metadata={"help": "openai: endpoint base URL (ends in /v1)."}
    )
    model: str | None = field(default=None, metadata={"help": "openai: model name the endpoint serves."})
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "openai: environment variable holding the API key (unset: no Authorization header)."},
    )
    prompt_file: str | None = field(
        default=None, metadata={"help": "openai: prompt template; null = genrec/prompts/describe_token.txt."}
    )
    max_items_in_prompt: int = field(default=30, metadata={"help": "openai: items listed in a token's prompt."})
    temperature: float = field(default=0.2, metadata={"help": "openai: sampling temperature."})
    max_tokens: int = field(default=512, metadata={"help": "openai: longest answer in tokens."})
    timeout: float = field(default=120.0, metadata={"help": "openai: seconds per request."})
    max_attempts: int = field(
        default=3, metadata={"help": "openai: tries per token before failing (bad JSON or HTTP errors)."}
    )
    retry_wait: float = field(
        default=2.0, metadata={"help": "openai: seconds before retrying an HTTP error (doubles each time)."}
    )
    concurrency: int = field(default=4, metadata={"help": "openai: requests in flight at once."})

    def __post_init__(self):
        if self.teacher not in ("tfidf", "openai"):
            raise ValueError(f"describe.teacher={self.teacher!r}: use 'tfidf' or 'openai'")
        if self.teacher == "openai" and not self.model:
            raise ValueError("describe.teacher='openai' needs describe.model (the model name the endpoint serves)")
        if self.num_keywords < 1 or self.num_titles < 0 or self.max_items_in_prompt < 1:
            raise ValueError("describe.num_keywords and describe.max_items_in_prompt must be >= 1, "
                             "describe.num_titles >= 0")
        if self.piece_penalty < 0 or self.detail_weight < 0:
            raise ValueError("describe.piece_penalty and describe.detail_weight must be >= 0 (0 disables them)")
        if not 0 < self.max_df <= 1:
            raise ValueError(f"describe.max_df={self.max_df}: must be in (0, 1]")
        if self.max_attempts < 1 or self.concurrency < 1:
            raise ValueError("describe.max_attempts and describe.concurrency must be >= 1")
        if self.prompt_file and not Path(self.prompt_file).is_file():
            raise ValueError(f"describe.prompt_file={self.prompt_file!r} does not exist; fix the path or use null")


class TeacherError(RuntimeError):
    """An LLM teacher gave no usable answer for a token."""


def group_tokens(sids: dict[str, list[int]]) -> dict[str, dict]:
    """SID token -> {"level", "code", "items"}: every item carrying that token, in sids.json order.

    Example:
        >>> group_tokens({"1": [0, 7], "2": [1, 7]})["<b_7>"]
        {'level': 1, 'code': 7, 'items': ['1', '2']}
    """
    groups: dict[tuple[int, int], list[str]] = {}
    for iid, codes in sids.items():
        for level, code in enumerate(codes):
            groups.setdefault((level, code), []).append(iid)
    return {sid_token(lv, c): {"level": lv, "code": c, "items": groups[(lv, c)]} for lv, c in sorted(groups)}


# ----------------------------------------------------------------------------- offline teacher


def _piece_counts(terms: list[str], tokenizer_name: str | None) -> np.ndarray:
    """How many sub-tokens the LM tokenizer needs for each term written as a word (1 when no tokenizer)."""
    if not tokenizer_name:
        return np.ones(len(terms))
    words = [" " + t for t in terms]
    if tokenizer_name == "default":  # the default model's MiniLM WordPiece, read without importing transformers
        from tokenizers import Tokenizer

        from genrec.encoders import minilm_path

        tok = Tokenizer.from_file(str(Path(minilm_path()) / "tokenizer.json"))
        tok.no_padding()  # the file pads every text to 128
        ids = [enc.ids for enc in tok.encode_batch(words, add_special_tokens=False)]
    else:
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(tokenizer_name)(words, add_special_tokens=False)["input_ids"]
    return np.array([max(1, len(x)) for x in ids], dtype=np.float64)


class TfidfTeacher:
    """Class-based TF-IDF keywords over the catalog, with a templated description.

    A term's weight for a set of items = (share of the items whose title text has it + detail_weight x share whose
    detail text has it) x its IDF over the catalog x pieces ** -piece_penalty.

    Example:
        >>> teacher = TfidfTeacher(items, DescribeConfig())  # doctest: +SKIP
        >>> teacher.describe(["12", "40", "41"])["keywords"][:2]  # doctest: +SKIP
        ['gloves', 'nitrile']
    """

    def __init__(self, items: list[dict], cfg: DescribeConfig):
        from sklearn.feature_extraction.text import CountVectorizer

        self.cfg = cfg
        self.row = {it["item_id"]: i for i, it in enumerate(items)}
        self.titles = [" ".join(str(it.get("title") or "").split()) for it in items]
        short = [item_text(it, cfg.title_template, cfg.max_chars) for it in items]
        long = [item_text(it, cfg.detail_template, cfg.max_chars) if cfg.detail_weight else "" for it in items]
        vectorizer = CountVectorizer(binary=True, stop_words="english", token_pattern=r"(?u)\b[^\W\d_]{3,}\b",
                                     max_df=cfg.max_df if len(items) > 1 else 1.0)
        try:
            vectorizer.fit([f"{a} {b}" for a, b in zip(short, long, strict=True)])
        except ValueError:
            raise ValueError("describe: no usable words in the item texts; check describe.title_template and "
                             "describe.detail_template against the fields in items.jsonl") from None
        self.x_title = vectorizer.transform(short).tocsr()
        self.x_detail = vectorizer.transform(long).tocsr()
        self.terms = vectorizer.get_feature_names_out()
        df = np.asarray(((self.x_title + self.x_detail) > 0).sum(0)).ravel()
        idf = np.log((1 + len(items)) / (1 + df)) + 1  # scikit-learn's smooth idf
        pieces = _piece_counts(list(self.terms), cfg.keyword_tokenizer if cfg.piece_penalty else None)
        self.weight = idf * pieces ** -cfg.piece_penalty

    def describe(self, item_ids: list[str]) -> dict:
        rows = [self.row[i] for i in item_ids if i in self.row]
        if not rows:
            return {"keywords": [], "description": "Items with no text in the catalog."}
        has = self.x_title[rows] + self.cfg.detail_weight * self.x_detail[rows]
        scores = np.asarray(has.mean(0)).ravel() * self.weight
        top = np.argsort(-scores, kind="stable")[: self.cfg.num_keywords]
        keywords = [str(self.terms[j]) for j in top if scores[j] > 0]
        fit = np.asarray(has @ scores).ravel()  # how typical each item is of the set
        titles = [self.titles[rows[k]] for k in np.argsort(-fit, kind="stable")]
        return {"keywords": keywords, "description": _template_description(titles, keywords, self.cfg.num_titles)}


def _template_description(titles: list[str], keywords: list[str], num_titles: int) -> str:
    short = dict.fromkeys(t[:57] + "..." if len(t) > 60 else t for t in titles if t)  # distinct, in order
    quoted = [f'"{t}"' for t in list(short)[:num_titles]]
    if len(quoted) > 1:
        quoted = [", ".join(quoted[:-1]) + " and " + quoted[-1]]
    such = f"Items such as {quoted[0]}, sharing" if quoted else "Items sharing"
    return f"{such}: {', '.join(keywords[:8]) or 'no distinctive words'}."


# ----------------------------------------------------------------------------- LLM teacher


def check_answer(obj, num_keywords: int) -> dict:
    """{"keywords", "description"} from the JSON value of an LLM answer; raises ValueError saying what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError("the answer's JSON is not an object with keywords and description")
    keywords, description = obj.get("keywords"), obj.get("description")
    if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
        raise ValueError("'keywords' must be a list of strings")
    cleaned = list(dict.fromkeys(" ".join(k.lower().split()) for k in keywords if k.strip()))
    if not cleaned:
        raise ValueError("'keywords' is empty")
    if not isinstance(description, str) or not description.strip():
        raise ValueError("'description' must be a non-empty string")
    return {"keywords": cleaned[:num_keywords], "description": " ".join(description.split())}


def parse_answer(text: str, num_keywords: int) -> dict:
    """{"keywords", "description"} from an LLM answer holding one JSON object (fences, prose or <think> around it
    are tolerated, JSON slips repaired where safe); raises ValueError saying what is wrong.

    Example:
        >>> parse_answer('```json\n{"keywords": ["Gloves"], "description": "Hand protection."}\n```', 15)
        {'keywords': ['gloves'], 'description': 'Hand protection.'}
    """
    from genrec.interests.json_repair import extract_json

    return check_answer(extract_json(text), num_keywords)


class OpenAITeacher:
    """Asks an OpenAI-compatible chat endpoint for each token's keywords and description, through genrec's one LLM
    client (genrec.interests.llm: bounded concurrency, retries with backoff, JSON repair).

    Example:
        >>> teacher = OpenAITeacher(items, DescribeConfig(teacher="openai", model="Qwen/Qwen3-8B"))  # doctest: +SKIP
        >>> teacher.describe_all({"<a_12>": ["12", "40"]}, Path("runs/demo/token_semantics.cache.jsonl"))  # doctest: +SKIP
    """

    def __init__(self, items: list[dict], cfg: DescribeConfig, transport=None):
        from genrec.interests.llm import ClientConfig, LLMClient

        self.cfg = cfg
        self.lines = {it["item_id"]: item_text(it, cfg.title_template, 300) for it in items}
        self.template = Path(cfg.prompt_file or PROMPT_FILE).read_text(encoding="utf-8")
        self.client = LLMClient(ClientConfig(
            model=cfg.model, base_url=cfg.base_url, api_key_env=cfg.api_key_env, concurrency=cfg.concurrency,
            timeout=cfg.timeout, max_attempts=cfg.max_attempts, backoff_base=cfg.retry_wait,
            temperature=cfg.temperature, max_tokens=cfg.max_tokens), transport=transport)

    def prompt(self, token: str, item_ids: list[str]) -> str:
        shown = item_ids
        if len(item_ids) > self.cfg.max_items_in_prompt:  # a fixed sample per token, so prompts are reproducible
            keep = set(random.Random(token).sample(item_ids, self.cfg.max_items_in_prompt))
            shown = [i for i in item_ids if i in keep]
        lines = "\n".join(f"- {self.lines.get(i, i)}" for i in shown)
        return self.template.format(token=token, num_items=len(item_ids), num_shown=len(shown), items=lines,
                                    num_keywords=self.cfg.num_keywords)

    def cache_key(self, prompt: str) -> str:
        return hashlib.sha1(json.dumps([self.cfg.model, prompt]).encode()).hexdigest()

    def describe_all(self, groups: dict[str, list[str]], cache_path: Path) -> dict[str, dict]:
        """token -> {"keywords", "description"}; answers already in the cache file are not asked again, new ones are
        appended as they arrive, so a killed run resumes. Raises `TeacherError` naming a token that got no usable
        answer (after every other answer is cached)."""
        from genrec.interests.llm import Completion

        cache = _read_cache(cache_path)
        prompts = {tok: self.prompt(tok, ids) for tok, ids in groups.items()}
        keys = {tok: self.cache_key(p) for tok, p in prompts.items()}
        todo = {tok: p for tok, p in prompts.items() if keys[tok] not in cache}
        logger.info("describe: %d tokens, %d cached, asking %s for %d", len(groups), len(groups) - len(todo),
                    self.cfg.model, len(todo))
        with open(cache_path, "a", encoding="utf-8") as f:
            def keep(tok, result):
                if isinstance(result, Completion):
                    cache[keys[tok]] = result.value
                    f.write(json.dumps({"key": keys[tok], "token": tok, **result.value}, ensure_ascii=False) + "\n")
                    f.flush()

            results = self.client.complete_json(
                todo, lambda obj: check_answer(obj, self.cfg.num_keywords), on_result=keep, progress="describe")
        failed = {tok: r for tok, r in results.items() if not isinstance(r, Completion)}
        if failed:
            tok, why = next(iter(failed.items()))
            logger.error("describe: %d of %d tokens failed; the others are cached in %s", len(failed), len(todo),
                         cache_path)
            raise TeacherError(
                f"describe: no usable answer for token {tok} from model {self.cfg.model!r} at {self.cfg.base_url} "
                f"after {why.attempts} attempts ({why.reason}); last answer: {(why.text or '')[:300]!r}. Check the "
                "endpoint and model, raise describe.max_attempts, or use describe.teacher: tfidf")
        return {tok: cache[keys[tok]] for tok in groups}


def _read_cache(path: Path) -> dict[str, dict]:
    cache = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:  # a run killed mid-write leaves a torn last line; ignore it
                rec = json.loads(line)
                cache[rec["key"]] = {"keywords": rec["keywords"], "description": rec["description"]}
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return cache


# ----------------------------------------------------------------------------- stage


def run_describe(run_dir: Path, cfg: DescribeConfig, *, transport=None) -> None:
    """The `describe` stage: sids.json + items.jsonl -> token_semantics.json.

    `transport` is an optional httpx transport for the openai teacher (tests pass an httpx.MockTransport).

    Example:
        >>> run_describe(Path("runs/demo"), DescribeConfig())  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from genrec.artifacts import TOKEN_SEMANTICS, TOKEN_SEMANTICS_CACHE, Run

    run = Run(run_dir)
    groups = group_tokens(run.sids())
    items = run.items()
    if cfg.teacher == "tfidf":
        teacher = TfidfTeacher(items, cfg)
        answers = {tok: teacher.describe(g["items"]) for tok, g in tqdm(groups.items(), desc="describe")}
    else:
        teacher = OpenAITeacher(items, cfg, transport)
        answers = teacher.describe_all({tok: g["items"] for tok, g in groups.items()}, run.path(TOKEN_SEMANTICS_CACHE))
    semantics = {tok: {**g, **answers[tok]} for tok, g in groups.items()}
    write_json(run.path(TOKEN_SEMANTICS), semantics)
    for tok in list(semantics)[:3]:
        logger.info("%s (%d items): %s", tok, len(semantics[tok]["items"]), semantics[tok]["description"])
