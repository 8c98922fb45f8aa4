"""``/v1/models``: real uploads validated by ``engine.inspect`` in a subprocess."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bitfactor.demo import export_onnx

from .conftest import Api

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    onnx_path = export_onnx(net, root / "mlp.onnx", features=8)
    st_path = root / "mlp.safetensors"
    save_file(net.state_dict(), str(st_path))
    return {"onnx": onnx_path, "safetensors": st_path}


def _upload(api: Api, path: Path, tenant: str = "alice", **data: str):
    with open(path, "rb") as handle:
        return api.client.post(
            "/v1/models",
            headers=api.headers(tenant),
            files={"file": (path.name, handle)},
            data=data,
        )


def test_onnx_upload_round_trip(api: Api, model_files: dict[str, Path]) -> None:
    path = model_files["onnx"]
    response = _upload(api, path, name="tiny")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["format"] == "onnx"
    assert body["name"] == "tiny"
    assert body["input_shape"] == [8]
    assert body["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert body["size_bytes"] == path.stat().st_size
    assert len(body["id"]) == 32
    listed = api.client.get("/v1/models", headers=api.headers()).json()
    assert [m["id"] for m in listed["items"]] == [body["id"]]
    assert api.client.get(f"/v1/models/{body['id']}", headers=api.headers("bob")).status_code == 404
    assert api.client.delete(f"/v1/models/{body['id']}", headers=api.headers()).status_code == 204
    assert api.client.get(f"/v1/models/{body['id']}", headers=api.headers()).status_code == 404


def test_safetensors_needs_an_architecture(api: Api, model_files: dict[str, Path]) -> None:
    path = model_files["safetensors"]
    response = _upload(api, path)
    assert response.status_code == 422
    assert response.json()["type"].endswith("/invalid-model")
    assert "architecture" in response.json()["detail"]
    response = _upload(api, path, arch="mlp", arch_kwargs="{not json")
    assert response.status_code == 422
    assert response.json()["type"].endswith("/validation-error")
    response = _upload(api, path, arch="mlp", arch_kwargs=json.dumps([1, 2]))
    assert response.status_code == 422


def test_garbage_and_pickles_are_refused(api: Api, tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01not a model at all" * 10)
    response = _upload(api, junk)
    assert response.status_code == 422, response.text
    assert response.json()["type"].endswith("/invalid-model")
    assert api.client.get("/v1/models", headers=api.headers()).json()["items"] == []
    assert list((api.settings.resolved_artifacts_dir / "tmp").iterdir()) == []


def test_without_the_engine_the_format_is_still_checked(
    model_files: dict[str, Path], tmp_path: Path
) -> None:
    """The torch-free API image: the inspector cannot import, detect_format decides."""
    from api.validation import InvalidUpload, inspect_model

    def check(path: Path) -> object:
        return inspect_model(
            path, arch=None, arch_kwargs=None, timeout=60, module="bitfactor_no_engine.inspect"
        )

    info = check(model_files["onnx"])
    assert info.format == "onnx"  # type: ignore[attr-defined]
    assert info.input_shape is None  # type: ignore[attr-defined]
    with pytest.raises(InvalidUpload, match="architecture"):
        check(model_files["safetensors"])
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x80\x04pickle")
    with pytest.raises(InvalidUpload, match="pickle"):
        check(junk)
