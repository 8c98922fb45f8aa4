"""The service end to end, as a client drives it over HTTP, with real worker processes.

Two deployments run the same tests:

- ``embedded``: ``bitfactor serve`` with its defaults (SQLite, the filesystem broker and
  the one worker process it starts);
- ``scaleout``: ``bitfactor serve --no-worker`` plus a separate ``bitfactor worker``
  process, on PostgreSQL (a fresh schema per run) and Redis (a queue per run).

Each test trains nothing big: a 12-32-32-3 MLP and one or two epochs on 240 samples.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bitfactor.client import ApiError, Client
from bitfactor.demo import Service, export_onnx, run_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]
torch = pytest.importorskip("torch")
UPLOAD_CAP = 3_000_000


@dataclass
class Deployment:
    """A running service and what a test needs to talk to it."""

    mode: str
    service: Service
    env: dict[str, str]
    files: dict[str, Path]
    x_test: np.ndarray
    extra_keys: dict[str, str] = field(default_factory=dict)

    def client(self, key: str | None = None) -> Client:
        return Client(self.service.url, key or self.service.key, timeout=120)

    def new_key(self, tenant: str) -> str:
        if tenant not in self.extra_keys:
            result = subprocess.run(
                [sys.executable, "-m", "bitfactor", "keys", "create", "--tenant", tenant],
                env={**os.environ, **self.env, "BITFACTOR_DATA_DIR": str(self.service.data_dir)},
                capture_output=True,
                text=True,
                check=True,
            )
            self.extra_keys[tenant] = result.stdout.strip().splitlines()[-1]
        return self.extra_keys[tenant]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], np.ndarray]:
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=2.0, size=(3, 12))
    y = rng.integers(0, 3, size=300)
    x = (centers[y] + rng.normal(size=(300, 12))).astype(np.float32)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(12, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 3),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x[:240]), torch.from_numpy(y[:240])
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    net.eval()
    export_onnx(net, root / "mlp.onnx", features=12)
    np.savez(root / "train.npz", x=x[:240], y=y[:240])
    np.savez(root / "bad_labels.npz", x=x[:40], y=np.full(40, 7))
    np.savez(root / "val.npz", x=x[240:], y=y[240:])
    np.savez(root / "many.npz", x=np.repeat(x[:240], 20, axis=0), y=np.repeat(y[:240], 20))
    np.savez(root / "medium.npz", x=np.repeat(x[:240], 5, axis=0), y=np.repeat(y[:240], 5))
    return (
        {
            k: root / f"{k}.{'onnx' if k == 'mlp' else 'npz'}"
            for k in ("mlp", "train", "bad_labels", "many", "medium", "val")
        },
        x[240:],
    )


def _postgres_schema(postgres_url: str) -> tuple[str, str]:
    import sqlalchemy as sa

    schema = f"bf_it_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    sep = "&" if "?" in postgres_url else "?"
    return schema, f"{postgres_url}{sep}options=-csearch_path%3D{schema}"


def _drop_schema(postgres_url: str, schema: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(scope="module", params=["embedded", "scaleout"])
def deployment(
    request: pytest.FixtureRequest,
    files: tuple[dict[str, Path], np.ndarray],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    mode = request.param
    data_dir = tmp_path_factory.mktemp(f"service-{mode}")
    env = {"BITFACTOR_MAX_UPLOAD_BYTES": str(UPLOAD_CAP), "BITFACTOR_ENVIRONMENT": "test"}
    if mode == "embedded":
        with run_service(data_dir, env=env) as service:
            yield Deployment(mode, service, env, files[0], files[1])
        return
    postgres_url = request.getfixturevalue("postgres_url")
    redis_url = request.getfixturevalue("redis_url")
    schema, db_url = _postgres_schema(postgres_url)
    env |= {
        "BITFACTOR_DATABASE_URL": db_url,
        "BITFACTOR_BROKER_URL": redis_url,
        "BITFACTOR_JOB_QUEUE": f"test-{uuid.uuid4().hex[:10]}",
    }
    worker_log = open(data_dir / "worker.log", "ab")  # noqa: SIM115 (closed below)
    worker = None
    try:
        with run_service(data_dir, env=env, worker=False) as service:
            # The separate worker shares the artifact directory (a volume in docker-compose).
            worker = subprocess.Popen(
                [sys.executable, "-m", "bitfactor", "worker", "--loglevel", "INFO"],
                env={**os.environ, **env, "BITFACTOR_DATA_DIR": str(data_dir)},
                stdout=worker_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            yield Deployment(mode, service, env, files[0], files[1])
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        worker_log.close()
        _drop_schema(postgres_url, schema)
        import redis

        queue = env["BITFACTOR_JOB_QUEUE"]
        broker = redis.Redis.from_url(redis_url)
        broker.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        broker.close()


def _inputs(dep: Deployment, client: Client) -> tuple[str, str]:
    model = client.upload_model(dep.files["mlp"], name="mlp")
    dataset = client.upload_dataset(dep.files["train"])
    return model["id"], dataset["id"]


def test_lifecycle(deployment: Deployment) -> None:
    import runtime

    dep = deployment
    with dep.client() as client:
        model_id, dataset_id = _inputs(dep, client)
        val_id = client.upload_dataset(dep.files["val"])["id"]
        config = {"epochs": 2, "batch_size": 32, "seed": 1}
        response = client.http.post(
            "/v1/jobs",
            json={
                "model_id": model_id,
                "dataset_id": dataset_id,
                "val_dataset_id": val_id,
                "config": config,
            },
            headers={"Idempotency-Key": "lifecycle-1"},
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        assert response.headers["location"] == f"/v1/jobs/{job_id}"
        again = client.http.post(
            "/v1/jobs",
            json={
                "model_id": model_id,
                "dataset_id": dataset_id,
                "val_dataset_id": val_id,
                "config": config,
            },
            headers={"Idempotency-Key": "lifecycle-1"},
        )
        assert again.json()["id"] == job_id
        with pytest.raises(ApiError) as conflict:
            client.submit(model_id, dataset_id, {"epochs": 3}, idempotency_key="lifecycle-1")
        assert conflict.value.status == 422

        seen: set[str] = set()
        job = client.wait(
            job_id, timeout=240, interval=0.2, on_update=lambda j: seen.add(j["status"])
        )
        assert job["status"] == "succeeded", (job["error"], client.logs(job_id))
        assert seen <= {"queued", "running", "succeeded"}
        result = job["result"]
        for name in (
            "real_accuracy",
            "binary_accuracy",
            "agreement",
            "real_bytes",
            "packed_bytes",
            "compression_ratio",
            "ms_real",
            "ms_binary",
        ):
            assert result[name] is not None, name
        assert result["epochs_run"] == 2
        assert result["n_val"] == 60  # the validation dataset, not a held-out share
        assert result["n_train"] == 240
        assert 0.0 <= result["agreement"] <= 1.0
        assert job["progress"]["epochs"] == 2
        assert job["attempts"] == 1
        assert job["started_at"] is not None
        assert job["finished_at"] is not None
        logs = client.logs(job_id)
        assert "attempt 1" in logs
        assert "succeeded" in logs

        out = dep.service.data_dir / f"{job_id}.bfm"
        etag = client.download(job_id, out)
        assert hashlib.sha256(out.read_bytes()).hexdigest() == etag == result["sha256"]
        assert out.stat().st_size == result["packed_bytes"]

        x = dep.x_test
        local = np.asarray(runtime.load(out).run(x))
        v1 = client.predict(job_id, x.tolist(), top_k=3)
        np.testing.assert_allclose(np.array(v1["outputs"]), local, rtol=1e-5, atol=1e-5)
        assert v1["top_k"][0]["indices"][0] == int(local[0].argmax())

        import tritonclient.http as httpclient

        triton = httpclient.InferenceServerClient(url=dep.service.url.removeprefix("http://"))
        try:
            headers = {"Authorization": f"Bearer {dep.service.key}"}
            assert triton.is_model_ready(job_id, headers=headers)
            infer_input = httpclient.InferInput("input", list(x.shape), "FP32")
            infer_input.set_data_from_numpy(x)
            meta = triton.get_model_metadata(job_id, headers=headers)
            output_name = meta["outputs"][0]["name"]
            assert meta["inputs"][0]["shape"] == [-1, 12]
            got = triton.infer(job_id, [infer_input], headers=headers).as_numpy(output_name)
        finally:
            triton.close()
        np.testing.assert_allclose(got, local, rtol=1e-5, atol=1e-5)

        metrics = httpx.get(f"{dep.service.url}/metrics").text
        assert 'bitfactor_jobs{status="succeeded"}' in metrics
        assert 'bitfactor_predict_duration_seconds_count{protocol="v1"}' in metrics


def _wait_for(client: Client, job_id: str, predicate: Any, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.job(job_id)
        if predicate(job):
            return job
        assert time.monotonic() < deadline, f"timed out; job is {job['status']}"
        time.sleep(0.2)


def test_cancel_running_and_queued(deployment: Deployment) -> None:
    dep = deployment
    with dep.client() as client:
        model_id = client.upload_model(dep.files["mlp"])["id"]
        dataset_id = client.upload_dataset(dep.files["many"])["id"]
        long_job = client.submit(model_id, dataset_id, {"epochs": 500, "batch_size": 8})["id"]
        behind = client.submit(model_id, dataset_id, {"epochs": 1})["id"]
        running = _wait_for(
            client,
            long_job,
            lambda j: j["status"] == "running" and (j["progress"] or {}).get("total_steps", 0) > 0,
        )
        assert running["progress"]["total_steps"] > 0
        # The second job waits behind the first (one worker, one job at a time).
        queued = client.cancel(behind)
        assert queued["status"] == "canceled"
        canceling = client.cancel(long_job)
        assert canceling["status"] in {"canceling", "canceled"}
        ended = client.wait(long_job, timeout=120, interval=0.2)
        assert ended["status"] == "canceled"
        assert ended["progress"]["epoch"] < 500
        assert "canceled" in client.logs(long_job)
        with pytest.raises(ApiError) as finished:
            client.cancel(long_job)
        assert finished.value.status == 409
        with pytest.raises(ApiError) as no_artifact:
            client.download(long_job, dep.service.data_dir / "none.bfm")
        assert no_artifact.value.status == 409
        # The queued job never starts, even once its message reaches the worker.
        time.sleep(2)
        never = client.job(behind)
        assert never["status"] == "canceled"
        assert never["attempts"] == 0
        assert never["started_at"] is None


def test_bad_input_fails_the_job_readably(deployment: Deployment) -> None:
    dep = deployment
    with dep.client() as client:
        model_id = client.upload_model(dep.files["mlp"])["id"]
        dataset_id = client.upload_dataset(dep.files["bad_labels"])["id"]
        job = client.submit(model_id, dataset_id, {"epochs": 1})
        ended = client.wait(job["id"], timeout=180, interval=0.2)
        assert ended["status"] == "failed"
        assert "labels go up to 7" in ended["error"]
        assert ended["result"] is None


def test_tenants_and_errors(deployment: Deployment) -> None:
    dep = deployment
    with dep.client() as alice:
        model_id, dataset_id = _inputs(dep, alice)
        alice.upload_model(dep.files["mlp"], name="second")  # at least two: two pages
        job_id = alice.submit(model_id, dataset_id, {"epochs": 1})["id"]
        alice.cancel(job_id)
        listed = alice.request("GET", "/v1/models?limit=1")
        assert len(listed["items"]) == 1
        assert listed["next_cursor"]
        rest = alice.request("GET", f"/v1/models?limit=100&cursor={listed['next_cursor']}")
        assert listed["items"][0]["id"] not in {m["id"] for m in rest["items"]}
        big = dep.service.data_dir / "big.onnx"
        big.write_bytes(b"\0" * (UPLOAD_CAP + 200_000))
        with pytest.raises(ApiError) as too_big:
            alice.upload_model(big)
        assert too_big.value.status == 413
        assert too_big.value.problem["type"].endswith("/payload-too-large")
    with dep.client(dep.new_key("bob")) as bob:
        assert bob.request("GET", "/v1/models")["items"] == []
        for method, path in (
            ("GET", f"/v1/models/{model_id}"),
            ("GET", f"/v1/datasets/{dataset_id}"),
            ("GET", f"/v1/jobs/{job_id}"),
            ("GET", f"/v1/jobs/{job_id}/logs"),
            ("GET", f"/v1/jobs/{job_id}/artifact"),
            ("POST", f"/v1/jobs/{job_id}/cancel"),
            ("DELETE", f"/v1/models/{model_id}"),
        ):
            response = bob.http.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
        with pytest.raises(ApiError) as foreign:
            bob.submit(model_id, dataset_id)
        assert foreign.value.status == 422
    response = httpx.get(f"{dep.service.url}/v1/jobs", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401


# Scale-out only, to keep the suite short: the embedded broker redelivers the same way
# (checked by hand: attempt 2 resumed from the epoch-1 checkpoint), at 50 s more per run.
@pytest.mark.parametrize("deployment", ["scaleout"], indirect=True)
def test_lost_worker_redelivers_and_resumes(deployment: Deployment) -> None:
    """SIGKILL the process running a job: the broker redelivers it (acks_late,
    reject_on_worker_lost), the row counts the attempt and training resumes from the
    last epoch checkpoint."""
    dep = deployment
    with dep.client() as client:
        model_id = client.upload_model(dep.files["mlp"])["id"]
        dataset_id = client.upload_dataset(dep.files["medium"])["id"]
        # Enough epochs that an idle machine is still training when the poll sees
        # epoch >= 2 (epoch 1 was saved): epochs take ~0.1-0.3 s there, and 6 of them
        # once finished between two polls in a clean-clone CI run.
        job_id = client.submit(model_id, dataset_id, {"epochs": 40, "batch_size": 16})["id"]
        job = _wait_for(
            client,
            job_id,
            lambda j: j["status"] == "running" and (j["progress"] or {}).get("epoch", 0) >= 2,
        )
        host, _, pid = job["worker_id"].rpartition(":")
        assert host
        os.kill(int(pid), signal.SIGKILL)
        ended = client.wait(job_id, timeout=240, interval=0.3)
        assert ended["status"] == "succeeded", (ended["error"], client.logs(job_id))
        assert ended["attempts"] == 2
        assert ended["worker_id"] != job["worker_id"]
        assert ended["result"]["resumed_from_epoch"] >= 1
        logs = client.logs(job_id)
        assert "attempt 1" in logs
        assert "attempt 2" in logs
        # Exactly one artifact: nothing of the killed attempt is left, stored or pending.
        artifacts = dep.service.data_dir / "artifacts"
        assert len(list((artifacts / "jobs" / job_id).glob("*.bfm"))) == 1
        assert list((artifacts / "tmp").glob(f"*{job_id}*")) == []


@pytest.mark.parametrize("deployment", ["embedded"], indirect=True)
def test_client_cli(deployment: Deployment, tmp_path: Path) -> None:
    """``bitfactor client ...`` verbs against the server, as a shell user runs them."""
    import json

    dep = deployment
    env = {
        **os.environ,
        "BITFACTOR_URL": dep.service.url,
        "BITFACTOR_API_KEY": dep.service.key,
    }

    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "bitfactor", "client", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    model = json.loads(cli("upload", str(dep.files["mlp"]), "--name", "cli").stdout)
    dataset = json.loads(cli("dataset", str(dep.files["train"])).stdout)
    submit_args = ["submit", model["id"], dataset["id"], "--val-dataset", dataset["id"]]
    job = json.loads(cli(*submit_args, "--config", '{"epochs": 1}').stdout)
    assert job["val_dataset_id"] == dataset["id"]
    watched = cli("status", job["id"], "--watch")
    assert json.loads(watched.stdout)["status"] == "succeeded"
    assert "[" in watched.stderr  # the progress bar
    out = tmp_path / "cli.bfm"
    downloaded = cli("download", job["id"], "-o", str(out))
    assert hashlib.sha256(out.read_bytes()).hexdigest() in downloaded.stdout
    batch = tmp_path / "batch.npy"
    np.save(batch, dep.x_test[:4])
    predicted = json.loads(cli("predict", job["id"], "--inputs", f"@{batch}").stdout)
    assert len(predicted["outputs"]) == 4
    bad = cli("submit", model["id"], "nope", check=False)
    assert bad.returncode == 1
    assert "HTTP 422" in bad.stderr
    wrong_key = subprocess.run(
        [sys.executable, "-m", "bitfactor", "client", "--key", "nope", "status", job["id"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong_key.returncode == 1
    assert "HTTP 401" in wrong_key.stderr


def test_time_limit_fails_the_job(
    files: tuple[dict[str, Path], np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Celery's soft time limit ends a job ``failed`` with a readable error."""
    env = {"BITFACTOR_JOB_SOFT_TIME_LIMIT": "6", "BITFACTOR_JOB_HARD_TIME_LIMIT": "120"}
    data_dir = tmp_path_factory.mktemp("time-limit")
    with run_service(data_dir, env=env) as service, Client(service.url, service.key) as client:
        model_id = client.upload_model(files[0]["mlp"])["id"]
        dataset_id = client.upload_dataset(files[0]["many"])["id"]
        job_id = client.submit(model_id, dataset_id, {"epochs": 500, "batch_size": 8})["id"]
        ended = client.wait(job_id, timeout=120, interval=0.3)
    assert ended["status"] == "failed"
    assert "time limit of 6 s" in ended["error"]
