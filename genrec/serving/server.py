"""`genrec serve CHECKPOINT`: the recommendation API (genrec.serving.app) under uvicorn.

    genrec serve runs/demo/checkpoints/sft [--host 127.0.0.1] [--port 8000] [--beam 20] [--batch-size 16]
                 [--max-wait-ms 5] [--max-queue 256] [--backend transformers|vllm] [--api-key-file FILE] ...
    GENREC_API_KEY=... genrec serve CHECKPOINT          # every /v1 endpoint then needs 'Authorization: Bearer ...'

The checkpoint loads through `genrec.recommender.load_recommender` (the one loading path) on the model thread
after the server has bound, so /healthz answers at once and /readyz turns 200 once the model has answered a
warm-up query. ``--batch-size`` is the micro-batch size (queries per model call; 1 turns micro-batching off) and
``--beam`` the beam width (the largest k a request may ask for). The server binds loopback unless ``--host`` says
otherwise; the API key comes from an environment variable (``--api-key-env``, default GENREC_API_KEY) or
``--api-key-file``, never from a command-line value. SIGINT/SIGTERM shut down gracefully: no new connections,
in-flight requests finish (up to ``--graceful-timeout-s``), the batcher drains its queue.

``--backend vllm`` (GPU only, needs the vllm extra) serves through vLLM with genrec.decoding.vllm's trie
processor; see genrec.serving.vllm_backend.

Example:
    >>> with serve_in_thread(create_app(recommender)) as live:  # doctest: +SKIP
    ...     httpx.get(live.url + "/readyz").json()
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from transformers import HfArgumentParser

from genrec.checkpoint import has_model
from genrec.decoding.beam import DecodeConfig
from genrec.serving.app import create_app
from genrec.serving.config import LOOPBACK, ServeConfig, load_api_key

logger = logging.getLogger(__name__)


def load_backend(checkpoint: str | Path, config: ServeConfig):
    """The model behind the API: `load_recommender` (transformers) or the vLLM backend."""
    if config.backend == "vllm":
        from genrec.serving.vllm_backend import load_vllm_recommender

        return load_vllm_recommender(checkpoint, dtype=config.dtype)
    if config.engine == "process":
        from genrec.serving.engine import ProcessRecommender

        return ProcessRecommender(checkpoint, device=config.device, dtype=config.dtype, threads=config.torch_threads)
    from genrec.recommender import load_recommender

    return load_recommender(checkpoint, device=config.device, dtype=config.dtype)


def build_app(checkpoint: str | Path, config: ServeConfig, decode: DecodeConfig):
    """The app for a checkpoint directory; the model loads in the background once the server runs."""
    if not has_model(checkpoint):
        raise FileNotFoundError(f"{checkpoint} is not a model checkpoint (no config.json); pass the directory "
                                "genrec's sft or grpo stage wrote, e.g. runs/demo/checkpoints/sft")
    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    if config.host not in LOOPBACK and load_api_key(config) is None:
        logger.warning("serving on %s without an API key: anyone who can reach it can query it (set %s or "
                       "--api-key-file)", config.host, config.api_key_env)
    return create_app(functools.partial(load_backend, checkpoint, config), config, decode)


def uvicorn_config(app, config: ServeConfig) -> uvicorn.Config:
    # access_log off: genrec.serving.access logs one JSON line per request, with its request id
    return uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level, access_log=False,
                          timeout_graceful_shutdown=config.graceful_timeout_s, lifespan="on")


@dataclass
class LiveServer:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown, as on SIGTERM; returns when the server thread has ended."""
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise RuntimeError(f"the server at {self.url} did not stop within {timeout} s")


@contextmanager
def serve_in_thread(app, *, host: str = "127.0.0.1", graceful_timeout_s: float = 10.0,
                    start_timeout_s: float = 60.0) -> Iterator[LiveServer]:
    """Run `app` under uvicorn on a free port of `host` in a background thread; always stopped on exit
    (tests, benchmarks, notebooks).

    Example:
        >>> with serve_in_thread(app) as live:  # doctest: +SKIP
        ...     GenrecClient(live.url).recommend(["i1"])
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    cfg = ServeConfig(host=host, port=port, graceful_timeout_s=graceful_timeout_s, log_level="warning")
    server = uvicorn.Server(uvicorn_config(app, cfg))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="genrec-uvicorn", daemon=True)
    thread.start()
    live = LiveServer(f"http://{host}:{port}", server, thread)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {live.url}")
            time.sleep(0.01)
        yield live
    finally:
        if thread.is_alive():
            live.stop(graceful_timeout_s + 30)
        sock.close()


def make_parser() -> HfArgumentParser:
    parser = HfArgumentParser((ServeConfig, DecodeConfig), prog="genrec serve", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="checkpoint directory written by genrec's sft or grpo stage")
    return parser


def main(argv: list[str] | None = None) -> None:
    """``genrec serve CHECKPOINT [options]``: load, bind, serve until SIGINT/SIGTERM."""
    if argv and argv[0] == "--":
        argv = argv[1:]
    config, decode, rest = make_parser().parse_args_into_dataclasses(args=argv)
    logging.getLogger("genrec").setLevel(config.log_level.upper())
    app = build_app(rest.checkpoint, config, decode)
    logger.info("serving %s on http://%s:%d (docs at /docs)", rest.checkpoint, config.host, config.port)
    uvicorn.Server(uvicorn_config(app, config)).run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
