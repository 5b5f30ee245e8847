"""`ServeConfig`: how `genrec serve` binds, batches, limits and guards requests (the search itself is `DecodeConfig`).

Every field is a ``genrec serve`` flag (``--max-wait-ms 5``); `load_api_key` reads the optional API key from an
environment variable or a file, never from a command-line value (those leak into ``ps`` and shell history).

Example:
    >>> cfg = ServeConfig(max_queue=64, max_wait_ms=2.0)
    >>> cfg.host
    '127.0.0.1'
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

BACKENDS = ("transformers", "vllm")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass
class ServeConfig:
    """Server settings. Micro-batch size is `DecodeConfig.batch_size` (one model call = one beam-search batch)."""

    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Interface to bind. Loopback by default; use 0.0.0.0 only behind an API key or a proxy."},
    )
    port: int = field(default=8000, metadata={"help": "TCP port (0: any free port)."})
    backend: str = field(
        default="transformers",
        metadata={"help": "'transformers' (genrec's trie beam search, CPU or GPU) or 'vllm' (GPU only, needs the "
                  "vllm extra; genrec.serving.vllm_backend)."},
    )
    engine: str = field(
        default="process",
        metadata={"help": "transformers backend: 'process' runs the model in its own process (the server's event "
                  "loop and the Python-heavy beam search then do not share one interpreter lock), 'thread' in a "
                  "thread of the server's process."},
    )
    device: str | None = field(default=None, metadata={"help": "torch device; default cuda when available."})
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16, float16 or auto."})
    max_wait_ms: float = field(
        default=5.0,
        metadata={"help": "Longest a query waits for others to fill its micro-batch, only while clients are "
                  "concurrent (the previous batch held more than one query; a lone client never waits). Queries "
                  "arriving during a model call share the next one anyway; the wait lets the clients just answered "
                  "rejoin it. 0: never wait."},
    )
    max_queue: int = field(
        default=256,
        metadata={"help": "Queries (histories) waiting for the model at most; beyond it requests get 503 with "
                  "Retry-After."},
    )
    retry_after_s: int = field(default=1, metadata={"help": "Retry-After seconds sent with a 503."})
    max_history: int = field(
        default=512, metadata={"help": "Most history entries one query may carry (more: 413)."}
    )
    max_batch_requests: int = field(
        default=64,
        metadata={"help": "Most queries in one /v1/recommend/batch request (more: 413); --max-queue caps it too."},
    )
    max_body_bytes: int = field(
        default=256 * 1024,
        metadata={"help": "Largest request body in bytes, checked before parsing (Content-Length and the bytes "
                  "actually streamed; more: 413)."},
    )
    api_key_env: str = field(
        default="GENREC_API_KEY",
        metadata={"help": "Environment variable holding the API key; when it is set (or --api-key-file is), every "
                  "/v1 endpoint needs 'Authorization: Bearer <key>'. /healthz, /readyz and /metrics stay open."},
    )
    api_key_file: str | None = field(
        default=None, metadata={"help": "File holding the API key (wins over the environment variable)."}
    )
    torch_threads: int | None = field(
        default=None, metadata={"help": "torch.set_num_threads for the model; default torch's own choice."}
    )
    graceful_timeout_s: float = field(
        default=30.0,
        metadata={"help": "On shutdown, how long in-flight requests get to finish before connections are closed."},
    )
    log_level: str = field(default="info", metadata={"help": "Log level: debug, info, warning or error."})

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend {self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.engine not in ("process", "thread"):
            raise ValueError(f"--engine {self.engine!r}: use process or thread")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port {self.port}: must be in [0, 65535]")
        if self.dtype not in ("float32", "bfloat16", "float16", "auto"):
            raise ValueError(f"--dtype {self.dtype!r}: use float32, bfloat16, float16 or auto")
        if self.max_wait_ms < 0:
            raise ValueError(f"--max-wait-ms {self.max_wait_ms}: must be >= 0")
        for name in ("max_queue", "retry_after_s", "max_history", "max_batch_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        if self.max_body_bytes < 1024:
            raise ValueError(f"--max-body-bytes {self.max_body_bytes}: must be >= 1024")
        if not _ENV_NAME.fullmatch(self.api_key_env):
            raise ValueError(f"--api-key-env {self.api_key_env!r} is not an environment variable name")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"--torch-threads {self.torch_threads}: must be >= 1 (or leave it out)")
        if self.graceful_timeout_s < 0:
            raise ValueError(f"--graceful-timeout-s {self.graceful_timeout_s}: must be >= 0")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError(f"--log-level {self.log_level!r}: use debug, info, warning or error")


def load_api_key(config: ServeConfig) -> str | None:
    """The API key from `config.api_key_file` or else the `config.api_key_env` variable; None: no key.

    Example:
        >>> load_api_key(ServeConfig(api_key_env="GENREC_DOCTEST_UNSET_KEY")) is None
        True
    """
    if config.api_key_file:
        path = Path(config.api_key_file)
        if not path.is_file():
            raise FileNotFoundError(f"--api-key-file {path}: no such file")
        key = path.read_text().strip()
        if not key:
            raise ValueError(f"--api-key-file {path} is empty; write the key into it")
        return key
    key = os.environ.get(config.api_key_env, "").strip()
    return key or None
