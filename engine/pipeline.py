"""The engine's entry point: ``binarize`` = import -> convert -> train -> evaluate -> export.

The worker and the CLI call :func:`binarize`; everything it needs arrives as paths, a
:class:`bitfactor.jobconfig.BinarizeConfig` and callbacks, and it returns a
:class:`BinarizeResult`. Bad models or data raise :class:`engine.errors.UserInputError`;
a ``should_cancel`` hook returning True raises :class:`engine.errors.JobCancelled`.
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import fx, nn

import bitfactor
from bitfactor.datasets import load_npz
from bitfactor.jobconfig import BinarizeConfig, Progress
from engine.convert import convert
from engine.errors import UserInputError
from engine.export import export_bfm, sha256_file
from engine.importers import load_model
from engine.train import (
    accuracy,
    agreement,
    config_fingerprint,
    predict,
    resolve_device,
    train,
)

CALIBRATION_SAMPLES = 512


# The real layers are stored as float16 unless that changes more than 1% of the runtime's
# predictions against the model as trained; then as float32.
F16_MIN_AGREEMENT = 0.99


class BinarizeResult(BaseModel):
    """What a binarization job measured and wrote (``model_dump()`` for JSON)."""

    real_accuracy: float | None = Field(description="Teacher top-1 on the validation set.")
    binary_accuracy: float | None = Field(description="Binary torch model top-1 on validation.")
    agreement: float = Field(description="Top-1 agreement of the binary model with the teacher.")
    runtime_accuracy: float | None = Field(
        default=None, description="Top-1 of the exported file run by runtime/ (validation)."
    )
    runtime_agreement: float | None = Field(
        default=None,
        description="Argmax agreement of runtime/ with the binary torch model as exported "
        "(its real layers rounded to the stored precision).",
    )
    trained_agreement: float | None = Field(
        default=None,
        description="Argmax agreement of runtime/ with the binary torch model as trained "
        "(before the real layers were rounded for storage).",
    )
    real_dtype: str = Field(
        default="float16",
        description="Storage of the real layers' weights: float16, or float32 where float16 "
        f"moved more than {1 - F16_MIN_AGREEMENT:.0%} of the predictions.",
    )
    real_bytes: int = Field(description="float32 bytes of the source model's parameters.")
    packed_bytes: int = Field(description="Size of the written .bfm file.")
    compression_ratio: float
    ms_real: float = Field(description="torch fp32 batch-1 latency of the source model (ms).")
    ms_binary: float | None = Field(description="runtime/ batch-1 latency of the .bfm (ms).")
    epochs_run: int
    resumed_from_epoch: int | None = None
    input_shape: list[int]
    num_outputs: int
    n_train: int
    n_val: int
    source_format: str
    source_sha256: str
    sha256: str = Field(description="sha256 of the written .bfm file.")
    out_path: str
    layers: list[dict[str, Any]] = Field(default_factory=list)
    history: list[dict[str, Any]] = Field(default_factory=list)
    step_seconds: float | None = None


def _load_data(
    path: str | os.PathLike[str], input_shape: tuple[int, ...], classes: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    try:
        x, y = load_npz(path, input_shape=input_shape)
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    if y is not None and y.size and int(y.max()) >= classes:
        raise UserInputError(
            f"{Path(path).name}: labels go up to {int(y.max())} but the model has {classes} "
            "outputs (expected labels in 0..{})".format(classes - 1)
        )
    return torch.from_numpy(x), (torch.from_numpy(y) if y is not None else None)


def _latency_ms(fn: Callable[[], Any], repeats: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def _runtime_check(
    path: Path, x_val: torch.Tensor, student_logits: torch.Tensor, y_val: torch.Tensor | None
) -> tuple[float | None, float | None, float | None, torch.Tensor | None]:
    """(runtime accuracy, agreement with the torch binary model, batch-1 ms, the runtime's
    logits) or Nones."""
    import runtime

    load = getattr(runtime, "load", None)
    if load is None or x_val.shape[0] == 0:
        return None, None, None, None
    # One thread: batch-1 latency is what a device sees, and the check stays independent of
    # the runtime's thread pool.
    model = load(str(path), threads=1)
    xs = x_val.numpy()
    out = np.concatenate([np.asarray(model.run(xs[i : i + 256])) for i in range(0, len(xs), 256)])
    logits = torch.from_numpy(out)
    one = xs[:1]
    ms = _latency_ms(lambda: model.run(one))
    return accuracy(logits, y_val), agreement(logits, student_logits), ms, logits


def _check_exportable(student: fx.GraphModule, shape: tuple[int, ...]) -> None:
    """Export a copy of the converted model now, so that a graph the runtime cannot run is
    refused (``UserInputError``, by name) before training rather than after it."""
    probe = copy.deepcopy(student).cpu().eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_bfm(probe, shape, Path(tmp) / "probe.bfm")


def binarize(
    model_path: str | os.PathLike[str],
    data_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    config: BinarizeConfig,
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    val_path: str | os.PathLike[str] | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> BinarizeResult:
    """Turn the model at ``model_path`` into a factorized-binary ``.bfm`` at ``out_path``.

    ``data_path`` (and ``val_path``) are ``.npz`` files (see :mod:`bitfactor.datasets`);
    without ``val_path`` a seeded ``config.val_fraction`` of the data is held out.
    ``checkpoint_dir`` gets a checkpoint every epoch and a rerun resumes from the latest.
    """
    say = log or (lambda _msg: None)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    loaded = load_model(model_path, arch=arch, arch_kwargs=arch_kwargs)
    teacher: nn.Module = loaded.module
    shape = loaded.input_shape
    say(f"imported {loaded.format} model: input {list(shape)}, {loaded.num_outputs} outputs")
    x, y = _load_data(data_path, shape, loaded.num_outputs)
    if val_path is not None:
        x_val, y_val = _load_data(val_path, shape, loaded.num_outputs)
        x_train, y_train = x, y
    else:
        gen = torch.Generator().manual_seed(config.seed)
        order = torch.randperm(x.shape[0], generator=gen)
        n_val = round(x.shape[0] * config.val_fraction)
        if x.shape[0] >= 2 and config.val_fraction > 0:
            n_val = min(max(1, n_val), x.shape[0] - 1)
        val_idx, train_idx = order[:n_val], order[n_val:]
        x_train, x_val = x[train_idx], x[val_idx]
        y_train = y[train_idx] if y is not None else None
        y_val = y[val_idx] if y is not None else None
    if progress:
        progress(Progress(epoch=0, epochs=config.epochs, step=0, total_steps=0, stage="convert"))
    gen = torch.Generator().manual_seed(config.seed + 1)
    calib_idx = torch.randperm(x_train.shape[0], generator=gen)[:CALIBRATION_SAMPLES]
    teacher.to(device).eval()
    student, layers = convert(teacher, x_train[calib_idx].to(device), config)
    binary_count = sum(1 for r in layers if r["binary"])
    say(f"converted: {binary_count} of {len(layers)} Conv/Linear layers binary")
    _check_exportable(student, shape)
    teacher_train = predict(teacher, x_train, device)
    teacher_val = predict(teacher, x_val, device)
    source_sha = sha256_file(model_path)
    fingerprint = config_fingerprint(
        config,
        {
            "source": source_sha,
            "data": sha256_file(data_path),
            "arch": arch,
            "arch_kwargs": arch_kwargs,
        },
    )
    last: list[Progress] = []  # training's last report: the export stage keeps its numbers

    def tracked(report: Progress) -> None:
        last[:] = [report]
        if progress:
            progress(report)

    state = train(
        student,
        x=x_train,
        y=y_train,
        teacher_logits=teacher_train,
        x_val=x_val,
        y_val=y_val,
        teacher_val_logits=teacher_val,
        config=config,
        device=device,
        fingerprint=fingerprint,
        progress=tracked,
        should_cancel=should_cancel,
        checkpoint_dir=checkpoint_dir,
        log=say,
    )
    student_val = predict(student, x_val, device)
    real_acc = accuracy(teacher_val, y_val)
    bin_acc = accuracy(student_val, y_val)
    agree = agreement(student_val, teacher_val)
    if progress:
        report = Progress(
            epoch=state.epochs_run, epochs=config.epochs, step=0, total_steps=0, stage="export"
        )
        if last:  # steps, loss and validation metrics of the last epoch stay visible
            report = last[0].model_copy(update={"stage": "export", "eta_seconds": None})
        progress(report)
    out = Path(out_path)
    student.cpu().eval()
    teacher.cpu().eval()
    provenance = {
        "source_sha256": source_sha,
        "source_format": loaded.format,
        "bitfactor_version": bitfactor.__version__,
        "config": config.model_dump(),
        "arch": arch,
        "arch_kwargs": arch_kwargs or {},
        "metrics": {
            "real_accuracy": real_acc,
            "binary_accuracy": bin_acc,
            "agreement": agree,
            "n_val": int(x_val.shape[0]),
        },
        "layers": layers,
    }
    cpu = torch.device("cpu")
    trained = copy.deepcopy(student)  # export rounds the real layers to float16 in place
    trained_val = predict(trained, x_val, cpu)
    real_dtype = "float16"
    digest = export_bfm(student, shape, out, provenance=provenance)
    student_val_cpu = predict(student, x_val, cpu)
    rt_acc, rt_agree, ms_binary, rt_logits = _runtime_check(out, x_val, student_val_cpu, y_val)
    trained_agree = None if rt_logits is None else agreement(rt_logits, trained_val)
    if trained_agree is not None and trained_agree < F16_MIN_AGREEMENT:
        say(
            f"float16 real layers agree with the trained model on {trained_agree:.1%} of the "
            "validation set: storing them as float32"
        )
        student, real_dtype = trained, "float32"
        digest = export_bfm(student, shape, out, provenance=provenance, real_dtype=real_dtype)
        rt_acc, rt_agree, ms_binary, _ = _runtime_check(out, x_val, trained_val, y_val)
        trained_agree = rt_agree  # the stored model is the trained one
    one = torch.zeros(1, *shape)
    with torch.no_grad():
        ms_real = _latency_ms(lambda: teacher(one))
    real_bytes = int(sum(p.numel() * 4 for p in teacher.parameters()))
    packed = out.stat().st_size
    say(f"wrote {out} ({packed} bytes, {real_bytes / packed:.1f}x smaller)")
    return BinarizeResult(
        real_accuracy=real_acc,
        binary_accuracy=bin_acc,
        agreement=agree,
        runtime_accuracy=rt_acc,
        runtime_agreement=rt_agree,
        trained_agreement=trained_agree,
        real_dtype=real_dtype,
        real_bytes=real_bytes,
        packed_bytes=packed,
        compression_ratio=real_bytes / packed,
        ms_real=ms_real,
        ms_binary=ms_binary,
        epochs_run=state.epochs_run,
        resumed_from_epoch=state.resumed_from,
        input_shape=list(shape),
        num_outputs=loaded.num_outputs,
        n_train=int(x_train.shape[0]),
        n_val=int(x_val.shape[0]),
        source_format=loaded.format,
        source_sha256=source_sha,
        sha256=digest,
        out_path=str(out),
        layers=layers,
        history=state.history,
        step_seconds=state.step_seconds,
    )
