"""Predict through ``runtime`` in the API process: ``/v1`` and the KServe v2 protocol.

The packed model is a real ``.bfm`` (written by ``runtime.write_bfm``); outputs are
compared with a float64 numpy reference. The v2 tests drive a real uvicorn server with
``tritonclient[http]``, in JSON and in binary tensor mode.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn

import runtime
from api.predictor import INLINE_RUN_S, LoadedModel
from db import repo
from db.models import ApiKey, utcnow
from db.session import connect, session_factory
from runtime import read_bfm

from .conftest import Api, finish_with_artifact, submit


@pytest.fixture
def served(
    api: Api, model_id: str, dataset_id: str, tmp_path: Path
) -> tuple[str, np.ndarray, np.ndarray]:
    job_id = submit(api, model_id, dataset_id)
    _, data = finish_with_artifact(api, job_id, tmp_path)
    _, tensors, _ = read_bfm(data)
    return job_id, tensors["fc.weight"].astype(np.float64), tensors["fc.bias"].astype(np.float64)


def _reference(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) @ w.T + b


def test_v1_predict_matches_reference(api: Api, served: tuple[str, np.ndarray, np.ndarray]) -> None:
    job_id, w, b = served
    x = np.random.default_rng(5).normal(size=(6, 4)).astype(np.float32)
    response = api.client.post(
        f"/v1/jobs/{job_id}/predict", headers=api.headers(), json={"inputs": x.tolist(), "top_k": 2}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    want = _reference(x, w, b)
    np.testing.assert_allclose(np.array(body["outputs"]), want, rtol=1e-5, atol=1e-5)
    assert body["output_name"] == "logits"
    for row, top in zip(want, body["top_k"], strict=True):
        assert top["indices"] == list(np.argsort(-row)[:2])
    assert len(api.app_state().models) == 1


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        ([[1.0, 2.0, 3.0]], "shape [N, 4]"),
        ([1.0, 2.0, 3.0, 4.0], "dimensions"),
        ([[1.0, 2.0], [1.0, 2.0, 3.0, 4.0]], "rectangular"),
        ([["a", "b", "c", "d"]], "rectangular"),
        ([["1.5", "2", "3", "4"]], "strings and booleans are not numbers"),
        ([[True, 1.0, 0.0, 2.0]], "strings and booleans are not numbers"),
        ([[[1.0, 2.0], 3.0, 4.0, 5.0]], "rectangular"),
        ([[10**400, 0, 0, 0]], "rectangular"),
        ([[1e39, 0, 0, 0]], "finite"),
        ([[0.0] * 4] * 3000, "limit"),
    ],
)
def test_v1_bad_inputs_are_422(
    api: Api, served: tuple[str, np.ndarray, np.ndarray], inputs: list, fragment: str
) -> None:
    api.settings.predict_max_elements = 10_000
    job_id = served[0]
    response = api.client.post(
        f"/v1/jobs/{job_id}/predict", headers=api.headers(), json={"inputs": inputs}
    )
    assert response.status_code == 422, response.text
    assert response.json()["type"].endswith(("/invalid-input", "/validation-error"))
    assert fragment in response.json()["detail"]


def test_v1_predict_needs_a_finished_job_of_the_caller(
    api: Api, model_id: str, dataset_id: str, served: tuple[str, np.ndarray, np.ndarray]
) -> None:
    queued = submit(api, model_id, dataset_id)
    body = {"inputs": [[0.0] * 4]}
    response = api.client.post(f"/v1/jobs/{queued}/predict", headers=api.headers(), json=body)
    assert response.status_code == 409
    other = api.client.post(f"/v1/jobs/{served[0]}/predict", headers=api.headers("bob"), json=body)
    assert other.status_code == 404


@pytest.fixture
def live_server(api: Api) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(api.client.app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.parametrize("binary", [False, True])
def test_v2_with_tritonclient(
    api: Api, served: tuple[str, np.ndarray, np.ndarray], live_server: str, binary: bool
) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    job_id, w, b = served
    client = httpclient.InferenceServerClient(url=live_server)
    headers = api.headers()
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(job_id, headers=headers)
        meta = client.get_model_metadata(job_id, headers=headers)
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
        assert meta["outputs"][0]["name"] == "logits"
        x = np.random.default_rng(7).normal(size=(3, 4)).astype(np.float32)
        infer_input = httpclient.InferInput("input", list(x.shape), "FP32")
        infer_input.set_data_from_numpy(x, binary_data=binary)
        wanted = httpclient.InferRequestedOutput("logits", binary_data=binary)
        result = client.infer(job_id, [infer_input], outputs=[wanted], headers=headers)
        np.testing.assert_allclose(
            result.as_numpy("logits"), _reference(x, w, b), rtol=1e-5, atol=1e-5
        )
        bad = httpclient.InferInput("input", [3, 5], "FP32")
        bad.set_data_from_numpy(np.zeros((3, 5), np.float32), binary_data=binary)
        with pytest.raises(InferenceServerException, match="shape"):
            client.infer(job_id, [bad], headers=headers)
        with pytest.raises(InferenceServerException, match="no model"):
            client.get_model_metadata("nope", headers=headers)
        with pytest.raises(InferenceServerException):
            client.get_model_metadata(job_id, headers=api.headers("bob"))
    finally:
        client.close()


def test_non_finite_outputs_are_json_null(
    api: Api, model_id: str, dataset_id: str, tmp_path: Path
) -> None:
    """Finite inputs can overflow to inf or NaN; JSON has neither, so both protocols answer
    null there (strict JSON every parser reads), the binary v2 mode the float32 bits."""
    job_id = submit(api, model_id, dataset_id)
    _, data = finish_with_artifact(api, job_id, tmp_path)
    x = np.array([[3e38, 3e38, 3e38, 3e38], [-3e38, 3e38, -3e38, 3e38], [1, 2, 3, 4]], np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        want = np.asarray(runtime.load(data).run(x))
    assert not np.isfinite(want).all()
    assert np.isfinite(want[2]).all()

    def strict(text: str) -> object:
        def refuse(token: str) -> None:
            raise AssertionError(f"non-JSON token {token}")

        return json.loads(text, parse_constant=refuse)

    def check(values: list[object]) -> None:
        got = np.array([np.nan if v is None else v for v in values], np.float64)
        flat = want.reshape(-1).astype(np.float64)
        assert [v is None for v in values] == list(~np.isfinite(flat))
        np.testing.assert_allclose(got[np.isfinite(flat)], flat[np.isfinite(flat)], rtol=1e-6)

    v1 = api.client.post(
        f"/v1/jobs/{job_id}/predict", headers=api.headers(), json={"inputs": x.tolist()}
    )
    assert v1.status_code == 200, v1.text
    check([v for row in strict(v1.text)["outputs"] for v in row])  # type: ignore[index]
    body = {
        "inputs": [
            {"name": "input", "shape": [3, 4], "datatype": "FP32", "data": x.reshape(-1).tolist()}
        ]
    }
    v2 = api.client.post(f"/v2/models/{job_id}/infer", headers=api.headers(), json=body)
    assert v2.status_code == 200, v2.text
    check(strict(v2.text)["outputs"][0]["data"])  # type: ignore[index]
    body["outputs"] = [{"name": "logits", "parameters": {"binary_data": True}}]  # type: ignore[list-item]
    raw = api.client.post(f"/v2/models/{job_id}/infer", headers=api.headers(), json=body)
    assert raw.status_code == 200, raw.text
    head = int(raw.headers["inference-header-content-length"])
    np.testing.assert_array_equal(np.frombuffer(raw.content[head:], "<f4").reshape(3, 3), want)
    # NaN is no JSON either way in: a request carrying one (here as its id) is a 400
    for text, fragment in [
        ('{"id": NaN, "inputs": []}', "not valid JSON"),
        ('{"id": 7, "inputs": []}', "'id' must be a string"),
    ]:
        bad = api.client.post(
            f"/v2/models/{job_id}/infer",
            headers={**api.headers(), "content-type": "application/json"},
            content=text,
        )
        assert bad.status_code == 400, bad.text
        assert fragment in bad.json()["error"]


def test_v2_errors_keep_the_protocol_body(
    api: Api, served: tuple[str, np.ndarray, np.ndarray]
) -> None:
    job_id = served[0]
    url = f"/v2/models/{job_id}/infer"
    for body in (b"not json", b'{"inputs": 3}', b'{"inputs": [{"name": "input"}]}'):
        response = api.client.post(url, headers=api.headers(), content=body)
        assert response.status_code == 400, response.text
        assert set(response.json()) == {"error"}
    missing = api.client.get("/v2/models/nope/ready", headers=api.headers())
    assert missing.status_code == 404
    assert set(missing.json()) == {"error"}
    assert api.client.get("/v2/health/live").json() == {"live": True}


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": []},
        {"inputs": [[]]},
        {"inputs": [[[[0.0] * 4]]]},
        {"inputs": [[0.0] * 4], "top_k": -1},
        {"inputs": [[0.0] * 4], "extra": 1},
        {"inputs": [[None, 1, 2, 3]]},
        {"inputs": "abcd"},
        [1, 2, 3],
        None,
    ],
)
def test_odd_predict_bodies_are_4xx(
    api: Api, served: tuple[str, np.ndarray, np.ndarray], body: object
) -> None:
    response = api.client.post(f"/v1/jobs/{served[0]}/predict", headers=api.headers(), json=body)
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    "tensor",
    [
        {"name": "input", "shape": [1, 4], "datatype": "FP32"},
        {"name": "input", "shape": [1, -4], "datatype": "FP32", "data": [0.0] * 4},
        {"name": "input", "shape": [100000, 100000], "datatype": "FP32", "data": [0.0]},
        {"name": "input", "shape": [1, 4], "datatype": "BYTES", "data": ["a"] * 4},
        {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ["x"] * 4},
        {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 3},
        {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [True, 0.0, 1.0, 2.0]},
        {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ["1", "2", "3", "4"]},
        {"name": "input", "shape": [1, 4], "datatype": "INT32", "data": [0.5, 1.0, 2.0, 3.0]},
        {"name": "input", "shape": [1, 4], "datatype": "UINT8", "data": [-1, 1, 2, 3]},
        {"name": "foo", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4},
        {
            "name": "input",
            "shape": [1, 4],
            "datatype": "FP32",
            "parameters": {"binary_data_size": 16},
        },
        "not an object",
    ],
)
def test_odd_v2_tensors_are_400(
    api: Api, served: tuple[str, np.ndarray, np.ndarray], tensor: object
) -> None:
    response = api.client.post(
        f"/v2/models/{served[0]}/infer", headers=api.headers(), json={"inputs": [tensor]}
    )
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}


def test_model_cache_is_a_bounded_lru(
    api: Api, model_id: str, dataset_id: str, tmp_path: Path
) -> None:
    state = api.app_state()
    assert state.models.capacity == 2
    jobs = []
    for i in range(3):
        job_id = submit(api, model_id, dataset_id)
        out = tmp_path / str(i)
        out.mkdir()
        finish_with_artifact(api, job_id, out, seed=i)
        jobs.append(job_id)
    for job_id in jobs:
        response = api.client.post(
            f"/v1/jobs/{job_id}/predict", headers=api.headers(), json={"inputs": [[1.0] * 4]}
        )
        assert response.status_code == 200
    assert len(state.models) == 2


def test_a_key_revoked_after_a_predict_is_refused_at_once(
    api: Api, served: tuple[str, np.ndarray, np.ndarray]
) -> None:
    """Predict's hot path (one query per request, no cache of keys) sees a revocation on
    the very next request, on /v1 and /v2 alike."""
    job_id = served[0]
    body = {"inputs": [[0.0] * 4]}
    v2_body = {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}]
    }
    url, v2_url = f"/v1/jobs/{job_id}/predict", f"/v2/models/{job_id}/infer"
    assert api.client.post(url, headers=api.headers(), json=body).status_code == 200
    assert api.client.post(v2_url, headers=api.headers(), json=v2_body).status_code == 200

    engine = connect(api.settings.resolved_database_url)
    digest = repo.hash_api_key(api.keys["alice"], secret=api.settings.secret_key)
    with session_factory(engine)() as session:
        session.query(ApiKey).filter_by(digest=digest).update({"revoked_at": utcnow()})
        session.commit()
    engine.dispose()
    for path, payload in ((url, body), (v2_url, v2_body)):
        refused = api.client.post(path, headers=api.headers(), json=payload)
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"].startswith("Bearer")


class _FakeModel:
    """A model whose run takes ``seconds`` and records the thread it ran on."""

    def __init__(self, seconds: float) -> None:
        self.inputs = [{"name": "x", "shape": [None, 2]}]
        self.outputs = [{"name": "y", "shape": [None, 2]}]
        self.seconds = seconds
        self.threads: list[int] = []

    def run(self, x: np.ndarray) -> np.ndarray:
        self.threads.append(threading.get_ident())
        if self.seconds:
            time.sleep(self.seconds)
        return x


@pytest.mark.parametrize("seconds", [0.0, 0.02])
def test_small_runs_stay_on_the_event_loop_and_slow_ones_go_to_a_thread(seconds: float) -> None:
    """A run is handed to the thread pool until its cost is known; from then on one that
    takes under INLINE_RUN_S runs on the event loop's thread, a slower one never does."""
    import asyncio

    fake = _FakeModel(seconds)
    loaded = LoadedModel(fake)
    x = np.zeros((1, 2), np.float32)

    async def runs() -> int:
        for _ in range(5):
            np.testing.assert_array_equal((await loaded.run_async(x))["y"], x)
        return threading.get_ident()

    loop_thread = asyncio.run(runs())
    assert fake.threads[0] != loop_thread  # the first run's cost is unknown
    assert loaded.row_seconds is not None
    if seconds > INLINE_RUN_S:
        assert loop_thread not in fake.threads
    else:
        assert fake.threads[-1] == loop_thread


def test_v2_integer_data_and_versions(api: Api, served: tuple[str, np.ndarray, np.ndarray]) -> None:
    """Integral INT32 data are exact as FP32; only version 1 exists."""
    job_id = served[0]
    data = [1, -2, 3, 0]
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT32", "data": data}]}
    as_float = {
        "inputs": [{**body["inputs"][0], "datatype": "FP32", "data": [float(v) for v in data]}]
    }
    ints = api.client.post(f"/v2/models/{job_id}/infer", headers=api.headers(), json=body)
    floats = api.client.post(f"/v2/models/{job_id}/infer", headers=api.headers(), json=as_float)
    assert ints.status_code == 200, ints.text
    assert ints.json()["outputs"] == floats.json()["outputs"]
    for path in ("/versions/1/infer", "/versions/2/infer"):
        response = api.client.post(f"/v2/models/{job_id}{path}", headers=api.headers(), json=body)
        assert response.status_code == (200 if "/1/" in path else 404), response.text
    assert (
        api.client.get(f"/v2/models/{job_id}/versions/2", headers=api.headers()).status_code == 404
    )
    assert (
        api.client.get(f"/v2/models/{job_id}/versions/1", headers=api.headers()).status_code == 200
    )
