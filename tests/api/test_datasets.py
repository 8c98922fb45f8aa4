"""``/v1/datasets``: upload validation, size cap, get/list/delete, tenant isolation."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import Api, npz_bytes


def _upload(api: Api, data: bytes, tenant: str = "alice", name: str = "d.npz"):
    return api.client.post(
        "/v1/datasets", headers=api.headers(tenant), files={"file": (name, data)}
    )


def test_upload_records_shape_labels_and_hash(api: Api) -> None:
    import hashlib

    x = np.ones((7, 2, 3), dtype=np.float32)
    data = npz_bytes(x=x, y=np.zeros(7, dtype=np.int64))
    response = _upload(api, data)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["n"] == 7
    assert body["x_shape"] == [7, 2, 3]
    assert body["has_labels"] is True
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["size_bytes"] == len(data)
    got = api.client.get(f"/v1/datasets/{body['id']}", headers=api.headers()).json()
    assert got == body
    no_labels = _upload(api, npz_bytes(x=np.ones((3, 4)))).json()
    assert no_labels["has_labels"] is False


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"this is not a zip", ".npz"),
        (npz_bytes(y=np.zeros(3, dtype=np.int64)), "no array 'x'"),
        (npz_bytes(x=np.ones((3, 2)), z=np.ones(2)), "unexpected arrays"),
        (npz_bytes(x=np.array([[1.0, np.nan]])), "NaN"),
        (npz_bytes(x=np.array([[1.0, np.inf]])), "NaN or infinite"),
        (npz_bytes(x=np.array(["a", "b"])[:, None]), "float32"),
        (npz_bytes(x=np.ones((3, 2), dtype=np.uint8)), "float32"),
        (npz_bytes(x=np.ones(5)), "(N, ...)"),
        (npz_bytes(x=np.ones((3, 2)), y=np.zeros(4, dtype=np.int64)), "shape (3,)"),
        (npz_bytes(x=np.ones((3, 2)), y=np.zeros(3)), "int64 labels"),
        (npz_bytes(x=np.ones((3, 2)), y=-np.ones(3, dtype=np.int64)), ">= 0"),
    ],
)
def test_bad_datasets_are_422(api: Api, data: bytes, fragment: str) -> None:
    response = _upload(api, data)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["type"].endswith("/invalid-dataset")
    assert fragment in body["detail"]
    assert api.client.get("/v1/datasets", headers=api.headers()).json()["items"] == []


def test_pickled_object_arrays_are_refused(api: Api) -> None:
    data = npz_bytes(x=np.array([[{"a": 1}]], dtype=object))
    response = _upload(api, data)
    assert response.status_code == 422
    assert "pickle" in response.json()["detail"]


def test_empty_and_oversized_uploads(api: Api) -> None:
    assert _upload(api, b"").status_code == 422
    big = npz_bytes(x=np.zeros((400, 100), dtype=np.float64))  # 320 kB > 200 kB cap
    response = _upload(api, big)
    assert response.status_code == 413
    assert response.json()["type"].endswith("/payload-too-large")
    tmp = api.settings.resolved_artifacts_dir / "tmp"
    assert list(tmp.iterdir()) == []


def test_other_tenants_dataset_is_404_and_delete(api: Api, dataset_id: str) -> None:
    path = f"/v1/datasets/{dataset_id}"
    assert api.client.get(path, headers=api.headers("bob")).status_code == 404
    assert api.client.delete(path, headers=api.headers("bob")).status_code == 404
    assert api.client.get("/v1/datasets", headers=api.headers("bob")).json()["items"] == []
    assert api.client.delete(path, headers=api.headers()).status_code == 204
    assert api.client.get(path, headers=api.headers()).status_code == 404
    files = list((api.settings.resolved_artifacts_dir / "datasets").rglob("*.npz"))
    assert files == []


def test_chunked_upload_past_the_cap_is_cut_short(api: Api) -> None:
    """No Content-Length: the body is counted as it arrives and refused at the cap."""
    sent = 0

    def body():  # a multipart body streamed in 64 KiB chunks, 1 MB in all
        nonlocal sent
        boundary = b"--xyz\r\n"
        head = b'Content-Disposition: form-data; name="file"; filename="d.npz"\r\n\r\n'
        yield boundary + head
        for _ in range(16):
            sent += 65536
            yield b"\0" * 65536
        yield b"\r\n--xyz--\r\n"

    response = api.client.post(
        "/v1/datasets",
        headers={**api.headers(), "content-type": "multipart/form-data; boundary=xyz"},
        content=body(),
    )
    assert response.status_code == 413, response.text
    assert response.json()["type"].endswith("/payload-too-large")
    assert list((api.settings.resolved_artifacts_dir / "tmp").iterdir()) == []
