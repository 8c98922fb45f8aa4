"""Request and response bodies of ``/v1`` (with the examples OpenAPI shows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from bitfactor.jobconfig import BinarizeConfig, Progress

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceling", "canceled"]
T = TypeVar("T")


class ModelOut(BaseModel):
    """An uploaded model."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "5f0c7a0e8b1d4c2f9a3e6d7b1c2a3f4e",
                    "name": "digits-mlp",
                    "format": "onnx",
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "size_bytes": 48213,
                    "input_shape": [64],
                    "num_params": 11274,
                    "arch": None,
                    "created_at": "2026-01-01T12:00:00Z",
                }
            ]
        },
    )

    id: str
    name: str
    format: str
    sha256: str
    size_bytes: int
    input_shape: list[int | None] | None = Field(
        description="Input shape without the batch dimension (None when unknown)."
    )
    num_params: int | None = None
    arch: str | None = None
    created_at: datetime


class DatasetOut(BaseModel):
    """An uploaded dataset."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "0b6e2a4c9d8f4e1a8c3b5d7f9e1a2c4b",
                    "name": "digits.npz",
                    "sha256": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
                    "size_bytes": 470110,
                    "n": 1797,
                    "x_shape": [1797, 64],
                    "has_labels": True,
                    "created_at": "2026-01-01T12:00:00Z",
                }
            ]
        },
    )

    id: str
    name: str
    sha256: str
    size_bytes: int
    n: int
    x_shape: list[int]
    has_labels: bool
    created_at: datetime


class JobCreate(BaseModel):
    """A binarization job to start."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model_id": "5f0c7a0e8b1d4c2f9a3e6d7b1c2a3f4e",
                    "dataset_id": "0b6e2a4c9d8f4e1a8c3b5d7f9e1a2c4b",
                    "config": {"factorization": "matrix", "epochs": 5},
                }
            ]
        },
    )

    model_id: str = Field(min_length=1, max_length=64)
    dataset_id: str = Field(min_length=1, max_length=64)
    val_dataset_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Validation set; without it config.val_fraction of the data is held out.",
    )
    config: BinarizeConfig = Field(default_factory=BinarizeConfig)


class JobOut(BaseModel):
    """A job: its status, progress while it runs, result or error when it ends."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "c4ca4238a0b923820dcc509a6f75849b",
                    "model_id": "5f0c7a0e8b1d4c2f9a3e6d7b1c2a3f4e",
                    "dataset_id": "0b6e2a4c9d8f4e1a8c3b5d7f9e1a2c4b",
                    "status": "running",
                    "config": {"factorization": "matrix", "epochs": 5},
                    "progress": {
                        "epoch": 2,
                        "epochs": 5,
                        "step": 60,
                        "total_steps": 150,
                        "loss": 0.41,
                        "metrics": {"val_accuracy": 0.93},
                        "eta_seconds": 12.5,
                        "stage": "train",
                    },
                    "result": None,
                    "error": None,
                    "attempts": 1,
                    "worker_id": "gpu-node-1:4242",
                    "heartbeat_at": "2026-01-01T12:00:30Z",
                    "created_at": "2026-01-01T12:00:00Z",
                    "started_at": "2026-01-01T12:00:01Z",
                    "finished_at": None,
                }
            ]
        },
    )

    id: str
    model_id: str
    dataset_id: str
    val_dataset_id: str | None = None
    status: JobStatus
    config: dict[str, Any]
    progress: Progress | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = Field(description="Deliveries to a worker so far (redelivered if one dies).")
    worker_id: str | None = Field(default=None, description="host:pid of the worker's process.")
    heartbeat_at: datetime | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Page(BaseModel, Generic[T]):
    """One page of a list; pass ``next_cursor`` as ``cursor`` for the next one."""

    items: list[T]
    next_cursor: str | None = None


class PredictRequest(BaseModel):
    """A batch of inputs, batch first, as nested lists."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"inputs": [[0.0] * 8]}]}
    )

    inputs: list[Any] = Field(min_length=1)
    top_k: int = Field(default=5, ge=0, le=1000, description="Top classes reported per row.")


class TopK(BaseModel):
    """The best classes of one batch row."""

    indices: list[int]
    scores: list[float]


class PredictResponse(BaseModel):
    """The model's outputs, and the top classes of its first output per batch row."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "outputs": [[0.1, 2.3, -0.4]],
                    "top_k": [{"indices": [1, 0, 2], "scores": [2.3, 0.1, -0.4]}],
                    "output_name": "logits",
                }
            ]
        }
    )

    outputs: list[Any]
    top_k: list[TopK]
    output_name: str


class ProblemOut(BaseModel):
    """An RFC 9457 problem (``application/problem+json``), the body of every ``/v1`` error."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "https://bitfactor.dev/problems/not-found",
                    "title": "Not found",
                    "status": 404,
                    "detail": "no job c4ca4238a0b923820dcc509a6f75849b",
                    "instance": "/v1/jobs/c4ca4238a0b923820dcc509a6f75849b",
                }
            ]
        },
    )

    type: str
    title: str
    status: int
    detail: str
    instance: str


class V2Error(BaseModel):
    """The body of every ``/v2`` error (Open Inference Protocol)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"error": "no model 'abc'"}]})

    error: str


class V2ServerMetadata(BaseModel):
    """``GET /v2``: the server's name, version and protocol extensions."""

    name: str
    version: str
    extensions: list[str]


class V2TensorMetadata(BaseModel):
    """One input or output of a model (``-1`` = any size, the batch)."""

    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    """``GET /v2/models/{name}``: a job's packed model, its inputs and outputs."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2ModelReady(BaseModel):
    """``GET /v2/models/{name}/ready``: 200 when ready, 400 when not (yet)."""

    name: str
    ready: bool


class V2OutputTensor(BaseModel):
    """One output tensor: ``data`` (flat, row-major), or with the binary extension
    ``parameters.binary_data_size`` bytes after the JSON header."""

    name: str
    datatype: str
    shape: list[int]
    data: list[float] | None = None
    parameters: dict[str, Any] | None = None


class V2InferResponse(BaseModel):
    """``POST /v2/models/{name}/infer``'s JSON part."""

    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str
    id: Any = None
    outputs: list[V2OutputTensor]
