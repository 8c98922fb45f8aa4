"""``/v1/datasets``: upload, list, get and delete ``.npz`` datasets."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from api.deps import (
    OwnedDataset,
    SessionDep,
    StateDep,
    TenantDep,
    get_tenant,
    page_body,
    refuse_if_in_use,
)
from api.errors import Problem
from api.schemas import DatasetOut, Page
from api.uploads import check_content_length, receive
from api.validation import InvalidUpload, inspect_dataset, require_multipart
from db import repo
from db.models import Dataset, new_id

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    summary="Upload a dataset (.npz with 'x' and optional integer labels 'y')",
    responses={
        413: {"description": "Past the upload limit"},
        415: {"description": "Not a multipart/form-data body"},
        422: {"description": "Unusable"},
    },
    # authenticate first: a keyless request is a 401 whatever its body
    dependencies=[Depends(get_tenant), Depends(require_multipart)],
)
async def upload_dataset(
    request: Request,
    state: StateDep,
    session: SessionDep,
    tenant: TenantDep,
    file: Annotated[UploadFile, File(description="An .npz archive.")],
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> Dataset:
    """Stream to disk (size-capped), hash, validate shapes, dtypes and finiteness."""
    settings = state.settings
    check_content_length(request, settings.max_upload_bytes)
    tmp, sha, size = await receive(
        state.store, file, max_bytes=settings.max_upload_bytes, suffix=".npz"
    )
    try:
        try:
            info = await run_in_threadpool(
                inspect_dataset, tmp, max_bytes=settings.max_upload_bytes
            )
        except InvalidUpload as exc:
            raise Problem("invalid-dataset", str(exc)) from exc
        dataset_id = new_id()
        key = f"datasets/{dataset_id}/data.npz"
        state.store.put_file(key, tmp)
    finally:
        tmp.unlink(missing_ok=True)
    row = Dataset(
        id=dataset_id,
        tenant_id=tenant.id,
        name=name or file.filename or dataset_id,
        sha256=sha,
        size_bytes=size,
        n=info.n,
        x_shape=info.x_shape,
        has_labels=info.has_labels,
        storage_key=key,
    )
    session.add(row)
    session.commit()
    return row


@router.get("", response_model=Page[DatasetOut], summary="List datasets, newest first")
def list_datasets(
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """One page of the caller's datasets."""
    return page_body(session, Dataset, tenant_id=tenant.id, limit=limit, cursor=cursor)


@router.get("/{dataset_id}", response_model=DatasetOut, summary="Get a dataset")
def get_dataset(dataset: OwnedDataset) -> Dataset:
    """The dataset, or 404."""
    return dataset


@router.delete(
    "/{dataset_id}",
    status_code=204,
    responses={409: {"description": "A job that has not finished reads it"}},
    summary="Delete a dataset and its file",
)
def delete_dataset(dataset: OwnedDataset, session: SessionDep, state: StateDep) -> Response:
    """Delete the row and its stored file; 409 while a job that has not finished reads it."""
    jobs = repo.unfinished_jobs_using(session, tenant_id=dataset.tenant_id, dataset_id=dataset.id)
    refuse_if_in_use(jobs)
    key = dataset.storage_key
    session.delete(dataset)
    session.commit()
    state.store.delete(key)
    return Response(status_code=204)
