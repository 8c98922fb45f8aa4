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
