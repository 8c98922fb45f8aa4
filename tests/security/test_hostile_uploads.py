"""Hostile and broken uploads through the real app: each is a 4xx problem, nothing is stored.

The corpus is built here (see corpus.py). Every case is posted to ``/v1/models`` or
``/v1/datasets`` with the FastAPI TestClient; the answer must be a 4xx
``application/problem+json`` whose ``detail`` names the problem, no row may appear, the
artifact store must hold no new file, and no pickle payload may have run (its marker file
never exists). Most cases are refused torch-free in the API process; the few that reach
the importer subprocess cost ~3 s each.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import textwrap
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from . import corpus as c
from .conftest import UPLOAD_CAP, Service

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

MLP_KWARGS = json.dumps({"in_features": 8, "hidden": [16], "num_classes": 3})


@dataclass
class Case:
    """One hostile file: where it goes, the form fields, the status and a word of the detail."""

    content: bytes
    keyword: str
    status: int = 422
    route: str = "/v1/models"
    data: dict[str, str] = field(default_factory=dict)


@dataclass
class Built:
    marker: Path
    cases: dict[str, Case]
    pt_valid: bytes
    onnx_valid: bytes


def _mlp() -> torch.nn.Module:
    from engine.archs import MLP

    torch.manual_seed(0)
    return MLP(in_features=8, hidden=[16], num_classes=3).eval()


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _build(root: Path) -> Built:
    marker = root / "pwned"
    net = _mlp()
    pt_valid = _saved(net.state_dict())
    onnx_valid = c.onnx_model()
    st_valid = c.safetensors_valid()
    arch = {"arch": "mlp", "arch_kwargs": MLP_KWARGS}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        script = io.BytesIO()
        torch.jit.save(torch.jit.script(net), script)
        exported = io.BytesIO()
        torch.export.save(torch.export.export(net, (torch.zeros(2, 8),)), exported)

    nan_state = {k: v.clone() for k, v in net.state_dict().items()}
    first_float = next(k for k, v in nan_state.items() if v.is_floating_point())
    nan_state[first_float].view(-1)[0] = float("nan")

    bad_w1 = np.ones((16, 8), np.float32)
    bad_w1[3, 4] = np.inf
    truncated_zip = pt_valid[: len(pt_valid) // 2]
    pkl_at = pt_valid.index(b"\x80\x02")  # data.pkl's first bytes inside the stored zip
    flipped_pkl = bytearray(pt_valid)
    flipped_pkl[pkl_at + 40] ^= 0x04
    storage_at = pt_valid.index(b"data/0") + 200
    flipped_storage = bytearray(pt_valid)
    flipped_storage[storage_at] ^= 0x01
    st_flipped = bytearray(st_valid)
    st_flipped[st_valid.index(b'"shape": [8]') + 10] ^= 0x01  # "8" -> "9"
    bomb = c.zip_of(
        [("m/data.pkl", pickle.dumps({}, protocol=2)), ("m/data/0", bytes(20 * 2**20))],
        zipfile.ZIP_DEFLATED,
    )
    many = c.zip_of(
        [("m/data.pkl", pickle.dumps({}, protocol=2))]
        + [(f"m/data/{k}", b"") for k in range(10_001)]
    )
    pkl_ok = pickle.dumps({}, protocol=2)

    cases = {
        # pickles and archives whose loaders run code
        "bare-pickle": Case(pickle.dumps(c.SystemPayload(marker), protocol=2), "pickle"),
        "bare-pickle-protocol-0": Case(
            pickle.dumps(c.SystemPayload(marker), protocol=0), "not a recognised"
        ),
        "pt-pickled-module": Case(_saved(net), "imports engine.archs.MLP", data=arch),
        "pt-malicious-reduce": Case(
            c.replace_entry(pt_valid, "data.pkl", pickle.dumps({"w": c.SystemPayload(marker)}, 2)),
            "imports posix.system",
            data=arch,
        ),
        "pt-stack-global-touch": Case(
            c.replace_entry(pt_valid, "data.pkl", pickle.dumps(c.TouchPayload(marker), 4)),
            "imports pathlib.Path.touch",
            data=arch,
        ),
        "torchscript": Case(script.getvalue(), "TorchScript", data=arch),
        "torch-export": Case(exported.getvalue(), "torch.export", data=arch),
        # truncated, bit-flipped, wrong magic
        "onnx-truncated": Case(onnx_valid[: len(onnx_valid) // 2], "truncated"),
        "onnx-bit-flipped-dims": Case(c.flip_dims(onnx_valid), "declares shape [17, 8]"),
        "safetensors-truncated": Case(st_valid[:-5], "truncated", data=arch),
        "safetensors-bit-flipped-shape": Case(bytes(st_flipped), "declared shape [9]", data=arch),
        "pt-truncated": Case(truncated_zip, "truncated zip", data=arch),
        "pt-bit-flipped-pickle": Case(bytes(flipped_pkl), "damaged", data=arch),
        "pt-bit-flipped-storage": Case(bytes(flipped_storage), "CRC", data=arch),
        "wrong-magic-png": Case(b"\x89PNG\r\n\x1a\n" + bytes(64), "not a recognised"),
        "wrong-magic-elf": Case(b"\x7fELF\x02\x01\x01" + bytes(120), "not a recognised"),
        "gzipped-onnx": Case(gzip.compress(onnx_valid), "not a recognised"),
        "safetensors-length-big-endian": Case(struct_swap(st_valid), "not a recognised", data=arch),
        "zip-not-torch": Case(c.zip_of([("readme.txt", b"hello")]), "not a torch.save"),
        # safetensors declarations
        "safetensors-absurd-shape": Case(
            c.safetensors_raw(
                {"w": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 16]}},
                bytes(16),
            ),
            "declared shape",
            data=arch,
        ),
        "safetensors-header-past-end": Case(
            c.safetensors_raw({"w": {}}, b"", declared=10_000), "runs past the end", data=arch
        ),
        "safetensors-header-too-large": Case(
            c.safetensors_raw({"w": {}}, bytes(64), declared=200 * 2**20),
            "more than the limit",
            data=arch,
        ),
        "safetensors-overlapping": Case(c.safetensors_overlapping(), "overlaps", data=arch),
        "safetensors-unknown-dtype": Case(
            c.safetensors_raw({"w": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}, b"ab"),
            "unknown dtype",
            data=arch,
        ),
        "safetensors-negative-dim": Case(
            c.safetensors_raw({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"c"),
            "non-negative",
            data=arch,
        ),
        # NaN / Inf weights in each format
        "safetensors-nan": Case(
            c.safetensors_valid(np.array([1.0, np.nan, 2.0])), "NaN", data=arch
        ),
        "onnx-inf": Case(c.onnx_model(w1=bad_w1), "'w1' holds NaN or infinite"),
        "pt-nan": Case(_saved(nan_state), f"{first_float!r} holds NaN", data=arch),
        # ONNX external data, limits
        "onnx-external-dotdot": Case(
            c.onnx_model(extra_initializers=[c.external_tensor("ext", "../../etc/passwd")]),
            "external data at '../../etc/passwd'",
        ),
        "onnx-external-absolute": Case(
            c.onnx_model(extra_initializers=[c.external_tensor("ext", "/etc/passwd")]),
            "external data at '/etc/passwd'",
        ),
        "onnx-external-in-constant": Case(c.onnx_external_constant("../secret"), "external"),
        "onnx-external-in-subgraph": Case(c.onnx_external_in_subgraph("/etc/shadow"), "external"),
        "onnx-too-many-nodes": Case(c.onnx_many_nodes(20_001), "more than 20000 nodes"),
        "onnx-nested-too-deep": Case(c.onnx_nested(9), "nested"),
        "onnx-opset-99": Case(c.onnx_model(opset=99), "opset 99"),
        "onnx-absurd-initializer": Case(
            c.onnx_absurd_initializer(), "declares shape [16384, 16384]"
        ),
        # zip structure
        "pt-zip-bomb": Case(bomb, "zip bomb", data=arch),
        "pt-zip-many-entries": Case(many, "10002 entries", data=arch),
        "pt-zip-dotdot-name": Case(
            c.zip_of([("m/data.pkl", pkl_ok), ("m/../../evil", b"x")]), "escapes", data=arch
        ),
        "pt-zip-absolute-name": Case(
            c.zip_of([("m/data.pkl", pkl_ok), ("/etc/evil", b"x")]), "escapes", data=arch
        ),
        "pt-zip-duplicate-entry": Case(
            c.zip_of([("m/data.pkl", pkl_ok), ("m/data.pkl", pkl_ok)]), "twice", data=arch
        ),
        # empty and oversized
        "empty-file": Case(b"", "empty"),
        "past-the-cap": Case(bytes(UPLOAD_CAP + 1), "limited", status=413),
        # datasets
        "npz-object-array": Case(
            c.npz_of(x=np.array([[{"a": 1}]], dtype=object)), "pickle", route="/v1/datasets"
        ),
        "npz-bomb": Case(c.npz_bomb(20), "zip bomb", route="/v1/datasets"),
        "npz-int-x": Case(c.npz_of(x=np.ones((3, 2), np.int32)), "float32", route="/v1/datasets"),
        "npz-1d-x": Case(c.npz_of(x=np.ones(5, np.float32)), "(N, ...)", route="/v1/datasets"),
        "npz-9d-x": Case(
            c.npz_of(x=np.ones((1,) * 9, np.float32)), "more than 8", route="/v1/datasets"
        ),
        "npz-xy-mismatch": Case(
            c.npz_of(x=np.ones((3, 2), np.float32), y=np.zeros(4, np.int64)),
            "shape (3,)",
            route="/v1/datasets",
        ),
        "npz-nan": Case(
            c.npz_of(x=np.array([[1.0, np.nan]], np.float32)), "NaN", route="/v1/datasets"
        ),
        "npz-absurd-header": Case(c.npz_absurd_header(), "declares shape", route="/v1/datasets"),
        "npz-not-a-zip": Case(b"x = [1, 2, 3]\n" * 4, ".npz", route="/v1/datasets"),
        "npz-empty": Case(b"", "empty", route="/v1/datasets"),
        "npz-damaged-deflate": Case(damaged_deflate(), "damaged", route="/v1/datasets"),
        "npz-zip-version-99": Case(
            zip_version(c.npz_of(x=np.ones((2, 2), np.float32))), "version", route="/v1/datasets"
        ),
        "pt-zip-version-99": Case(zip_version(pt_valid), "version", data=arch),
        "npz-duplicate-member": Case(
            c.zip_of([("x.npy", _npy(np.ones((2, 2)))), ("x.npy", _npy(np.ones((2, 2))))]),
            "twice",
            route="/v1/datasets",
        ),
    }
    return Built(marker, cases, pt_valid, onnx_valid)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def damaged_deflate() -> bytes:
    """A compressed npz whose deflate stream has one byte changed."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.random.default_rng(0).normal(size=(64, 8)))
    data = bytearray(buffer.getvalue())
    data[200] ^= 0xFF  # inside x.npy's compressed data (the local header is ~40 bytes)
    return bytes(data)


def zip_version(data: bytes) -> bytes:
    """Every central directory entry claims it needs zip version 9.9 to extract."""
    out = bytearray(data)
    at = out.find(b"PK\x01\x02")
    while at >= 0:
        out[at + 6 : at + 8] = (99).to_bytes(2, "little")
        at = out.find(b"PK\x01\x02", at + 4)
    return bytes(out)


def struct_swap(data: bytes) -> bytes:
    """The 8-byte header length written big-endian (a wrong magic for safetensors)."""
    return data[:8][::-1] + data[8:]


CASE_IDS = [
    "bare-pickle",
    "bare-pickle-protocol-0",
    "pt-pickled-module",
    "pt-malicious-reduce",
    "pt-stack-global-touch",
    "torchscript",
    "torch-export",
    "onnx-truncated",
    "onnx-bit-flipped-dims",
    "safetensors-truncated",
    "safetensors-bit-flipped-shape",
    "pt-truncated",
    "pt-bit-flipped-pickle",
    "pt-bit-flipped-storage",
    "wrong-magic-png",
    "wrong-magic-elf",
    "gzipped-onnx",
    "safetensors-length-big-endian",
    "zip-not-torch",
    "safetensors-absurd-shape",
    "safetensors-header-past-end",
    "safetensors-header-too-large",
    "safetensors-overlapping",
    "safetensors-unknown-dtype",
    "safetensors-negative-dim",
    "safetensors-nan",
    "onnx-inf",
    "pt-nan",
    "onnx-external-dotdot",
    "onnx-external-absolute",
    "onnx-external-in-constant",
    "onnx-external-in-subgraph",
    "onnx-too-many-nodes",
    "onnx-nested-too-deep",
    "onnx-opset-99",
    "onnx-absurd-initializer",
    "pt-zip-bomb",
    "pt-zip-many-entries",
    "pt-zip-dotdot-name",
    "pt-zip-absolute-name",
    "pt-zip-duplicate-entry",
    "empty-file",
    "past-the-cap",
    "npz-object-array",
    "npz-bomb",
    "npz-int-x",
    "npz-1d-x",
    "npz-9d-x",
    "npz-xy-mismatch",
    "npz-nan",
    "npz-absurd-header",
    "npz-not-a-zip",
    "npz-empty",
    "npz-damaged-deflate",
    "npz-zip-version-99",
    "pt-zip-version-99",
    "npz-duplicate-member",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _build(tmp_path_factory.mktemp("corpus"))


def test_the_corpus_is_what_the_ids_say(built: Built) -> None:
    assert sorted(built.cases) == sorted(CASE_IDS)
    assert len({(case.route, case.content) for case in built.cases.values()}) == len(CASE_IDS)


def _assert_refused(service: Service, response: object, status: int, keyword: str) -> None:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["status"] == status
    assert keyword in body["detail"], body["detail"]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_hostile_upload_is_refused_and_stores_nothing(
    service: Service, built: Built, case_id: str
) -> None:
    case = built.cases[case_id]
    before = service.stored_files()
    response = service.client.post(
        case.route,
        headers=service.headers,
        files={"file": (f"{case_id}.bin", case.content, "application/octet-stream")},
        data=case.data,
    )
    _assert_refused(service, response, case.status, case.keyword)
    assert service.stored_files() == before
    listed = service.client.get(case.route, headers=service.headers).json()
    assert listed["items"] == []
    assert not built.marker.exists()


def test_a_valid_model_with_a_wrong_content_type_is_accepted(
    service: Service, built: Built
) -> None:
    """The part's content type is advisory: the format is judged from the bytes."""
    response = service.client.post(
        "/v1/models",
        headers=service.headers,
        files={"file": ("picture.png", built.onnx_valid, "image/png")},
    )
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "onnx"
    assert response.json()["input_shape"] == [8]
    response = service.client.post(
        "/v1/models",
        headers=service.headers,
        files={"file": ("weights.onnx", built.pt_valid, "text/plain")},
        data={"arch": "mlp", "arch_kwargs": MLP_KWARGS},
    )
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "pt"


@pytest.mark.parametrize("route", ["/v1/models", "/v1/datasets"])
@pytest.mark.parametrize(
    ("kind", "status", "keyword"),
    [
        ("raw-body", 415, "multipart/form-data"),
        ("json-body", 415, "multipart/form-data"),
        ("no-body", 422, "file"),
        ("no-file-part", 422, "file"),
        ("file-as-plain-field", 422, "file"),
        ("zero-byte-part", 422, "empty"),
    ],
)
def test_bodies_that_are_not_an_upload_are_refused(
    service: Service, route: str, kind: str, status: int, keyword: str
) -> None:
    post: Callable[..., object] = service.client.post
    if kind == "raw-body":
        response = post(
            route,
            headers={**service.headers, "content-type": "application/octet-stream"},
            content=b"\x08\x07" * 100,
        )
    elif kind == "json-body":
        response = post(route, headers=service.headers, json={"file": "model.onnx"})
    elif kind == "no-body":
        response = post(route, headers=service.headers)
    elif kind == "no-file-part":
        response = post(
            route, headers=service.headers, data={"name": "x"}, files={"other": ("a", b"abc")}
        )
    elif kind == "file-as-plain-field":
        response = post(
            route, headers=service.headers, data={"file": "abc"}, files={"other": ("a", b"1")}
        )
    else:
        response = post(route, headers=service.headers, files={"file": ("empty.bin", b"")})
    _assert_refused(service, response, status, keyword)
    assert service.stored_files() == []


@pytest.mark.parametrize("route", ["/v1/models", "/v1/datasets"])
def test_a_keyless_upload_is_401_whatever_its_body(service: Service, route: str) -> None:
    """Authentication comes before any judgement of the body (no 415 to strangers)."""
    response = service.client.post(
        route, headers={"content-type": "application/octet-stream"}, content=b"\x08\x07"
    )
    assert response.status_code == 401, response.text
    assert "www-authenticate" in response.headers
    assert service.stored_files() == []


def test_weights_only_load_refuses_a_malicious_pickle_by_itself(
    built: Built, tmp_path: Path
) -> None:
    """Below the torch-free scan, torch.load(weights_only=True) refuses the payload too."""
    from engine.errors import UserInputError
    from engine.importers import load_pt_state_dict

    path = tmp_path / "evil.pt"
    path.write_bytes(built.cases["pt-malicious-reduce"].content)
    with pytest.raises(UserInputError, match="weights-only"):
        load_pt_state_dict(path)
    assert not built.marker.exists()


# --------------------------------------------------------------- the importer's limits

_HOGS = {
    "hog_cpu": "while True:\n    pass\n",
    "hog_memory": "blocks = [bytearray(64 * 2**20) for _ in range(64)]\n",
    "hog_sleep": "import time\ntime.sleep(60)\n",
    "hog_no_module": "import sys\nsys.stderr.write('No module named torch\\n')\nsys.exit(1)\n",
}


@pytest.fixture
def hog_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stand-ins for engine.inspect that misbehave, importable by the subprocess."""
    for name, code in _HOGS.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(code))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    model = tmp_path / "model.onnx"
    model.write_bytes(c.onnx_model())
    return model


@pytest.mark.parametrize(
    ("module", "message"),
    [
        ("hog_cpu", "exceeded the CPU time limit of 1 s"),
        ("hog_memory", "exceeded the memory limit of 512 MiB"),
        ("hog_sleep", "longer than the time limit of 2 s"),
        ("hog_no_module", "could not be imported (No module named torch)"),
    ],
)
def test_the_importer_subprocess_is_limited_and_never_retried(
    hog_modules: Path, module: str, message: str
) -> None:
    """A child past a limit is a clear refusal; a failing child is never bypassed."""
    from api.validation import InvalidUpload, inspect_model

    with pytest.raises(InvalidUpload) as info:
        inspect_model(
            hog_modules,
            arch=None,
            arch_kwargs=None,
            timeout=2 if module == "hog_sleep" else 60,
            max_memory_bytes=512 * 2**20,
            # only the CPU hog may meet the 1 s CPU limit (a loaded machine must not make
            # the memory hog's page zeroing hit it first)
            max_cpu_seconds=1 if module == "hog_cpu" else 30,
            module=module,
        )
    assert message in str(info.value)


def _mutations(seed: bytes, rng: np.random.Generator, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        data = bytearray(seed)
        kind = rng.integers(3)
        if kind == 0:  # flip a few bits
            for at in rng.integers(len(data), size=rng.integers(1, 5)):
                data[at] ^= 1 << int(rng.integers(8))
        elif kind == 1:  # truncate
            data = data[: int(rng.integers(len(data)))]
        else:  # insert junk
            at = int(rng.integers(len(data)))
            data[at:at] = rng.bytes(int(rng.integers(1, 17)))
        out.append(bytes(data))
    return out


def test_mutated_files_are_checked_or_refused_never_crash(built: Built, tmp_path: Path) -> None:
    """Random damage to valid files: the torch-free checks answer a ValueError, nothing else."""
    from api.validation import InvalidUpload, inspect_dataset
    from bitfactor.modelformat import detect_format

    rng = np.random.default_rng(6)
    compressed = io.BytesIO()
    np.savez_compressed(compressed, x=np.ones((40, 3), np.float32), y=np.arange(40))
    seeds: dict[str, bytes] = {
        "onnx": built.onnx_valid,
        "onnx-subgraph": c.onnx_external_in_subgraph("x"),
        "safetensors": c.safetensors_valid(np.arange(64)),
        "pt": built.pt_valid,
        "npz": c.npz_of(x=np.ones((4, 3), np.float32), y=np.arange(4)),
        "npz-compressed": compressed.getvalue(),
    }
    path = tmp_path / "mutant.bin"
    for name, seed in seeds.items():
        for mutant in _mutations(seed, rng, 150):
            path.write_bytes(mutant)
            try:
                if name.startswith("npz"):
                    inspect_dataset(path, max_bytes=10**7)
                else:
                    detect_format(path)
            except (ValueError, InvalidUpload):
                pass


def test_the_importer_gets_no_secrets(
    hog_modules: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The subprocess's environment holds what an interpreter needs, not the server's secrets."""
    from api.validation import InvalidUpload, inspect_model

    monkeypatch.setenv("BITFACTOR_SECRET_KEY", "s3cret-value-for-the-test")
    monkeypatch.setenv("BITFACTOR_DATABASE_URL", "postgresql://user:pw@db/x")
    (tmp_path / "show_env.py").write_text(
        "import json, os\nprint(json.dumps({'error': ' '.join(sorted(os.environ))}))\n"
    )
    with pytest.raises(InvalidUpload) as info:
        inspect_model(hog_modules, arch=None, arch_kwargs=None, timeout=60, module="show_env")
    names = str(info.value).split()
    assert "PYTHONPATH" in names
    assert not [name for name in names if name.startswith("BITFACTOR_")]
