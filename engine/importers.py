"""Turn an uploaded model file into an ``nn.Module`` (ONNX, safetensors or ``.pt``).

- ONNX: converted by :mod:`engine.onnx_import`; the input shape comes from the file.
- safetensors: a state dict for a built-in architecture (``arch`` + ``arch_kwargs``,
  see :mod:`engine.archs`).
- ``.pt``/``.pth``: a state dict loaded with ``torch.load(weights_only=True)`` only, for a
  built-in architecture, and only in a child process under limits (address space, CPU
  time, wall time; :mod:`bitfactor.sandbox`) that hands the tensors back as safetensors:
  the calling process (worker, CLI) never unpickles the file. Pickled modules, TorchScript
  and ``torch.export`` archives are refused by :func:`bitfactor.modelformat.detect_format`
  before torch sees the file, and a failure in the child is final (never retried another
  way).

Every file goes through :func:`~bitfactor.modelformat.detect_format` first (the checks the
API applied at upload, shared code), and state dicts with NaN or infinite values are
refused, naming the tensor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bitfactor.modelformat import detect_format
from bitfactor.sandbox import (
    OUT_OF_MEMORY,
    Limits,
    child_env,
    child_report,
    limited_command,
)
from engine import archs
from engine.errors import UserInputError


@dataclass
class LoadedModel:
    """An imported model in eval mode, its input shape (without batch) and source format."""

    module: nn.Module
    input_shape: tuple[int, ...]
    format: str
    num_outputs: int


# Set by ``python -m engine.inspect``: that process is the limited child and loads here.
IN_SANDBOX = False
# Limits of the child that loads a ``.pt`` (the same defaults as the API's upload check).
PT_LIMITS = Limits()


def _torch_load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)``, checked to be a flat dict of tensors (child only)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except RuntimeError as exc:
        if "allocate" in str(exc):  # torch's allocator reports an out-of-memory this way
            raise MemoryError(str(exc)) from None
        raise UserInputError(
            f"{path.name}: not a weights-only state dict (RuntimeError: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
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


def pt_to_safetensors(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """Load the ``.pt`` state dict at ``path`` and write it to ``out`` as safetensors.

    Run by ``python -m engine.inspect --to-safetensors`` in the limited child.
    """
    from safetensors.torch import save_file

    p = Path(path)
    state = _torch_load_state_dict(p)
    seen: set[tuple[int, int]] = set()
    plain: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if value.layout != torch.strided or value.is_quantized:
            raise UserInputError(f"{p.name}: tensor {key!r} is not a dense tensor")
        tensor = value.detach().contiguous()
        ident = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if ident in seen and tensor.numel():  # tied weights: safetensors wants no sharing
            tensor = tensor.clone()
        seen.add(ident)
        plain[key] = tensor
    try:
        save_file(plain, str(out))
    except (ValueError, TypeError, RuntimeError) as exc:
        raise UserInputError(f"{p.name}: the state dict cannot be handed over ({exc})") from None


def load_pt_state_dict(path: Path, *, limits: Limits | None = None) -> dict[str, torch.Tensor]:
    """The state dict in a ``torch.save`` file, unpickled only in a limited child process.

    The child (``python -m engine.inspect --to-safetensors``) loads it with
    ``torch.load(weights_only=True)`` under ``limits`` (default :data:`PT_LIMITS`) and
    writes safetensors, read here. Any failure there is a :class:`UserInputError`.
    """
    path = Path(path)
    if IN_SANDBOX:
        return _torch_load_state_dict(path)
    lim = limits or PT_LIMITS
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory(prefix="bitfactor-pt-") as tmp:
        out = Path(tmp) / "state.safetensors"
        cmd = limited_command(
            "engine.inspect",
            ["--to-safetensors", str(out), str(path.resolve())],
            max_memory_bytes=lim.max_memory_bytes,
            max_cpu_seconds=lim.max_cpu_seconds,
        )
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=lim.timeout,
                env=child_env(),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise UserInputError(
                f"{path.name}: loading took longer than the time limit of {lim.timeout:.0f} s"
            ) from None
        _raise_child_failure(path.name, proc, lim)
        try:
            return load_file(str(out))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserInputError(
                f"{path.name}: the loader wrote no usable tensors ({exc})"
            ) from None


def _raise_child_failure(name: str, proc: subprocess.CompletedProcess[str], lim: Limits) -> None:
    data = child_report(proc.stdout)
    memory = f"{name}: loading exceeded the memory limit of {lim.max_memory_bytes // 2**20} MiB"
    if data is not None and data.get("limit") == "memory":
        raise UserInputError(memory)
    if data is not None and "error" in data:
        raise UserInputError(str(data["error"]))
    if proc.returncode == 0 and data is not None and data.get("ok") is True:
        return
    if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL) and lim.max_cpu_seconds:
        raise UserInputError(
            f"{name}: loading exceeded the CPU time limit of {lim.max_cpu_seconds} s"
        )
    if any(word in proc.stderr for word in OUT_OF_MEMORY) and lim.max_memory_bytes:
        raise UserInputError(memory)
    if proc.returncode < 0:
        raise UserInputError(f"{name}: the loader was killed by signal {-proc.returncode}")
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise UserInputError(f"{name}: the state dict could not be loaded ({tail[:300]})")


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
    # a GraphModule's forward, not its __call__, which prints the generated code of a
    # failing call to stderr (the message below says it all)
    call = module.forward if isinstance(module, torch.fx.GraphModule) else module
    try:
        with torch.no_grad():
            out = call(torch.zeros(1, *input_shape))
    except Exception as exc:
        raise UserInputError(
            f"{p.name}: the model does not run on an input of shape {(1, *input_shape)}: {exc}"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        what = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserInputError(f"{p.name}: expected (N, classes) logits, got {what}")
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
