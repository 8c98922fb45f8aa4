"""A small HTTP client of the bitfactor API, and the ``bitfactor client ...`` verbs.

:class:`Client` wraps ``/v1`` with httpx; errors come back as :class:`ApiError` carrying
the server's problem+json. The CLI reads ``--url``/``--key`` or ``BITFACTOR_URL`` and
``BITFACTOR_API_KEY`` (falling back to ``<data_dir>/api-key`` of a local ``serve``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import typer

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = {"succeeded", "failed", "canceled"}


class ApiError(Exception):
    """An error answer of the API, with its problem details."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        detail = problem.get("detail") or problem.get("error") or problem.get("title") or ""
        super().__init__(f"HTTP {status}: {detail}")


class Client:
    """The ``/v1`` API as methods."""

    def __init__(self, url: str, key: str, *, timeout: float = 300.0) -> None:
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text[:500]}
            raise ApiError(response.status_code, problem if isinstance(problem, dict) else {})
        return response

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call; the JSON body of the answer (or None when it has none)."""
        response = self._check(self.http.request(method, path, **kwargs))
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def upload_model(
        self,
        path: Path,
        *,
        name: str | None = None,
        arch: str | None = None,
        arch_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/models``."""
        data = {k: v for k, v in {"name": name, "arch": arch}.items() if v}
        if arch_kwargs:
            data["arch_kwargs"] = json.dumps(arch_kwargs)
        with open(path, "rb") as handle:
            result: dict[str, Any] = self.request(
                "POST", "/v1/models", files={"file": (path.name, handle)}, data=data
            )
        return result

    def upload_dataset(self, path: Path, *, name: str | None = None) -> dict[str, Any]:
        """``POST /v1/datasets``."""
        with open(path, "rb") as handle:
            result: dict[str, Any] = self.request(
                "POST",
                "/v1/datasets",
                files={"file": (path.name, handle)},
                data={"name": name} if name else {},
            )
        return result

    def submit(
        self,
        model_id: str,
        dataset_id: str,
        config: dict[str, Any] | None = None,
        *,
        val_dataset_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/jobs``."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body: dict[str, Any] = {
            "model_id": model_id,
            "dataset_id": dataset_id,
            "config": config or {},
        }
        if val_dataset_id:
            body["val_dataset_id"] = val_dataset_id
        result: dict[str, Any] = self.request("POST", "/v1/jobs", json=body, headers=headers)
        return result

    def job(self, job_id: str) -> dict[str, Any]:
        """``GET /v1/jobs/{id}``."""
        result: dict[str, Any] = self.request("GET", f"/v1/jobs/{job_id}")
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        """``POST /v1/jobs/{id}/cancel``."""
        result: dict[str, Any] = self.request("POST", f"/v1/jobs/{job_id}/cancel")
        return result

    def logs(self, job_id: str) -> str:
        """``GET /v1/jobs/{id}/logs``."""
        return self._check(self.http.get(f"/v1/jobs/{job_id}/logs")).text

    def wait(
        self,
        job_id: str,
        *,
        timeout: float = 3600.0,
        interval: float = 0.5,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll a job until it ends; ``on_update`` sees every poll."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout} s")
            time.sleep(interval)

    def download(self, job_id: str, out: Path) -> str:
        """Save the job's ``.bfm`` to ``out``; returns its ETag (sha256)."""
        with self.http.stream("GET", f"/v1/jobs/{job_id}/artifact") as response:
            if response.status_code >= 400:
                response.read()
                self._check(response)
            tmp = out.with_name(out.name + ".part")
            with open(tmp, "wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
            tmp.replace(out)
            return response.headers.get("etag", "").strip('"')

    def predict(self, job_id: str, inputs: Any, *, top_k: int = 5) -> dict[str, Any]:
        """``POST /v1/jobs/{id}/predict``."""
        result: dict[str, Any] = self.request(
            "POST", f"/v1/jobs/{job_id}/predict", json={"inputs": inputs, "top_k": top_k}
        )
        return result


# ----------------------------------------------------------------------------- the CLI

client_app = typer.Typer(help="Talk to a bitfactor server over HTTP.", no_args_is_help=True)
_state: dict[str, Any] = {}


def _resolve_key(key: str | None) -> str:
    if key:
        return key
    if os.environ.get("BITFACTOR_API_KEY"):
        return os.environ["BITFACTOR_API_KEY"]
    from bitfactor.settings import get_settings

    key_file = get_settings().data_dir / "api-key"
    if key_file.is_file():
        return key_file.read_text().strip()
    typer.echo("error: no API key (--key, BITFACTOR_API_KEY or <data-dir>/api-key)", err=True)
    raise typer.Exit(2)


@client_app.callback()
def _client_options(
    url: str = typer.Option(
        None, "--url", envvar="BITFACTOR_URL", help=f"Server URL (default {DEFAULT_URL})."
    ),
    key: str = typer.Option(None, "--key", help="API key (or BITFACTOR_API_KEY)."),
) -> None:
    """Options shared by every client verb."""
    _state["url"] = url or DEFAULT_URL
    _state["key"] = key


def _client() -> Client:
    return Client(_state.get("url") or DEFAULT_URL, _resolve_key(_state.get("key")))


def _run(call: Callable[[Client], Any]) -> Any:
    try:
        with _client() as client:
            return call(client)
    except ApiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach the server: {exc}", err=True)
        raise typer.Exit(1) from exc


def _print(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


@client_app.command("upload")
def upload(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Model file."),
    name: str = typer.Option(None, "--name"),
    arch: str = typer.Option(None, "--arch", help="Built-in architecture (safetensors)."),
    arch_kwargs: str = typer.Option(None, "--arch-kwargs", help="JSON object."),
) -> None:
    """Upload a model; prints the model resource."""
    kwargs = json.loads(arch_kwargs) if arch_kwargs else None
    _print(_run(lambda c: c.upload_model(path, name=name, arch=arch, arch_kwargs=kwargs)))


@client_app.command("dataset")
def dataset(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help=".npz file."),
    name: str = typer.Option(None, "--name"),
) -> None:
    """Upload a dataset; prints the dataset resource."""
    _print(_run(lambda c: c.upload_dataset(path, name=name)))


@client_app.command("submit")
def submit(
    model_id: str = typer.Argument(...),
    dataset_id: str = typer.Argument(...),
    config: str = typer.Option("{}", "--config", help="Job options as JSON."),
    val_dataset: str = typer.Option(None, "--val-dataset", help="Validation dataset id."),
    idempotency_key: str = typer.Option(None, "--idempotency-key"),
) -> None:
    """Start a job; prints it."""
    try:
        options = json.loads(config)
    except json.JSONDecodeError as exc:
        typer.echo(f"error: --config is not JSON: {exc}", err=True)
        raise typer.Exit(2) from exc
    _print(
        _run(
            lambda c: c.submit(
                model_id,
                dataset_id,
                options,
                val_dataset_id=val_dataset,
                idempotency_key=idempotency_key,
            )
        )
    )


def _progress_line(job: dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    total = progress.get("total_steps") or 0
    step = progress.get("step") or 0
    width = 30
    filled = int(width * step / total) if total else 0
    bar = "#" * filled + "-" * (width - filled)
    parts = [f"[{bar}] {job['status']}"]
    if progress:
        parts.append(f"epoch {progress.get('epoch')}/{progress.get('epochs')}")
        parts.append(f"step {step}/{total}")
        if progress.get("loss") is not None:
            parts.append(f"loss {progress['loss']:.4f}")
        for name, value in (progress.get("metrics") or {}).items():
            parts.append(f"{name} {value:.4f}")
        if progress.get("eta_seconds") is not None:
            parts.append(f"eta {progress['eta_seconds']:.0f}s")
    return "  ".join(parts)


@client_app.command("status")
def status(
    job_id: str = typer.Argument(...),
    watch: bool = typer.Option(False, "--watch", help="Show a progress bar until it ends."),
) -> None:
    """Print a job (or watch it until it ends)."""
    if not watch:
        _print(_run(lambda c: c.job(job_id)))
        return

    def show(job: dict[str, Any]) -> None:
        sys.stderr.write("\r\x1b[2K" + _progress_line(job))
        sys.stderr.flush()

    job = _run(lambda c: c.wait(job_id, on_update=show))
    sys.stderr.write("\n")
    _print(job)
    if job["status"] != "succeeded":
        raise typer.Exit(1)


@client_app.command("download")
def download(
    job_id: str = typer.Argument(...),
    out: Path = typer.Option(None, "--out", "-o", help="Output file (default <job>.bfm)."),
) -> None:
    """Download a job's packed model."""
    target = out or Path(f"{job_id}.bfm")
    etag = _run(lambda c: c.download(job_id, target))
    typer.echo(f"{target}  sha256 {etag}")


@client_app.command("predict")
def predict(
    job_id: str = typer.Argument(...),
    inputs: str = typer.Option(
        ..., "--inputs", help="JSON nested list (batch first), or @file.json / @file.npy."
    ),
    top_k: int = typer.Option(5, "--top-k"),
) -> None:
    """Run a job's packed model; prints outputs and top classes."""
    if inputs.startswith("@"):
        source = Path(inputs[1:])
        if source.suffix == ".npy":
            import numpy as np

            data = np.load(source, allow_pickle=False).tolist()
        else:
            data = json.loads(source.read_text())
    else:
        data = json.loads(inputs)
    _print(_run(lambda c: c.predict(job_id, data, top_k=top_k)))


def register(app: typer.Typer) -> None:
    """Add ``bitfactor client ...`` to the CLI."""
    app.add_typer(client_app, name="client")
