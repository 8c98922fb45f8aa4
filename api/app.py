"""The FastAPI application: routers, problem+json errors, metrics middleware.

``create_app(settings)`` builds one app; ``app`` (module attribute, created lazily by
``uvicorn api.app:app``-style loaders through :func:`__getattr__`) uses the environment.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from fastapi import FastAPI
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors, limits, metrics
from api.errors import PROBLEM_JSON
from api.routes import datasets, jobs, models, ops, predict, v2
from api.schemas import ProblemOut, V2Error
from api.state import AppState
from api.uploads import UploadLimitMiddleware
from bitfactor import __version__
from bitfactor.settings import Settings, get_settings

DESCRIPTION = """
Upload a real-valued model and a dataset, start a binarization job, watch it, download
the packed `.bfm` model and run it. Authenticate with `Authorization: Bearer <api key>`
(`bitfactor keys create --tenant NAME`). Errors under `/v1` are RFC 9457
`application/problem+json` with a stable `type`; `/v2` is the Open Inference Protocol.
"""


def _route_template(app: Any, scope: Scope) -> str:
    # The router records the matched route in the (shared) scope; the template, not the
    # raw path, keeps the label set small.
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    for candidate in app.router.routes:
        match, _ = candidate.matches(scope)
        if match == Match.FULL:
            return str(getattr(candidate, "path", "unmatched"))
    return "unmatched"


class ObserveMiddleware:
    """Request latency by method, route template and status
    (``bitfactor_http_request_duration_seconds``).

    A plain ASGI middleware: ``@app.middleware("http")`` (``BaseHTTPMiddleware``) runs the
    rest of the stack in a separate task with memory streams, which cost about a
    millisecond of CPU per request on the predict path.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            metrics.REQUEST_LATENCY.labels(
                scope["method"], _route_template(scope["app"], scope), str(status)
            ).observe(time.perf_counter() - start)


# Error responses whose body is not an error (a model that is not ready answers 400).
OWN_ERROR_BODIES = {("/v2/models/{name}/ready", "400")}


def _document_errors(app: FastAPI) -> None:
    """Every operation's error responses in its OpenAPI schema, with their real bodies.

    Errors can come from a route, from validation, or from a middleware (413, 429, 503)
    on any operation; each documents ``4XX`` and ``5XX``, and every error code it names
    carries the body it really has: problem+json, or ``{"error"}`` under ``/v2``. Operations
    that need a key say so (``security``: bearer).
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "An API key."}
        }
        components = schema["components"].setdefault("schemas", {})
        components["ProblemOut"] = ProblemOut.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        components["V2Error"] = V2Error.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        for path, operations in schema.get("paths", {}).items():
            if path.startswith("/v2"):
                media, ref, text = "application/json", "V2Error", '`{"error": "..."}`'
            else:
                media, ref, text = PROBLEM_JSON, "ProblemOut", "An RFC 9457 problem"
            body = {media: {"schema": {"$ref": f"#/components/schemas/{ref}"}}}
            for operation in operations.values():
                if path.startswith(("/v1/", "/v2/models/")):
                    operation["security"] = [{"bearer": []}]
                responses = operation.setdefault("responses", {})
                for code in ("4XX", "5XX"):
                    responses.setdefault(code, {"description": f"{text} (see docs/api.md)."})
                for code, response in responses.items():
                    if code[0] in "45" and (path, code) not in OWN_ERROR_BODIES:
                        response["content"] = body
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new API application for ``settings`` (default: the environment)."""
    settings = settings or get_settings()
    state = AppState.from_settings(settings)
    app = FastAPI(
        title="bitfactor",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "models", "description": "Real-valued models to binarize."},
            {"name": "datasets", "description": "Training data (.npz)."},
            {"name": "jobs", "description": "Binarization jobs, their logs and artifacts."},
            {"name": "predict", "description": "Run a job's packed model."},
            {"name": "inference protocol (v2)", "description": "KServe Open Inference."},
            {"name": "operations", "description": "Metrics and health."},
        ],
    )
    app.state.bitfactor = state
    metrics.JOBS.sessions = state.sessions
    errors.install(app)
    problem = {
        "model": ProblemOut,
        "content": {"application/problem+json": {}},
        "description": "An RFC 9457 problem (see docs/api.md for every type).",
    }
    # Routes are matched in order: predict, the hot path, is tried first.
    for module in (predict, models, datasets, jobs):
        app.include_router(module.router, responses={"4XX": problem, "5XX": problem})
    for module in (v2, ops):
        app.include_router(module.router)

    app.add_middleware(
        UploadLimitMiddleware,
        max_bytes=settings.max_upload_bytes,
        prefixes=("/v1/models", "/v1/datasets"),
    )
    limits.install(app, settings)
    _document_errors(app)

    app.add_middleware(ObserveMiddleware)

    return app


def create_server_app() -> FastAPI:
    """:func:`create_app` for a long-lived server process (``bitfactor serve``).

    What start-up allocated (modules, routes, schemas) is moved out of the garbage
    collector's reach: a full collection then walks only what requests allocate, instead
    of every object of FastAPI, SQLAlchemy and numpy (tens of ms, in one request's latency).
    """
    app = create_app()
    gc.collect()
    gc.freeze()
    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        return create_app()
    raise AttributeError(name)
