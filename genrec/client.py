"""`GenrecClient`, the Python client of `genrec serve`, and `genrec recommend`, its command line.

    genrec recommend --server http://127.0.0.1:8000 --history 12 40 [--k 10] [--exclude-history] [--explain] [--json]
    genrec recommend --checkpoint runs/demo/checkpoints/sft --history 12 40 [--k 10] [--beam 20] [--explain]

With ``--server`` the answer comes from a running server (API key, when it has one, from the environment variable
named by ``--api-key-env``, default GENREC_API_KEY, or from ``--api-key-file``). With ``--checkpoint`` the model
loads in-process through `genrec.recommender.load_recommender` and the answer is built by the server's own code
(`genrec.serving.answers.ItemIndex`), so both print the same table; no network needed (it does need the serve extra).

The client retries, with exponential backoff, only what is safe and useful to retry: 503 (queue full, model not
ready; Retry-After is honoured) and connection errors. A 4xx is the request's fault and raises `APIError` (a
ValueError) with the server's message at once.

Example:
    >>> client = GenrecClient("http://127.0.0.1:8000", api_key=os.environ.get("GENREC_API_KEY"))  # doctest: +SKIP
    >>> [item["item_id"] for item in client.recommend(["12", "40"], k=3)["items"]]  # doctest: +SKIP
    ['41', '7', '230']
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx

logger = logging.getLogger(__name__)

RETRIED_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


class APIError(ValueError):
    """The server refused the request (4xx); `str(error)` is its message."""

    def __init__(self, status_code: int, message: str, request_id: str | None = None, body: dict | None = None):
        super().__init__(f"{status_code}: {message}")
        self.status_code, self.message, self.request_id, self.body = status_code, message, request_id, body or {}


class ServerError(RuntimeError):
    """The server failed (5xx), or stayed unavailable (503) through every retry."""


class GenrecClient:
    """Calls a `genrec serve` server over HTTP (httpx), with timeouts and retries on 503 and connection errors.

    Example:
        >>> with GenrecClient("http://127.0.0.1:8000") as client:  # doctest: +SKIP
        ...     client.ready(), client.item("12")["title"]
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 30.0, retries: int = 3,
                 backoff_s: float = 0.25, max_backoff_s: float = 10.0, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        if retries < 0:
            raise ValueError(f"retries={retries}: must be >= 0")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url, self.retries, self.backoff_s, self.max_backoff_s = base_url, retries, backoff_s, max_backoff_s
        self._sleep = sleep
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GenrecClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        retry_after = response.headers.get("Retry-After", "") if response is not None else ""
        if retry_after.strip().isdigit():
            return min(float(retry_after), self.max_backoff_s)
        return min(self.backoff_s * 2**attempt, self.max_backoff_s)

    def _send(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, json=body)
            except RETRIED_ERRORS as e:
                if attempt == self.retries:
                    raise ConnectionError(f"cannot reach {self.base_url} ({type(e).__name__}: {e}) after "
                                          f"{attempt + 1} attempts") from e
                delay = self._delay(attempt)
                logger.info("%s %s: %s; retrying in %.2f s", method, path, type(e).__name__, delay)
            else:
                if response.status_code != 503 or attempt == self.retries:
                    return response
                delay = self._delay(attempt, response)
                logger.info("%s %s: 503 (%s); retrying in %.2f s", method, path, _message(response), delay)
            self._sleep(delay)
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, body: dict | None = None):
        response = self._send(method, path, body)
        if response.is_success:
            return response.json()
        request_id = response.headers.get("X-Request-ID")
        if 400 <= response.status_code < 500:
            raise APIError(response.status_code, _message(response), request_id, _body(response))
        raise ServerError(f"{response.status_code} from {self.base_url}{path}: {_message(response)} "
                          f"(request {request_id})")

    def recommend(self, history: Sequence[str], k: int = 10, exclude_history: bool = False,
                  explain: bool = False) -> dict:
        """The server's answer for one history: ``{"items": [{item_id, title, sid, score}], "returned", ...}``;
        with `explain`, each item also has its ``explanation`` (interests that connect it to the history)."""
        return self._json("POST", "/v1/recommend", _query(history, k, exclude_history, explain))

    def recommend_batch(self, histories: Sequence[Sequence[str]], k: int = 10,
                        exclude_history: bool = False, explain: bool = False) -> list[dict]:
        """One answer per history, in order, from one request."""
        queries = [_query(h, k, exclude_history, explain) for h in histories]
        return self._json("POST", "/v1/recommend/batch", {"requests": queries})["results"]

    def item(self, item_id: str) -> dict:
        """``{"item_id", "title", "sid"}`` of a catalog item."""
        return self._json("GET", f"/v1/items/{quote(str(item_id), safe='')}")

    def ready(self) -> bool:
        """Whether the server has loaded its model and answered a warm-up query (no retries)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False


def _query(history: Sequence[str], k: int, exclude_history: bool, explain: bool) -> dict:
    """A request body; ``explain`` only when asked, so a server from before explanations still takes it."""
    body = {"history": list(history), "k": k, "exclude_history": exclude_history}
    return {**body, "explain": True} if explain else body


def _body(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _message(response: httpx.Response) -> str:
    return str(_body(response).get("error") or response.text[:200] or response.reason_phrase)


# ----------------------------------------------------------------------------- genrec recommend


def format_answer(answer: dict) -> str:
    """A recommendation answer (server JSON or in-process) as a small table; an item's explanation, when the answer
    has one, on the lines below it."""
    rows = [("rank", "score", "item_id", "sid", "title")]
    rows += [(str(n), f"{it['score']:.4f}", it["item_id"], it["sid"], it["title"])
             for n, it in enumerate(answer["items"], 1)]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = ["  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4] for r in rows]
    for n, item in reversed(list(enumerate(answer["items"], 1))):
        lines[n + 1:n + 1] = [f"{'':{widths[0]}}  why: {m['interest']!r} ~ {m['history_interest']!r} (history item "
                              f"{m['history_item']}) {m['score']:.2f}" for m in item.get("explanation") or []]
    for key in ("note", "explanation_note"):
        if answer.get(key):
            lines.append(f"note: {answer[key]}")
    return "\n".join(line.rstrip() for line in lines)


def recommend_in_process(recommender, history: Sequence[str], *, k: int, exclude_history: bool = False,
                         explain: bool = False, decode=None) -> dict:
    """The answer the server would give, computed with a `Recommender` in this process (same resolution, checks,
    explanations and formatting as `genrec.serving.answers`)."""
    from genrec.decoding.beam import DecodeConfig
    from genrec.serving.answers import ItemIndex, RecommendRequest, check_query
    from genrec.serving.config import ServeConfig

    decode = decode or DecodeConfig()
    index = ItemIndex(recommender.sid_strings, recommender.titles, getattr(recommender, "interests", None))
    query = RecommendRequest(history=list(history), k=k, exclude_history=exclude_history, explain=explain)
    k = check_query(query, beam=decode.beam, max_history=ServeConfig().max_history)
    ids = index.resolve(query.history)
    (result,) = recommender.recommend([ids], decode, k=decode.beam)
    return index.answer(ids, result, k=k, exclude_history=exclude_history, beam=decode.beam,
                        explain=explain).model_dump()


@dataclass
class RecommendArgs:
    history: list[str] = field(metadata={"help": "Item ids or exact titles, oldest first."})
    server: str | None = field(default=None, metadata={"help": "URL of a running `genrec serve`."})
    checkpoint: str | None = field(
        default=None, metadata={"help": "Checkpoint directory: load the model in this process instead of a server."}
    )
    k: int = field(default=10, metadata={"help": "How many items (at most --beam)."})
    exclude_history: bool = field(default=False, metadata={"help": "Leave the history's own items out."})
    explain: bool = field(
        default=False, metadata={"help": "Say why: each item's interests closest to the history items' interests."}
    )
    json: bool = field(default=False, metadata={"help": "Print the JSON answer instead of a table."})
    api_key_env: str = field(default="GENREC_API_KEY", metadata={"help": "Environment variable with the API key."})
    api_key_file: str | None = field(default=None, metadata={"help": "File with the API key."})
    timeout: float = field(default=30.0, metadata={"help": "Seconds per HTTP request (--server)."})
    device: str | None = field(default=None, metadata={"help": "torch device (--checkpoint); default cuda if any."})

    def __post_init__(self):
        if (self.server is None) == (self.checkpoint is None):
            raise ValueError("pass exactly one of --server URL (a running genrec serve) or --checkpoint DIR")
        if self.k < 1:
            raise ValueError(f"--k {self.k}: must be >= 1")

    def api_key(self) -> str | None:
        if self.api_key_file:
            return Path(self.api_key_file).read_text().strip() or None
        return os.environ.get(self.api_key_env) or None


def make_parser():
    from transformers import HfArgumentParser

    from genrec.decoding.beam import DecodeConfig

    return HfArgumentParser((RecommendArgs, DecodeConfig), prog="genrec recommend",
                            description=__doc__.split("\n")[0])


def main(argv: list[str] | None = None) -> dict:
    """``genrec recommend``: print the top items for a history (table or JSON); returns the answer."""
    if argv and argv[0] == "--":
        argv = argv[1:]
    args, decode = make_parser().parse_args_into_dataclasses(args=argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP call would drown the table
    if args.server:
        with GenrecClient(args.server, args.api_key(), timeout=args.timeout) as client:
            answer = client.recommend(args.history, k=args.k, exclude_history=args.exclude_history,
                                      explain=args.explain)
    else:
        from genrec.recommender import load_recommender

        recommender = load_recommender(args.checkpoint, device=args.device)
        answer = recommend_in_process(recommender, args.history, k=args.k, exclude_history=args.exclude_history,
                                      explain=args.explain, decode=decode)
    print(json.dumps(answer, indent=2) if args.json else format_answer(answer))
    return answer


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
