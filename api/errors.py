"""RFC 9457 problem details for every ``/v1`` error, with a stable ``type`` per kind.

Routes raise :class:`Problem`; the handlers installed by :func:`install` also turn
FastAPI's validation errors and Starlette's 404/405 into problem+json. Paths under
``/v2`` (the Open Inference Protocol) keep that protocol's ``{"error": "..."}`` body.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from db.session import is_transient

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://bitfactor.dev/problems/"
log = logging.getLogger("bitfactor.api")
RETRY_AFTER_SECONDS = 5

# Every kind of error the API answers with, its status and title (docs/api.md lists them).
KINDS: dict[str, tuple[int, str]] = {
    "bad-request": (400, "Bad request"),
    "invalid-cursor": (400, "Invalid pagination cursor"),
    "unauthorized": (401, "Missing or invalid API key"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "job-not-finished": (409, "The job has not succeeded"),
    "job-already-finished": (409, "The job has already finished"),
    "resource-in-use": (409, "A job that has not finished uses it"),
    "payload-too-large": (413, "Payload too large"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "validation-error": (422, "Invalid request"),
    "invalid-model": (422, "The uploaded model is not usable"),
    "invalid-dataset": (422, "The uploaded dataset is not usable"),
    "invalid-reference": (422, "A referenced resource does not exist"),
    "incompatible-dataset": (422, "The dataset does not fit the model"),
    "idempotency-conflict": (422, "Idempotency-Key reused with a different request"),
    "invalid-input": (422, "The inputs do not fit the model"),
    "rate-limited": (429, "Too many requests"),
    "request-timeout": (503, "The request took too long"),
    "broker-unavailable": (503, "The job queue is unavailable"),
    "service-unavailable": (503, "A backing service is unavailable; retry later"),
    "artifact-corrupted": (503, "A stored file failed its checksum"),
    "internal-error": (500, "Internal server error"),
}


def problem_type(kind: str) -> str:
    """The stable ``type`` URI of an error kind."""
    return TYPE_BASE + kind


class Problem(Exception):
    """An error answered as problem+json (or ``{"error": ...}`` under ``/v2``)."""

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        default_status, self.title = KINDS[kind]
        self.kind = kind
        self.status = status or default_status
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra
        super().__init__(detail)


def _render(request: Request, problem: Problem) -> JSONResponse:
    if request.url.path.startswith("/v2"):
        return JSONResponse(
            {"error": problem.detail}, status_code=problem.status, headers=problem.headers
        )
    body = {
        "type": problem_type(problem.kind),
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": request.url.path,
        **problem.extra,
    }
    return JSONResponse(
        body, status_code=problem.status, headers=problem.headers, media_type=PROBLEM_JSON
    )


def _jsonable_errors(errors: Any) -> list[dict[str, Any]]:
    cleaned = []
    for error in errors:
        cleaned.append(
            {
                "loc": [str(part) for part in error.get("loc", ())],
                "msg": str(error.get("msg", "")),
                "type": str(error.get("type", "")),
            }
        )
    return cleaned


_STATUS_KIND = {
    400: "bad-request",
    401: "unauthorized",
    404: "not-found",
    405: "method-not-allowed",
    409: "job-not-finished",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
}


def install(app: FastAPI) -> None:
    """Register the handlers that render every error as a problem."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return _render(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _jsonable_errors(exc.errors())
        summary = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5])
        if any(e.get("type") == "json_invalid" for e in errors):  # not JSON at all
            return _render(
                request, Problem("bad-request", f"the body is not valid JSON: {summary}")
            )
        return _render(request, Problem("validation-error", summary, errors=errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _STATUS_KIND.get(exc.status_code, "bad-request" if exc.status_code < 500 else "")
        if not kind:
            kind = "internal-error"
        detail = exc.detail if isinstance(exc.detail, str) else KINDS[kind][1]
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return _render(
            request,
            Problem(kind, detail, status=exc.status_code, headers=dict(exc.headers or {})),
        )

    @app.exception_handler(DBAPIError)
    @app.exception_handler(SATimeoutError)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        if not is_transient(exc):
            log.error("database error on %s %s", request.method, request.url.path, exc_info=exc)
            return _render(request, Problem("internal-error", "an unexpected error occurred"))
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        return _render(
            request,
            Problem(
                "service-unavailable",
                "the database is unavailable; retry after the delay in Retry-After",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _render(request, Problem("internal-error", "an unexpected error occurred"))
