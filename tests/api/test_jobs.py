"""``/v1/jobs``: create (202 + Location), idempotency, pagination, filters, cancel,
cross-tenant 404s, logs, artifacts (checksum verified, ETag) and metrics."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import numpy as np

from db import repo
from db.models import Job
from db.session import connect, session_factory

from .conftest import Api, finish_with_artifact, npz_bytes


def _sessions(api: Api):
    return session_factory(connect(api.settings.resolved_database_url))


def _submit(api: Api, model_id: str, dataset_id: str, key: str | None = None, **config):
    headers = api.headers()
    if key:
        headers["Idempotency-Key"] = key
    return api.client.post(
        "/v1/jobs",
        headers=headers,
        json={"model_id": model_id, "dataset_id": dataset_id, "config": config},
    )


def test_create_is_202_with_location_and_defaults(api: Api, model_id: str, dataset_id: str) -> None:
    response = _submit(api, model_id, dataset_id, epochs=1)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["config"]["epochs"] == 1
    assert job["config"]["factorization"] == "matrix"  # a default filled in
    assert job["progress"] is None
    assert job["result"] is None
    polled = api.client.get(response.headers["location"], headers=api.headers()).json()
    assert polled["id"] == job["id"]
    # The task was really sent to the embedded (filesystem) broker: one message queued.
    queue = api.settings.data_dir / "broker" / "queue"
    assert len(list(queue.iterdir())) == 1


def test_references_must_exist_and_belong_to_the_caller(
    api: Api, model_id: str, dataset_id: str
) -> None:
    response = _submit(api, "nope", dataset_id)
    assert response.status_code == 422
    assert response.json()["type"].endswith("/invalid-reference")
    bob = api.client.post(
        "/v1/jobs",
        headers=api.headers("bob"),
        json={"model_id": model_id, "dataset_id": dataset_id},
    )
    assert bob.status_code == 422
    assert "model" in bob.json()["detail"]
    assert "dataset" in bob.json()["detail"]


def test_idempotency_key(api: Api, model_id: str, dataset_id: str) -> None:
    first = _submit(api, model_id, dataset_id, key="k-1", epochs=2)
    again = _submit(api, model_id, dataset_id, key="k-1", epochs=2)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    other = _submit(api, model_id, dataset_id, key="k-1", epochs=3)
    assert other.status_code == 422
    assert other.json()["type"].endswith("/idempotency-conflict")
    fresh = _submit(api, model_id, dataset_id, key="k-2", epochs=2)
    assert fresh.json()["id"] != first.json()["id"]
    plain = [_submit(api, model_id, dataset_id).json()["id"] for _ in range(2)]
    assert plain[0] != plain[1]
    total = api.client.get("/v1/jobs", headers=api.headers()).json()["items"]
    assert len(total) == 4


def test_pagination_and_status_filter(api: Api, model_id: str, dataset_id: str) -> None:
    ids = [_submit(api, model_id, dataset_id).json()["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        url = "/v1/jobs?limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = api.client.get(url, headers=api.headers()).json()
        seen += [j["id"] for j in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(ids))  # newest first, each exactly once
    # a cursor of the job list is not one of the model list
    first = api.client.get("/v1/jobs?limit=2", headers=api.headers()).json()["next_cursor"]
    other = api.client.get(f"/v1/models?cursor={first}", headers=api.headers())
    assert other.status_code == 400
    assert other.json()["type"].endswith("/invalid-cursor")
    assert "belongs to the list of jobs, not of models" in other.json()["detail"]
    api.client.post(f"/v1/jobs/{ids[0]}/cancel", headers=api.headers())
    canceled = api.client.get("/v1/jobs?status=canceled", headers=api.headers()).json()
    assert [j["id"] for j in canceled["items"]] == [ids[0]]
    queued = api.client.get("/v1/jobs?status=queued", headers=api.headers()).json()
    assert len(queued["items"]) == 4
    assert api.client.get("/v1/jobs", headers=api.headers("bob")).json()["items"] == []


def test_cancel(api: Api, model_id: str, dataset_id: str) -> None:
    job_id = _submit(api, model_id, dataset_id).json()["id"]
    assert (
        api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.headers("bob")).status_code == 404
    )
    response = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.headers())
    assert response.status_code == 202
    assert response.json()["status"] == "canceled"  # queued: it never starts
    again = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.headers())
    assert again.status_code == 409
    assert again.json()["type"].endswith("/job-already-finished")
    # A running job is asked to stop: canceling, until its worker sees the flag.
    running = _submit(api, model_id, dataset_id).json()["id"]
    with _sessions(api)() as session:
        assert repo.claim_job(session, job_id=running, worker_id="w", max_attempts=3) == "run"
    response = api.client.post(f"/v1/jobs/{running}/cancel", headers=api.headers())
    assert response.json()["status"] == "canceling"


def test_artifact_download_etag_and_corruption(
    api: Api, model_id: str, dataset_id: str, tmp_path: Path
) -> None:
    job_id = _submit(api, model_id, dataset_id).json()["id"]
    early = api.client.get(f"/v1/jobs/{job_id}/artifact", headers=api.headers())
    assert early.status_code == 409
    assert early.json()["type"].endswith("/job-not-finished")
    sha, data = finish_with_artifact(api, job_id, tmp_path)
    response = api.client.get(f"/v1/jobs/{job_id}/artifact", headers=api.headers())
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["etag"] == f'"{sha}"'
    assert hashlib.sha256(response.content).hexdigest() == sha
    cached = api.client.get(
        f"/v1/jobs/{job_id}/artifact", headers={**api.headers(), "If-None-Match": f'"{sha}"'}
    )
    assert cached.status_code == 304
    for tag in (f'W/"{sha}"', "*", f'"abc", W/"{sha}"', sha):
        revalidated = api.client.get(
            f"/v1/jobs/{job_id}/artifact", headers={**api.headers(), "If-None-Match": tag}
        )
        assert revalidated.status_code == 304, tag
    fresh = api.client.get(
        f"/v1/jobs/{job_id}/artifact", headers={**api.headers(), "If-None-Match": '"abc"'}
    )
    assert fresh.status_code == 200
    head = api.client.head(f"/v1/jobs/{job_id}/artifact", headers=api.headers())
    assert head.status_code == 200
    assert head.headers["etag"] == f'"{sha}"'
    assert head.headers["content-length"] == str(len(data))
    assert head.content == b""
    assert (
        api.client.get(f"/v1/jobs/{job_id}/artifact", headers=api.headers("bob")).status_code == 404
    )
    # Flip one byte on disk: the server refuses to serve it.
    stored = api.settings.resolved_artifacts_dir / "jobs" / job_id / "model.bfm"
    raw = bytearray(stored.read_bytes())
    raw[-1] ^= 0xFF
    stored.write_bytes(bytes(raw))
    broken = api.client.get(f"/v1/jobs/{job_id}/artifact", headers=api.headers())
    assert broken.status_code == 503
    assert broken.json()["type"].endswith("/artifact-corrupted")


def test_logs_are_text(api: Api, model_id: str, dataset_id: str) -> None:
    job_id = _submit(api, model_id, dataset_id).json()["id"]
    response = api.client.get(f"/v1/jobs/{job_id}/logs", headers=api.headers())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == ""
    log = api.settings.resolved_artifacts_dir / "jobs" / job_id / "log.txt"
    log.parent.mkdir(parents=True)
    log.write_text("epoch 1 loss 0.5\n")
    assert api.client.get(f"/v1/jobs/{job_id}/logs", headers=api.headers()).text == (
        "epoch 1 loss 0.5\n"
    )


def test_metrics(api: Api, model_id: str, dataset_id: str) -> None:
    for _ in range(2):
        _submit(api, model_id, dataset_id)
    text = api.client.get("/metrics").text
    assert 'bitfactor_jobs{status="queued"} 2.0' in text
    assert "bitfactor_queue_depth 2.0" in text
    assert 'bitfactor_http_request_duration_seconds_count{method="POST",route="/v1/jobs"' in text
    assert "bitfactor_database_up 1.0" in text


def test_metrics_answer_while_the_database_is_unreachable() -> None:
    """A scrape during a database outage reports it instead of failing."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from api.metrics import JobCollector

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    collector = JobCollector()
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/none")
    collector.sessions = sessionmaker(engine)
    families = {family.name: family for family in collector.collect()}
    assert set(families) == {"bitfactor_database_up"}
    assert families["bitfactor_database_up"].samples[0].value == 0
    engine.dispose()


def test_inputs_of_unfinished_jobs_cannot_be_deleted(
    api: Api, model_id: str, dataset_id: str
) -> None:
    """A queued or running job would fail without its model or dataset: 409 naming it."""
    job_id = _submit(api, model_id, dataset_id).json()["id"]
    for path in (f"/v1/models/{model_id}", f"/v1/datasets/{dataset_id}"):
        refused = api.client.delete(path, headers=api.headers())
        assert refused.status_code == 409
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["type"].endswith("/resource-in-use")
        assert f"{job_id} (queued)" in refused.json()["detail"]
        assert api.client.get(path, headers=api.headers()).status_code == 200
    with _sessions(api)() as session:
        assert repo.claim_job(session, job_id=job_id, worker_id="w", max_attempts=3) == "run"
    refused = api.client.delete(f"/v1/models/{model_id}", headers=api.headers())
    assert f"{job_id} (running)" in refused.json()["detail"]


def test_deleting_inputs_of_finished_jobs_keeps_the_jobs(
    api: Api, model_id: str, dataset_id: str
) -> None:
    job_id = _submit(api, model_id, dataset_id).json()["id"]
    assert api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.headers()).status_code == 202
    assert api.client.delete(f"/v1/models/{model_id}", headers=api.headers()).status_code == 204
    assert api.client.delete(f"/v1/datasets/{dataset_id}", headers=api.headers()).status_code == 204
    assert api.client.get(f"/v1/jobs/{job_id}", headers=api.headers()).status_code == 200
    with _sessions(api)() as session:
        assert session.get(Job, job_id) is not None


def test_dataset_must_fit_the_model(api: Api, model_id: str) -> None:
    data = npz_bytes(x=np.ones((5, 7), dtype=np.float32))
    uploaded = api.client.post(
        "/v1/datasets", headers=api.headers(), files={"file": ("d.npz", data)}
    ).json()
    response = _submit(api, model_id, uploaded["id"])
    assert response.status_code == 422
    assert response.json()["type"].endswith("/incompatible-dataset")
    assert "[4]" in response.json()["detail"]


def test_validation_dataset(api: Api, model_id: str, dataset_id: str) -> None:
    response = api.client.post(
        "/v1/jobs",
        headers=api.headers(),
        json={"model_id": model_id, "dataset_id": dataset_id, "val_dataset_id": dataset_id},
    )
    assert response.status_code == 202
    assert response.json()["val_dataset_id"] == dataset_id
    unknown = api.client.post(
        "/v1/jobs",
        headers=api.headers(),
        json={"model_id": model_id, "dataset_id": dataset_id, "val_dataset_id": "nope"},
    )
    assert unknown.status_code == 422
    assert unknown.json()["type"].endswith("/invalid-reference")
    assert "validation dataset nope" in unknown.json()["detail"]
    data = npz_bytes(x=np.ones((5, 9), dtype=np.float32))
    wrong = api.client.post(
        "/v1/datasets", headers=api.headers(), files={"file": ("v.npz", data)}
    ).json()
    mismatch = api.client.post(
        "/v1/jobs",
        headers=api.headers(),
        json={"model_id": model_id, "dataset_id": dataset_id, "val_dataset_id": wrong["id"]},
    )
    assert mismatch.status_code == 422
    assert mismatch.json()["type"].endswith("/incompatible-dataset")
