"""A fake OpenAI-compatible chat endpoint on loopback, for tests and benchmarks/mine.py.

`FakeOpenAI` serves ``POST /v1/chat/completions`` from a standard-library ThreadingHTTPServer (one thread per
connection, so hundreds of concurrent requests each sleeping `latency` seconds are served in parallel). Each request
is answered by ``script(prompt, n)``, where `n` counts the requests with the same key so far (1 = first); the key
of a prompt is what `key_of` finds in it (default: the first ``SKU-<id>`` marker, else the whole prompt). It returns
a `Reply` (status, content, headers, extra delay) or a plain string (the answer's content). The server counts
requests per key and the most requests it held in flight at once, and stops itself after `max_lifetime` seconds
so a broken test cannot leave it running. ``python tests/fake_openai.py --latency 1`` serves from its own process
(benchmarks/mine.py does this so the server's threads do not compete with the client for the GIL); ``GET /stats``
reports its counters.

Example:
    >>> with FakeOpenAI(latency=0.01) as server:  # doctest: +SKIP
    ...     LLMClient(ClientConfig(base_url=server.url, model="fake")).complete_json({"a": "SKU-1"}, parse)
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = re.compile(r"SKU-\w+")


@dataclass
class Reply:
    status: int = 200
    content: str | None = None  # None: the default answer for the prompt
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds on top of the server's latency (e.g. longer than the client's timeout)


def default_key(prompt: str) -> str:
    m = KEY.search(prompt)
    return m.group() if m else prompt


def default_answer(prompt: str) -> str:
    """A chain-of-thought answer ending in one JSON object, shaped by the prompt's task."""
    key = default_key(prompt).lower()
    if '"archetype"' in prompt:
        return json.dumps({"archetype": f"People who restore things, like buyers of {key}."})
    words = [w for w in re.findall(r"[a-z]{4,}", prompt.split("Item:")[-1].lower()) if w != "title"][:3] or ["tools"]
    interests = [{"interest": f"{w} projects", "confidence": round(0.9 - 0.1 * i, 2)} for i, w in enumerate(words)]
    return ("The item is a tool; people use it for projects.\n```json\n"
            + json.dumps({"interests": interests}) + "\n```")


class FakeOpenAI:
    """See the module docstring. Use as a context manager, or call start() / stop()."""

    def __init__(self, script: Callable[[str, int], Reply | str] | None = None, *, latency: float = 0.0,
                 key_of: Callable[[str], str] = default_key, max_lifetime: float = 120.0):
        self.script = script or (lambda prompt, n: Reply())
        self.latency, self.key_of, self.max_lifetime = latency, key_of, max_lifetime
        self.counts: Counter = Counter()
        self.statuses: Counter = Counter()
        self.in_flight = self.max_in_flight = 0
        self.auth_headers: list[str | None] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._running = False

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
            # one send per response, without Nagle: otherwise a kept-alive connection waits out the client's
            # delayed ACK (~40 ms) on every request, as no real server does
            disable_nagle_algorithm = True
            wbufsize = 1 << 16

            def do_POST(self):  # noqa: N802 (the stdlib's name)
                fake._handle(self)

            def do_GET(self):  # noqa: N802
                fake._stats(self)

            def log_message(self, *args):  # quiet
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024  # a burst of 128+ connects must not overflow the listen backlog

        self._server = Server(("127.0.0.1", 0), Handler)
        self._running = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._timer = threading.Timer(self.max_lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Shut the server down (idempotent; also called by the lifetime timer)."""
        with self._lock:
            running, self._running = self._running, False
        if running:
            self._timer.cancel()
            self._server.shutdown()
            self._server.server_close()

    def _stats(self, handler: BaseHTTPRequestHandler) -> None:
        """GET /stats: requests per key, statuses and the most requests in flight (for a server in another process);
        GET /stats?reset=1 also clears them."""
        with self._lock:
            data = json.dumps({"counts": dict(self.counts), "statuses": {str(k): v for k, v in self.statuses.items()},
                               "max_in_flight": self.max_in_flight}).encode()
            if handler.path.endswith("reset=1"):
                self.counts.clear()
                self.statuses.clear()
                self.max_in_flight = 0
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        request = json.loads(body)
        prompt = request["messages"][-1]["content"]
        key = self.key_of(prompt)
        with self._lock:
            self.counts[key] += 1
            n = self.counts[key]
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.auth_headers.append(handler.headers.get("Authorization"))
        try:
            reply = self.script(prompt, n)
            reply = Reply(content=reply) if isinstance(reply, str) else reply
            time.sleep(self.latency + reply.delay)
            if reply.status == 200:
                content = default_answer(prompt) if reply.content is None else reply.content
                payload = {"id": "fake", "object": "chat.completion", "model": request.get("model"),
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": content}}],
                           "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(content.split()),
                                     "total_tokens": len(prompt.split()) + len(content.split())}}
            else:
                payload = {"error": {"message": reply.content or f"fake error {reply.status}"}}
            data = json.dumps(payload).encode()
            with self._lock:
                self.statuses[reply.status] += 1
            handler.send_response(reply.status)
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout): nothing to answer
            pass
        finally:
            with self._lock:
                self.in_flight -= 1


def main(argv: list[str] | None = None) -> None:
    """Serve in this process until stdin closes (or --max-lifetime passes); prints the base URL first."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="fake OpenAI-compatible chat endpoint on 127.0.0.1")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per request")
    parser.add_argument("--max-lifetime", type=float, default=1800.0, help="stop after this many seconds")
    args = parser.parse_args(argv)
    with FakeOpenAI(latency=args.latency, max_lifetime=args.max_lifetime) as server:
        print(server.url, flush=True)
        sys.stdin.read()  # the parent closes our stdin (or dies) when it is done


if __name__ == "__main__":
    main()
