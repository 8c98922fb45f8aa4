"""Load on a local service: concurrent predict clients, then a burst of jobs on one worker.

    python bench/load.py                       # 64 clients x 60 s, then 20 jobs
    python bench/load.py --duration 10 --jobs 4 --json

Starts ``bitfactor serve`` in a temporary data directory: ``--api-workers`` API
processes (default one per core), one worker process, the embedded broker, SQLite (or
the database of ``BITFACTOR_DATABASE_URL`` when set), and the per-key rate limit off
(this measures the server, not the limiter). Trains a small MLP on scikit-learn's digits
(64-256-256-256-10), uploads it and the data, and runs one job (``--model-epochs``,
default 1) for the packed model that predict serves. Then:

1. **predict**: ``--clients`` (64) asyncio clients, each with its own keep-alive
   connection (opened one after another, one request each before the clock starts), call
   ``POST /v1/jobs/{id}/predict`` with one digit (batch 1) back to back for
   ``--duration`` (60) seconds. Reports requests/s, p50/p90/p99/max latency, errors (any
   answer but 200, or a transport error), and the CPU per request of the server (all its
   processes) and of the clients, which run on the same machine and take CPU from it.
2. **jobs**: ``--jobs`` (20) jobs submitted at once (``--job-epochs``, default 1) to the one
   worker; waits for all of them and checks each ended ``succeeded`` exactly once: one
   delivery (``attempts == 1``), one ``.bfm`` in its directory, nothing left in ``tmp/``.

Targets (issue 6): zero errors, every job exactly once, predict p99 under 100 ms for a
small model. Prints a table; ``--json`` prints the numbers as one JSON object instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bitfactor.client import Client
from bitfactor.demo import descendants, run_service, train_digits_model


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux ``/proc``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by a process and all its descendants (the API processes and
    the worker that ``bitfactor serve`` starts)."""
    return sum(cpu for cpu in map(process_cpu_s, {pid} | descendants(pid)) if cpu == cpu)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values``, nearest-rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, int(np.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


class HTTPConnection:
    """One keep-alive HTTP/1.1 connection that sends prepared requests and reads answers.

    The load generator shares the machine's cores with the server, so it has to cost far
    less per request than the server does: requests are bytes built once, and a response
    is read as a status line, headers and a ``Content-Length`` (or chunked) body, nothing
    more. A general client (httpx) spent more CPU per request than the server did.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send ``raw`` (a whole request) and return the status and body of the answer."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                parts.append(await self.reader.readexactly(size + 2))
            await self.reader.readuntil(b"\r\n")
            body = b"".join(part[:-2] for part in parts)
        else:
            body = b""
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def post_request(host: str, port: int, path: str, key: str, body: bytes) -> bytes:
    """A complete keep-alive ``POST`` of a JSON body, as bytes."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def predict_load(
    url: str, key: str, job_id: str, rows: np.ndarray, *, clients: int, duration: float
) -> dict[str, Any]:
    """``clients`` loops calling predict for ``duration`` s; latencies and errors."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    parsed = urllib.parse.urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    path = f"/v1/jobs/{job_id}/predict"
    requests = [
        post_request(
            host, port, path, key, json.dumps({"inputs": [row.tolist()], "top_k": 1}).encode()
        )
        for row in rows
    ]
    # Clients connect one after another and each makes one request before the clock
    # starts, as users arrive over time; 64 connections opened in one burst are taken
    # unevenly by the API processes (each accepts a batch per wake-up), which measures the
    # accept queue rather than the server.
    connections = []
    for index in range(clients):
        connection = HTTPConnection(host, port)
        await connection.request(requests[index % len(requests)])
        connections.append(connection)
    cpu_start = time.process_time()
    start = time.perf_counter()
    deadline = start + duration

    async def one_client(index: int) -> None:
        connection = connections[index]
        n = index
        try:
            while time.perf_counter() < deadline:
                raw = requests[n % len(requests)]
                n += clients
                sent = time.perf_counter()
                try:
                    status, _ = await asyncio.wait_for(connection.request(raw), timeout=30)
                    kind = None if status == 200 else f"HTTP {status}"
                except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError) as exc:
                    kind = type(exc).__name__
                    await connection.close()
                if kind is None:
                    latencies.append(time.perf_counter() - sent)
                else:
                    errors[kind] = errors.get(kind, 0) + 1
        finally:
            await connection.close()

    await asyncio.gather(*(one_client(i) for i in range(clients)))
    elapsed = time.perf_counter() - start
    client_cpu = time.process_time() - cpu_start
    ms = [x * 1000 for x in latencies]
    return {
        "clients": clients,
        "duration_s": round(elapsed, 2),
        "requests": len(ms),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "rps": round(len(ms) / elapsed, 1),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else None,
        "client_cpu_ms_per_request": round(client_cpu * 1000 / max(len(ms), 1), 3),
    }


def run_async(coroutine: Any) -> Any:
    """Run ``coroutine`` on uvloop when it is installed (a cheaper client), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def job_burst(
    client: Client, model_id: str, dataset_id: str, data_dir: Path, *, jobs: int, epochs: int
) -> dict[str, Any]:
    """Submit ``jobs`` jobs at once; wait for all; check each ran exactly once."""
    import concurrent.futures

    config = {"epochs": epochs, "batch_size": 64, "seed": 0}
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        submitted = list(
            pool.map(lambda _: client.submit(model_id, dataset_id, config)["id"], range(jobs))
        )
    submit_s = time.perf_counter() - start
    ended = [client.wait(job_id, timeout=3600, interval=1.0) for job_id in submitted]
    total_s = time.perf_counter() - start
    artifacts = data_dir / "artifacts"
    problems = []
    run_s = []
    for job in ended:
        stored = list((artifacts / "jobs" / job["id"]).glob("*.bfm"))
        pending = list((artifacts / "tmp").glob(f"*{job['id']}*"))
        if job["status"] != "succeeded" or job["attempts"] != 1 or len(stored) != 1 or pending:
            problems.append(
                f"{job['id']}: {job['status']}, attempts {job['attempts']}, "
                f"{len(stored)} stored, {len(pending)} pending, error {job['error']}"
            )
        if job["started_at"] and job["finished_at"]:
            started = np.datetime64(job["started_at"].rstrip("Z"))
            finished = np.datetime64(job["finished_at"].rstrip("Z"))
            run_s.append(float((finished - started) / np.timedelta64(1, "ms")) / 1000)
    return {
        "jobs": jobs,
        "job_epochs": epochs,
        "submit_s": round(submit_s, 2),
        "all_done_s": round(total_s, 1),
        "jobs_per_min": round(jobs / total_s * 60, 2),
        "run_s_median": round(float(np.median(run_s)), 1) if run_s else None,
        "succeeded_exactly_once": jobs - len(problems),
        "problems": problems,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="predict phase, seconds")
    parser.add_argument("--clients", type=int, default=64, help="concurrent predict clients")
    parser.add_argument("--jobs", type=int, default=20, help="jobs submitted at once (0: skip)")
    parser.add_argument("--job-epochs", type=int, default=1, help="epochs of each burst job")
    parser.add_argument("--model-epochs", type=int, default=1, help="epochs of the served job")
    parser.add_argument(
        "--api-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="API processes of the server (bitfactor serve --workers; default: one per core)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    say = (lambda *_: None) if args.json else (lambda *a: print(*a, file=sys.stderr))
    env = {"BITFACTOR_RATE_LIMIT_PER_MINUTE": "0", "BITFACTOR_ENVIRONMENT": "test"}
    with tempfile.TemporaryDirectory(prefix="bitfactor-load-") as tmp:
        workdir = Path(tmp)
        say("training the digits MLP (torch) ...")
        trained = train_digits_model(workdir)
        with (
            run_service(workdir / "data", env=env, api_workers=args.api_workers) as service,
            Client(service.url, service.key, timeout=120) as client,
        ):
            model_id = client.upload_model(trained["onnx"], name="digits")["id"]
            dataset_id = client.upload_dataset(trained["data"], name="digits")["id"]
            served = client.submit(model_id, dataset_id, {"epochs": args.model_epochs})
            job = client.wait(served["id"], timeout=1800, interval=0.5)
            if job["status"] != "succeeded":
                print(f"the served job {job['status']}: {job['error']}", file=sys.stderr)
                return 1
            say(f"model ready ({job['result']['packed_bytes']} bytes packed)")
            client.predict(job["id"], trained["x_test"][:1].tolist())  # load it once
            say(f"predict: {args.clients} clients for {args.duration:g} s ...")
            cpu_before = tree_cpu_s(service.process.pid)
            predict = run_async(
                predict_load(
                    service.url,
                    service.key,
                    job["id"],
                    trained["x_test"].astype(np.float32),
                    clients=args.clients,
                    duration=args.duration,
                )
            )
            cpu = tree_cpu_s(service.process.pid) - cpu_before
            predict["server_cpu_ms_per_request"] = round(
                cpu * 1000 / max(predict["requests"] + predict["errors"], 1), 2
            )
            burst = None
            if args.jobs > 0:
                say(f"jobs: {args.jobs} at once, one worker ...")
                burst = job_burst(
                    client,
                    model_id,
                    dataset_id,
                    service.data_dir,
                    jobs=args.jobs,
                    epochs=args.job_epochs,
                )
    url = os.environ.get("BITFACTOR_DATABASE_URL", "")
    database = url.split(":", 1)[0].split("+", 1)[0] if url else "sqlite"
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
        },
        "server": f"bitfactor serve --workers {args.api_workers} (API processes), one worker "
        f"process, {database}, rate limit off",
        "predict": predict,
        "jobs": burst,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    ok = predict["errors"] == 0 and (burst is None or not burst["problems"])
    return 0 if ok else 1


def print_table(report: dict[str, Any]) -> None:
    """The report as two small tables."""
    from rich.console import Console
    from rich.table import Table

    p = report["predict"]
    table = Table(title=f"predict: {p['clients']} clients, batch 1, {p['duration_s']} s")
    for column in ("requests", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="right")
    table.add_row(
        *(str(p[k]) for k in ("requests", "errors", "rps", "p50_ms", "p90_ms", "p99_ms", "max_ms"))
    )
    console = Console()
    console.print(table)
    if p["error_kinds"]:
        console.print(f"errors: {p['error_kinds']}")
    j = report["jobs"]
    if j is not None:
        table = Table(title=f"jobs: {j['jobs']} submitted at once, one worker")
        for column in ("epochs", "all done s", "jobs/min", "median run s", "exactly once"):
            table.add_column(column, justify="right")
        table.add_row(
            str(j["job_epochs"]),
            str(j["all_done_s"]),
            str(j["jobs_per_min"]),
            str(j["run_s_median"]),
            f"{j['succeeded_exactly_once']}/{j['jobs']}",
        )
        console.print(table)
        for line in j["problems"]:
            console.print(f"[red]{line}[/red]")
    m = report["machine"]
    console.print(f"{report['server']}; {m['cpus']} CPUs, load average {m['load_avg_1m']}")


if __name__ == "__main__":
    raise SystemExit(main())
