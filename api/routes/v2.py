"""The Open Inference Protocol (KServe v2) under ``/v2``; model name = job id.

JSON tensors and the binary tensor data extension (``Inference-Header-Content-Length``)
are both accepted, so stock KServe/Triton HTTP clients work. Errors keep the protocol's
``{"error": "..."}`` body.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api import metrics
from api.deps import SessionDep, StateDep, TenantDep, bearer_key
from api.errors import Problem
from api.predictor import LoadedModel, TensorSpec, json_numbers_only
from api.routes.predict import find_job, job_model, json_floats, load_job_model
from api.schemas import V2InferResponse, V2ModelMetadata, V2ModelReady, V2ServerMetadata
from db import repo
from db.models import Job

router = APIRouter(prefix="/v2", tags=["inference protocol (v2)"])
HEADER_LENGTH = "Inference-Header-Content-Length"
VERSION = "1"
DATATYPES = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
}


def _version(request: Request, name: str) -> None:
    """404 for a version other than the one each model has (``/versions/1/...``)."""
    version = request.path_params.get("version")
    if version is not None and version != VERSION:
        raise Problem("not-found", f"model {name!r} has no version {version!r}, only {VERSION!r}")


def _job(session: SessionDep, tenant: TenantDep, name: str) -> Job:
    job = repo.get_owned(session, Job, tenant_id=tenant.id, row_id=name)
    if job is None:
        raise Problem("not-found", f"no model {name!r}")
    return job


def _model(state: StateDep, job: Job) -> LoadedModel:
    if job.status != "succeeded":
        raise Problem("not-found", f"model {job.id!r} is not available (job {job.status})")
    return load_job_model(state, job)


def _tensor_meta(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "datatype": "FP32",
        "shape": [-1 if d is None else d for d in spec.shape],
    }


@router.get("/health/live", summary="Liveness")
def live() -> dict[str, bool]:
    """The server process answers."""
    return {"live": True}


@router.get("/health/ready", summary="Readiness")
def ready(state: StateDep, session: SessionDep) -> dict[str, bool]:
    """The server can reach its database."""
    session.execute(select(Job.id).limit(1))
    return {"ready": True}


@router.get("", summary="Server metadata", response_model=V2ServerMetadata)
def server_metadata() -> dict[str, Any]:
    """Name, version and protocol extensions."""
    from bitfactor import __version__

    return {"name": "bitfactor", "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/models/{name}", summary="Model metadata", response_model=V2ModelMetadata)
@router.get("/models/{name}/versions/{version}", include_in_schema=False)
async def model_metadata(
    name: str, request: Request, state: StateDep, session: SessionDep, tenant: TenantDep
) -> dict[str, Any]:
    """Inputs and outputs of a job's packed model."""
    _version(request, name)
    model = await run_in_threadpool(_model, state, _job(session, tenant, name))
    return {
        "name": name,
        "versions": [VERSION],
        "platform": "bitfactor_bfm",
        "inputs": [_tensor_meta(s) for s in model.inputs],
        "outputs": [_tensor_meta(s) for s in model.outputs],
    }


@router.get(
    "/models/{name}/ready",
    summary="Model readiness",
    response_model=V2ModelReady,
    responses={400: {"model": V2ModelReady, "description": "The model is not ready."}},
)
@router.get("/models/{name}/versions/{version}/ready", include_in_schema=False)
def model_ready(name: str, request: Request, session: SessionDep, tenant: TenantDep) -> Response:
    """200 when the job succeeded and its model can be served; 400 otherwise."""
    _version(request, name)
    job = _job(session, tenant, name)
    ok = job.status == "succeeded"
    return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 400)


def _parse_request(raw: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError as exc:
            raise Problem("bad-request", f"{HEADER_LENGTH} must be an integer") from exc
        if not 0 < n <= len(raw):
            raise Problem("bad-request", f"{HEADER_LENGTH} is out of range")
        head, blob = raw[:n], raw[n:]
    else:
        head, blob = raw, b""
    try:  # strict JSON: NaN and Infinity are not JSON (and could not be echoed back)
        body = json.loads(head, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem("bad-request", f"the request is not valid JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise Problem("bad-request", "the request needs an 'inputs' list")
    if "id" in body and not isinstance(body["id"], str):
        raise Problem("bad-request", "'id' must be a string")
    return body, blob


def _not_json(token: str) -> None:
    raise ValueError(f"{token} is not a JSON number")


def _input_array(entry: Any, blob: bytes, offset: int, max_elements: int) -> tuple[np.ndarray, int]:
    if not isinstance(entry, dict):
        raise Problem("bad-request", "each input must be an object")
    name = entry.get("name")
    shape = entry.get("shape")
    datatype = entry.get("datatype")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise Problem("bad-request", f"input {name!r}: 'shape' must be a list of integers")
    if datatype not in DATATYPES:
        raise Problem("bad-request", f"input {name!r}: unsupported datatype {datatype!r}")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count > max_elements:
        raise Problem("bad-request", f"input {name!r}: more than {max_elements} values")
    dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    params = entry.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or size != count * dtype.itemsize:
            raise Problem("bad-request", f"input {name!r}: binary_data_size does not match shape")
        if offset + size > len(blob):
            raise Problem("bad-request", f"input {name!r}: the binary data is too short")
        array = np.frombuffer(blob, dtype=dtype, count=count, offset=offset)
        return array.reshape(shape), offset + size
    data = entry.get("data")
    if data is None:
        raise Problem("bad-request", f"input {name!r} has no 'data'")
    if not json_numbers_only(data):
        raise Problem(
            "bad-request", f"input {name!r}: data must be JSON numbers (no strings, booleans)"
        )
    try:
        wide = np.asarray(data, dtype=np.float64)
        array = wide.astype(dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise Problem("bad-request", f"input {name!r}: data are not {datatype} numbers") from exc
    if dtype.kind in "iu" and not np.array_equal(array.astype(np.float64), wide):
        raise Problem(
            "bad-request",
            f"input {name!r}: {datatype} data must be integers in its range; the model takes FP32",
        )
    if array.size != count:
        raise Problem("bad-request", f"input {name!r}: {array.size} values for shape {shape}")
    return array.reshape(shape), offset


INFER_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"type": "string", "enum": list(DATATYPES)},
                    "data": {"type": "array", "items": {}},
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
                    },
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data": {"type": "boolean"}},
                    },
                },
            },
        },
    },
}


@router.post(
    "/models/{name}/infer",
    summary="Inference",
    response_model=V2InferResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "JSON; with the binary tensor data extension the JSON header "
            f"({HEADER_LENGTH} bytes) is followed by the tensors' bytes.",
            "content": {
                "application/json": {"schema": INFER_REQUEST_SCHEMA},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "JSON, or with binary outputs the JSON header "
            f"({HEADER_LENGTH} bytes) followed by the tensors' bytes.",
        }
    },
)
@router.post("/models/{name}/versions/{version}/infer", include_in_schema=False)
async def infer(name: str, request: Request, state: StateDep) -> Response:
    """Run the job's packed model on the request's (single) input tensor."""
    _version(request, name)
    job = await find_job(state, key=bearer_key(request), job_id=name)  # as /v1 predict
    if job.status is None:
        raise Problem("not-found", f"no model {name!r}")
    raw = await request.body()
    body, blob = _parse_request(raw, request.headers.get(HEADER_LENGTH))
    if job.status != "succeeded":
        raise Problem("not-found", f"model {name!r} is not available (job {job.status})")
    model = await job_model(state, job)
    if len(body["inputs"]) != len(model.inputs):
        raise Problem(
            "bad-request",
            f"model {name!r} takes {len(model.inputs)} input(s), got {len(body['inputs'])}",
        )
    given = body["inputs"][0]
    expected = model.input.name
    if isinstance(given, dict) and given.get("name") != expected:
        raise Problem(
            "bad-request",
            f"model {name!r} has no input {given.get('name')!r}; its input is {expected!r}",
        )
    limit = state.settings.predict_max_elements
    array, _ = _input_array(given, blob, 0, limit)
    try:
        x = model.check(array, max_elements=limit, max_batch=state.settings.predict_max_batch)
    except ValueError as exc:
        raise Problem("bad-request", str(exc)) from exc
    start = time.perf_counter()
    outputs = await model.run_async(x)
    metrics.PREDICT_LATENCY.labels(protocol="v2").observe(time.perf_counter() - start)

    params = body.get("parameters") or {}
    default_binary = bool(isinstance(params, dict) and params.get("binary_data_output"))
    requested = body.get("outputs")
    if requested is None:
        wanted = [(spec.name, default_binary) for spec in model.outputs]
    else:
        if not isinstance(requested, list):
            raise Problem("bad-request", "'outputs' must be a list")
        wanted = []
        for item in requested:
            if not isinstance(item, dict) or item.get("name") not in outputs:
                raise Problem("bad-request", f"unknown output {item!r}")
            out_params = item.get("parameters") or {}
            binary = out_params.get("binary_data", default_binary)
            wanted.append((item["name"], bool(binary)))

    response_outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for out_name, binary in wanted:
        value = np.ascontiguousarray(outputs[out_name], dtype="<f4")
        entry: dict[str, Any] = {"name": out_name, "datatype": "FP32", "shape": list(value.shape)}
        if binary:
            data = value.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = json_floats(value.reshape(-1))  # NaN, inf: null (binary keeps them)
        response_outputs.append(entry)
    result: dict[str, Any] = {
        "model_name": name,
        "model_version": VERSION,
        "outputs": response_outputs,
    }
    if "id" in body:
        result["id"] = body["id"]
    head = json.dumps(result, allow_nan=False).encode()
    if not chunks:
        return Response(head, media_type="application/json")
    return Response(
        head + b"".join(chunks),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(head))},
    )
