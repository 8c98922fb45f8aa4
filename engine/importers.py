"""Turn an uploaded model file into an ``nn.Module`` (ONNX, safetensors or ``.pt``).

- ONNX: converted by :mod:`engine.onnx_import`; the input shape comes from the file.
- safetensors: a state dict for a built-in architecture (``arch`` + ``arch_kwargs``,
  see :mod:`engine.archs`).
- ``.pt``/``.pth``: a state dict loaded with ``torch.load(weights_only=True)`` only, for a
  built-in architecture; pickled modules, TorchScript and ``torch.export`` archives are
  refused by :func:`bitfactor.modelformat.detect_format` before torch sees the file, and a
  failure of ``torch.load`` is final (never retried another way).

Every file goes through :func:`~bitfactor.modelformat.detect_format` first (the checks the
API applied at upload, shared code), and state dicts with NaN or infinite values are
refused, naming the tensor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bitfactor.modelformat import detect_format
from engine import archs
from engine.errors import UserInputError


@dataclass
class LoadedModel:
    """An imported model in eval mode, its input shape (without batch) and source format."""

    module: nn.Module
    input_shape: tuple[int, ...]
    format: str
    num_outputs: int


def load_pt_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a ``torch.save`` file, read with ``weights_only=True`` only."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # UnpicklingError for anything but plain tensors and containers
        raise UserInputError(
            f"{path.name}: not a weights-only state dict ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserInputError(f"{path.name}: expected a dict of tensors (a state dict)")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def _check_finite(state: dict[str, torch.Tensor], name: str) -> None:
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserInputError(f"{name}: tensor {key!r} holds NaN or infinite values")


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], arch: str, name: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise UserInputError(
            f"{name}: the state dict does not match architecture {arch!r}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for key, value in state.items():
        if tuple(own[key].shape) != tuple(value.shape):
            raise UserInputError(
                f"{name}: {key} has shape {tuple(value.shape)}, architecture {arch!r} "
                f"expects {tuple(own[key].shape)}"
            )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def load_model(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
) -> LoadedModel:
    """Import the model at ``path``; raises :class:`UserInputError` for unusable input."""
    p = Path(path)
    try:
        fmt = detect_format(p)
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    if fmt == "onnx":
        from engine.onnx_import import load_onnx

        graph_module, input_shape = load_onnx(p)
        module: nn.Module = graph_module
    else:
        if not arch:
            raise UserInputError(
                f"{p.name}: a {fmt} state dict needs an architecture name (--arch); "
                f"built-in: {sorted(archs.ARCHS)}"
            )
        module, input_shape = archs.build(arch, arch_kwargs)
        if fmt == "safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                state = load_file(str(p))
            except (SafetensorError, OSError, ValueError) as exc:
                raise UserInputError(f"{p.name}: unreadable safetensors file ({exc})") from None
        else:
            state = load_pt_state_dict(p)
        _check_finite(state, p.name)
        _load_state(module, state, arch, p.name)
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, *input_shape))
    except Exception as exc:
        raise UserInputError(
            f"{p.name}: the model does not run on an input of shape (1, {input_shape}): {exc}"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise UserInputError(f"{p.name}: expected (N, classes) logits, got {type(out).__name__}")
    return LoadedModel(module, tuple(input_shape), fmt, int(out.shape[1]))


def inspect_model(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``{"format", "input_shape" (without batch), "num_params", "num_outputs"}``."""
    loaded = load_model(path, arch=arch, arch_kwargs=arch_kwargs)
    return {
        "format": loaded.format,
        "input_shape": list(loaded.input_shape),
        "num_params": int(sum(p.numel() for p in loaded.module.parameters())),
        "num_outputs": loaded.num_outputs,
    }
