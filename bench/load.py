"""Load on a local service: concurrent predict clients, then a burst of jobs on one worker.

    python bench/load.py                       # 64 clients x 60 s, then 20 jobs
    python bench/load.py --duration 10 --jobs 4 --json

Starts ``bitfactor serve`` (embedded defaults: SQLite, filesystem broker, one worker
process, one uvicorn process) in a temporary data directory, with the per-key rate limit
off (this measures the server, not the limiter). Trains a small MLP on scikit-learn's
digits (64-256-256-256-10), uploads it and the data, and runs one job (``--model-epochs``,
default 1) for the packed model that predict serves. Then:

1. **predict**: ``--clients`` (64) asyncio clients, each with its own connection, call
   ``POST /v1/jobs/{id}/predict`` with one digit (batch 1) back to back for
   ``--duration`` (60) seconds. Reports requests/s, p50/p90/p99/max latency and errors
   (any answer but 200, or a transport error). The clients run on the same machine as the
   server and take CPU from it.
2. **jobs**: ``--jobs`` (20) jobs submitted at once (``--job-epochs``, default 1) to the one
   worker; waits for all of them and checks each ended ``succeeded`` exactly once: one
   delivery (``attempts == 1``), one ``.bfm`` in its directory, nothing left in ``tmp/``.

Targets (issue 6): zero errors, every job exactly once, predict p99 under 100 ms for a
small model. Prints a table; ``--json`` prints the numbers as one JSON object instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bitfactor.client import Client
from bitfactor.demo import run_service, train_digits_model


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux ``/proc``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values``, nearest-rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, int(np.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


async def predict_load(
    url: str, key: str, job_id: str, rows: np.ndarray, *, clients: int, duration: float
) -> dict[str, Any]:
    """``clients`` loops calling predict for ``duration`` s; latencies and errors."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {key}"}
    bodies = [json.dumps({"inputs": [row.tolist()], "top_k": 1}).encode() for row in rows]
    path = f"/v1/jobs/{job_id}/predict"
    start = time.perf_counter()
    deadline = start + duration

    async def one_client(index: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(
            base_url=url, headers=headers, timeout=30, limits=limits
        ) as http:
            n = index
            while time.perf_counter() < deadline:
                body = bodies[n % len(bodies)]
                n += clients
                sent = time.perf_counter()
                try:
                    response = await http.post(
                        path, content=body, headers={"Content-Type": "application/json"}
                    )
                    kind = None if response.status_code == 200 else f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    kind = type(exc).__name__
                if kind is None:
                    latencies.append(time.perf_counter() - sent)
                else:
                    errors[kind] = errors.get(kind, 0) + 1

    await asyncio.gather(*(one_client(i) for i in range(clients)))
    elapsed = time.perf_counter() - start
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
    }


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
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    say = (lambda *_: None) if args.json else (lambda *a: print(*a, file=sys.stderr))
    env = {"BITFACTOR_RATE_LIMIT_PER_MINUTE": "0", "BITFACTOR_ENVIRONMENT": "test"}
    with tempfile.TemporaryDirectory(prefix="bitfactor-load-") as tmp:
        workdir = Path(tmp)
        say("training the digits MLP (torch) ...")
        trained = train_digits_model(workdir)
        with (
            run_service(workdir / "data", env=env) as service,
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
            cpu_before = process_cpu_s(service.process.pid)
            predict = asyncio.run(
                predict_load(
                    service.url,
                    service.key,
                    job["id"],
                    trained["x_test"].astype(np.float32),
                    clients=args.clients,
                    duration=args.duration,
                )
            )
            cpu = process_cpu_s(service.process.pid) - cpu_before
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
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
        },
        "server": "bitfactor serve: 1 uvicorn process, 1 worker process, SQLite, rate limit off",
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
