"""``/v1/models``: upload, list, get and delete real-valued models."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from api.deps import (
    OwnedModel,
    SessionDep,
    StateDep,
    TenantDep,
    get_tenant,
    page_body,
    refuse_if_in_use,
)
from api.errors import Problem
from api.schemas import ModelOut, Page
from api.uploads import check_content_length, receive
from api.validation import InvalidUpload, inspect_model, require_multipart
from db import repo
from db.models import ModelFile, new_id

router = APIRouter(prefix="/v1/models", tags=["models"])
EXTENSIONS = {"onnx": ".onnx", "safetensors": ".safetensors", "pt": ".pt"}


def _arch_kwargs(raw: str | None) -> dict[str, Any] | None:
    if raw is None or not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise Problem("validation-error", f"arch_kwargs is not valid JSON: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise Problem("validation-error", "arch_kwargs must be a JSON object")
    return value


@router.post(
    "",
    status_code=201,
    response_model=ModelOut,
    summary="Upload a model (ONNX, safetensors state dict, or weights-only .pt)",
    responses={
        413: {"description": "Past the upload limit"},
        415: {"description": "Not a multipart/form-data body"},
        422: {"description": "Unusable"},
    },
    # authenticate first: a keyless request is a 401 whatever its body
    dependencies=[Depends(get_tenant), Depends(require_multipart)],
)
async def upload_model(
    request: Request,
    state: StateDep,
    session: SessionDep,
    tenant: TenantDep,
    file: Annotated[UploadFile, File(description="The model file.")],
    name: Annotated[str | None, Form(max_length=200)] = None,
    arch: Annotated[
        str | None, Form(max_length=100, description="Built-in architecture (safetensors).")
    ] = None,
    arch_kwargs: Annotated[
        str | None, Form(description="JSON object of the architecture's arguments.")
    ] = None,
) -> ModelFile:
    """Stream the file to disk (size-capped), hash it, check it, import it in a subprocess.

    The format is judged from the bytes; the file part's content type is not consulted.
    """
    settings = state.settings
    check_content_length(request, settings.max_upload_bytes)
    kwargs = _arch_kwargs(arch_kwargs)
    tmp, sha, size = await receive(
        state.store, file, max_bytes=settings.max_upload_bytes, suffix=".upload"
    )
    try:
        try:
            info = await run_in_threadpool(
                inspect_model,
                tmp,
                arch=arch or None,
                arch_kwargs=kwargs,
                timeout=settings.inspect_timeout,
                max_memory_bytes=settings.inspect_max_memory_mb * 2**20,
                max_cpu_seconds=settings.inspect_max_cpu_seconds,
            )
        except InvalidUpload as exc:
            raise Problem("invalid-model", str(exc)) from exc
        model_id = new_id()
        key = f"models/{model_id}/model{EXTENSIONS.get(info.format, '.bin')}"
        state.store.put_file(key, tmp)
    finally:
        tmp.unlink(missing_ok=True)
    row = ModelFile(
        id=model_id,
        tenant_id=tenant.id,
        name=name or file.filename or model_id,
        format=info.format,
        sha256=sha,
        size_bytes=size,
        input_shape=info.input_shape,
        num_params=info.num_params,
        arch=arch or None,
        arch_kwargs=kwargs,
        storage_key=key,
    )
    session.add(row)
    session.commit()
    return row


@router.get("", response_model=Page[ModelOut], summary="List models, newest first")
def list_models(
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """One page of the caller's models."""
    return page_body(session, ModelFile, tenant_id=tenant.id, limit=limit, cursor=cursor)


@router.get("/{model_id}", response_model=ModelOut, summary="Get a model")
def get_model(model: OwnedModel) -> ModelFile:
    """The model, or 404."""
    return model


@router.delete(
    "/{model_id}",
    status_code=204,
    responses={409: {"description": "A job that has not finished reads it"}},
    summary="Delete a model and its file",
)
def delete_model(model: OwnedModel, session: SessionDep, state: StateDep) -> Response:
    """Delete the row and its stored file (jobs that used it keep their results); 409
    while a job that has not finished reads it."""
    refuse_if_in_use(
        repo.unfinished_jobs_using(session, tenant_id=model.tenant_id, model_id=model.id)
    )
    key = model.storage_key
    session.delete(model)
    session.commit()
    state.store.delete(key)
    return Response(status_code=204)
