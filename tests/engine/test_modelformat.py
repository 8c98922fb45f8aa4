"""detect_format judges uploads by content, refusing anything whose loader runs code."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bitfactor.modelformat import detect_format
from engine.archs import MLP


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return MLP(in_features=8, hidden=[16], num_classes=3).eval()


def test_formats_are_recognised_whatever_the_name(tmp_path: Path, model: torch.nn.Module) -> None:
    torch.save(model.state_dict(), tmp_path / "weights.onnx")
    save_file(model.state_dict(), str(tmp_path / "weights.pt"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.randn(1, 8),), str(tmp_path / "m.safetensors"), dynamo=False
        )
    assert detect_format(tmp_path / "weights.onnx") == "pt"
    assert detect_format(tmp_path / "weights.pt") == "safetensors"
    assert detect_format(tmp_path / "m.safetensors") == "onnx"


def test_torchscript_is_refused(tmp_path: Path, model: torch.nn.Module) -> None:
    torch.jit.save(torch.jit.script(model), str(tmp_path / "m.pt"))
    with pytest.raises(ValueError, match="TorchScript"):
        detect_format(tmp_path / "m.pt")


def test_bare_pickle_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.pt").write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=2))
    with pytest.raises(ValueError, match="pickle"):
        detect_format(tmp_path / "m.pt")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello world, not a model",
        b"PK\x03\x04garbage",
        b"\x08\x07" + b"\xff" * 20,
        (12).to_bytes(8, "little") + b"not json{{{",
    ],
)
def test_garbage_is_refused_with_a_clear_message(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"x\.bin"):
        detect_format(path)


def test_checks_accept_what_the_real_writers_produce(tmp_path: Path) -> None:
    """No false refusals: every dtype, empty tensors, metadata, pickle protocol 4."""
    tensors = {
        "f32": torch.randn(3, 4),
        "f64": torch.randn(2, 2, dtype=torch.float64),
        "f16": torch.ones(3, dtype=torch.float16),
        "bf16": torch.ones(2, dtype=torch.bfloat16),
        "i64": torch.arange(5),
        "i8": torch.ones(4, dtype=torch.int8),
        "bool": torch.tensor(True),
        "empty": torch.zeros(0, 5),
    }
    save_file(tensors, str(tmp_path / "a.bin"), metadata={"format": "pt"})
    assert detect_format(tmp_path / "a.bin") == "safetensors"
    torch.save({**tensors, "p": torch.nn.Parameter(torch.ones(3)), "epoch": 3}, tmp_path / "b")
    assert detect_format(tmp_path / "b") == "pt"
    torch.save(tensors, tmp_path / "c", pickle_protocol=4)  # STACK_GLOBAL through the memo
    assert detect_format(tmp_path / "c") == "pt"
    tensors["bf16"][1] = float("inf")
    save_file(tensors, str(tmp_path / "d.bin"))
    with pytest.raises(ValueError, match="'bf16' holds NaN or infinite"):
        detect_format(tmp_path / "d.bin")
