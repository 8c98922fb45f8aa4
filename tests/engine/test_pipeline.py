"""binarize end to end, engine.inspect as a subprocess, and the CLI commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bitfactor.jobconfig import BinarizeConfig, Progress
from engine.errors import JobCancelled, UserInputError
from engine.pipeline import binarize

MLP_KWARGS = {"in_features": 64, "hidden": [128, 128]}
ROOT = Path(__file__).resolve().parents[2]


def test_binarize_safetensors_on_digits(
    tmp_path: Path, trained_mlp: Path, digits_npz: Path
) -> None:
    reports: list[Progress] = []
    out = tmp_path / "m.bfm"
    result = binarize(
        trained_mlp,
        digits_npz,
        out,
        BinarizeConfig(epochs=4, distill_weight=0.5, lr=3e-3, min_layer_size=0),
        arch="mlp",
        arch_kwargs=MLP_KWARGS,
        progress=reports.append,
    )
    data = result.model_dump()
    for key in (
        "real_accuracy",
        "binary_accuracy",
        "agreement",
        "real_bytes",
        "packed_bytes",
        "compression_ratio",
        "ms_real",
        "ms_binary",
        "epochs_run",
        "input_shape",
        "sha256",
    ):
        assert key in data
    assert result.epochs_run == 4
    assert result.input_shape == [64]
    assert result.real_accuracy is not None
    assert result.real_accuracy > 0.9
    assert result.binary_accuracy is not None
    assert result.binary_accuracy > 0.8  # chance: 0.1
    assert result.runtime_agreement is not None
    assert result.runtime_agreement >= 0.999
    assert result.real_dtype == "float16"  # rounding them moved (almost) no prediction
    assert result.trained_agreement is not None
    assert result.trained_agreement >= 0.99
    assert result.ms_binary is not None
    assert result.ms_binary > 0
    assert result.packed_bytes == out.stat().st_size
    assert result.compression_ratio > 2  # one 128x128 layer binary; first and last real
    assert {p.stage for p in reports} >= {"convert", "binary", "export"}


def test_epochs_zero_converts_and_exports(
    tmp_path: Path, trained_mlp: Path, digits_npz: Path
) -> None:
    result = binarize(
        trained_mlp,
        digits_npz,
        tmp_path / "m.bfm",
        BinarizeConfig(epochs=0, min_layer_size=0),
        arch="mlp",
        arch_kwargs=MLP_KWARGS,
    )
    assert result.epochs_run == 0
    assert result.binary_accuracy is not None
    assert result.binary_accuracy > 0.3
    assert result.runtime_agreement is not None
    assert result.runtime_agreement >= 0.999


def test_weights_only_pt_and_label_free_data(
    tmp_path: Path, trained_mlp: Path, digits_npz: Path
) -> None:
    pt = tmp_path / "m.pth"
    torch.save({"state_dict": load_file(str(trained_mlp))}, pt)
    unlabeled = tmp_path / "x.npz"
    np.savez(unlabeled, x=np.load(digits_npz)["x"][:400])
    result = binarize(
        pt,
        unlabeled,
        tmp_path / "m.bfm",
        BinarizeConfig(epochs=1),
        arch="mlp",
        arch_kwargs=MLP_KWARGS,
        val_path=digits_npz,
    )
    assert result.source_format == "pt"
    assert result.n_train == 400
    assert result.binary_accuracy is not None  # measured on the labelled --val set


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        ("wrong_shape", r"expected x of shape \(N, 64\).*got \(10, 8, 8\)"),
        ("label_range", "labels go up to 12"),
        ("no_arch", "needs an architecture name"),
        ("wrong_arch", "does not match architecture 'vgg_small'"),
    ],
)
def test_bad_input_raises_user_input_error(
    tmp_path: Path, trained_mlp: Path, digits_npz: Path, mutate: str, message: str
) -> None:
    data = digits_npz
    arch, kwargs = "mlp", MLP_KWARGS
    if mutate == "wrong_shape":
        data = tmp_path / "d.npz"
        np.savez(data, x=np.zeros((10, 8, 8), np.float32))
    elif mutate == "label_range":
        data = tmp_path / "d.npz"
        np.savez(data, x=np.zeros((10, 64), np.float32), y=np.arange(3, 13))
    elif mutate == "no_arch":
        arch = None  # type: ignore[assignment]
    elif mutate == "wrong_arch":
        arch, kwargs = "vgg_small", {}
    with pytest.raises(UserInputError, match=message):
        binarize(
            trained_mlp,
            data,
            tmp_path / "m.bfm",
            BinarizeConfig(epochs=1),
            arch=arch,
            arch_kwargs=kwargs,
        )
    assert not (tmp_path / "m.bfm").exists()


def test_cancel_hook_stops_the_job(tmp_path: Path, trained_mlp: Path, digits_npz: Path) -> None:
    with pytest.raises(JobCancelled):
        binarize(
            trained_mlp,
            digits_npz,
            tmp_path / "m.bfm",
            BinarizeConfig(epochs=3),
            arch="mlp",
            arch_kwargs=MLP_KWARGS,
            should_cancel=lambda: True,
        )
    assert not (tmp_path / "m.bfm").exists()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, check=False, cwd=ROOT, timeout=300
    )


def test_engine_inspect_subprocess(tmp_path: Path, trained_mlp: Path) -> None:
    ok = _run(
        "-m",
        "engine.inspect",
        str(trained_mlp),
        "--arch",
        "mlp",
        "--arch-kwargs",
        json.dumps(MLP_KWARGS),
    )
    assert ok.returncode == 0, ok.stderr
    info = json.loads(ok.stdout)
    assert info == {
        "format": "safetensors",
        "input_shape": [64],
        "num_params": info["num_params"],
        "num_outputs": 10,
    }
    assert info["num_params"] == sum(
        t.numel()
        for k, t in load_file(str(trained_mlp)).items()
        if "running" not in k and "num_batches" not in k
    )
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    bad = _run("-m", "engine.inspect", str(junk))
    assert bad.returncode == 2
    assert "not a recognised model file" in json.loads(bad.stdout)["error"]


def test_cli_binarize_eval_inspect(tmp_path: Path, trained_mlp: Path, digits_npz: Path) -> None:
    out = tmp_path / "m.bfm"
    res = _run(
        "-m",
        "bitfactor",
        "binarize",
        str(trained_mlp),
        "--data",
        str(digits_npz),
        "--arch",
        "mlp",
        "--arch-kwargs",
        json.dumps(MLP_KWARGS),
        "--out",
        str(out),
        "--factorization",
        "tucker",
        "--rank",
        "0.5",
        "--scales",
        "xnorpp",
        "--epochs",
        "0",
        "--lr",
        "0.002",
        "--seed",
        "1",
        "--device",
        "cpu",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["epochs_run"] == 0
    assert summary["sha256"]
    assert out.exists()
    ev = _run("-m", "bitfactor", "eval", str(out), "--data", str(digits_npz), "--json")
    assert ev.returncode == 0, ev.stderr
    scores = json.loads(ev.stdout)
    assert scores["n"] == 1797
    assert 0.3 < scores["accuracy"] <= 1.0
    ins = _run("-m", "bitfactor", "inspect", str(out))
    assert ins.returncode == 0, ins.stderr
    for word in ("blinear", "binary", "source_sha256"):
        assert word in ins.stdout
    bad = _run(
        "-m",
        "bitfactor",
        "binarize",
        str(trained_mlp),
        "--data",
        str(digits_npz),
        "--out",
        str(out),
        "--factorization",
        "svd",
    )
    assert bad.returncode == 2
    assert "factorization" in bad.stderr


class _FiveDimLinear(torch.nn.Module):
    """A binary-able convolution, then a Linear on a 5-d view of its output: the runtime
    has no layer for a Linear on more than four axes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.mix = torch.nn.Linear(6, 6)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(torch.relu(self.stem(x)))
        y = self.mix(y.reshape(y.shape[0], 2, 8, 6, 6)).reshape(y.shape[0], 16, 6, 6)
        return self.head(y.mean((2, 3)))


def test_a_graph_the_runtime_cannot_run_is_refused_before_training(tmp_path: Path) -> None:
    import warnings

    model = _FiveDimLinear().eval()
    onnx_path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.randn(1, 3, 6, 6),), str(onnx_path), dynamo=False,
            input_names=["x"], dynamic_axes={"x": {0: "batch"}},
        )  # fmt: skip
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((64, 3, 6, 6), np.float32))
    stages: list[str] = []
    with pytest.raises(UserInputError, match=r"linear .* on a rank-5 value"):
        binarize(
            onnx_path,
            data,
            tmp_path / "m.bfm",
            BinarizeConfig(epochs=50, min_layer_size=0),
            progress=lambda p: stages.append(p.stage),
        )
    assert stages == ["convert"]  # not one training step
    assert not (tmp_path / "m.bfm").exists()


def test_real_layers_stay_float32_when_float16_moves_predictions(
    tmp_path: Path, trained_mlp: Path, digits_npz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the bar (here: an impossible one) the file stores the model as trained."""
    import engine.pipeline
    from runtime.bfm import read_bfm

    monkeypatch.setattr(engine.pipeline, "F16_MIN_AGREEMENT", 1.01)
    out = tmp_path / "m.bfm"
    result = binarize(
        trained_mlp,
        digits_npz,
        out,
        BinarizeConfig(epochs=1, min_layer_size=0),
        arch="mlp",
        arch_kwargs=MLP_KWARGS,
    )
    assert result.real_dtype == "float32"
    assert result.trained_agreement == result.runtime_agreement
    assert result.runtime_agreement is not None
    assert result.runtime_agreement >= 0.999
    graph, tensors, _ = read_bfm(out)
    real = [n for n in graph["nodes"] if n["op"] == "linear"]
    assert real
    assert all(tensors[n["params"]["weight"]].dtype == np.float32 for n in real)
