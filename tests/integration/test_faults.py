"""Faults, with real processes: the broker, the API and the database fail under a job.

One scale-out deployment (``bitfactor serve --no-worker`` + one ``bitfactor worker``) with
parts of its own that a test may break without touching anything shared:

- a private ``redis-server`` on a free port (killed with SIGKILL and started again; it
  keeps nothing on disk, so a restart loses every message);
- PostgreSQL reached through a TCP proxy in this process, which a test cuts and restores
  (the shared server itself is never stopped);
- the artifact directory on a 48 MiB tmpfs, which a test fills up.

Jobs are short lease (``BITFACTOR_JOB_LEASE_SECONDS=6``) so the sweeper acts within seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitfactor.client import Client
from bitfactor.demo import Service, export_onnx, free_port, run_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]
torch = pytest.importorskip("torch")
LEASE = 6


# ---------------------------------------------------------------------------- parts


class RedisServer:
    """A ``redis-server`` of this test alone, without persistence."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            if os.environ.get("CI"):
                pytest.fail("redis-server is not installed")
            pytest.skip("redis-server is not installed")
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        cmd += ["--dir", str(self.workdir)]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        import redis

        deadline = time.monotonic() + 30
        while True:
            try:
                client = redis.Redis(port=self.port, socket_connect_timeout=1)
                if client.ping():
                    client.close()
                    return
            except redis.RedisError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


class TcpProxy:
    """Forwards a local port to ``target``; :meth:`cut` drops every connection and refuses
    new ones (a database that went away), :meth:`restore` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._sockets |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._sockets.discard(source)


@dataclass
class Faulty:
    """The deployment under test and the handles that break its parts."""

    data_dir: Path
    artifacts: Path
    env: dict[str, str]
    redis: RedisServer
    proxy: TcpProxy
    files: dict[str, Path]
    x_test: np.ndarray
    service: Service
    worker: subprocess.Popen[bytes]
    stack: contextlib.ExitStack
    mounted: bool = False
    succeeded: list[str] = field(default_factory=list)  # jobs a later test may reuse

    def client(self) -> Client:
        return Client(self.service.url, self.service.key, timeout=60)

    def restart_api(self) -> None:
        """SIGKILL the API process and start a new one on the same data."""
        self.service.process.send_signal(signal.SIGKILL)
        self.service.process.wait()
        self.service = self.stack.enter_context(
            run_service(self.data_dir, env=self.env, worker=False)
        )

    def job_files(self, job_id: str) -> list[str]:
        """The packed models stored for a job, and its outputs still being written."""
        stored = sorted(p.name for p in (self.artifacts / "jobs" / job_id).glob("*.bfm"))
        pending = sorted(p.name for p in (self.artifacts / "tmp").glob(f"*{job_id}*"))
        return stored + pending


def _make_files(root: Path) -> tuple[dict[str, Path], np.ndarray]:
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
    ).eval()
    export_onnx(net, root / "mlp.onnx", features=12)
    np.savez(root / "small.npz", x=x[:240], y=y[:240])
    np.savez(root / "medium.npz", x=np.repeat(x[:240], 6, axis=0), y=np.repeat(y[:240], 6))
    files = {"mlp": root / "mlp.onnx"} | {k: root / f"{k}.npz" for k in ("small", "medium")}
    return files, x[240:]


def _start_worker(data_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(data_dir / "worker.log", "ab")  # noqa: SIM115 (the child keeps it)
    with log:
        return subprocess.Popen(
            [sys.executable, "-m", "bitfactor", "worker", "--loglevel", "INFO"],
            env={**os.environ, **env, "BITFACTOR_DATA_DIR": str(data_dir)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


@pytest.fixture(scope="module")
def faulty(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faulty]:
    import sqlalchemy as sa

    root = tmp_path_factory.mktemp("faults")
    files, x_test = _make_files(root)
    data_dir = root / "data"
    artifacts = data_dir / "artifacts"
    artifacts.mkdir(parents=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(artifacts)],
            capture_output=True,
        ).returncode
        == 0
    )
    schema = f"bf_faults_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    redis = RedisServer(root)
    redis.start()
    url = sa.make_url(postgres_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.restore()
    proxied = url.set(
        host="127.0.0.1", port=proxy.port, query={"options": f"-csearch_path={schema}"}
    )
    env = {
        "BITFACTOR_ENVIRONMENT": "test",
        "BITFACTOR_DATABASE_URL": proxied.render_as_string(hide_password=False),
        "BITFACTOR_BROKER_URL": redis.url,
        "BITFACTOR_JOB_QUEUE": f"faults-{uuid.uuid4().hex[:10]}",
        "BITFACTOR_JOB_LEASE_SECONDS": str(LEASE),
        "BITFACTOR_DB_RETRY_SECONDS": "120",
    }
    stack = contextlib.ExitStack()
    worker = None
    try:
        with stack:
            service = stack.enter_context(run_service(data_dir, env=env, worker=False))
            worker = _start_worker(data_dir, env)
            dep = Faulty(
                data_dir, artifacts, env, redis, proxy, files, x_test, service, worker, stack
            )
            dep.mounted = mounted
            yield dep
            worker = dep.worker
            _stop_worker(worker)
    finally:
        if worker is not None:
            _stop_worker(worker)
        redis.kill()
        proxy.cut()
        with engine.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()
        if mounted:
            subprocess.run(["umount", "-l", str(artifacts)], check=False)


def _wait_for(
    client: Client, job_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 180
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.job(job_id)
        if predicate(job):
            return job
        assert job["status"] not in ("succeeded", "failed", "canceled"), job
        assert time.monotonic() < deadline, f"timed out; job is {job['status']}: {job}"
        time.sleep(0.3)


def _training(epoch: int) -> Callable[[dict[str, Any]], bool]:
    return lambda j: j["status"] == "running" and (j["progress"] or {}).get("epoch", 0) >= epoch


def _inputs(client: Client, dep: Faulty, data: str = "medium") -> tuple[str, str]:
    return client.upload_model(dep.files["mlp"])["id"], client.upload_dataset(dep.files[data])["id"]


def _assert_one_artifact(dep: Faulty, client: Client, job: dict[str, Any], tmp: Path) -> None:
    assert len(dep.job_files(job["id"])) == 1, dep.job_files(job["id"])
    out = tmp / f"{job['id']}.bfm"
    etag = client.download(job["id"], out)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == etag == job["result"]["sha256"]


# ---------------------------------------------------------------------------- tests


def _still_running(client: Client, job_id: str) -> None:
    job = client.job(job_id)
    assert job["status"] == "running", f"the job ended before the fault: {job['status']}"


@pytest.mark.timeout(900)
def test_database_broker_and_api_fail_under_a_running_job(faulty: Faulty, tmp_path: Path) -> None:
    """Three faults in turn under one running job (one job, to keep the suite short):

    1. cut PostgreSQL away for longer than a lease: the API answers 503 problem+json with
       Retry-After (never 500); the worker keeps training (its writes are skipped or
       retried) and no one takes the job over;
    2. SIGKILL the broker (no persistence: every message is gone, the queued job's too)
       and start it again: the running job goes on; the sweeper sends the lost queued job
       again; the worker reconnects;
    3. SIGKILL the API and start it again on the same data: the job went on in the
       worker; its state and artifact are there through the new API.

    Every job then succeeds on its first attempt with exactly one artifact.
    """
    dep = faulty
    with dep.client() as client:
        model_id, data_id = _inputs(client, dep)
        # Long enough that an idle machine is still training when the last fault starts:
        # 60 epochs took ~20 s on an idle 2-core machine and the faults take ~15 s.
        running = client.submit(model_id, data_id, {"epochs": 150, "batch_size": 16})["id"]
        waiting = client.submit(model_id, data_id, {"epochs": 0})["id"]
        before = _wait_for(client, running, _training(1))["progress"]["epoch"]

        dep.proxy.cut()
        try:
            for path in (f"/v1/jobs/{running}", "/v1/jobs", f"/v1/jobs/{running}/artifact"):
                response = client.http.get(path)
                assert response.status_code == 503, (path, response.text)
                assert response.headers["content-type"].startswith("application/problem+json")
                assert int(response.headers["retry-after"]) > 0
                assert response.json()["type"].endswith("/service-unavailable")
            time.sleep(LEASE + 1)  # longer than a lease: still no one may take the job over
        finally:
            dep.proxy.restore()
        # It trained on while the database was away (progress is written again once back).
        _wait_for(client, running, lambda j: (j["progress"] or {}).get("epoch", 0) > before)

        _still_running(client, running)
        dep.redis.kill()
        time.sleep(1)
        dep.redis.start()
        assert client.job(waiting)["status"] == "queued"
        _still_running(client, running)
    dep.restart_api()
    with dep.client() as client:
        for job_id in (running, waiting):
            job = client.wait(job_id, timeout=780, interval=0.5)
            assert job["status"] == "succeeded", (job["error"], client.logs(job_id))
            assert job["attempts"] == 1, client.logs(job_id)
            _assert_one_artifact(dep, client, job, tmp_path)
            dep.succeeded.append(job_id)
        outputs = client.predict(running, dep.x_test[:3].tolist())["outputs"]
        assert np.asarray(outputs).shape == (3, 3)
        assert dep.worker.poll() is None, "the worker exited"


def test_corrupted_artifact_is_never_served(faulty: Faulty, tmp_path: Path) -> None:
    """Flip one byte of a stored packed model: download and predict refuse it (503
    artifact-corrupted), also when the model was already loaded for predict."""
    dep = faulty
    with dep.client() as client:
        if dep.succeeded:
            job = client.job(dep.succeeded[0])
        else:  # this test alone
            model_id, data_id = _inputs(client, dep, "small")
            job = client.wait(client.submit(model_id, data_id, {"epochs": 0})["id"], timeout=240)
        assert job["status"] == "succeeded", job["error"]
        assert client.predict(job["id"], dep.x_test[:2].tolist())["outputs"]
        stored = dep.artifacts / "jobs" / job["id"]
        (path,) = stored.glob("*.bfm")
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(bytes(raw))
        for method, suffix, body in (
            ("GET", "artifact", None),
            ("POST", "predict", {"inputs": dep.x_test[:2].tolist()}),
        ):
            response = client.http.request(method, f"/v1/jobs/{job['id']}/{suffix}", json=body)
            assert response.status_code == 503, response.text
            assert response.json()["type"].endswith("/artifact-corrupted")
        v2 = client.http.post(
            f"/v2/models/{job['id']}/infer",
            json={
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 12],
                        "datatype": "FP32",
                        "data": dep.x_test[0].tolist(),
                    }
                ]
            },
        )
        assert v2.status_code == 503, v2.text


def test_full_artifact_store_fails_the_job_cleanly(faulty: Faulty, tmp_path: Path) -> None:
    """Fill the artifact file system while a job trains: the job ends ``failed`` saying
    the store is full; no packed model, partial or whole, is visible or served. Once
    space is back, jobs succeed again."""
    dep = faulty
    if not dep.mounted:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    with dep.client() as client:
        model_id, data_id = _inputs(client, dep)
        # Epochs last ~0.3 s on an idle machine: enough of them that it is still training.
        job_id = client.submit(model_id, data_id, {"epochs": 30, "batch_size": 16})["id"]
        _wait_for(client, job_id, _training(1))
        filler = dep.artifacts / "filler"
        with open(filler, "wb") as handle, contextlib.suppress(OSError):
            block = b"\0" * (1 << 20)
            while True:
                handle.write(block)
                handle.flush()
        try:
            job = client.wait(job_id, timeout=240, interval=0.5)
            assert job["status"] == "failed", job
            assert "artifact store is full or not writable" in job["error"]
            assert dep.job_files(job_id) == []
            response = client.http.get(f"/v1/jobs/{job_id}/artifact")
            assert response.status_code == 409
        finally:
            filler.unlink()
    # With space back, jobs succeed again: the next test's job shows it.


def test_lost_worker_node_is_swept(faulty: Faulty, tmp_path: Path) -> None:
    """SIGKILL the whole worker (its main process too: no one tells the broker) while a
    job runs, start a fresh worker: the sweeper sees the expired lease, queues the job
    again, and it resumes from its checkpoint on the new worker."""
    dep = faulty
    with dep.client() as client:
        model_id, data_id = _inputs(client, dep, "small")
        # Epochs last well under a second on an idle machine: enough of them to be caught.
        job_id = client.submit(model_id, data_id, {"epochs": 40, "batch_size": 8})["id"]
        first = _wait_for(client, job_id, _training(2))  # the epoch-1 checkpoint exists
        os.killpg(dep.worker.pid, signal.SIGKILL)
        dep.worker.wait()
        dep.worker = _start_worker(dep.data_dir, dep.env)
        job = client.wait(job_id, timeout=240, interval=0.5)
        assert job["status"] == "succeeded", (job["error"], client.logs(job_id))
        assert job["attempts"] == 2
        assert job["worker_id"] != first["worker_id"]
        assert job["result"]["resumed_from_epoch"] >= 1
        _assert_one_artifact(dep, client, job, tmp_path)
