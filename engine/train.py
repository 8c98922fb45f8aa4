"""Knowledge-distillation fine-tuning of a binary twin, with exact resume.

Loss: ``w * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - w) * CE(s, y)`` (Hinton et al.
2015), ``w = distill_weight``; without labels only the KL term. The teacher's logits are
computed once (no augmentation), so the teacher never runs inside the loop.

Optimizer AdamW; the learning rate warms up linearly for ``warmup_fraction`` of the steps
and then follows a cosine to zero. ``two_stage`` trains the first half of the epochs with
binary activations and real (reconstructed) weights, then the second half with binary
weights, each stage with its own warm-up and cosine.

Determinism and resume: every epoch reseeds torch with ``(seed, epoch)`` and shuffles with
its own generator, so an epoch depends only on the state at its start. A checkpoint
(``epoch-NNNN.pt``, tensors and plain values only, read back with ``weights_only=True``)
holds the model, the optimizer and the history; resuming from it reproduces an
uninterrupted run bit for bit on CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bitfactor.jobconfig import BinarizeConfig, Progress
from engine.convert import set_binary
from engine.errors import JobCancelled
from engine.layers import binary_layers


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from engine.errors import UserInputError

        raise UserInputError("device 'cuda' requested but no CUDA GPU is available")
    return torch.device(name)


def autocast(device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA, nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, device: torch.device, batch: int = 512
) -> torch.Tensor:
    """Logits of ``model`` (eval mode) for ``x``, on the CPU in float32."""
    was = model.training
    model.eval()
    outs = []
    for i in range(0, x.shape[0], batch):
        with autocast(device):
            outs.append(model(x[i : i + batch].to(device)).float().cpu())
    model.train(was)
    return torch.cat(outs) if outs else torch.zeros(0)


def accuracy(logits: torch.Tensor, y: torch.Tensor | None) -> float | None:
    """Top-1 accuracy, or None without labels."""
    if y is None or logits.numel() == 0:
        return None
    return float((logits.argmax(1) == y).float().mean())


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of inputs on which two sets of logits pick the same class."""
    return float((a.argmax(1) == b.argmax(1)).float().mean()) if a.numel() else 0.0


def lr_factor(step: int, total: int, warmup_fraction: float) -> float:
    """Linear warm-up then cosine decay, as a factor of the base learning rate."""
    warm = int(total * warmup_fraction)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor | None, config: BinarizeConfig
) -> torch.Tensor:
    """KD (KL on softened logits) plus cross-entropy on labels when given."""
    t = config.distill_temperature
    kd = F.kl_div(
        F.log_softmax(student.float() / t, dim=1),
        F.log_softmax(teacher.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    if y is None:
        return kd
    w = config.distill_weight
    return w * kd + (1 - w) * F.cross_entropy(student.float(), y)


@dataclass
class TrainState:
    """What training reports back."""

    epochs_run: int = 0
    resumed_from: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    step_seconds: float | None = None


def config_fingerprint(config: BinarizeConfig, extra: dict[str, Any]) -> str:
    """A hash of everything a checkpoint must agree with to be resumed."""
    data = config.model_dump(exclude={"epochs", "device"})
    return hashlib.sha256(
        json.dumps([data, extra], sort_keys=True, default=str).encode()
    ).hexdigest()


def _stage_of(epoch: int, config: BinarizeConfig) -> tuple[str, int, int]:
    """(stage name, first epoch of the stage, epochs in the stage)."""
    if config.two_stage and config.epochs >= 2:
        first = config.epochs // 2
        if epoch < first:
            return "real_weights", 0, first
        return "binary", first, config.epochs - first
    return "binary", 0, config.epochs


CHECKPOINT_FORMAT = "bitfactor-checkpoint/1"


def _latest_checkpoint(directory: Path) -> Path | None:
    found = sorted(
        p
        for p in directory.glob("epoch-*.safetensors")
        if re.fullmatch(r"epoch-\d+\.safetensors", p.name)
    )
    return found[-1] if found else None


def _save_checkpoint(
    directory: Path,
    *,
    epoch: int,
    fingerprint: str,
    model: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    history: list[dict[str, Any]],
) -> None:
    """``epoch-NNNN.safetensors``: the model's and the optimizer's tensors, and the rest
    (epoch, fingerprint, param groups, history) as JSON metadata. No pickle: reading a
    checkpoint back runs no code, whoever wrote the file."""
    from safetensors.torch import save_file

    tensors = {f"model/{k}": v.detach().cpu().clone() for k, v in model.items()}
    plain: dict[str, dict[str, Any]] = {}
    for index, entries in optimizer["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{index}/{name}"] = value.detach().cpu().clone()
            else:
                plain.setdefault(str(index), {})[name] = value
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "epoch": str(epoch),
        "fingerprint": fingerprint,
        "history": json.dumps(history),
        "param_groups": json.dumps(optimizer["param_groups"]),
        "optimizer_values": json.dumps(plain),
    }
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".epoch-{epoch:04d}.safetensors.tmp"
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, directory / f"epoch-{epoch:04d}.safetensors")


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`_save_checkpoint`: epoch, fingerprint, the model's
    and the optimizer's state dicts, history. ValueError for a file that is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        if metadata.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a {CHECKPOINT_FORMAT} file")
        state: dict[int, dict[str, Any]] = {}
        model: dict[str, torch.Tensor] = {}
        for key, tensor in tensors.items():
            kind, _, rest = key.partition("/")
            if kind == "model":
                model[rest] = tensor
            elif kind == "optimizer":
                index, _, name = rest.partition("/")
                state.setdefault(int(index), {})[name] = tensor
        for index, entries in json.loads(metadata["optimizer_values"]).items():
            state.setdefault(int(index), {}).update(entries)
        return {
            "epoch": int(metadata["epoch"]),
            "fingerprint": metadata["fingerprint"],
            "model": model,
            "optimizer": {"state": state, "param_groups": json.loads(metadata["param_groups"])},
            "history": json.loads(metadata["history"]),
        }
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{path.name} is not a readable checkpoint: {exc}") from exc


def _resume(
    directory: Path,
    fingerprint: str,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    log: Callable[[str], None] | None,
) -> int:
    """Load the latest checkpoint of this configuration into ``student``, ``optimizer``
    and ``state``; the epoch to start from (0 without a usable checkpoint)."""
    latest = _latest_checkpoint(directory)
    if latest is None:
        return 0
    try:
        payload = _load_checkpoint(latest)
    except ValueError as exc:
        if log:
            log(f"ignored {exc}; training from the start")
        return 0
    if payload["fingerprint"] != fingerprint:
        if log:
            log(f"ignored {latest.name}: it belongs to another job configuration")
        return 0
    student.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    state.history = payload["history"]
    state.resumed_from = payload["epoch"]
    if log:
        log(f"resumed from {latest.name} (epoch {payload['epoch']})")
    return int(payload["epoch"])


def _latent_params(layer: Any) -> list[nn.Parameter]:
    plist = layer.parametrizations["weight"]
    if plist.is_tensor:
        return [plist.original]
    return [getattr(plist, f"original{i}") for i in range(plist.ntensors)]


def _factor_params(layer: Any) -> list[nn.Parameter]:
    """The factors of a binary layer's weight (without its dense residual, if any)."""
    tensors = _latent_params(layer)
    return tensors[:-1] if layer.factorization.residual else tensors


def _residual_params(layer: Any) -> list[nn.Parameter]:
    return _latent_params(layer)[-1:] if layer.factorization.residual else []


def layer_factor_lr(layer: Any, factor_lr: float | None) -> float:
    """A binary layer's factor learning rate relative to ``lr``.

    ``none`` (raw weights): 1. Otherwise ``factor_lr`` when given, else 0.1 with a dense
    residual (the residual moves every weight at ``lr`` like ``none``; the factors add a
    smaller coupled step) and 1 without (the factors alone must move the weights).
    """
    if layer.factorization.name == "none":
        return 1.0
    if factor_lr is not None:
        return float(factor_lr)
    return 0.1 if layer.factorization.residual else 1.0


def factor_step_gains(
    student: nn.Module, x: torch.Tensor, y: torch.Tensor | None, t: torch.Tensor, config: Any
) -> dict[str, float]:
    """Per binary layer: how far one sign step on its factors moves the reconstruction.

    Adam's steps are close to sign steps (every element moves by about the learning rate),
    so on raw weights (``none``) a step moves each latent weight by ``lr``. On factors the
    same step moves the reconstruction by ``lr * gain``, where the gain depends on the
    factors' magnitudes and on how coherently the per-factor steps add up (the paper's
    mechanism: a step on shared factors moves many weights together). The gain is measured
    on one batch: ``rms(J s)`` where ``J`` is the Jacobian of the reconstruction with
    respect to all factors of the layer and ``s = sign(dL/dfactors)`` the direction Adam's
    first step takes. It is exactly 1 for ``none``. A dense residual is not a factor: its
    tangent is zero here (it trains at ``lr`` itself). Evaluation mode, no state changes.
    """
    layers = binary_layers(student)
    if not layers:
        return {}
    was = student.training
    student.eval()
    params = [p for p in student.parameters() if p.requires_grad]
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        loss = distillation_loss(student(x), t, y, config)
        loss.backward()
        gains: dict[str, float] = {}
        for name, layer in layers:
            factors = _factor_params(layer)
            tangents = tuple(
                torch.sign(f.grad) if f.grad is not None else torch.zeros_like(f) for f in factors
            )
            residual = tuple(torch.zeros_like(r) for r in _residual_params(layer))
            primals = tuple(f.detach() for f in _latent_params(layer))
            delta = torch.func.jvp(layer.factorization, primals, tangents + residual)[1]
            step = torch.cat([s.flatten() for s in tangents]).pow(2).mean().sqrt()
            gain = float(delta.pow(2).mean().sqrt() / step) if float(step) > 0 else 1.0
            gains[name] = gain if math.isfinite(gain) and gain > 0 else 1.0
    finally:
        for p, g in zip(params, saved, strict=True):
            p.grad = g
        student.train(was)
    return gains


def param_groups(
    student: nn.Module, gains: dict[str, float], factor_lr: float | None = None
) -> list[dict[str, Any]]:
    """One optimizer group per binary layer's factors (``lr_mult = layer_factor_lr / gain``),
    one for the rest (``lr_mult = 1``; dense residuals included)."""
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for name, layer in binary_layers(student):
        factors = [f for f in _factor_params(layer) if f.requires_grad]
        seen.update(id(f) for f in factors)
        relative = layer_factor_lr(layer, factor_lr)
        groups.append(
            {
                "params": factors,
                "layer": name,
                "factor_lr": relative,
                "lr_mult": relative / gains.get(name, 1.0),
            }
        )
    rest = [p for p in student.parameters() if p.requires_grad and id(p) not in seen]
    groups.append({"params": rest, "layer": "", "lr_mult": 1.0})
    return [g for g in groups if g["params"]]


def train(
    student: nn.Module,
    *,
    x: torch.Tensor,
    y: torch.Tensor | None,
    teacher_logits: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor | None,
    teacher_val_logits: torch.Tensor,
    config: BinarizeConfig,
    device: torch.device,
    fingerprint: str = "",
    progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainState:
    """Fine-tune ``student`` in place for ``config.epochs`` epochs (see the module doc)."""
    state = TrainState()
    n = x.shape[0]
    steps_per_epoch = max(1, math.ceil(n / config.batch_size))
    total_steps = steps_per_epoch * config.epochs
    student.to(device)
    probe = slice(0, min(n, config.batch_size))
    probe_data = (
        x[probe].to(device),
        y[probe].to(device) if y is not None else None,
        teacher_logits[probe].to(device),
    )
    params = param_groups(
        student, factor_step_gains(student, *probe_data, config), config.factor_lr
    )
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    start_epoch = 0
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None and ckpt_dir.is_dir():
        start_epoch = _resume(ckpt_dir, fingerprint, student, optimizer, state, log)
    student.to(device)
    x_dev = x.to(device)
    y_dev = y.to(device) if y is not None else None
    t_dev = teacher_logits.to(device)
    started = time.perf_counter()
    steps_done = 0
    step_time = 0.0
    step_count = 0
    for epoch in range(start_epoch, config.epochs):
        stage, stage_first, stage_epochs = _stage_of(epoch, config)
        set_binary(student, weights=stage == "binary", inputs=True)
        if stage == "binary" and epoch == stage_first and stage_first > 0:
            optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        # The factors' gain changes as they grow or shrink: re-measured every epoch (from
        # the state at the epoch's start only, so resuming reproduces it).
        gains = factor_step_gains(student, *probe_data, config)
        for group in optimizer.param_groups:
            if group["layer"]:
                group["lr_mult"] = group["factor_lr"] / gains.get(group["layer"], 1.0)
        torch.manual_seed(config.seed * 100_003 + epoch)
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen).to(device)
        student.train()
        losses = []
        stage_total = steps_per_epoch * stage_epochs
        for step in range(steps_per_epoch):
            if should_cancel is not None and should_cancel():
                raise JobCancelled(f"cancelled at epoch {epoch + 1}, step {step + 1}")
            t0 = time.perf_counter()
            global_stage_step = (epoch - stage_first) * steps_per_epoch + step
            factor = lr_factor(global_stage_step, stage_total, config.warmup_fraction)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * factor * group.get("lr_mult", 1.0)
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            with autocast(device):
                out = student(x_dev[idx])
            loss = distillation_loss(
                out, t_dev[idx], y_dev[idx] if y_dev is not None else None, config
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"the loss became {loss_value} at epoch {epoch + 1}")
            losses.append(loss_value)
            dt = time.perf_counter() - t0
            if step > 0 or epoch > start_epoch:  # the first step warms caches up
                step_time += dt
                step_count += 1
            steps_done += 1
            if progress is not None and (step % max(1, steps_per_epoch // 10) == 0):
                elapsed = time.perf_counter() - started
                remaining = total_steps - (epoch * steps_per_epoch + step + 1)
                progress(
                    Progress(
                        epoch=epoch + 1,
                        epochs=config.epochs,
                        step=epoch * steps_per_epoch + step + 1,
                        total_steps=total_steps,
                        loss=loss_value,
                        eta_seconds=elapsed / steps_done * remaining,
                        stage=stage,
                    )
                )
        val_logits = predict(student, x_val, device)
        metrics: dict[str, float] = {"train_loss": sum(losses) / len(losses)}
        acc = accuracy(val_logits, y_val)
        if acc is not None:
            metrics["val_accuracy"] = acc
        if teacher_val_logits.numel():
            metrics["val_agreement"] = agreement(val_logits, teacher_val_logits)
        state.history.append({"epoch": epoch + 1, "stage": stage, **metrics})
        if log:
            log(
                f"epoch {epoch + 1}/{config.epochs} [{stage}] "
                + " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            )
        if progress is not None:
            elapsed = time.perf_counter() - started
            remaining = total_steps - (epoch + 1) * steps_per_epoch
            progress(
                Progress(
                    epoch=epoch + 1,
                    epochs=config.epochs,
                    step=(epoch + 1) * steps_per_epoch,
                    total_steps=total_steps,
                    loss=metrics["train_loss"],
                    metrics=metrics,
                    eta_seconds=elapsed / max(1, steps_done) * remaining,
                    stage=stage,
                )
            )
        if ckpt_dir is not None:
            _save_checkpoint(
                ckpt_dir,
                epoch=epoch + 1,
                fingerprint=fingerprint,
                model=student.state_dict(),
                optimizer=optimizer.state_dict(),
                history=state.history,
            )
        state.epochs_run = epoch + 1
    state.epochs_run = max(state.epochs_run, start_epoch)
    set_binary(student, weights=True, inputs=True)
    state.step_seconds = step_time / step_count if step_count else None
    return state
