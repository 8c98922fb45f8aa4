"""``POST /v1/jobs/{id}/predict``: run a job's packed model in this process (``runtime``)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from api import metrics
from api.deps import StateDep, bearer_key, invalid_key
from api.errors import Problem
from api.predictor import LoadedModel, json_numbers_only
from api.schemas import PredictRequest, PredictResponse
from api.state import AppState
from db import repo
from db.models import Job
from db.storage import StorageError

router = APIRouter(prefix="/v1/jobs", tags=["predict"])


def load_job_model(state: AppState, job: Job) -> LoadedModel:
    """The job's packed model from the cache, loaded (checksum verified) on first use."""
    return _load_artifact(state, job.status, job.artifact_key, job.artifact_sha256)


def _load_artifact(
    state: AppState, status: str, artifact_key: str | None, sha256: str | None
) -> LoadedModel:
    if status != "succeeded" or not artifact_key or not sha256:
        raise Problem("job-not-finished", f"the job is {status}; nothing to run yet")
    try:
        path = state.store.verified_path(artifact_key, sha256)
        return state.models.get(sha256, path)
    except StorageError as exc:
        raise Problem("artifact-corrupted", str(exc)) from exc
    except ValueError as exc:  # runtime.FormatError
        raise Problem("artifact-corrupted", f"the packed model does not load: {exc}") from exc


def _job_for_key(state: AppState, key: str, job_id: str) -> repo.JobForKey:
    found = repo.job_for_key(state.engine, key=key, secret=state.settings.secret_key, job_id=job_id)
    if found is None:
        raise invalid_key()
    return found


async def find_job(state: AppState, *, key: str, job_id: str) -> repo.JobForKey:
    """Job ``job_id`` if the tenant of ``key`` owns it (``status`` None when it does not);
    401 for a bad key.

    The answers of ``TenantDep`` + ``OwnedJob`` from one query on a pooled connection
    instead of two ORM sessions: the predict hot path. On SQLite the query runs on the
    event loop (a local read of ~20 us that never waits on a writer in WAL mode); a thread
    hop costs 10x that. A networked database is queried from the thread pool.
    """
    if state.local_database:
        return _job_for_key(state, key, job_id)
    return await run_in_threadpool(_job_for_key, state, key, job_id)


async def job_model(state: AppState, job: repo.JobForKey) -> LoadedModel:
    """The loaded model of a found job (409 unless it succeeded, 503 if its file is bad).

    On the event loop when the model is loaded and its file unchanged since it was
    verified (a stat); else read, hashed and loaded in the thread pool.
    """
    status, artifact, sha256 = job.status or "", job.artifact_key, job.artifact_sha256
    if status == "succeeded" and artifact and sha256 and state.store.is_verified(artifact, sha256):
        loaded = state.models.peek(sha256)
        if loaded is not None:
            return loaded
    return await run_in_threadpool(_load_artifact, state, status, artifact, sha256)


async def serving_model(job_id: str, request: Request, state: StateDep) -> LoadedModel:
    """Dependency: the caller's job's loaded model (401, 404, 409 or 503 otherwise).

    Runs before the body is validated, so a bad key is a 401 whatever the body.
    """
    job = await find_job(state, key=bearer_key(request), job_id=job_id)
    if job.status is None:
        raise Problem("not-found", f"no job {job_id}")
    return await job_model(state, job)


ServingModel = Annotated[LoadedModel, Depends(serving_model)]


def to_array(inputs: Any, *, max_elements: int) -> np.ndarray:
    """Nested lists to a float array; ValueError for ragged or non-numeric input."""
    if not json_numbers_only(inputs):
        raise ValueError(
            "inputs must be a rectangular nested list of JSON numbers (batch first); "
            "strings and booleans are not numbers"
        )
    try:
        array = np.asarray(inputs, dtype=np.float64)
    except (ValueError, TypeError, OverflowError) as exc:  # OverflowError: a huge integer
        raise ValueError(
            "inputs must be a rectangular nested list of numbers (batch first)"
        ) from exc
    if array.size > max_elements:
        raise ValueError(f"{array.size} values is more than the limit of {max_elements}")
    return array


def top_k(scores: np.ndarray, k: int) -> list[dict[str, list[Any]]]:
    """The ``k`` best classes of each row of a (batch, classes) array."""
    if k == 0 or scores.ndim != 2:
        return []
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [
        {"indices": [int(i) for i in row], "scores": json_floats(scores[b, row])}
        for b, row in enumerate(order)
    ]


@router.post(
    "/{job_id}/predict",
    response_model=PredictResponse,
    summary="Run the job's binary model on a batch",
    responses={409: {"description": "The job has not succeeded"}},
)
async def predict(body: PredictRequest, model: ServingModel, state: StateDep) -> Response:
    """Outputs of the packed model (first output), and its top classes per row."""
    try:
        x = model.check(
            to_array(body.inputs, max_elements=state.settings.predict_max_elements),
            max_elements=state.settings.predict_max_elements,
            max_batch=state.settings.predict_max_batch,
        )
    except ValueError as exc:
        raise Problem("invalid-input", str(exc)) from exc
    start = time.perf_counter()
    outputs = await model.run_async(x)
    metrics.PREDICT_LATENCY.labels(protocol="v1").observe(time.perf_counter() - start)
    name = model.outputs[0].name
    first = outputs[name]
    answer = {"outputs": json_floats(first), "top_k": top_k(first, body.top_k), "output_name": name}
    # Serialized here: returning a dict would have FastAPI validate it against
    # PredictResponse again (the route's response_model documents the same shape).
    return Response(json.dumps(answer, allow_nan=False), media_type="application/json")


def json_floats(values: np.ndarray) -> Any:
    """``values`` as nested lists of floats, NaN and infinities as ``null`` (JSON has none)."""
    listed = values.astype(np.float64)
    if np.isfinite(listed).all():
        return listed.tolist()
    cells = listed.astype(object)
    cells[~np.isfinite(listed)] = None
    return cells.tolist()
