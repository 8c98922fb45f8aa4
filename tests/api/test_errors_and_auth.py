"""Auth and RFC 9457 errors: every /v1 error is problem+json with a stable type."""

from __future__ import annotations

import json

import pytest

from api.errors import KINDS, TYPE_BASE

from .conftest import Api


def _assert_problem(response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == TYPE_BASE + kind
    assert body["status"] == status
    assert body["title"] == KINDS[kind][1]
    assert body["detail"]
    assert body["instance"] == response.request.url.path
    return body


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer wrong-key", "Basic dXNlcjpwYXNz", "bf_not-a-bearer"],
)
def test_missing_or_bad_key_is_401(api: Api, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = api.client.get("/v1/models", headers=headers)
    _assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_valid_key_lists_empty(api: Api) -> None:
    response = api.client.get("/v1/jobs", headers=api.headers())
    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None}


def test_unknown_route_and_method(api: Api) -> None:
    _assert_problem(api.client.get("/v1/nothing", headers=api.headers()), 404, "not-found")
    _assert_problem(api.client.put("/v1/models", headers=api.headers()), 405, "method-not-allowed")


def test_unknown_ids_are_404(api: Api) -> None:
    for path in ("/v1/models/abc", "/v1/datasets/abc", "/v1/jobs/abc", "/v1/jobs/abc/logs"):
        _assert_problem(api.client.get(path, headers=api.headers()), 404, "not-found")
    _assert_problem(api.client.post("/v1/jobs/abc/cancel", headers=api.headers()), 404, "not-found")


def test_validation_errors_are_422_problems(api: Api) -> None:
    body = _assert_problem(
        api.client.post("/v1/jobs", headers=api.headers(), json={"model_id": "m"}),
        422,
        "validation-error",
    )
    assert any(e["loc"][-1] == "dataset_id" for e in body["errors"])
    _assert_problem(
        api.client.post(
            "/v1/jobs",
            headers=api.headers(),
            json={"model_id": "m", "dataset_id": "d", "config": {"rank": 7}},
        ),
        422,
        "validation-error",
    )
    _assert_problem(
        api.client.post(
            "/v1/jobs",
            headers={**api.headers(), "content-type": "application/json"},
            content=b"{not json",
        ),
        400,
        "bad-request",
    )
    for config in ({"weight_decay": float("inf")}, {"lr": float("nan")}, {"rank": [4, 4]}):
        # Python's json writes Infinity and NaN, as some clients do
        request = {"model_id": "m", "dataset_id": "d", "config": config}
        body = _assert_problem(
            api.client.post(
                "/v1/jobs",
                headers={**api.headers(), "content-type": "application/json"},
                content=json.dumps(request).encode(),
            ),
            422,
            "validation-error",
        )
        assert any(e["loc"][0] == "body" for e in body["errors"]), body
    _assert_problem(
        api.client.get("/v1/jobs?limit=0", headers=api.headers()), 422, "validation-error"
    )
    _assert_problem(
        api.client.get("/v1/jobs?status=bogus", headers=api.headers()), 422, "validation-error"
    )
    _assert_problem(api.client.post("/v1/models", headers=api.headers()), 422, "validation-error")


def test_bad_cursor_is_400(api: Api) -> None:
    for cursor in ("garbage", "Zm9vYmFy"):
        _assert_problem(
            api.client.get(f"/v1/models?cursor={cursor}", headers=api.headers()),
            400,
            "invalid-cursor",
        )


def test_openapi_documents_every_route_with_examples(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/v1/models",
        "/v1/models/{model_id}",
        "/v1/datasets",
        "/v1/datasets/{dataset_id}",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/logs",
        "/v1/jobs/{job_id}/artifact",
        "/v1/jobs/{job_id}/predict",
        "/v2/models/{name}/infer",
        "/metrics",
    ):
        assert path in paths, path
    schemas = spec["components"]["schemas"]
    assert "4XX" in paths["/v1/jobs"]["post"]["responses"]
    for name in ("ModelOut", "DatasetOut", "JobOut", "JobCreate", "PredictResponse", "ProblemOut"):
        assert schemas[name].get("examples"), name
