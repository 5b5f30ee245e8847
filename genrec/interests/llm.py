"""The one LLM client of genrec: prompts in, validated JSON answers out.

Two backends share one call, ``complete_json(prompts, parse) -> {key: Completion | Failure}``:

- `LLMClient`: any OpenAI-compatible chat-completions endpoint (a vLLM or SGLang server, a hosted API) over httpx's
  async client. At most `concurrency` requests are in flight; each has a timeout; 429, 5xx, timeouts and connection
  errors are retried with exponential backoff and jitter, and a `Retry-After` header pauses every worker for that
  long. 401 / 403 / 404 stop the call at once with `LLMError` (wrong key, URL or model: every prompt would fail).
- `LocalLLM`: a causal LM from a local directory (transformers), batched greedy `generate`, chat template when the
  tokenizer has one.

Every answer goes through `extract_json` (it tolerates <think> blocks, ``` fences, prose around the object, trailing
commas, single quotes and Python literals) and then through the caller's `parse`, which gets the JSON value and
raises ValueError when it does not fit the caller's schema. A malformed answer is asked again, up to `max_attempts`
in all; what still fails comes back as a `Failure` with its reason, never as a result. ``on_result(key, result)``
sees each result as it arrives, so a caller can persist it at once (genrec.interests.store).

The API key comes from the environment variable named by `api_key_env` (or `api_key=` in code). It is sent in the
Authorization header only: never logged, stored, or put in a config record or an error message.

Example:
    >>> client = LLMClient(ClientConfig(base_url="http://localhost:8000/v1", model="Qwen/Qwen3-8B"))  # doctest: +SKIP
    >>> def parse(obj):  # the JSON value of one answer -> what the caller keeps; ValueError = malformed
    ...     return {"keywords": list(obj["keywords"]), "description": str(obj["description"])}
    >>> out = client.complete_json({"<a_1>": "Describe ... as JSON"}, parse, progress="describe")  # doctest: +SKIP
    >>> out["<a_1>"].value if isinstance(out["<a_1>"], Completion) else out["<a_1>"].reason  # doctest: +SKIP
    {'keywords': ['gloves', 'nitrile'], 'description': 'Disposable hand protection.'}
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from genrec.interests.json_repair import extract_json

logger = logging.getLogger(__name__)

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError)  # a parse that chokes = malformed
RETRY_STATUS = {408, 409, 425, 429}  # plus every 5xx
FATAL_STATUS = {401: "the endpoint refused the API key; set the environment variable named by api_key_env",
                403: "the API key may not use this model or endpoint",
                404: "no such endpoint or model; check base_url (it ends in /v1) and model"}
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
POOL_CONNECTIONS = 16  # most connections per httpx pool (see acomplete_json)


# ----------------------------------------------------------------------------- results


@dataclass
class Usage:
    """Token counts, from the endpoint's `usage` (summed over retries: every attempt costs)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


@dataclass
class Completion(Generic[T]):
    """A validated answer: `value` is what `parse` returned, `text` the raw answer."""

    value: T
    text: str
    usage: Usage = field(default_factory=Usage)
    attempts: int = 1


@dataclass
class Failure:
    """No usable answer after every attempt: why, how many attempts, and the last answer (cut) if there was one."""

    reason: str
    attempts: int
    text: str | None = None


class LLMError(RuntimeError):
    """The endpoint cannot serve any prompt (bad key, URL or model): stop instead of failing every prompt."""


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _Reject(Exception):
    """A 4xx that asking again will not fix (e.g. the prompt is too long)."""


# ----------------------------------------------------------------------------- OpenAI-compatible endpoint


@dataclass
class ClientConfig:
    model: str = field(
        default="", metadata={"help": "Model name the endpoint serves (the request's `model`); recorded on answers."}
    )
    base_url: str = field(
        default="http://localhost:8000/v1", metadata={"help": "Endpoint base URL, ending in /v1 (vLLM, SGLang, ...)."}
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "Name of the environment variable holding the API key (unset: no Authorization header). "
                  "The key itself never goes in a config: configs are written into run directories."},
    )
    concurrency: int = field(default=32, metadata={"help": "Requests in flight at once."})
    timeout: float = field(default=120.0, metadata={"help": "Seconds to wait for one answer before retrying."})
    max_attempts: int = field(
        default=4, metadata={"help": "Tries per prompt (HTTP errors, timeouts and malformed answers all count)."}
    )
    backoff_base: float = field(
        default=1.0, metadata={"help": "Seconds before the first retry of an HTTP error; doubles each time, jittered."}
    )
    backoff_max: float = field(
        default=60.0, metadata={"help": "Longest wait before a retry, also capping a server's Retry-After."}
    )
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature (0 = greedy, reproducible)."})
    max_tokens: int = field(default=1024, metadata={"help": "Longest answer in tokens (reasoning included)."})
    extra_body: dict = field(
        default_factory=dict,
        metadata={"help": "Extra request fields, e.g. {chat_template_kwargs: {enable_thinking: false}} for Qwen3 "
                  "on vLLM, or {response_format: {type: json_object}}."},
    )

    def __post_init__(self):
        if not self.model:
            raise ValueError("model is empty: set it to the name the endpoint serves, e.g. model: Qwen/Qwen3-8B")
        if not re.match(r"^https?://", self.base_url or ""):
            raise ValueError(f"base_url={self.base_url!r}: use an http(s) URL ending in /v1, "
                             "e.g. http://localhost:8000/v1")
        if not ENV_NAME.match(self.api_key_env or ""):  # never echo it: it may be the key itself
            raise ValueError("api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY) that "
                             "holds the key, not the key itself: configs are written into run directories")
        if self.concurrency < 1 or self.max_attempts < 1 or self.max_tokens < 1:
            raise ValueError("concurrency, max_attempts and max_tokens must be >= 1")
        if self.timeout <= 0 or self.backoff_base < 0 or self.backoff_max < 0:
            raise ValueError("timeout must be > 0, backoff_base and backoff_max >= 0 (seconds)")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature={self.temperature}: use a value in [0, 2] (0 = greedy)")
        if not isinstance(self.extra_body, dict):
            raise ValueError("extra_body must be a mapping of extra request fields")


class LLMClient:
    """Asks an OpenAI-compatible chat endpoint many prompts at once; see the module docstring for an example.

    `transport` replaces httpx's network transport (tests may pass ``httpx.MockTransport``). `usage` sums the tokens
    of every call of this client.
    """

    def __init__(self, cfg: ClientConfig, *, api_key: str | None = None, transport=None):
        self.cfg = cfg
        self.model = cfg.model
        self.usage = Usage()
        self._api_key = api_key if api_key is not None else os.environ.get(cfg.api_key_env) or None
        self._transport = transport
        self._ssl = None
        if logging.getLogger("httpx").level == logging.NOTSET:  # one INFO line per request would bury the progress
            logging.getLogger("httpx").setLevel(logging.WARNING)
        self._not_before = 0.0  # monotonic time before which no request goes out (a server's Retry-After)

    def __repr__(self) -> str:  # no key in here
        return f"LLMClient(model={self.cfg.model!r}, base_url={self.cfg.base_url!r})"

    def complete_json(self, prompts: Mapping[K, str], parse: Callable[[Any], T], *,
                      on_result: Callable[[K, Completion[T] | Failure], None] | None = None,
                      progress: str | None = None) -> dict[K, Completion[T] | Failure]:
        """Ask every prompt; ``{key: Completion | Failure}``. `progress` = a progress-bar label (None: no bar)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.acomplete_json(prompts, parse, on_result=on_result, progress=progress))
        raise RuntimeError("LLMClient.complete_json was called inside a running event loop; "
                           "use `await client.acomplete_json(...)` there")

    async def acomplete_json(self, prompts: Mapping[K, str], parse: Callable[[Any], T], *,
                             on_result: Callable[[K, Completion[T] | Failure], None] | None = None,
                             progress: str | None = None) -> dict[K, Completion[T] | Failure]:
        """The async form of `complete_json`: `concurrency` workers share one queue of prompts."""
        import httpx

        results: dict[K, Completion[T] | Failure] = {}
        if not prompts:
            return results
        queue = iter(list(prompts.items()))  # workers take turns on one iterator: no task per prompt
        n_workers = min(self.cfg.concurrency, len(prompts))
        # httpcore 1.0's pool slows down sharply with many connections (128 workers on one pool: 13.7 s for 512
        # requests of 0.5 s; on 8 pools of 16: 3.1 s; encode/httpx#3215), so large concurrency uses several pools
        pools = math.ceil(n_workers / POOL_CONNECTIONS)
        size = math.ceil(n_workers / pools)
        bar = _ProgressBar(len(prompts), progress)
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        if self._ssl is None:  # building one costs ~0.1 s: one per client, shared by its pools
            self._ssl = httpx.create_ssl_context()
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(httpx.AsyncClient(
                base_url=self.cfg.base_url.rstrip("/") + "/", headers=headers, timeout=httpx.Timeout(self.cfg.timeout),
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size), transport=self._transport,
                verify=self._ssl,
            )) for _ in range(pools)]

            async def worker(http):
                for key, prompt in queue:
                    result = await self._complete_one(http, prompt, parse)
                    results[key] = result
                    if on_result is not None:
                        on_result(key, result)
                    bar.update(result)

            workers = [asyncio.create_task(worker(clients[k % pools])) for k in range(n_workers)]
            try:
                await asyncio.gather(*workers)
            finally:  # one worker failed (LLMError, a callback's error, Ctrl-C): stop the others before closing
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                bar.close()
        return results

    async def _complete_one(self, http, prompt: str, parse: Callable[[Any], T]) -> Completion[T] | Failure:
        usage, text, reason = Usage(), None, ""
        for attempt in range(1, self.cfg.max_attempts + 1):
            delay = self._not_before - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                text, used, finish = await self._post(http, prompt)
            except _Retry as e:
                reason = str(e)
                logger.debug("%s: attempt %d/%d failed: %s", self.cfg.model, attempt, self.cfg.max_attempts, reason)
                if attempt < self.cfg.max_attempts:
                    await asyncio.sleep(self._wait(attempt, e.retry_after))
                continue
            except _Reject as e:
                return Failure(str(e), attempt)
            usage.add(used)
            self.usage.add(used)
            try:
                return Completion(parse(extract_json(text)), text, usage, attempt)
            except PARSE_ERRORS as e:
                cut = " (the answer hit max_tokens; raise max_tokens)" if finish == "length" else ""
                reason = f"malformed answer: {e}{cut}"
                logger.debug("%s: attempt %d/%d: %s", self.cfg.model, attempt, self.cfg.max_attempts, reason)
        return Failure(reason, self.cfg.max_attempts, text[:500] if text else None)

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with equal jitter; a server's Retry-After pauses every worker instead."""
        if retry_after is not None:
            wait = min(retry_after, self.cfg.backoff_max)
            self._not_before = max(self._not_before, time.monotonic() + wait)
            return 0.0
        wait = min(self.cfg.backoff_max, self.cfg.backoff_base * 2 ** (attempt - 1))
        return wait / 2 + random.uniform(0, wait / 2)

    async def _post(self, http, prompt: str) -> tuple[str, Usage, str | None]:
        import httpx

        body = {"model": self.cfg.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens, **self.cfg.extra_body}
        try:
            response = await http.post("chat/completions", json=body)
        except httpx.TimeoutException:
            raise _Retry(f"no answer within {self.cfg.timeout:g} s (timeout)") from None
        except httpx.TransportError as e:
            raise _Retry(f"connection error ({type(e).__name__}: {e})") from None
        status = response.status_code
        if status in RETRY_STATUS or status >= 500:
            raise _Retry(f"HTTP {status}: {response.text[:200]}", _retry_after(response.headers.get("retry-after")))
        if status in FATAL_STATUS:
            raise LLMError(f"HTTP {status} from {self.cfg.base_url} (model {self.cfg.model!r}): "
                           f"{FATAL_STATUS[status]}")
        if status >= 400:
            raise _Reject(f"HTTP {status}: {response.text[:200]}")
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retry(f"not a chat-completions response: {response.text[:200]!r}") from None
        return text, _usage(data.get("usage")), choice.get("finish_reason")


def _usage(raw) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _ProgressBar:
    """tqdm with ETA and items/s, plus token counts and failures in the postfix; silent when `desc` is None."""

    def __init__(self, total: int, desc: str | None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="item", disable=desc is None, dynamic_ncols=True)
        self.usage, self.failed = Usage(), 0

    def update(self, result: Completion | Failure) -> None:
        if isinstance(result, Failure):
            self.failed += 1
        else:
            self.usage.add(result.usage)
        self.bar.set_postfix(tok_in=self.usage.prompt_tokens, tok_out=self.usage.completion_tokens,
                             failed=self.failed, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


# ----------------------------------------------------------------------------- local transformers model


@dataclass
class LocalLLMConfig:
    model_path: str = field(default="", metadata={"help": "Local directory (or hub id) of a causal LM."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate call."})
    max_new_tokens: int = field(default=512, metadata={"help": "Longest answer in tokens (reasoning included)."})
    device: str | None = field(default=None, metadata={"help": "Torch device; None picks cuda when available."})
    dtype: str = field(default="auto", metadata={"help": "'auto' (bfloat16 on cuda, else float32), 'float32', "
                                                        "'bfloat16' or 'float16'."})

    def __post_init__(self):
        if not self.model_path:
            raise ValueError("model_path is empty: set it to a local directory holding a causal LM and its tokenizer")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype={self.dtype!r}: use auto, float32, bfloat16 or float16")


class LocalLLM:
    """A local causal LM with the same `complete_json` as `LLMClient` (greedy, so one attempt per prompt).

    Example:
        >>> llm = LocalLLM(LocalLLMConfig(model_path="checkpoints/qwen3-1.7b"))  # doctest: +SKIP
        >>> llm.complete_json({"x": "Answer with {\\"ok\\": true}"}, parse=lambda obj: obj["ok"])  # doctest: +SKIP
    """

    def __init__(self, cfg: LocalLLMConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.model = cfg.model_path
        self.usage = Usage()
        device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model_path, padding_side="left")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        self.lm = AutoModelForCausalLM.from_pretrained(cfg.model_path, dtype=getattr(torch, dtype)).to(device).eval()

    def _format(self, prompt: str) -> str:
        if self.chat:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt

    def complete_json(self, prompts: Mapping[K, str], parse: Callable[[Any], T], *,
                      on_result: Callable[[K, Completion[T] | Failure], None] | None = None,
                      progress: str | None = None) -> dict[K, Completion[T] | Failure]:
        """Same contract as `LLMClient.complete_json`; an answer that is not valid JSON becomes a `Failure`."""
        import torch

        results: dict[K, Completion[T] | Failure] = {}
        items = list(prompts.items())
        bar = _ProgressBar(len(items), progress)
        try:
            for start in range(0, len(items), self.cfg.batch_size):
                batch = items[start:start + self.cfg.batch_size]
                enc = self.tokenizer([self._format(p) for _, p in batch], return_tensors="pt", padding=True,
                                     add_special_tokens=not self.chat).to(self.lm.device)  # a template has its own
                with torch.no_grad():
                    out = self.lm.generate(**enc, max_new_tokens=self.cfg.max_new_tokens, do_sample=False,
                                           pad_token_id=self.tokenizer.pad_token_id)
                new = out[:, enc["input_ids"].shape[1]:]
                for row, (key, _) in enumerate(batch):
                    used = Usage(int(enc["attention_mask"][row].sum()),
                                 int((new[row] != self.tokenizer.pad_token_id).sum()))
                    self.usage.add(used)
                    text = self.tokenizer.decode(new[row], skip_special_tokens=True)
                    try:
                        results[key] = Completion(parse(extract_json(text)), text, used, 1)
                    except PARSE_ERRORS as e:
                        results[key] = Failure(f"malformed answer: {e}", 1, text[:500])
                    if on_result is not None:
                        on_result(key, results[key])
                    bar.update(results[key])
        finally:
            bar.close()
        return results
