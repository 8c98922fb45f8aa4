"""Request limits (api/limits.py): body caps, predict caps, per-key rate limit, deadline."""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from api.app import create_app
from api.errors import TYPE_BASE
from api.limits import LocalTokenBucket, RedisTokenBucket
from bitfactor.settings import Settings
from db import repo
from db.models import ModelFile, new_id
from db.session import connect, session_factory, upgrade
from db.storage import LocalArtifactStore

from .conftest import Api, finish_with_artifact, npz_bytes, submit


def _make_api(tmp_path: Path, **overrides: Any) -> Api:
    settings = Settings(
        data_dir=tmp_path, environment="test", max_upload_bytes=200_000, **overrides
    )
    upgrade(settings.resolved_database_url)
    engine = connect(settings.resolved_database_url)
    keys = {}
    with session_factory(engine)() as session:
        for name in ("alice", "bob"):
            tenant = repo.get_or_create_tenant(session, name=name)
            keys[name] = repo.create_api_key(session, tenant=tenant, secret=settings.secret_key)
        session.commit()
    engine.dispose()
    return Api(TestClient(create_app(settings), raise_server_exceptions=False), settings, keys)


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Api]:
    """An app with small caps: 2,000-byte bodies, batches of 3, 40 values."""
    api = _make_api(
        tmp_path,
        max_body_bytes=2000,
        predict_max_batch=3,
        predict_max_elements=40,
        rate_limit_per_minute=0,
    )
    with api.client:
        yield api


def _problem(response: Any, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == TYPE_BASE + kind
    assert body["status"] == status
    assert body["instance"] == response.request.url.path
    return body


def _dataset(api: Api) -> str:
    data = npz_bytes(x=np.zeros((20, 4), np.float32), y=np.arange(20) % 3)
    response = api.client.post("/v1/datasets", headers=api.headers(), files={"file": ("d", data)})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _model(api: Api, tmp_path: Path) -> str:
    store = LocalArtifactStore(api.settings.resolved_artifacts_dir)
    source = tmp_path / "m.onnx"
    source.write_bytes(b"model bytes")
    row_id = new_id()
    sha, size = store.put_file(f"models/{row_id}/model.onnx", source)
    with session_factory(connect(api.settings.resolved_database_url))() as session:
        tenant = repo.get_or_create_tenant(session, name="alice")
        session.add(
            ModelFile(
                id=row_id,
                tenant_id=tenant.id,
                name="m",
                format="onnx",
                sha256=sha,
                size_bytes=size,
                input_shape=[4],
                storage_key=f"models/{row_id}/model.onnx",
            )
        )
        session.commit()
    return row_id


def _finished_job(api: Api, tmp_path: Path) -> str:
    job_id = submit(api, _model(api, tmp_path), _dataset(api))
    finish_with_artifact(api, job_id, tmp_path)
    return job_id


# -- request bodies ----------------------------------------------------------------------


def test_json_body_past_the_cap_is_413(limited: Api) -> None:
    body = {"model_id": "m" * 30, "dataset_id": "d" * 30, "config": {"epochs": 1}}
    padded = {**body, "val_dataset_id": "v" * 60}
    small = limited.client.post("/v1/jobs", headers=limited.headers(), json=padded)
    _problem(small, 422, "invalid-reference")  # under the cap: reaches the route

    big = limited.client.post(
        "/v1/jobs",
        headers={**limited.headers(), "Content-Type": "application/json"},
        content=b'{"model_id": "' + b"m" * 3000 + b'"}',
    )
    problem = _problem(big, 413, "payload-too-large")
    assert problem["max_bytes"] == 2000


def test_chunked_body_is_cut_at_the_cap(limited: Api) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": [['
        for _ in range(100):
            yield b"0.0, " * 20
        yield b"0.0]]}"

    response = limited.client.post(
        "/v1/jobs/abc/predict",
        headers={**limited.headers(), "Content-Type": "application/json"},
        content=chunks(),
    )
    assert "content-length" not in response.request.headers
    _problem(response, 413, "payload-too-large")


def test_v2_body_past_the_cap_is_413_in_protocol_form(limited: Api) -> None:
    response = limited.client.post(
        "/v2/models/abc/infer", headers=limited.headers(), content=b"\0" * 5000
    )
    assert response.status_code == 413
    assert "2000 bytes" in response.json()["error"]


def test_uploads_keep_their_own_cap(limited: Api) -> None:
    data = npz_bytes(x=np.zeros((300, 4), np.float32))
    assert len(data) > 2000
    response = limited.client.post(
        "/v1/datasets", headers=limited.headers(), files={"file": ("d.npz", data)}
    )
    assert response.status_code == 201, response.text


# -- predict caps ------------------------------------------------------------------------


def test_predict_batch_and_size_caps_v1_and_v2(limited: Api, tmp_path: Path) -> None:
    job_id = _finished_job(limited, tmp_path)
    h = limited.headers()

    def v1(rows: int) -> Any:
        inputs = [[0.5] * 4] * rows
        return limited.client.post(f"/v1/jobs/{job_id}/predict", headers=h, json={"inputs": inputs})

    def v2(rows: int) -> Any:
        tensor = {"name": "input", "shape": [rows, 4], "datatype": "FP32", "data": [0.5] * rows * 4}
        return limited.client.post(
            f"/v2/models/{job_id}/infer", headers=h, json={"inputs": [tensor]}
        )

    assert v1(3).status_code == 200
    assert v2(3).status_code == 200
    assert "limit of 3" in _problem(v1(4), 422, "invalid-input")["detail"]
    refused = v2(4)
    assert refused.status_code == 400
    assert "limit of 3" in refused.json()["error"]

    # 44 values: past predict_max_elements (40) on a batch of 1.
    wide = {"name": "input", "shape": [1, 44], "datatype": "FP32", "data": [0.0] * 44}
    response = limited.client.post(f"/v2/models/{job_id}/infer", headers=h, json={"inputs": [wide]})
    assert response.status_code == 400
    assert "40" in response.json()["error"]
    response = limited.client.post(
        f"/v1/jobs/{job_id}/predict", headers=h, json={"inputs": [[0.0] * 44]}
    )
    assert "40" in _problem(response, 422, "invalid-input")["detail"]


# -- rate limit --------------------------------------------------------------------------


def test_token_bucket_refills_at_the_rate() -> None:
    bucket = LocalTokenBucket(per_minute=60, burst=3)
    assert [bucket.take("k", now=0.0) for _ in range(3)] == [None, None, None]
    assert bucket.take("k", now=0.0) == pytest.approx(1.0)
    assert bucket.take("k", now=0.5) == pytest.approx(0.5)
    assert bucket.take("k", now=1.0) is None
    assert bucket.take("other", now=1.0) is None  # one bucket per key
    assert bucket.take("k", now=100.0) is None  # refilled, never past the burst
    assert [bucket.take("k", now=100.0) for _ in range(3)][-1] == pytest.approx(1.0)


def test_token_bucket_keeps_a_bounded_number_of_keys() -> None:
    bucket = LocalTokenBucket(per_minute=60, burst=1, max_keys=10)
    for i in range(100):
        bucket.take(f"k{i}", now=0.0)
    assert len(bucket._buckets) == 10


def test_default_rate_limit_throttles_one_key_with_retry_after(api: Api) -> None:
    """The default settings (600 a minute, bursts of 100) on the app every test uses."""
    assert api.settings.rate_limit_per_minute == 600
    assert api.settings.rate_limit_burst == 100
    start = time.monotonic()
    allowed = 0
    while True:
        response = api.client.get("/v1/models", headers=api.headers("alice"))
        if response.status_code == 429:
            break
        assert response.status_code == 200, response.text
        allowed += 1
        assert allowed < 5000, "never throttled"
    elapsed = time.monotonic() - start
    # The burst, plus what refilled (10 a second) while the loop ran.
    assert 100 <= allowed <= 100 + math.ceil(elapsed * 10) + 1
    problem = _problem(response, 429, "rate-limited")
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit()
    assert int(retry_after) >= 1
    assert problem["retry_after"] == int(retry_after)

    # Another key has its own bucket; health and metrics are never throttled.
    assert api.client.get("/v1/models", headers=api.headers("bob")).status_code == 200
    for path in ("/healthz", "/metrics", "/v2/health/live", "/v2/health/ready"):
        assert api.client.get(path).status_code == 200, path
    # /v2 answers in its protocol's form.
    # (Tokens refill meanwhile: a few requests may pass, as 404s, before the 429.)
    for _ in range(100):
        v2 = api.client.get("/v2/models/abc", headers=api.headers("alice"))
        if v2.status_code != 404:
            break
    assert v2.status_code == 429
    assert v2.json()["error"]
    assert v2.headers["retry-after"]

    # After Retry-After seconds the key is served again.
    deadline = time.monotonic() + 30
    time.sleep(int(retry_after))
    while api.client.get("/v1/models", headers=api.headers("alice")).status_code == 429:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _redis_db11(redis_url: str) -> str:
    # The shared fixture checks the server; this module uses database 11 of it.
    return redis_url.rsplit("/", 1)[0] + "/11"


def test_redis_buckets_are_shared_between_processes(redis_url: str) -> None:
    url = _redis_db11(redis_url)
    prefix = f"test-ratelimit-{uuid.uuid4().hex}:"
    first = RedisTokenBucket(url, per_minute=60, burst=3, prefix=prefix)
    second = RedisTokenBucket(url, per_minute=60, burst=3, prefix=prefix)

    async def scenario() -> list[float | None]:
        return [
            await first.acquire("key"),
            await second.acquire("key"),
            await first.acquire("key"),
            await second.acquire("key"),
            await first.acquire("other"),
        ]

    results = asyncio.run(scenario())
    assert results[:3] == [None, None, None]
    assert results[3] is not None
    assert 0 < results[3] <= 1.0
    assert results[4] is None

    import redis

    client = redis.Redis.from_url(url)
    keys = client.keys(prefix + "*")
    assert len(keys) == 2
    assert all(0 < client.ttl(k) <= first.ttl for k in keys)
    client.delete(*keys)


def test_redis_limiter_lets_requests_through_when_redis_is_down() -> None:
    bucket = RedisTokenBucket("redis://127.0.0.1:1/11", per_minute=60, burst=1)
    assert asyncio.run(bucket.acquire("k")) is None
    assert asyncio.run(bucket.acquire("k")) is None


def test_apps_with_a_redis_broker_share_the_limit(tmp_path: Path, redis_url: str) -> None:
    url = _redis_db11(redis_url)
    one = _make_api(tmp_path, broker_url=url, rate_limit_per_minute=6, rate_limit_burst=2)
    two = Api(
        TestClient(create_app(one.settings), raise_server_exceptions=False), one.settings, one.keys
    )
    with one.client, two.client:
        h = one.headers("alice")
        assert one.client.get("/v1/jobs", headers=h).status_code == 200
        assert two.client.get("/v1/jobs", headers=h).status_code == 200
        refused = two.client.get("/v1/jobs", headers=h)
        _problem(refused, 429, "rate-limited")
        assert int(refused.headers["retry-after"]) >= 1
        assert one.client.get("/v1/jobs", headers=h).status_code == 429
        assert one.client.get("/v1/jobs", headers=one.headers("bob")).status_code == 200


# -- deadline ----------------------------------------------------------------------------


@pytest.fixture
def slow_app(tmp_path: Path) -> Iterator[tuple[Api, dict[str, Any]]]:
    """An app with a 0.5 s deadline and test-only slow routes on this instance only."""
    api = _make_api(tmp_path, request_timeout_s=0.5, rate_limit_per_minute=0)
    app: FastAPI = api.client.app
    seen: dict[str, Any] = {"cancelled": threading.Event(), "thread_done": threading.Event()}

    @app.get("/v1/test-slow-async")
    async def slow_async() -> dict[str, str]:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen["cancelled"].set()
            raise
        return {"status": "late"}

    @app.get("/v1/test-slow-thread")
    def slow_thread() -> dict[str, str]:
        time.sleep(3)
        seen["thread_done"].set()
        return {"status": "late"}

    @app.get("/v2/test-slow")
    async def slow_v2() -> dict[str, str]:
        await asyncio.sleep(30)
        return {"status": "late"}

    @app.get("/v1/test-stream")
    async def stream() -> StreamingResponse:
        async def body() -> Any:
            yield b"first "
            await asyncio.sleep(1.0)
            yield b"second"

        return StreamingResponse(body(), media_type="text/plain")

    with api.client:
        yield api, seen


def test_a_handler_past_the_deadline_is_cancelled_with_503(
    slow_app: tuple[Api, dict[str, Any]],
) -> None:
    api, seen = slow_app
    start = time.monotonic()
    response = api.client.get("/v1/test-slow-async")
    assert time.monotonic() - start < 20
    _problem(response, 503, "request-timeout")
    assert response.headers["retry-after"].isdigit()
    assert seen["cancelled"].wait(20), "the handler was not cancelled"


def test_the_answer_does_not_wait_for_a_blocked_thread(
    slow_app: tuple[Api, dict[str, Any]],
) -> None:
    api, seen = slow_app
    response = api.client.get("/v1/test-slow-thread")
    _problem(response, 503, "request-timeout")
    # The thread cannot be interrupted; the 503 came before it finished.
    assert not seen["thread_done"].is_set()
    assert seen["thread_done"].wait(30)


def test_deadline_v2_form_and_fast_and_streaming_answers(
    slow_app: tuple[Api, dict[str, Any]],
) -> None:
    api, _ = slow_app
    response = api.client.get("/v2/test-slow")
    assert response.status_code == 503
    assert response.json()["error"]
    assert response.headers["retry-after"].isdigit()
    assert api.client.get("/healthz").status_code == 200
    assert api.client.get("/v1/models", headers=api.headers()).status_code == 200
    # A response that started within the deadline is never cut.
    streamed = api.client.get("/v1/test-stream")
    assert streamed.status_code == 200
    assert streamed.text == "first second"
