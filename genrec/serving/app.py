"""The recommendation API: pydantic request/response models, `ItemIndex` (history resolution and answers) and
`create_app`, the FastAPI app factory. `genrec serve` (genrec.serving.server) runs it under uvicorn.

Endpoints: ``POST /v1/recommend``, ``POST /v1/recommend/batch``, ``GET /v1/items/{item_id}`` (Bearer key when one is
configured), ``GET /healthz`` (process up), ``GET /readyz`` (model loaded and a warm-up query answered; 503 before),
``GET /metrics`` (Prometheus), ``GET /openapi.json`` and ``/docs``. Every error is JSON
``{"error": message, "request_id": ...}``; no traceback reaches a client.

Example:
    >>> app = create_app(recommender, ServeConfig(), DecodeConfig(beam=20))  # doctest: +SKIP
    >>> TestClient(app).post("/v1/recommend", json={"history": ["i1", "i7"], "k": 5}).json()  # doctest: +SKIP
    {'items': [{'item_id': 'i3', 'title': '...', 'sid': '<a_1><b_2><c_3>', 'score': -0.41}, ...], ...}
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.exceptions import HTTPException

from genrec.decoding.beam import DecodeConfig, Recommendation
from genrec.serving.batcher import MicroBatcher, Unavailable
from genrec.serving.config import ServeConfig, load_api_key

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("genrec.serving.access")

# A query's float32 scores move by 1-2 ulp with the shapes of the batch it ran in (GEMM blocking, padding): about
# 2e-6 at |score| ~ 10, measured. Rounded to 4 decimals, batched and lone answers agree (items always; in a
# measured 1,920 scores all but 5, where the noise straddled a rounding boundary). 6 decimals left 375 apart.
SCORE_DECIMALS = 4
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

# ----------------------------------------------------------------------------- request and response models


class RecommendRequest(BaseModel):
    """One query: a history (oldest first) of item ids or exact titles."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"history": ["i1", "i7"], "k": 5}]})

    history: list[StrictStr] = Field(
        min_length=1, description="Items the user interacted with, oldest first: item ids, or exact titles.")
    k: StrictInt | None = Field(
        default=None, ge=1, description="How many items to return: 1 to the server's beam width (default 10, or "
                                        "the beam width when smaller).")
    exclude_history: StrictBool = Field(default=False, description="Leave the history's own items out.")


class BatchRecommendRequest(BaseModel):
    """Several queries in one call; each is answered as if it came alone."""

    model_config = ConfigDict(extra="forbid")

    requests: list[RecommendRequest] = Field(min_length=1, description="The queries, answered in this order.")


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    sid: str = Field(description="Semantic ID, e.g. <a_12><b_7><c_200>.")
    score: float = Field(description="Log-probability of the item's SID under the model (4 decimals).")


class RecommendResponse(BaseModel):
    items: list[RecommendedItem] = Field(description="Best first; every one a real catalog item.")
    k: int
    returned: int = Field(description="len(items); fewer than k when beam search or exclusion left fewer.")
    history: list[str] = Field(description="The history as resolved to item ids.")
    note: str | None = Field(default=None, description="Why fewer than k items came back, when they did.")


class BatchRecommendResponse(BaseModel):
    results: list[RecommendResponse]


class ItemResponse(BaseModel):
    item_id: str
    title: str
    sid: str


class ErrorResponse(BaseModel):
    error: str
    request_id: str


class StatusResponse(BaseModel):
    status: str
    items: int | None = None
    backend: str | None = None


# ----------------------------------------------------------------------------- history resolution and answers


class RequestError(ValueError):
    """A request the server cannot answer as sent: HTTP `status` (4xx), a message that says why, extra fields."""

    def __init__(self, status: int, message: str, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra or {}


def _shown(values: Sequence[str], n: int = 20) -> list[str]:
    return [v if len(v) <= 80 else v[:77] + "..." for v in values[:n]]


class ItemIndex:
    """The catalog as the API sees it: item id -> SID string and title, exact title -> item ids.

    Example:
        >>> index = ItemIndex({"i1": "<a_1><b_1>", "i2": "<a_2><b_1>"}, {"i1": "Gloves", "i2": "Gloves"})
        >>> index.resolve(["i1"])
        ['i1']
    """

    def __init__(self, sids: Mapping[str, str], titles: Mapping[str, str]):
        self.sids, self.titles = dict(sids), dict(titles)
        self.by_title: dict[str, list[str]] = {}
        for iid in self.sids:
            if self.titles.get(iid):
                self.by_title.setdefault(self.titles[iid], []).append(iid)

    def resolve(self, history: Sequence[str]) -> list[str]:
        """Item ids of a history of ids or exact titles (ids first); `RequestError` 400 names what is unknown or
        ambiguous."""
        ids, unknown, ambiguous = [], [], {}
        for entry in history:
            if entry in self.sids:
                ids.append(entry)
            elif len(self.by_title.get(entry, ())) == 1:
                ids.append(self.by_title[entry][0])
            elif entry in self.by_title:
                ambiguous[entry] = self.by_title[entry]
            else:
                unknown.append(entry)
        if unknown:
            raise RequestError(400, f"unknown items (neither an item id nor an exact title): {_shown(unknown)}",
                               {"unknown": _shown(unknown, 100)})
        if ambiguous:
            listed = "; ".join(f"{t!r} -> {ids[:10]}" for t, ids in list(ambiguous.items())[:10])
            raise RequestError(400, f"ambiguous titles, each shared by several items; send an item id instead: "
                               f"{listed}", {"candidates": {t: ids[:50] for t, ids in ambiguous.items()}})
        return ids

    def item(self, item_id: str) -> ItemResponse:
        if item_id not in self.sids:
            raise RequestError(404, f"unknown item id {_shown([item_id])[0]!r}")
        return ItemResponse(item_id=item_id, title=self.titles.get(item_id, ""), sid=self.sids[item_id])

    def answer(self, history: Sequence[str], rec: Recommendation, *, k: int, exclude_history: bool,
               beam: int) -> RecommendResponse:
        """The top `k` of a beam-search result, without the history's items when asked, scores rounded."""
        drop = set(history) if exclude_history else set()
        kept = [(i, s) for i, s in zip(rec.items, rec.scores) if i not in drop][:k]
        items = [RecommendedItem(item_id=i, title=self.titles.get(i, ""), sid=self.sids[i],
                                 score=round(float(s), SCORE_DECIMALS)) for i, s in kept]
        note = None
        if len(items) < k:
            excluded = sum(i in drop for i in rec.items)
            note = (f"{len(items)} of k={k}: beam search (beam {beam}) found {len(rec.items)} items"
                    + (f", {excluded} of them in the history" if excluded else "")
                    + ("; a larger --beam finds more" if len(rec.items) >= beam else ""))
        return RecommendResponse(items=items, k=k, returned=len(items), history=list(history), note=note)


def check_query(query: RecommendRequest, *, beam: int, max_history: int) -> int:
    """The query's k after the checks that depend on the server (k within the beam, history length)."""
    if len(query.history) > max_history:
        raise RequestError(413, f"history has {len(query.history)} entries; this server takes at most {max_history} "
                           "(only the latest ones shape the prompt anyway)")
    k = min(10, beam) if query.k is None else query.k
    if not 1 <= k <= beam:
        raise RequestError(422, f"k={k} is outside [1, {beam}]: beam search keeps {beam} items per query; ask for "
                           f"fewer or restart the server with --beam {k}")
    return k


# ----------------------------------------------------------------------------- metrics and request context


class Metrics:
    """Prometheus metrics of one app, in their own registry (several apps can live in one process)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("genrec_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("genrec_request_seconds", "Request latency by endpoint", ["endpoint"],
                                 registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch_size = Histogram("genrec_batch_queries", "Queries per model call (micro-batch size)",
                                    registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_seconds = Histogram("genrec_batch_seconds", "Model time per micro-batch", registry=self.registry)
        self.queue_depth = Gauge("genrec_queue_depth", "Queries waiting for the model", registry=self.registry)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)


def _error(status: int, message: str, request_id: str, extra: dict | None = None,
           headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "request_id": request_id, **(extra or {})}, status_code=status,
                        headers=headers)


def _request_id(headers: dict) -> str:
    given = headers.get(b"x-request-id", b"").decode("latin-1")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _content_length_error(headers: dict, limit: int) -> str | None:
    value = headers.get(b"content-length")
    if value is not None and not value.isdigit():
        return f"Content-Length {value[:20].decode('latin-1')!r} is not a byte count"
    if value is not None and int(value) > limit:
        return f"request body is {int(value)} bytes; this server takes at most {limit} (max_body_bytes)"
    return None


class RequestContext:
    """ASGI middleware around every request: a request id (``X-Request-ID``, echoed or made), the body-size cap
    (Content-Length before anything reads the body, then the bytes actually received), the catch-all that turns an exception into a 500 without its traceback
    (logged here), and one access-log line plus metrics per request."""

    def __init__(self, app, *, metrics: Metrics, max_body_bytes: int):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", ()))
        request_id = _request_id(headers)
        scope.setdefault("state", {})["request_id"] = request_id
        status, started, start, received = 500, False, time.perf_counter(), 0

        async def counting_receive():  # a streamed (chunked) body has no Content-Length to check up front
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, f"request body over {self.max_body_bytes} bytes (max_body_bytes)")
            return message

        async def send_with_id(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            too_large = _content_length_error(headers, self.max_body_bytes)
            if too_large:
                await _error(413, too_large, request_id)(scope, receive, send_with_id)
            else:
                await self.app(scope, counting_receive, send_with_id)
        except HTTPException as e:  # raised by counting_receive outside the routes' own error handling
            if not started:
                await _error(e.status_code, str(e.detail), request_id)(scope, receive, send_with_id)
        except Exception:
            logger.exception("request %s %s %s failed", request_id, scope["method"], scope["path"])
            if not started:
                await _error(500, "internal error", request_id)(scope, receive, send_with_id)
        finally:
            self._record(scope, request_id, status, time.perf_counter() - start)

    def _record(self, scope, request_id: str, status: int, seconds: float) -> None:
        endpoint = getattr(scope.get("route"), "path", None) or "unmatched"
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(seconds)
        access_logger.info(json.dumps({"request_id": request_id, "method": scope["method"], "path": scope["path"],
                                       "status": status, "ms": round(seconds * 1000, 2),
                                       "client": (scope.get("client") or ("-",))[0]}))


# ----------------------------------------------------------------------------- the app


@dataclass
class ServerState:
    """What the routes share: the model (once loaded), its item index, the batcher and readiness."""

    config: ServeConfig
    decode: DecodeConfig
    loader: Callable[[], Any]
    backend: str
    recommender: Any = None
    index: ItemIndex | None = None
    batcher: MicroBatcher | None = None
    status: str = "loading"  # loading -> warming up -> ready | failed
    metrics: Metrics = field(default_factory=Metrics)

    def rank(self, histories: list[list[str]]) -> list[Recommendation]:
        """The batch function: one `Recommender.recommend` call for a whole micro-batch (always all beams, so a
        query's answer does not depend on what else is in the batch)."""
        return self.recommender.recommend(histories, self.decode, k=self.decode.beam)

    async def start(self) -> None:
        try:
            if self.recommender is None:
                self.recommender = await self.batcher.run_in_worker(self.loader)
            self.index = ItemIndex(self.recommender.sid_strings, self.recommender.titles)
            if not self.index.sids:
                raise ValueError("the model's SID map is empty: nothing to recommend")
            self.status = "warming up"
            await self.batcher.submit([[next(iter(self.index.sids))]])
            self.status = "ready"
            logger.info("ready: %d items, beam %d, backend %s", len(self.index.sids), self.decode.beam, self.backend)
        except Exception:
            self.status = "failed"
            logger.exception("the model failed to load or to answer its warm-up query")

    def ensure_ready(self) -> None:
        if self.status != "ready":
            raise RequestError(503, f"the model is not ready ({self.status}); retry shortly")

    async def submit(self, histories: list[list[str]]) -> list[Recommendation]:
        try:
            return await self.batcher.submit(histories)
        except Unavailable as e:
            raise RequestError(503, str(e)) from e


def _lifespan(state: ServerState):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.batcher.start()
        state.metrics.queue_depth.set_function(lambda: state.batcher.depth)
        starting = asyncio.create_task(state.start())
        try:
            yield
        finally:
            await starting
            await state.batcher.stop()  # drains the queue: queued requests are answered before the thread ends
            if hasattr(state.recommender, "close"):  # an engine process
                state.recommender.close()

    return lifespan


def create_app(recommender, config: ServeConfig | None = None, decode: DecodeConfig | None = None) -> FastAPI:
    """The API over a `Recommender` (or anything with its ``recommend``, ``sid_strings`` and ``titles``), or over a
    zero-argument loader that returns one: loading then runs on the model thread after startup, and /readyz says
    503 until it is done and a warm-up query has been answered.

    Example:
        >>> app = create_app(lambda: load_recommender("runs/demo/checkpoints/sft"), ServeConfig())  # doctest: +SKIP
    """
    config, decode = config or ServeConfig(), decode or DecodeConfig()
    loaded = hasattr(recommender, "recommend")
    if not loaded and not callable(recommender):
        raise TypeError("create_app takes a Recommender or a function that loads one")
    state = ServerState(config, decode, loader=None if loaded else recommender, backend=config.backend,
                        recommender=recommender if loaded else None)
    state.batcher = MicroBatcher(state.rank, max_batch_size=decode.batch_size, max_wait_ms=config.max_wait_ms,
                                 max_queue=config.max_queue, on_batch=state.metrics.observe_batch)
    app = FastAPI(title="genrec", version="0.1.0", lifespan=_lifespan(state),
                  description="Next-item recommendations from trie-constrained beam search: every answer is a real "
                  "catalog item. /v1 endpoints need 'Authorization: Bearer <key>' when the server has an API key; "
                  "/healthz, /readyz and /metrics stay open.")
    app.state.genrec = state
    app.add_middleware(RequestContext, metrics=state.metrics, max_body_bytes=config.max_body_bytes)
    _add_error_handlers(app, config)
    api_key = load_api_key(config)
    _add_v1_routes(app, state, [Depends(_require_key(api_key))] if api_key else [])
    _add_ops_routes(app, state)
    return app


def _require_key(api_key: str):
    bearer = HTTPBearer(auto_error=False, description="The server's API key (GENREC_API_KEY or --api-key-file).")

    async def require_key(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise RequestError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'")

    return require_key


def _rid(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "-")


_PLAIN = {"extra_forbidden": "unknown field (allowed: see /openapi.json)", "missing": "required field missing"}


def _validation_message(errors: Sequence[dict]) -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        msg = _PLAIN.get(e.get("type"), e.get("msg", "invalid value"))
        if e.get("type") == "json_invalid":
            msg = f"not valid JSON ({e.get('ctx', {}).get('error', 'decode error')})"
            loc = f"body (character {loc})" if loc.isdigit() else loc
        elif e.get("type") == "model_attributes_type" and loc == "body":
            msg = "expected a JSON object (send Content-Type: application/json)"
        parts.append(f"{loc}: {msg}")
    return "invalid request: " + "; ".join(parts) + (f" (and {len(errors) - 5} more)" if len(errors) > 5 else "")


def _add_error_handlers(app: FastAPI, config: ServeConfig) -> None:
    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):
        headers = {"Retry-After": str(config.retry_after_s)} if exc.status == 503 else None
        if exc.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return _error(exc.status, exc.message, _rid(request), exc.extra, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()[:20]]
        return _error(422, _validation_message(exc.errors()), _rid(request), {"detail": detail})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        message = {404: f"no such endpoint: {request.method} {request.url.path} (see /docs)",
                   405: f"{request.method} is not allowed on {request.url.path} (see /docs)",
                   413: f"request body over {config.max_body_bytes} bytes (max_body_bytes)"}.get(exc.status_code)
        return _error(exc.status_code, message or str(exc.detail), _rid(request), headers=exc.headers)


ERRORS = {code: {"model": ErrorResponse, "description": text} for code, text in (
    (400, "unknown or ambiguous history items"), (401, "missing or wrong API key"),
    (413, "body, history or batch over the server's limits"), (422, "malformed request"),
    (503, "model not ready, queue full or shutting down; honour Retry-After"))}


def _prepare(state: ServerState, query: RecommendRequest) -> tuple[list[str], int]:
    k = check_query(query, beam=state.decode.beam, max_history=state.config.max_history)
    return state.index.resolve(query.history), k


def _add_v1_routes(app: FastAPI, state: ServerState, auth: list) -> None:
    beam = state.decode.beam

    @app.post("/v1/recommend", response_model=RecommendResponse, dependencies=auth, responses=ERRORS)
    async def recommend(query: RecommendRequest) -> RecommendResponse:
        """Top-k next items for one history (trie-constrained beam search, micro-batched with other requests)."""
        state.ensure_ready()
        history, k = _prepare(state, query)
        (rec,) = await state.submit([history])
        return state.index.answer(history, rec, k=k, exclude_history=query.exclude_history, beam=beam)

    @app.post("/v1/recommend/batch", response_model=BatchRecommendResponse, dependencies=auth, responses=ERRORS)
    async def recommend_batch(batch: BatchRecommendRequest) -> BatchRecommendResponse:
        """Several histories in one call; each answer is the one it would get alone."""
        state.ensure_ready()
        limit = min(state.config.max_batch_requests, state.config.max_queue)
        if len(batch.requests) > limit:
            raise RequestError(413, f"{len(batch.requests)} requests in one batch; this server takes at most {limit} "
                               "(max_batch_requests, max_queue): split it")
        prepared = []
        for n, query in enumerate(batch.requests):
            try:
                prepared.append(_prepare(state, query))
            except RequestError as e:
                raise RequestError(e.status, f"requests[{n}]: {e.message}", e.extra) from None
        recs = await state.submit([history for history, _ in prepared])
        return BatchRecommendResponse(results=[
            state.index.answer(history, rec, k=k, exclude_history=query.exclude_history, beam=beam)
            for (history, k), rec, query in zip(prepared, recs, batch.requests)])

    @app.get("/v1/items/{item_id}", response_model=ItemResponse, dependencies=auth, responses=ERRORS)
    async def item(item_id: Annotated[str, Path(max_length=1000)]) -> ItemResponse:
        """An item's title and Semantic ID."""
        state.ensure_ready()
        return state.index.item(item_id)


def _add_ops_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/healthz", response_model=StatusResponse, responses={503: {"model": StatusResponse}})
    async def healthz():
        """The process is up (503 only once loading the model has failed)."""
        code = 503 if state.status == "failed" else 200
        return JSONResponse({"status": "failed" if code == 503 else "ok"}, status_code=code)

    @app.get("/readyz", response_model=StatusResponse, responses={503: {"model": StatusResponse}})
    async def readyz():
        """Model loaded and a warm-up query answered (503 with Retry-After before)."""
        if state.status != "ready":
            return JSONResponse({"status": state.status}, status_code=503,
                                headers={"Retry-After": str(state.config.retry_after_s)})
        return StatusResponse(status="ready", items=len(state.index.sids), backend=state.backend)

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
