"""The recommendation API: `create_app`, the FastAPI app factory, and its routes. `genrec serve`
(genrec.serving.server) runs it under uvicorn. The answers and the item index are in genrec.serving.answers, errors
and middleware in genrec.serving.middleware.

Endpoints: ``POST /v1/recommend``, ``POST /v1/recommend/batch``, ``GET /v1/items/{item_id}`` (Bearer key when one is
configured), ``GET /healthz`` (process up), ``GET /readyz`` (model loaded and a warm-up query answered; 503 before),
``GET /metrics`` (Prometheus), ``GET /openapi.json`` and ``/docs``. Every error is JSON
``{"error": message, "request_id": ...}``; no traceback reaches a client.

Example:
    >>> app = create_app(recommender, ServeConfig(), DecodeConfig(beam=20))  # doctest: +SKIP
    >>> TestClient(app).post("/v1/recommend", json={"history": ["i1", "i7"], "k": 5}).json()  # doctest: +SKIP
    {'items': [{'item_id': 'i3', 'title': '...', 'sid': '<a_1><b_2><c_3>', 'score': -0.41}, ...], ...}
    >>> TestClient(app).post("/v1/recommend", json={"history": ["i1"], "explain": True}).json()  # doctest: +SKIP
    {'items': [{..., 'explanation': [{'interest': 'lab safety', 'score': 0.81, 'history_item': 'i1', ...}]}, ...]}
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from genrec.decoding.beam import DecodeConfig
from genrec.decoding.trie import Recommendation
from genrec.serving.answers import (
    BatchRecommendRequest,
    BatchRecommendResponse,
    ItemIndex,
    ItemResponse,
    RecommendRequest,
    RecommendResponse,
    StatusResponse,
    check_query,
)
from genrec.serving.batcher import MicroBatcher, Unavailable
from genrec.serving.config import ServeConfig, load_api_key
from genrec.serving.middleware import ERRORS, Metrics, RequestContext, RequestError, add_error_handlers

logger = logging.getLogger(__name__)

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
            self.index = ItemIndex(self.recommender.sid_strings, self.recommender.titles,
                                   getattr(self.recommender, "interests", None))
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
    add_error_handlers(app, config)
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


def _prepare(state: ServerState, query: RecommendRequest) -> tuple[list[str], int]:
    k = check_query(query, beam=state.decode.beam, max_history=state.config.max_history)
    return state.index.resolve(query.history), k


def _add_v1_routes(app: FastAPI, state: ServerState, auth: list) -> None:
    beam = state.decode.beam

    @app.post("/v1/recommend", response_model=RecommendResponse, dependencies=auth, responses=ERRORS)
    async def recommend(query: RecommendRequest) -> RecommendResponse:
        """Top-k next items for one history (trie-constrained beam search, micro-batched with other requests);
        with explain: true, each item's interests that connect it to the history."""
        state.ensure_ready()
        history, k = _prepare(state, query)
        (rec,) = await state.submit([history])
        return state.index.answer(history, rec, k=k, exclude_history=query.exclude_history, beam=beam,
                                  explain=query.explain)

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
            state.index.answer(history, rec, k=k, exclude_history=query.exclude_history, beam=beam,
                               explain=query.explain)
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
