"""Receiving multipart uploads: the size cap (413) and a streamed copy with its sha256."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request, UploadFile
from starlette.concurrency import run_in_threadpool

from api.errors import Problem
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
