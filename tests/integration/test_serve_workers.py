"""``bitfactor serve --workers N``: several API processes on one port.

The processes share the listening socket; each builds its own app. Their request metrics
are summed through Prometheus' multiprocess files, so ``/metrics`` counts every request
whichever process answered it, and SIGTERM stops all of them.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from bitfactor.demo import descendants, run_service

pytestmark = pytest.mark.integration


def _healthz_count(metrics: str) -> float:
    pattern = r'bitfactor_http_request_duration_seconds_count\{[^}]*route="/healthz"[^}]*\} (\S+)'
    return sum(float(value) for value in re.findall(pattern, metrics))


def test_workers_share_the_port_and_sum_their_metrics(tmp_path: Path) -> None:
    with run_service(tmp_path / "data", worker=False, api_workers=2) as service:
        api_processes = descendants(service.process.pid)
        assert len(api_processes) >= 2, "expected two API processes under bitfactor serve"
        requests = 40
        for _ in range(requests):  # a new connection each: either process may take it
            assert httpx.get(f"{service.url}/healthz", timeout=10).status_code == 200
        deadline = time.monotonic() + 10
        while True:  # a process records a request just after answering it
            metrics = httpx.get(f"{service.url}/metrics", timeout=10).text
            if _healthz_count(metrics) >= requests or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert _healthz_count(metrics) == requests
        assert "bitfactor_database_up 1.0" in metrics
        key = (service.data_dir / "api-key").read_text().strip()
        listed = httpx.get(
            f"{service.url}/v1/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
        assert listed.status_code == 200, listed.text
    assert service.process.returncode is not None
    deadline = time.monotonic() + 10
    while _descendants_alive(api_processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _descendants_alive(api_processes), "API processes outlived bitfactor serve"


def _descendants_alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive
