"""Export: the storage dtype of real layers' weights (float16 by default, float32 on request)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import runtime
from bitfactor.jobconfig import BinarizeConfig
from engine.archs import ResNetCIFAR
from engine.convert import convert
from engine.export import build_graph, export_bfm
from engine.train import predict
from runtime.bfm import read_bfm

CPU = torch.device("cpu")


def _real_tensors(path: Path) -> dict[str, np.ndarray]:
    graph, tensors, _ = read_bfm(path)
    names = [
        t
        for node in graph["nodes"]
        if node["op"] in ("conv2d", "conv1d", "linear")
        for t in node["params"].values()
    ]
    return {name: tensors[name] for name in names}


def _student(bn_randomizer) -> tuple[nn.Module, torch.Tensor]:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = ResNetCIFAR(depth=8, width=8, num_classes=5).eval()
    bn_randomizer(model)
    x = torch.randn(400, 3, 16, 16)
    student, _ = convert(model, x[:128], BinarizeConfig(min_layer_size=0))
    return student, x


def test_real_layers_are_float16_by_default_and_the_model_computes_what_is_stored(
    tmp_path: Path, bn_randomizer
) -> None:  # type: ignore[no-untyped-def]
    student, x = _student(bn_randomizer)
    before = predict(student, x, CPU).numpy()
    half, full = tmp_path / "half.bfm", tmp_path / "full.bfm"
    export_bfm(student, (3, 16, 16), full, real_dtype="float32")
    export_bfm(student, (3, 16, 16), half)
    real_half, real_full = _real_tensors(half), _real_tensors(full)
    assert real_half
    assert all(a.dtype == np.float16 for a in real_half.values())
    assert all(a.dtype == np.float32 for a in real_full.values())
    assert half.stat().st_size < full.stat().st_size
    # the export rounded the real layers in place: the torch model now computes with the
    # stored float16 values (the stem's folded batch norm included) ...
    after = predict(student, x, CPU).numpy()
    got = np.asarray(runtime.load(str(half), threads=1).run(x.numpy()))
    assert (got.argmax(1) == after.argmax(1)).mean() >= 0.999
    err = np.abs(got - after).max(1) / np.abs(after).max()
    assert (err < 1e-3).mean() >= 0.999
    # ... which differs from the float32 model by float16 rounding only
    assert (after.argmax(1) == before.argmax(1)).mean() >= 0.95


def test_out_of_range_real_weights_stay_float32() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        model[0].weight[0, 0] = 1e6  # beyond float16's largest value (65504)
    graph, tensors = build_graph(torch.fx.symbolic_trace(model), (4,))
    dtypes = {
        node["name"]: {role: tensors[t].dtype for role, t in node["params"].items()}
        for node in graph["nodes"]
    }
    assert dtypes["0"] == {"weight": np.float32, "bias": np.float16}
    assert dtypes["1"] == {"weight": np.float16, "bias": np.float16}
    assert model[0].weight[0, 0].item() == 1e6


def test_unknown_real_dtype_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 2)).eval()
    with pytest.raises(ValueError, match="real_dtype"):
        build_graph(torch.fx.symbolic_trace(model), (4,), real_dtype="bfloat16")
