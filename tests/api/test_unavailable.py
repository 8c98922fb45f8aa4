"""A database that does not answer: every ``/v1`` call is a 503 problem with Retry-After."""

from __future__ import annotations

import socket
from pathlib import Path

from fastapi.testclient import TestClient

from api.app import create_app
from bitfactor.settings import Settings


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


def test_unreachable_database_answers_503_with_retry_after(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/none?connect_timeout=2"
    settings = Settings(data_dir=tmp_path, environment="test", database_url=url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        headers = {"Authorization": "Bearer bf_anything"}
        for method, path in (
            ("GET", "/v1/jobs"),
            ("GET", "/v1/jobs/0123/artifact"),
            ("POST", "/v1/jobs/0123/cancel"),
        ):
            response = client.request(method, path, headers=headers)
            assert response.status_code == 503, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert int(response.headers["retry-after"]) > 0
            body = response.json()
            assert body["type"].endswith("/service-unavailable")
            assert body["status"] == 503
        infer = client.post("/v2/models/0123/infer", headers=headers, json={"inputs": []})
        assert infer.status_code == 503
        assert "error" in infer.json()
