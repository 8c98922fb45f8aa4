"""Property tests of the live OpenAPI schema (schemathesis): every operation, authenticated.

The app is the real one on a temporary database, with a tenant that owns real resources
(a model, a dataset, a queued job and a succeeded job with its packed model), and the
generated path ids are sometimes replaced by those real ids, so cases reach the handlers'
happy paths as well as their 404s. Every response must be documented (status code and
content type) and match its schema, and none may be a 5xx.

Cases per operation: ``BITFACTOR_SCHEMATHESIS_EXAMPLES`` (default 70 under ``CI``, which
is over 1,000 cases in all; 10 locally). Model uploads run an import subprocess each, so
they get a tenth of that.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from bitfactor.settings import Settings
from db import repo
from db.models import ModelFile, new_id
from db.session import connect, session_factory, upgrade
from db.storage import LocalArtifactStore

from .conftest import Api, finish_with_artifact, npz_bytes

EXAMPLES = int(
    os.environ.get("BITFACTOR_SCHEMATHESIS_EXAMPLES", "70" if os.environ.get("CI") else "10")
)
CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
)
# Real ids by path parameter name, filled by the fixture before any case is generated.
REAL_IDS: dict[str, list[str]] = {}
DISPOSABLE_IDS: dict[str, list[str]] = {}
CASES: list[str] = []
# FastAPI writes OpenAPI 3.1; schemathesis 3.x checks it behind this switch.
schemathesis.experimental.OPEN_API_3_1.enable()


def _add_model(config: Settings, session: Any, tenant_id: str, tmp: Path) -> str:
    store = LocalArtifactStore(config.resolved_artifacts_dir)
    source = tmp / "m.onnx"
    source.write_bytes(b"model bytes")
    model_id = new_id()
    sha, size = store.put_file(f"models/{model_id}/model.onnx", source)
    session.add(
        ModelFile(
            id=model_id,
            tenant_id=tenant_id,
            name="m",
            format="onnx",
            sha256=sha,
            size_bytes=size,
            input_shape=[4],
            storage_key=f"models/{model_id}/model.onnx",
        )
    )
    return model_id


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, str]]]:
    from fastapi.testclient import TestClient

    tmp = tmp_path_factory.mktemp("schemathesis")
    config = Settings(
        data_dir=tmp,
        environment="test",
        max_upload_bytes=200_000,
        model_cache_size=2,
        rate_limit_per_minute=0,  # a thousand cases in a minute are not abuse here
    )
    upgrade(config.resolved_database_url)
    engine = connect(config.resolved_database_url)
    with session_factory(engine)() as session:
        tenant = repo.get_or_create_tenant(session, name="alice")
        key = repo.create_api_key(session, tenant=tenant, secret=config.secret_key)
        # One model for every operation, one that DELETE may remove.
        model_ids = [_add_model(config, session, tenant.id, tmp) for _ in range(2)]
        session.commit()
    engine.dispose()
    app = create_app(config)
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(app, raise_server_exceptions=False) as client:
        api = Api(client, config, {"alice": key})
        rng = np.random.default_rng(0)
        data = npz_bytes(x=rng.normal(size=(20, 4)).astype(np.float32), y=np.arange(20) % 3)
        dataset_ids = []
        for _ in range(2):
            dataset = client.post("/v1/datasets", headers=headers, files={"file": ("d.npz", data)})
            assert dataset.status_code == 201, dataset.text
            dataset_ids.append(dataset.json()["id"])
        jobs = []
        for _ in range(2):
            job = client.post(
                "/v1/jobs",
                headers=headers,
                json={"model_id": model_ids[0], "dataset_id": dataset_ids[0]},
            )
            assert job.status_code == 202, job.text
            jobs.append(job.json()["id"])
        finish_with_artifact(api, jobs[1], Path(tmp))
        REAL_IDS.update(
            model_id=model_ids[:1],
            dataset_id=dataset_ids[:1],
            val_dataset_id=dataset_ids[:1],
            job_id=jobs,
            name=jobs,
        )
        DISPOSABLE_IDS.update(model_id=model_ids[1:], dataset_id=dataset_ids[1:])
        yield app, headers


@pytest.fixture(scope="module")
def live_schema(live: tuple[Any, dict[str, str]]) -> Any:
    app, _ = live
    return schemathesis.from_asgi("/openapi.json", app)


schema = schemathesis.from_pytest_fixture("live_schema")


def _with_real_ids(strategy: st.SearchStrategy, ids: dict[str, list[str]]) -> st.SearchStrategy:
    """Each id-named member of a generated object: as generated, or one of ``ids``."""

    def choose(value: Any) -> st.SearchStrategy:
        if not isinstance(value, dict):
            return st.just(value)
        return st.fixed_dictionaries(
            {name: st.sampled_from([item, *ids.get(name, [])]) for name, item in value.items()}
        )

    return strategy.flatmap(choose)


@schema.hook
def before_generate_path_parameters(context: Any, strategy: st.SearchStrategy) -> Any:
    """Path ids: often the tenant's real ones (happy paths), else generated (404s).

    DELETE gets ids of its own, so the resources the other operations use stay.
    """
    deleting = context.operation.method.upper() == "DELETE"
    return _with_real_ids(strategy, DISPOSABLE_IDS if deleting else REAL_IDS)


# Inputs the real packed model (4 features) accepts, for predict's success path.
_ROWS = st.lists(
    st.lists(st.floats(-10, 10, width=32), min_size=4, max_size=4), min_size=1, max_size=3
)
VALID_BODIES = {
    "/v1/jobs/{job_id}/predict": st.fixed_dictionaries(
        {"inputs": _ROWS}, optional={"top_k": st.integers(0, 5)}
    ),
    "/v2/models/{name}/infer": st.builds(
        lambda rows, binary: {
            "inputs": [
                {
                    "name": "input",
                    "shape": [len(rows), 4],
                    "datatype": "FP32",
                    "data": [v for row in rows for v in row],
                }
            ],
            "parameters": {"binary_data_output": binary},
        },
        _ROWS,
        st.booleans(),
    ),
}


@schema.hook
def before_generate_body(context: Any, strategy: st.SearchStrategy) -> Any:
    """Job bodies' ``model_id``/``dataset_id``: often the real ones; predict bodies: often
    inputs the real model accepts."""
    valid = VALID_BODIES.get(context.operation.path)
    if valid is not None:
        return st.one_of(strategy, valid)
    return _with_real_ids(strategy, REAL_IDS)


def _run(case: Any, headers: dict[str, str]) -> None:
    case.headers = {**(case.headers or {}), **headers}
    response = case.call()
    CASES.append(f"{case.method} {case.path} {response.status_code}")
    case.validate_response(response, checks=CHECKS)


@schema.exclude(method="POST", path="/v1/models").parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_operation(case: Any, live: tuple[Any, dict[str, str]]) -> None:
    _run(case, live[1])


@schema.include(method="POST", path="/v1/models").parametrize()
@settings(
    max_examples=max(2, EXAMPLES // 10),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_model_upload(case: Any, live: tuple[Any, dict[str, str]]) -> None:
    _run(case, live[1])


def test_enough_cases() -> None:
    """Runs after the property tests above (file order): under CI they made 1,000+ cases."""
    if not CASES:
        pytest.skip("run together with the property tests above")
    statuses = {line.rsplit(" ", 1)[1] for line in CASES}
    assert any(s.startswith("2") for s in statuses), "no case reached a handler's success path"
    print(f"{len(CASES)} cases:", sorted(Counter(CASES).items()))  # seen with -s
    if os.environ.get("CI"):
        assert len(CASES) >= 1000, f"only {len(CASES)} cases"
