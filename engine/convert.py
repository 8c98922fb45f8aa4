"""Convert a real model into its factorized-binary twin with a torch.fx graph rewrite.

1. Trace the model (an ONNX import already is a ``GraphModule``).
2. Pick the ``Conv1d``/``Conv2d``/``Linear`` layers to binarize: all but the first and the
   last (unless ``binarize_first_last``), those matching a ``keep_real`` glob, those with
   fewer than ``min_layer_size`` weights, grouped or non-zero-padded convolutions (the
   runtime's binary convolutions have ``groups = 1`` and zero padding), and modules called
   more than once stay real, and so do Linear layers whose input (seen on the data) has
   more than four axes. A Linear on tokens (``(N, L, C)``, ``(N, H, W, C)``: a
   transformer's or a ConvNeXt block's) is binarized as the 1x1 convolution over the
   token axes that the runtime runs for it.
3. Swap each for a twin (:func:`engine.layers.make_twin`).
4. **The degenerate sign after a ReLU.** ``sign(relu(z) - t)`` is all +1 when ``t <= 0``.
   Two measures: (a) a ReLU whose every user is a binary layer is *bypassed* (the binary
   layers read ``z`` itself: a conv-BN-ReLU-conv block becomes conv-BN-sign-conv, the
   classic binary block); (b) every threshold is initialized from statistics of the
   layer's actual input on the user's data (per channel median; when at least half of the
   values sit at the channel's minimum, as after a ReLU that had to stay because a real
   path also reads it, the median of the values above the minimum; then moved halfway to
   the next larger value seen, so no input sits exactly on it).
5. Calibrate in one forward pass over a sample of the data, with the binary layers
   active: each threshold is set from the input it receives (earlier layers already
   binary), batch-norm statistics are re-estimated for the binary network, and the
   XNOR-Net++ spatial scales get their sizes.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from bitfactor.jobconfig import BinarizeConfig
from engine.errors import UserInputError
from engine.layers import TWINS, BinaryMixin, binary_layers, make_twin

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}


@dataclass
class LayerReport:
    """What conversion did to one Conv/Linear layer."""

    name: str
    kind: str
    weights: int
    binary: bool
    reason: str = ""
    ranks: list[int] = field(default_factory=list)
    sign_agreement: float | None = None


def trace(model: nn.Module) -> fx.GraphModule:
    """A ``GraphModule`` of ``model`` (a copy; the original is untouched)."""
    model = copy.deepcopy(model)
    if isinstance(model, fx.GraphModule):
        return model
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises TraceError and plain exceptions for control flow
        raise UserInputError(f"the model cannot be traced with torch.fx: {exc}") from None


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _input_ranks(gm: fx.GraphModule, example: torch.Tensor | None) -> dict[fx.Node, int]:
    """The rank of each call_module node's first input on ``example`` (empty without one,
    or where the graph does not run on it: the layers then fail later, by name)."""
    if example is None:
        return {}
    tensors = [*gm.parameters(), *gm.buffers()]
    if tensors:
        example = example.to(tensors[0].device)
    was_training = gm.training
    gm.eval()  # batch-norm statistics untouched
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception:  # a model the data does not fit fails in calibration, by name
        return {}
    finally:
        gm.train(was_training)
    ranks: dict[fx.Node, int] = {}
    for node in gm.graph.nodes:
        src = None
        if node.op == "call_module":
            src = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
        meta = src.meta.get("tensor_meta") if isinstance(src, fx.Node) else None
        if meta is not None and hasattr(meta, "shape"):
            ranks[node] = len(meta.shape)
    return ranks


def _keep_reason(
    name: str,
    module: nn.Module,
    index: int,
    count: int,
    config: BinarizeConfig,
    calls: int,
    input_rank: int | None = None,
) -> str:
    if not config.binarize_first_last and index == 0:
        return "first layer"
    if not config.binarize_first_last and index == count - 1:
        return "last layer"
    if any(fnmatch.fnmatchcase(name, pat) for pat in config.keep_real):
        return "keep_real pattern"
    if math.prod(module.weight.shape) < config.min_layer_size:  # type: ignore[arg-type]
        return f"fewer than {config.min_layer_size} weights"
    if calls > 1:
        return "module called more than once"
    if isinstance(module, nn.Linear) and input_rank is not None and input_rank > 4:
        # tokens (N, L, C) and (N, H, W, C) export as a binary 1x1 convolution; more axes
        # than a 2-d convolution has do not
        return f"input of rank {input_rank}, more than (batch, height, width, features)"
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        if module.groups != 1:
            return "grouped convolution"
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return "padding mode"
    return ""


def _set_submodule(gm: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, leaf, module)


def binarize_graph(
    model: nn.Module, config: BinarizeConfig, example: torch.Tensor | None = None
) -> tuple[fx.GraphModule, list[LayerReport]]:
    """The traced twin of ``model`` with binary layers swapped in (not calibrated yet).

    ``example`` (a few inputs) lets the choice see each layer's input shape: a Linear
    applied to a value of more than four axes stays real."""
    gm = trace(model)
    ranks = _input_ranks(gm, example)
    nodes = [
        n
        for n in gm.graph.nodes
        if n.op == "call_module" and type(gm.get_submodule(str(n.target))) in TWINS
    ]
    calls: dict[str, int] = {}
    for n in nodes:
        calls[str(n.target)] = calls.get(str(n.target), 0) + 1
    reports: list[LayerReport] = []
    binary_nodes: list[fx.Node] = []
    for i, node in enumerate(nodes):
        name = str(node.target)
        module = gm.get_submodule(name)
        reason = _keep_reason(name, module, i, len(nodes), config, calls[name], ranks.get(node))
        if not reason and not node.args:  # the twin's hooks and the bypass read args[0]
            reason = "input passed by keyword"
        report = LayerReport(
            name,
            type(module).__name__,
            math.prod(module.weight.shape),  # type: ignore[arg-type]
            binary=not reason,
            reason=reason,
        )
        if not reason:
            twin = make_twin(
                module,
                factorization=config.factorization,
                rank=config.rank,
                scales=config.scales,
                activation_grad=config.activation_grad,
                residual=config.residual,
            )
            _set_submodule(gm, name, twin)
            report.ranks = list(twin.factorization.ranks)
            report.sign_agreement = twin.factorization.sign_agreement
            binary_nodes.append(node)
        reports.append(report)
    binary_set = set(binary_nodes)
    for node in binary_nodes:
        src = node.args[0]
        if (
            isinstance(src, fx.Node)
            and _is_relu(gm, src)
            and all(u in binary_set for u in src.users)
        ):
            node.replace_input_with(src, src.args[0])  # type: ignore[arg-type]
            if not src.users:
                gm.graph.erase_node(src)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, reports


def _features_first(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer's input or output with its channels on axis 1: a Linear's on tokens
    (``(N, L, C)``, ``(N, H, W, C)``) have them last."""
    return x.movedim(-1, 1) if isinstance(module, nn.Linear) and x.dim() > 2 else x


def threshold_from_stats(x: torch.Tensor) -> torch.Tensor:
    """Per-channel threshold (dimension 1) of a batch of activations; see the module doc."""
    values = x.detach().transpose(0, 1).reshape(x.shape[1], -1).float()
    floor = values.min(dim=1).values
    median = values.median(dim=1).values
    out = median.clone()
    for c in torch.nonzero(median <= floor).flatten().tolist():
        above = values[c][values[c] > floor[c]]
        out[c] = above.median() if above.numel() else floor[c] + 1.0
    # Halfway to the next larger value seen: a median is one of the values, and after a
    # binary layer (whose outputs take a few levels: scale * integer + bias) through an
    # elementwise op it sits exactly on a level that many inputs share; the runtime's
    # float op may round those a unit in the last place apart from torch's, which flips
    # their signs. Between two levels the comparison is the same on both sides.
    nxt = torch.where(values > out[:, None], values, torch.inf).min(dim=1).values
    return torch.where(torch.isfinite(nxt), (out + nxt) / 2, out)


@torch.no_grad()
def calibrate(gm: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> None:
    """Set thresholds, batch-norm statistics and spatial scale sizes from data ``x``."""
    hooks = []
    layers = binary_layers(gm)
    seen: set[int] = set()

    def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        layer: Any = module
        x = _features_first(module, args[0])
        layer.input_sign.threshold.copy_(threshold_from_stats(x).to(x.device))

    def post_hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        layer: Any = module
        out = _features_first(module, out)
        if not layer.out_spatial and out.dim() > 2:
            layer.init_output_spatial(tuple(out.shape[2:]))

    for _, layer in layers:
        mod: Any = layer
        hooks.append(mod.register_forward_pre_hook(pre_hook))
        hooks.append(mod.register_forward_hook(post_hook))
    was_training = gm.training
    gm.eval()
    bns = [m for m in gm.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        if bn.track_running_stats:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batches
            bn.train()
    try:
        # The first batch sets the thresholds (one large batch: good statistics).
        for start in range(0, x.shape[0], batch_size):
            gm(x[start : start + batch_size])
    finally:
        for h in hooks:
            h.remove()
        for bn in bns:
            bn.momentum = 0.1
        gm.train(was_training)
        if not was_training:
            gm.eval()


def set_binary(gm: nn.Module, *, weights: bool, inputs: bool) -> None:
    """Switch every twin's weight and activation binarization."""
    for _, layer in binary_layers(gm):
        layer.set_binary(weights=weights, inputs=inputs)


def convert(
    model: nn.Module, calib_x: torch.Tensor, config: BinarizeConfig
) -> tuple[fx.GraphModule, list[dict[str, Any]]]:
    """The calibrated binary twin of ``model`` and a per-layer report (dicts)."""
    gm, reports = binarize_graph(model, config, calib_x[:2])
    gm.to(calib_x.device)
    calibrate(gm, calib_x)
    if not any(r.binary for r in reports):
        reasons = "; ".join(f"{r.name}: {r.reason}" for r in reports)
        raise UserInputError(
            "no layer can be binarized: the runtime's binary layers are the Conv/Linear "
            "layers between the first and the last one, with at least min_layer_size "
            f"weights and (for Linear) an input of at most four axes "
            f"({reasons or 'no such layer'})"
        )
    return gm, [asdict(r) for r in reports]


def is_binary_module(module: nn.Module) -> bool:
    """True for a binary twin."""
    return isinstance(module, BinaryMixin)
