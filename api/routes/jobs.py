"""``/v1/jobs``: start, list, watch, cancel jobs; read their logs; download artifacts."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.deps import OwnedJob, SessionDep, StateDep, TenantDep, page_body
from api.errors import Problem
from api.schemas import JobCreate, JobOut, JobStatus, Page
from db import repo
from db.models import TERMINAL_STATUSES, Dataset, Job, ModelFile, new_id, utcnow
from db.storage import StorageError

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
log = logging.getLogger("bitfactor.api")
DOWNLOAD_CHUNK = 1 << 20


def _request_hash(body: JobCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _existing(session: Session, tenant_id: str, key: str, digest: str) -> Job | None:
    job = session.query(Job).filter_by(tenant_id=tenant_id, idempotency_key=key).one_or_none()
    if job is not None and job.request_hash != digest:
        raise Problem(
            "idempotency-conflict",
            "this Idempotency-Key was used with a different request body",
            job_id=job.id,
        )
    return job


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Start a binarization job",
    responses={202: {"headers": {"Location": {"description": "/v1/jobs/{id}"}}}},
)
def create_job(
    body: JobCreate,
    response: Response,
    state: StateDep,
    session: SessionDep,
    tenant: TenantDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=200,
            description="Same key and body: the same job; same key, other body: 422.",
        ),
    ] = None,
) -> Job:
    """Queue a job; poll the ``Location`` for its status."""
    digest = _request_hash(body)
    if idempotency_key:
        job = _existing(session, tenant.id, idempotency_key, digest)
        if job is not None:
            response.headers["Location"] = f"/v1/jobs/{job.id}"
            return job
    model = repo.get_owned(session, ModelFile, tenant_id=tenant.id, row_id=body.model_id)
    dataset = repo.get_owned(session, Dataset, tenant_id=tenant.id, row_id=body.dataset_id)
    val = (
        repo.get_owned(session, Dataset, tenant_id=tenant.id, row_id=body.val_dataset_id)
        if body.val_dataset_id
        else None
    )
    missing = [
        f"{kind} {row_id}"
        for kind, row_id, row in (
            ("model", body.model_id, model),
            ("dataset", body.dataset_id, dataset),
            ("validation dataset", body.val_dataset_id, val if body.val_dataset_id else True),
        )
        if row is None
    ]
    if missing:
        raise Problem("invalid-reference", "no " + " and no ".join(missing))
    assert model is not None
    for data in (dataset, val):
        if (
            data is not None
            and model.input_shape is not None
            and list(data.x_shape[1:]) != list(model.input_shape)
        ):
            raise Problem(
                "incompatible-dataset",
                f"the model takes inputs of shape {model.input_shape} (without the batch); "
                f"dataset {data.id}'s x has shape {data.x_shape}",
            )
    job = Job(
        id=new_id(),
        tenant_id=tenant.id,
        model_id=body.model_id,
        dataset_id=body.dataset_id,
        val_dataset_id=body.val_dataset_id,
        config=body.config.model_dump(mode="json"),
        status="queued",
        idempotency_key=idempotency_key or None,
        request_hash=digest,
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        # A concurrent request with the same key won the race: answer with its job.
        session.rollback()
        assert idempotency_key
        winner = _existing(session, tenant.id, idempotency_key, digest)
        assert winner is not None
        response.headers["Location"] = f"/v1/jobs/{winner.id}"
        return winner
    try:
        state.enqueue(job.id)
    except Exception as exc:
        log.exception("enqueueing job %s failed", job.id)
        repo.finish_job(session, job_id=job.id, status="failed", error="the queue is unavailable")
        raise Problem("broker-unavailable", f"the job could not be queued: {exc}") from exc
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


@router.get("", response_model=Page[JobOut], summary="List jobs, newest first")
def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """One page of the caller's jobs."""
    filters = [Job.status == status] if status else []
    return page_body(session, Job, tenant_id=tenant.id, limit=limit, cursor=cursor, filters=filters)


@router.get("/{job_id}", response_model=JobOut, summary="Get a job (poll this)")
def get_job(job: OwnedJob) -> Job:
    """Status, progress, and the result or error."""
    return job


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobOut,
    summary="Cancel a job",
    responses={409: {"description": "The job has already finished"}},
)
def cancel_job(job: OwnedJob, session: SessionDep) -> Job:
    """A queued job never starts; a running one stops at its next step and ends canceled."""
    if job.status in TERMINAL_STATUSES:
        raise Problem("job-already-finished", f"the job is already {job.status}")
    for current, new in (("queued", "canceled"), ("running", "canceling")):
        values: dict[str, Any] = {"status": new}
        if new == "canceled":
            values["finished_at"] = utcnow()
        done = session.execute(
            update(Job).where(Job.id == job.id, Job.status == current).values(**values)
        ).rowcount  # type: ignore[attr-defined]
        if done:
            break
    session.commit()
    session.refresh(job)
    if job.status not in ("canceling", "canceled"):
        raise Problem("job-already-finished", f"the job is already {job.status}")
    return job


@router.get(
    "/{job_id}/logs",
    response_class=PlainTextResponse,
    summary="The job's log (text)",
    responses={200: {"content": {"text/plain": {}}}},
)
def job_logs(job: OwnedJob, state: StateDep) -> PlainTextResponse:
    """Every line the worker wrote for the job so far."""
    path = state.store.local_path(f"jobs/{job.id}/log.txt")
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    return PlainTextResponse(text)


@router.get(
    "/{job_id}/artifact",
    response_class=FileResponse,
    summary="Download the packed model (.bfm)",
    responses={
        200: {"content": {"application/octet-stream": {}}, "headers": {"ETag": {}}},
        304: {"description": "Not modified (If-None-Match)"},
        409: {"description": "The job has not succeeded"},
    },
)
@router.head("/{job_id}/artifact", include_in_schema=False)
def download_artifact(job: OwnedJob, state: StateDep, request: Request) -> Response:
    """The ``.bfm`` file, its checksum verified first; ``ETag`` is its sha256. ``HEAD``
    answers the same headers without the body."""
    if job.status != "succeeded" or not job.artifact_key or not job.artifact_sha256:
        raise Problem("job-not-finished", f"the job is {job.status}; no artifact yet")
    etag = f'"{job.artifact_sha256}"'
    if _etag_matches(request.headers.get("if-none-match"), job.artifact_sha256):
        return Response(status_code=304, headers={"ETag": etag})
    try:
        path = state.store.verified_path(job.artifact_key, job.artifact_sha256)
        size = path.stat().st_size
    except (StorageError, OSError) as exc:
        raise Problem("artifact-corrupted", str(exc)) from exc
    headers = {
        "ETag": etag,
        "Content-Length": str(size),
        "Content-Disposition": f'attachment; filename="{job.id}.bfm"',
    }
    if request.method == "HEAD":
        return Response(media_type="application/octet-stream", headers=headers)
    return StreamingResponse(
        _checked_chunks(path, job.artifact_sha256),
        media_type="application/octet-stream",
        headers=headers,
    )


def _etag_matches(header: str | None, sha256: str) -> bool:
    """``If-None-Match`` against the artifact's tag (RFC 9110): ``*``, or a list of tags
    compared weakly (``W/"..."`` matches), a bare sha256 accepted too."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    for tag in header.split(","):
        tag = tag.strip().removeprefix("W/")
        if tag in (f'"{sha256}"', sha256):
            return True
    return False


def _checked_chunks(path: Path, sha256: str) -> Iterator[bytes]:
    """The file's bytes, hashed as they go out; the last chunk is held back until the hash
    matches, so a file that went bad after its last check (bit rot leaves no trace in its
    stat) is never sent whole: the connection is dropped short of ``Content-Length``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        held = handle.read(DOWNLOAD_CHUNK)
        while True:
            digest.update(held)
            following = handle.read(DOWNLOAD_CHUNK)
            if not following:
                break
            yield held
            held = following
    if digest.hexdigest() != sha256:
        log.error("artifact %s failed its checksum while being sent; dropped", path)
        raise StorageError(f"{path} is corrupted")
    yield held
