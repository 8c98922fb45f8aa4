"""Receiving multipart uploads: the size cap (413) and a streamed copy with its sha256."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import Request, UploadFile
from starlette.concurrency import run_in_threadpool

from api.errors import KINDS, PROBLEM_JSON, Problem, problem_type
from db.storage import CHUNK, LocalArtifactStore, TooLarge

MULTIPART_OVERHEAD = 64 * 1024


def check_content_length(request: Request, max_bytes: int) -> None:
    """Refuse early (413) a request whose declared body is past the cap."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD:
        raise Problem(
            "payload-too-large", f"uploads are limited to {max_bytes} bytes", max_bytes=max_bytes
        )


async def receive(
    store: LocalArtifactStore, upload: UploadFile, *, max_bytes: int, suffix: str
) -> tuple[Path, str, int]:
    """Copy an upload to a temp file in the store; returns (path, sha256, size)."""
    tmp = store.temp_path(suffix)
    key = str(tmp.relative_to(store.root))

    def copy() -> tuple[str, int]:
        upload.file.seek(0)
        return store.put_stream(
            key, iter(lambda: upload.file.read(CHUNK), b""), max_bytes=max_bytes
        )

    try:
        sha, size = await run_in_threadpool(copy)
    except TooLarge as exc:
        tmp.unlink(missing_ok=True)
        raise Problem(
            "payload-too-large", f"uploads are limited to {max_bytes} bytes", max_bytes=max_bytes
        ) from exc
    if size == 0:
        tmp.unlink(missing_ok=True)
        raise Problem("validation-error", "the uploaded file is empty")
    return tmp, sha, size


class UploadLimitMiddleware:
    """Cap the bytes an upload route reads, also when no ``Content-Length`` is sent.

    Starlette spools a multipart body to disk before the route runs; counting in
    ``receive`` stops a chunked upload at the cap instead of after it was all written.
    """

    def __init__(self, app: Any, *, max_bytes: int, prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.limit = max_bytes + MULTIPART_OVERHEAD
        self.max_bytes = max_bytes
        self.prefixes = prefixes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].rstrip("/").endswith(self.prefixes)
        ):
            await self.app(scope, receive, send)
            return
        seen = 0
        exceeded = False

        async def counted() -> Any:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    exceeded = True
                    # Ends the body early; whatever the parser answers is replaced below.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Any) -> None:
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            body = json.dumps(
                {
                    "type": problem_type("payload-too-large"),
                    "title": KINDS["payload-too-large"][1],
                    "status": 413,
                    "detail": f"uploads are limited to {self.max_bytes} bytes",
                    "instance": scope["path"],
                    "max_bytes": self.max_bytes,
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [
                        (b"content-type", PROBLEM_JSON.encode()),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
