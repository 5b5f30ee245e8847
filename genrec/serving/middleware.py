"""Errors and middleware of the recommendation API: `RequestError` (a 4xx with its reason) and the handlers that
turn every error into JSON ``{"error": message, "request_id": ...}`` (no traceback reaches a client), the
Prometheus `Metrics` of an app, and `RequestContext`, the ASGI middleware around every request (request id,
body-size cap, the catch-all 500, one access-log line).

Example:
    >>> app.add_middleware(RequestContext, metrics=Metrics(), max_body_bytes=1 << 20)  # doctest: +SKIP
    >>> add_error_handlers(app, ServeConfig())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from genrec.serving.config import ServeConfig

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("genrec.serving.access")

# ----------------------------------------------------------------------------- errors


class RequestError(ValueError):
    """A request the server cannot answer as sent: HTTP `status` (4xx), a message that says why, extra fields."""

    def __init__(self, status: int, message: str, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra or {}


class ErrorResponse(BaseModel):
    error: str
    request_id: str


ERRORS = {code: {"model": ErrorResponse, "description": text} for code, text in (
    (400, "unknown or ambiguous history items"), (401, "missing or wrong API key"),
    (413, "body, history or batch over the server's limits"), (422, "malformed request"),
    (503, "model not ready, queue full or shutting down; honour Retry-After"))}


def _error(status: int, message: str, request_id: str, extra: dict | None = None,
           headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "request_id": request_id, **(extra or {})}, status_code=status,
                        headers=headers)


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


def add_error_handlers(app: FastAPI, config: ServeConfig) -> None:
    """Answer `RequestError`, request validation errors and Starlette's HTTP errors (404, 405, 413) as JSON with the
    request id; 503 carries Retry-After, 401 WWW-Authenticate."""
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


_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # a client's X-Request-ID is echoed only when it looks like one


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
    (Content-Length before anything reads the body, then the bytes actually received), the catch-all that turns an
    exception into a 500 without its traceback (logged here), and one access-log line plus metrics per request."""

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
