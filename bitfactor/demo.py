"""The main job, end to end (``make demo`` / ``bitfactor demo``).

Starts ``bitfactor serve`` on a free port with a temporary data directory, trains a small
real model on scikit-learn's digits, exports it to ONNX and then, strictly as an HTTP
client: uploads the model and the data, submits a job, shows its progress, downloads the
packed model, runs predict through ``/v1`` and ``/v2``, prints a summary table and shuts
the service down. Exit code 0 only when every step worked and the outputs agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

JOB_CONFIG: dict[str, Any] = {
    "factorization": "matrix",
    "rank": 1.0,
    "scales": "channel",
    "epochs": 8,
    "batch_size": 64,
    "lr": 2e-3,
    "val_fraction": 0.15,
    "seed": 0,
}


def descendants(pid: int) -> set[int]:
    """The process ids below ``pid`` (children, theirs, ...), read from Linux ``/proc``."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # the process ended while the table was read
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = {child for child, ppid in parents.items() if ppid == parent}
        found |= children
        frontier.extend(children)
    return found


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """A running ``bitfactor serve`` process."""

    url: str
    key: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait (uvicorn and the worker shut down cleanly)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    """Poll ``/v2/health/ready`` until it answers; raise with the log tail if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited:\n" + log_path.read_text()[-3000:])
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError("the server did not become ready:\n" + log_path.read_text()[-3000:])


@contextlib.contextmanager
def run_service(
    data_dir: Path,
    *,
    env: dict[str, str] | None = None,
    worker: bool = True,
    api_workers: int = 1,
    timeout: float = 90.0,
) -> Iterator[Service]:
    """Start ``bitfactor serve`` (API + one worker) on a free port; stop it on exit.

    ``api_workers`` > 1 starts that many API processes on the port (``--workers``).
    """
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "serve.log"
    cmd = [sys.executable, "-m", "bitfactor", "serve", "--port", str(port)]
    cmd += ["--data-dir", str(data_dir), "--log-level", "warning"]
    if not worker:
        cmd.append("--no-worker")
    if api_workers > 1:
        cmd += ["--workers", str(api_workers)]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log_path, timeout)
        key = (data_dir / "api-key").read_text().strip()
        yield Service(url, key, data_dir, process, log_path)
    finally:
        Service(url, "", data_dir, process, log_path).stop()


def export_onnx(net: Any, path: Path, *, features: int) -> Path:
    """``net`` (a torch module taking ``(batch, features)``) as ONNX at ``path``: input
    ``input``, output ``logits``, any batch size."""
    import torch

    torch.onnx.export(
        net,
        (torch.zeros(1, features),),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return path


def train_digits_model(workdir: Path) -> dict[str, Any]:
    """Train a small MLP on scikit-learn's digits; export ONNX and the data as ``.npz``."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    torch.manual_seed(0)
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _epoch in range(40):
        order = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        real_test = net(torch.from_numpy(x_test)).argmax(1).numpy()
        one = torch.from_numpy(x_test[:1])
        for _ in range(20):
            net(one)
        start = time.perf_counter()
        for _ in range(200):
            net(one)
        torch_ms = (time.perf_counter() - start) / 200 * 1000
    onnx_path = export_onnx(net, workdir / "digits_mlp.onnx", features=64)
    data_path = workdir / "digits_train.npz"
    np.savez(data_path, x=x_train, y=y_train)
    return {
        "onnx": onnx_path,
        "data": data_path,
        "x_test": x_test,
        "y_test": y_test,
        "real_test_accuracy": float((real_test == y_test).mean()),
        "torch_ms": torch_ms,
    }


def _watch(console: Console, client: Any, job_id: str) -> dict[str, Any]:
    columns = (
        TextColumn("[bold]{task.fields[status]}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("job", total=1.0, status="queued", detail="")

        def update(job: dict[str, Any]) -> None:
            p = job.get("progress") or {}
            detail = ""
            done = 0.0
            if p:
                epochs = max(int(p.get("epochs") or 1), 1)
                total = max(int(p.get("total_steps") or 0), 1)
                epoch = int(p.get("epoch") or 0)
                step = int(p.get("step") or 0)
                done = min(1.0, (max(epoch - 1, 0) + step / total) / epochs)
                if p.get("stage") == "export":
                    done = 1.0
                detail = f"{p.get('stage', '')} epoch {epoch}/{epochs} step {step}/{total}"
                if p.get("loss") is not None:
                    detail += f" loss {p['loss']:.3f}"
                for name, value in (p.get("metrics") or {}).items():
                    detail += f" {name} {value:.3f}"
            if job["status"] == "succeeded":
                done = 1.0
            bar.update(task, completed=done, status=job["status"], detail=detail)

        result: dict[str, Any] = client.wait(job_id, timeout=600, interval=0.3, on_update=update)
        return result


def _fmt_bytes(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


def run_demo() -> int:
    """Run the demo; returns the process exit code."""
    import numpy as np

    import runtime
    from bitfactor.client import Client

    console = Console()
    console.rule("bitfactor demo")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bitfactor-demo-") as tmp:
        workdir = Path(tmp)
        console.print(f"data directory: {workdir / 'data'}")
        console.print("training a small MLP on scikit-learn digits (torch, fp32) ...")
        trained = train_digits_model(workdir)
        console.print(f"  real model test accuracy: {trained['real_test_accuracy']:.3f}")
        console.print("starting bitfactor serve (API + one worker, embedded defaults) ...")
        with run_service(workdir / "data") as service:
            console.print(f"  serving on {service.url}")
            with Client(service.url, service.key) as client:
                model = client.upload_model(trained["onnx"], name="digits-mlp")
                console.print(
                    f"uploaded model {model['id']} ({model['format']}, "
                    f"input {model['input_shape']}, {model['size_bytes']} bytes)"
                )
                dataset = client.upload_dataset(trained["data"], name="digits-train")
                console.print(f"uploaded dataset {dataset['id']} (n={dataset['n']})")
                job = client.submit(model["id"], dataset["id"], JOB_CONFIG)
                console.print(f"submitted job {job['id']} ({job['status']})")
                job = _watch(console, client, job["id"])
                if job["status"] != "succeeded":
                    console.print(f"[red]job {job['status']}: {job.get('error')}[/red]")
                    console.print(client.logs(job["id"])[-3000:])
                    return 1
                result = job["result"]
                artifact = workdir / "digits_mlp.bfm"
                etag = client.download(job["id"], artifact)
                sha_ok = hashlib.sha256(artifact.read_bytes()).hexdigest() == etag
                console.print(f"downloaded {artifact.name}: sha256 matches ETag: {sha_ok}")

                x_test, y_test = trained["x_test"], trained["y_test"]
                v1 = client.predict(job["id"], x_test.tolist(), top_k=1)
                v1_out = np.array(v1["outputs"], dtype=np.float32)
                v1_acc = float((v1_out.argmax(1) == y_test).mean())
                v2_body = {
                    "inputs": [
                        {
                            "name": "input",
                            "shape": list(x_test.shape),
                            "datatype": "FP32",
                            "data": x_test.reshape(-1).tolist(),
                        }
                    ]
                }
                v2 = client.http.post(f"/v2/models/{job['id']}/infer", json=v2_body)
                v2.raise_for_status()
                v2_out = np.array(v2.json()["outputs"][0]["data"], dtype=np.float32).reshape(
                    v2.json()["outputs"][0]["shape"]
                )
                local = runtime.load(artifact)
                local_out = np.asarray(local.run(x_test))
                one = np.ascontiguousarray(x_test[:1])
                for _ in range(20):
                    local.run(one)
                t0 = time.perf_counter()
                for _ in range(500):
                    local.run(one)
                runtime_ms = (time.perf_counter() - t0) / 500 * 1000
                agree = bool(
                    np.allclose(v1_out, v2_out, atol=1e-4)
                    and np.allclose(v1_out, local_out, atol=1e-4)
                )
        total = time.monotonic() - started

    table = Table(title="bitfactor demo: digits MLP, real fp32 vs factorized-binary")
    table.add_column("measure")
    table.add_column("real (torch fp32)", justify="right")
    table.add_column("binary (.bfm, runtime)", justify="right")
    table.add_row(
        f"accuracy, held-out test (n={len(y_test)})",
        f"{trained['real_test_accuracy']:.3f}",
        f"{v1_acc:.3f}",
    )
    table.add_row(
        "accuracy, job validation split",
        f"{result.get('real_accuracy') or 0:.3f}",
        f"{result.get('binary_accuracy') or 0:.3f}",
    )
    table.add_row("top-1 agreement with real (validation)", "", f"{result['agreement']:.3f}")
    table.add_row(
        "model size",
        _fmt_bytes(result["real_bytes"]),
        _fmt_bytes(result["packed_bytes"]),
    )
    table.add_row(
        "compression ratio", "1.0x", f"{result['real_bytes'] / result['packed_bytes']:.1f}x"
    )
    table.add_row(
        "batch-1 latency (this machine)",
        f"{trained['torch_ms']:.3f} ms",
        f"{runtime_ms:.3f} ms",
    )
    table.add_row("latency ratio (real / binary)", "", f"{trained['torch_ms'] / runtime_ms:.2f}x")
    table.add_row("epochs trained", "", str(result["epochs_run"]))
    table.add_row("/v1 == /v2 == local runtime outputs", "", "yes" if agree else "NO")
    table.add_row("artifact sha256 == ETag", "", "yes" if sha_ok else "NO")
    console.print(table)
    console.print(f"runtime ISA: {runtime.isa()}; total demo time {total:.0f} s; service stopped.")
    return 0 if agree and sha_ok else 1
