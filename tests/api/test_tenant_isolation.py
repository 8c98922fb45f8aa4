"""Tenant isolation: tenant B, with its own valid key, tries every operation on each of
tenant A's resources; every one is a 404 (as if the resource did not exist) and A's rows
and files are unchanged afterwards. Without a valid key every operation is a 401.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.errors import TYPE_BASE
from bitfactor.settings import Settings
from db import repo
from db.models import ApiKey, Dataset, Job, ModelFile, new_id, utcnow
from db.session import connect, session_factory, upgrade
from db.storage import LocalArtifactStore

from .conftest import Api, finish_with_artifact, npz_bytes


@dataclass
class World:
    """Tenant A's resources, and the keys of A, B and a revoked key of B."""

    api: Api
    model_id: str
    dataset_id: str
    queued_job_id: str
    done_job_id: str
    revoked_key: str

    def headers(self, tenant: str) -> dict[str, str]:
        return self.api.headers(tenant)

    @property
    def client(self) -> TestClient:
        return self.api.client


def _store_model(settings: Settings, tmp: Path, tenant_name: str) -> str:
    store = LocalArtifactStore(settings.resolved_artifacts_dir)
    source = tmp / f"{tenant_name}.onnx"
    source.write_bytes(b"model bytes of " + tenant_name.encode())
    row_id = new_id()
    key = f"models/{row_id}/model.onnx"
    sha, size = store.put_file(key, source)
    with session_factory(connect(settings.resolved_database_url))() as session:
        tenant = repo.get_or_create_tenant(session, name=tenant_name)
        session.add(
            ModelFile(
                id=row_id,
                tenant_id=tenant.id,
                name=f"{tenant_name}-model",
                format="onnx",
                sha256=sha,
                size_bytes=size,
                input_shape=[4],
                storage_key=key,
            )
        )
        session.commit()
    return row_id


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("isolation")
    # A few hundred requests in seconds: no rate limit here (tests/api/test_limits.py has it).
    settings = Settings(
        data_dir=tmp, environment="test", max_upload_bytes=200_000, rate_limit_per_minute=0
    )
    upgrade(settings.resolved_database_url)
    engine = connect(settings.resolved_database_url)
    keys = {}
    with session_factory(engine)() as session:
        for name in ("alice", "bob"):
            tenant = repo.get_or_create_tenant(session, name=name)
            keys[name] = repo.create_api_key(session, tenant=tenant, secret=settings.secret_key)
        bob = repo.get_or_create_tenant(session, name="bob")
        revoked = repo.create_api_key(session, tenant=bob, secret=settings.secret_key)
        digest = repo.hash_api_key(revoked, secret=settings.secret_key)
        session.query(ApiKey).filter_by(digest=digest).update({"revoked_at": utcnow()})
        session.commit()
    engine.dispose()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        api = Api(client, settings, keys)
        model_id = _store_model(settings, tmp, "alice")
        rng = np.random.default_rng(0)
        data = npz_bytes(x=rng.normal(size=(20, 4)).astype(np.float32), y=np.arange(20) % 3)
        response = client.post(
            "/v1/datasets", headers=api.headers("alice"), files={"file": ("d.npz", data)}
        )
        assert response.status_code == 201, response.text
        dataset_id = response.json()["id"]
        jobs = []
        for _ in range(2):
            response = client.post(
                "/v1/jobs",
                headers=api.headers("alice"),
                json={"model_id": model_id, "dataset_id": dataset_id},
            )
            assert response.status_code == 202, response.text
            jobs.append(response.json()["id"])
        finish_with_artifact(api, jobs[1], tmp)
        log = LocalArtifactStore(settings.resolved_artifacts_dir).local_path(
            f"jobs/{jobs[1]}/log.txt"
        )
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("epoch 1: loss 0.5\n")
        yield World(api, model_id, dataset_id, jobs[0], jobs[1], revoked)


def _snapshot(w: World) -> dict[str, Any]:
    """Everything tenant A can see of its resources, rows, and the stored files' hashes."""
    a = w.headers("alice")
    seen: dict[str, Any] = {}
    for path in (
        f"/v1/models/{w.model_id}",
        f"/v1/datasets/{w.dataset_id}",
        f"/v1/jobs/{w.queued_job_id}",
        f"/v1/jobs/{w.done_job_id}",
        "/v1/models",
        "/v1/datasets",
        "/v1/jobs",
        f"/v1/jobs/{w.done_job_id}/logs",
    ):
        response = w.client.get(path, headers=a)
        assert response.status_code == 200, (path, response.text)
        seen[path] = response.text
    artifact = w.client.get(f"/v1/jobs/{w.done_job_id}/artifact", headers=a)
    assert artifact.status_code == 200
    seen["artifact"] = hashlib.sha256(artifact.content).hexdigest()
    store = LocalArtifactStore(w.api.settings.resolved_artifacts_dir)
    engine = connect(w.api.settings.resolved_database_url)
    tables: tuple[type[Any], ...] = (ModelFile, Dataset, Job)
    with session_factory(engine)() as session:
        for model in tables:
            for row in session.query(model).order_by(model.id):
                columns = {c.name: getattr(row, c.name) for c in model.__table__.columns}
                seen[f"row {model.__name__} {columns['id']}"] = repr(sorted(columns.items()))
                key = columns.get("storage_key") or columns.get("artifact_key")
                if key:
                    seen[f"file {key}"] = hashlib.sha256(
                        store.local_path(key).read_bytes()
                    ).hexdigest()
    engine.dispose()
    return seen


INFER = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}]}
# (operation, resource): method, path template, JSON body. {id} is A's resource id.
CASES: dict[str, tuple[str, str, str, Any]] = {
    "get model": ("model", "GET", "/v1/models/{id}", None),
    "delete model": ("model", "DELETE", "/v1/models/{id}", None),
    "get dataset": ("dataset", "GET", "/v1/datasets/{id}", None),
    "delete dataset": ("dataset", "DELETE", "/v1/datasets/{id}", None),
}
for job in ("queued job", "done job"):
    CASES.update(
        {
            f"get {job}": (job, "GET", "/v1/jobs/{id}", None),
            f"logs of {job}": (job, "GET", "/v1/jobs/{id}/logs", None),
            f"artifact of {job}": (job, "GET", "/v1/jobs/{id}/artifact", None),
            f"cancel {job}": (job, "POST", "/v1/jobs/{id}/cancel", None),
            f"predict {job}": (job, "POST", "/v1/jobs/{id}/predict", {"inputs": [[0.0] * 4]}),
            f"v2 metadata of {job}": (job, "GET", "/v2/models/{id}", None),
            f"v2 version metadata of {job}": (job, "GET", "/v2/models/{id}/versions/1", None),
            f"v2 ready {job}": (job, "GET", "/v2/models/{id}/ready", None),
            f"v2 infer {job}": (job, "POST", "/v2/models/{id}/infer", INFER),
            f"v2 version infer {job}": (job, "POST", "/v2/models/{id}/versions/1/infer", INFER),
        }
    )


def _resource_id(w: World, resource: str) -> str:
    return {
        "model": w.model_id,
        "dataset": w.dataset_id,
        "queued job": w.queued_job_id,
        "done job": w.done_job_id,
    }[resource]


UPLOAD = object()  # a body marker: a well-formed multipart upload


def _send(w: World, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    if body is UPLOAD:
        data = npz_bytes(x=np.zeros((2, 4), np.float32))
        return w.client.request(method, path, headers=headers, files={"file": ("f.npz", data)})
    return w.client.request(method, path, headers=headers, json=body)


def _assert_not_found(response: Any) -> None:
    assert response.status_code == 404, response.text
    if response.request.url.path.startswith("/v2"):
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["error"]
    else:
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["type"] == TYPE_BASE + "not-found"


@pytest.mark.parametrize("case", sorted(CASES))
def test_other_tenant_gets_404_and_changes_nothing(world: World, case: str) -> None:
    resource, method, template, body = CASES[case]
    before = _snapshot(world)
    path = template.format(id=_resource_id(world, resource))
    response = _send(world, method, path, body, world.headers("bob"))
    _assert_not_found(response)
    # The same as for an id that does not exist at all: nothing tells the two apart.
    other = new_id()
    unknown = _send(world, method, template.format(id=other), body, world.headers("bob"))
    _assert_not_found(unknown)
    key = "error" if path.startswith("/v2") else "detail"
    assert response.json()[key].replace(_resource_id(world, resource), "?") == (
        unknown.json()[key].replace(other, "?")
    )
    assert _snapshot(world) == before


@pytest.mark.parametrize(
    "listing",
    [
        *(
            f"{p}{q}"
            for p in ("/v1/models", "/v1/datasets", "/v1/jobs")
            for q in ("", "?limit=200")
        ),
        "/v1/jobs?status=queued",
        "/v1/jobs?status=succeeded",
    ],
)
def test_other_tenant_lists_none_of_a(world: World, listing: str) -> None:
    response = world.client.get(listing, headers=world.headers("bob"))
    assert response.status_code == 200, response.text
    assert response.json()["items"] == []
    mine = world.client.get(listing, headers=world.headers("alice"))
    assert mine.json()["items"], "tenant A's own list must show its resources"


def test_other_tenant_cannot_use_a_resources_in_a_job(world: World) -> None:
    before = _snapshot(world)
    b = world.headers("bob")
    for body in (
        {"model_id": world.model_id, "dataset_id": world.dataset_id},
        {"model_id": new_id(), "dataset_id": world.dataset_id},
        {"model_id": world.model_id, "dataset_id": new_id()},
    ):
        response = world.client.post("/v1/jobs", headers=b, json=body)
        assert response.status_code == 422, response.text
        assert response.json()["type"] == TYPE_BASE + "invalid-reference"
    assert world.client.get("/v1/jobs", headers=b).json()["items"] == []
    assert _snapshot(world) == before


AUTH_FAILURES = {
    "missing": None,
    "scheme only": "Bearer",
    "empty key": "Bearer   ",
    "basic": "Basic dXNlcjpwYXNz",
    "no scheme": "bf_not-a-bearer",
    "wrong key": "Bearer bf_wrong-key",
    "revoked key": "revoked",
}


@pytest.mark.parametrize("failure", sorted(AUTH_FAILURES))
def test_without_a_valid_key_every_operation_is_401(world: World, failure: str) -> None:
    before = _snapshot(world)
    header = AUTH_FAILURES[failure]
    if header == "revoked":
        header = f"Bearer {world.revoked_key}"
    headers = {"Authorization": header} if header else {}
    operations = [(m, t.format(id=_resource_id(world, r)), b) for r, m, t, b in CASES.values()]
    operations += [("GET", p, None) for p in ("/v1/models", "/v1/datasets", "/v1/jobs")]
    operations += [
        ("POST", "/v1/jobs", {"model_id": world.model_id, "dataset_id": world.dataset_id}),
        ("POST", "/v1/datasets", UPLOAD),
        ("POST", "/v1/models", UPLOAD),
    ]
    for method, path, body in operations:
        response = _send(world, method, path, body, headers)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer"), (method, path)
        if path.startswith("/v2"):
            assert response.json()["error"]
        else:
            assert response.json()["type"] == TYPE_BASE + "unauthorized"
    assert _snapshot(world) == before
