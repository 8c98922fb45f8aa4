"""The worker and the CLI never unpickle an uploaded ``.pt`` in their own process (issue #6).

:func:`engine.importers.load_model` (what :func:`engine.pipeline.binarize` and so the worker
call) loads a ``.pt`` only in a child (``python -m engine.inspect --to-safetensors``) under
limits, and reads back safetensors. Here ``torch.load`` in the test process is replaced by
a function that fails the test if called: whatever loads the file must be another process.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import engine.importers as importers
from bitfactor.sandbox import Limits
from engine.archs import MLP
from engine.errors import UserInputError

from ..conftest import QueueJob
from . import corpus as c

ARCH = {"arch": "mlp", "arch_kwargs": {"in_features": 8, "hidden": [16], "num_classes": 3}}


@pytest.fixture
def no_torch_load_here(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace ``torch.load`` in this process; the list records any call."""
    calls: list[Any] = []

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError("torch.load called in the parent process")

    monkeypatch.setattr(torch, "load", forbidden)
    return calls


def _mlp_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return MLP(in_features=8, hidden=[16], num_classes=3).state_dict()


def _evil_pt(tmp_path: Path, marker: Path) -> Path:
    """A valid ``torch.save`` archive whose ``data.pkl`` would run ``touch marker``."""
    good = tmp_path / "good.pt"
    torch.save(_mlp_state(), good)
    evil = tmp_path / "evil.pt"
    payload = pickle.dumps({"w": c.SystemPayload(marker)}, 2)
    evil.write_bytes(c.replace_entry(good.read_bytes(), "data.pkl", payload))
    return evil


def test_a_valid_pt_loads_in_a_child_not_here(
    tmp_path: Path, no_torch_load_here: list[Any]
) -> None:
    state = _mlp_state()
    path = tmp_path / "m.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = importers.load_model(path, **ARCH)  # type: ignore[arg-type]
    assert loaded.format == "pt"
    assert loaded.num_outputs == 3
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert no_torch_load_here == []


def test_tied_weights_survive_the_hand_over(tmp_path: Path, no_torch_load_here: list[Any]) -> None:
    """safetensors refuses shared storage; the child unties before writing."""
    path = tmp_path / "tied.pt"
    shared = torch.randn(3, 16)
    torch.save({"a": shared, "b": shared, "c": shared[:1]}, path)
    out = importers.load_pt_state_dict(path)
    assert torch.equal(out["a"], shared)
    assert torch.equal(out["b"], shared)
    assert torch.equal(out["c"], shared[:1])
    assert no_torch_load_here == []


def test_a_malicious_pickle_is_refused_in_the_child_marker_absent(
    tmp_path: Path, no_torch_load_here: list[Any]
) -> None:
    marker = tmp_path / "pwned"
    evil = _evil_pt(tmp_path, marker)
    # Straight to the loader (past the torch-free scan): weights_only refuses it in the child.
    with pytest.raises(UserInputError, match=r"evil\.pt: not a weights-only state dict"):
        importers.load_pt_state_dict(evil)
    # Through load_model (what the pipeline calls): the scan refuses it before any child.
    with pytest.raises(UserInputError, match=r"posix\.system"):
        importers.load_model(evil, **ARCH)  # type: ignore[arg-type]
    assert not marker.exists()
    assert no_torch_load_here == []


def test_a_pt_too_big_for_the_memory_limit_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 900 * 2**20  # torch's import takes ~650 MiB of address space; 400 MB do not fit
    monkeypatch.setattr(importers, "PT_LIMITS", Limits(max_memory_bytes=limit, timeout=120))
    small = tmp_path / "small.pt"
    torch.save({"w": torch.ones(4)}, small)
    assert torch.equal(importers.load_pt_state_dict(small)["w"], torch.ones(4))  # fits
    big = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(100 * 2**20)}, big)  # 400 MiB of float32
    with pytest.raises(UserInputError, match=r"big.pt: loading exceeded the memory limit of 900"):
        importers.load_pt_state_dict(big)


def test_a_child_past_its_wall_time_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importers, "PT_LIMITS", Limits(timeout=0.01))
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(4)}, path)
    with pytest.raises(UserInputError, match=r"m.pt: loading took longer than the time limit"):
        importers.load_pt_state_dict(path)


# ------------------------------------------------------------------ through the worker


@pytest.fixture
def data_dir(worker_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # run_job sets the loader's limits from the settings; restored after the test.
    monkeypatch.setattr(importers, "PT_LIMITS", importers.PT_LIMITS)
    return worker_data_dir


@pytest.fixture
def queued_pt_job(queue_job: QueueJob, data_dir: Path) -> Callable[[], str]:
    """A queued job on a ``.pt`` MLP state dict and 64 labelled rows, stored as the API would."""

    def queued() -> str:
        kwargs = {"in_features": 8, "hidden": [32, 32], "num_classes": 3}
        torch.manual_seed(0)
        pt_path = data_dir / "m.pt"
        torch.save(MLP(**kwargs).state_dict(), pt_path)  # type: ignore[arg-type]
        return queue_job(pt_path, "pt", arch="mlp", arch_kwargs=kwargs)

    return queued


def _job(job_id: str) -> tuple[str, str | None]:
    from db.models import Job
    from worker import jobs

    with jobs._sessions()() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.status, job.error


def test_a_pt_job_succeeds_without_a_torch_load_in_the_worker(
    queued_pt_job: Callable[[], str], no_torch_load_here: list[Any]
) -> None:
    from worker import jobs

    job_id = queued_pt_job()
    assert jobs.run_job(job_id, worker_id="test:1") == "succeeded", _job(job_id)
    assert no_torch_load_here == []


def test_the_worker_applies_the_inspect_limits_and_fails_the_job_once(
    queued_pt_job: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bitfactor.settings import get_settings
    from worker import jobs

    monkeypatch.setenv("BITFACTOR_INSPECT_TIMEOUT", "0.01")
    get_settings.cache_clear()
    job_id = queued_pt_job()
    assert jobs.run_job(job_id, worker_id="test:1") == "failed", _job(job_id)
    status, error = _job(job_id)
    assert status == "failed"
    assert error is not None
    assert "model.pt: loading took longer than the time limit of 0 s" in error
