"""Training: deterministic on CPU, exact resume from a checkpoint, progress, cancel."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch

from bitfactor.jobconfig import BinarizeConfig, Progress
from engine.archs import VGGSmall
from engine.convert import convert
from engine.errors import JobCancelled
from engine.layers import binary_layers
from engine.train import (
    distillation_loss,
    factor_step_gains,
    lr_factor,
    param_groups,
    predict,
    train,
)

CPU = torch.device("cpu")


def _setup(config: BinarizeConfig) -> tuple[torch.nn.Module, dict]:  # type: ignore[type-arg]
    torch.manual_seed(0)
    teacher = VGGSmall(in_channels=1, num_classes=4, widths=(8, 16), image_size=8).eval()
    x = torch.randn(96, 1, 8, 8)
    y = predict(teacher, x, CPU).argmax(1)
    student, _ = convert(teacher, x[:64], config)
    kwargs = {
        "x": x,
        "y": y,
        "teacher_logits": predict(teacher, x, CPU),
        "x_val": x[:32],
        "y_val": y[:32],
        "teacher_val_logits": predict(teacher, x[:32], CPU),
        "config": config,
        "device": CPU,
    }
    return student, kwargs


def _config(**kw: object) -> BinarizeConfig:
    base = {
        "factorization": "matrix",
        "epochs": 3,
        "batch_size": 32,
        "lr": 5e-3,
        "min_layer_size": 0,
        "distill_weight": 0.5,
        "seed": 3,
    }
    base.update(kw)
    return BinarizeConfig(**base)  # type: ignore[arg-type]


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_is_deterministic_and_reports_progress() -> None:
    config = _config()
    s1, kw = _setup(config)
    reports: list[Progress] = []
    state = train(s1, progress=reports.append, **kw)
    s2, kw2 = _setup(config)
    train(s2, **kw2)
    assert _same_state(s1, s2)
    assert state.epochs_run == 3
    assert [h["epoch"] for h in state.history] == [1, 2, 3]
    epoch_ends = [p for p in reports if p.metrics]
    assert [p.epoch for p in epoch_ends] == [1, 2, 3]
    assert {"train_loss", "val_accuracy", "val_agreement"} <= set(epoch_ends[-1].metrics)
    assert epoch_ends[-1].eta_seconds == 0
    assert all(p.total_steps == 9 for p in reports)
    assert state.history[-1]["train_loss"] < state.history[0]["train_loss"]


def test_resume_from_a_checkpoint_is_exact(tmp_path: Path) -> None:
    config = _config()
    full, kw = _setup(config)
    train(full, checkpoint_dir=tmp_path / "a", **kw)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "epoch-0001.safetensors",
        "epoch-0002.safetensors",
        "epoch-0003.safetensors",
    ]

    interrupted, kw = _setup(config)
    calls = {"n": 0}

    def cancel_in_epoch_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 4  # 3 steps per epoch: stops during epoch 2

    with pytest.raises(JobCancelled):
        train(interrupted, checkpoint_dir=tmp_path / "b", should_cancel=cancel_in_epoch_two, **kw)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["epoch-0001.safetensors"]

    resumed, kw = _setup(config)
    logs: list[str] = []
    state = train(resumed, checkpoint_dir=tmp_path / "b", log=logs.append, **kw)
    assert state.resumed_from == 1
    assert any("resumed from epoch-0001.safetensors" in m for m in logs)
    assert [h["epoch"] for h in state.history] == [1, 2, 3]
    assert _same_state(full, resumed)


def test_checkpoint_of_another_configuration_is_ignored(tmp_path: Path) -> None:
    s, kw = _setup(_config())
    train(s, checkpoint_dir=tmp_path, fingerprint="job-a", **kw)
    s2, kw2 = _setup(_config())
    logs: list[str] = []
    state = train(s2, checkpoint_dir=tmp_path, fingerprint="job-b", log=logs.append, **kw2)
    assert state.resumed_from is None
    assert any("another job configuration" in m for m in logs)


def test_two_stage_trains_real_weights_first() -> None:
    config = _config(two_stage=True, epochs=2)
    student, kw = _setup(config)
    state = train(student, **kw)
    assert [h["stage"] for h in state.history] == ["real_weights", "binary"]
    assert all(
        layer.weight_sign.enabled for layer in student.modules() if hasattr(layer, "weight_sign")
    )


def test_label_free_distillation() -> None:
    student, kw = _setup(_config(epochs=1))
    kw["y"] = None
    kw["y_val"] = None
    state = train(student, **kw)
    assert "val_accuracy" not in state.history[0]
    assert "val_agreement" in state.history[0]


def test_lr_schedule_warms_up_then_decays() -> None:
    values = [lr_factor(s, 100, 0.1) for s in range(100)]
    assert values[0] == pytest.approx(0.1)
    assert values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))
    assert values[-1] < 0.01


@pytest.mark.parametrize("factorization", ["none", "matrix", "tucker", "cp"])
def test_factor_step_gain_is_measured_without_side_effects(factorization: str) -> None:
    config = _config(factorization=factorization)
    student, kw = _setup(config)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    x, y, t = kw["x"][:32], kw["y"][:32], kw["teacher_logits"][:32]
    gains = factor_step_gains(student, x, y, t, config)
    assert set(gains) == {name for name, _ in binary_layers(student)}
    assert all(p.grad is None for p in student.parameters())
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    if factorization == "none":  # a sign step on raw weights moves them by one unit
        assert all(g == pytest.approx(1.0) for g in gains.values())
    else:
        assert all(0 < g < 100 for g in gains.values())
    # The gain is what it claims: the rms change of the reconstruction per unit sign step.
    name, first = binary_layers(student)[0]
    layer: Any = first
    tensors = [p for n, p in layer.named_parameters() if "original" in n]
    # the dense residual (last tensor, when there is one) is not a factor: it stays put
    residual = tensors[-1:] if layer.factorization.residual else []
    factors = tensors[: len(tensors) - len(residual)]
    assert residual == ([] if factorization == "none" else [tensors[-1]])
    loss = distillation_loss(student.eval()(x), t, y, config)
    grads = torch.autograd.grad(loss, factors)
    eps = 1e-4
    with torch.no_grad():
        moved = [f + eps * torch.sign(g) for f, g in zip(factors, grads, strict=True)]
        delta = (
            layer.factorization(*moved, *residual) - layer.factorization(*factors, *residual)
        ) / eps
    assert float(delta.pow(2).mean().sqrt()) == pytest.approx(gains[name], rel=1e-2)


def test_factor_groups_get_the_inverse_gain() -> None:
    config = _config(factorization="tucker", residual=False)
    student, _ = _setup(config)
    groups = param_groups(student, {"features.3": 2.0})
    by_layer = {g["layer"]: g for g in groups}
    assert by_layer["features.3"]["lr_mult"] == 0.5
    assert by_layer[""]["lr_mult"] == 1.0
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in student.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("factorization", "residual", "factor_lr", "expected"),
    [
        ("tucker", True, None, 0.1),  # residual: the factors take a smaller coupled step
        ("tucker", False, None, 1.0),
        ("matrix", True, 0.5, 0.5),
        ("none", True, 0.5, 1.0),  # raw weights: no factors, the residual setting is moot
    ],
)
def test_factor_lr_and_the_residual_groups(
    factorization: str, residual: bool, factor_lr: float | None, expected: float
) -> None:
    config = _config(factorization=factorization, residual=residual, factor_lr=factor_lr)
    student, _ = _setup(config)
    gains = {name: 2.0 for name, _ in binary_layers(student)}
    groups = param_groups(student, gains, config.factor_lr)
    rest = next(g for g in groups if not g["layer"])
    assert rest["lr_mult"] == 1.0
    rest_ids = {id(p) for p in rest["params"]}
    for name, layer in binary_layers(student):
        group = next(g for g in groups if g["layer"] == name)
        assert group["lr_mult"] == pytest.approx(expected / 2.0)
        tensors = [p for n, p in layer.named_parameters() if "original" in n]
        has_residual = residual and factorization != "none"
        assert layer.factorization.residual == has_residual
        # the dense residual trains with the rest at the full learning rate
        assert (id(tensors[-1]) in rest_ids) == has_residual
        assert {id(p) for p in group["params"]} == {
            id(p) for p in tensors[: len(tensors) - has_residual]
        }


def test_checkpoints_are_read_back_without_unpickling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints are safetensors with JSON metadata: resuming never calls torch.load (or
    pickle), and a checkpoint that is not readable is skipped, not fatal."""
    config = _config()
    full, kw = _setup(config)
    train(full, checkpoint_dir=tmp_path / "a", **kw)
    first = (tmp_path / "a" / "epoch-0001.safetensors").read_bytes()
    assert b"torch._utils" not in first  # what a torch.save pickle names
    assert first[8:9] == b"{"  # a safetensors header: its length, then JSON

    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr("pickle.load", forbidden)
    monkeypatch.setattr("pickle.loads", forbidden)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "epoch-0001.safetensors").write_bytes(first)
    resumed, kw = _setup(config)
    state = train(resumed, checkpoint_dir=tmp_path / "b", **kw)
    assert state.resumed_from == 1
    assert _same_state(full, resumed)

    (tmp_path / "b" / "epoch-0009.safetensors").write_bytes(b"\x10\x00\x00\x00junk")
    again, kw = _setup(config)
    logs: list[str] = []
    state = train(again, checkpoint_dir=tmp_path / "b", log=logs.append, **kw)
    assert state.resumed_from is None
    assert any("epoch-0009.safetensors is not a readable checkpoint" in m for m in logs)
    assert _same_state(full, again)
