"""Weight factorizations, each a ``torch.nn.utils.parametrize`` parametrization.

A factorization's ``right_inverse(W)`` computes the factors of a pretrained weight once
(SVD for ``matrix``, HOSVD/HOOI for ``tucker``, PARAFAC for ``cp``; the last two with
TensorLy on its PyTorch backend), and ``forward(*factors)`` rebuilds the real weight. The
binary layer chains :class:`engine.quantizers.WeightSign` after it, so the layer's weight
is ``sign(reconstruct(factors))`` (Bulat, Kossaifi, Tzimiropoulos and Pantic, 2019).

Initialization guarantees ``sign(reconstruction) == sign(W)`` wherever the rank allows:
the weights are first pushed away from zero (``|w| >= 1e-3 * mean|W|``, keeping the
``sign(0) = +1`` rule), decomposed in float64, and when signs still differ (a low rank)
a short hinge-loss refinement moves the factors until they agree or a step budget ends.

``residual=True`` (the default of a job, ``BinarizeConfig.residual``) adds a dense tensor
to the reconstruction, ``latent = reconstruct(factors) + R``, as the last parametrization
tensor, initialized to ``W - reconstruct(factors)``: the latent weight equals the
pretrained weight at any rank (no sign refinement needed). The trainer moves ``R`` at the
full learning rate, like the raw weights of ``none``, and the factors at a smaller one: the
factors add a coupled step on top of the per-weight one instead of replacing it (see
``docs/engine.md``, "Why a residual").

Ranks: a fraction ``r`` of full rank, or explicit integers. Full rank is ``min(C_out,
C_in*k*k)`` for ``matrix``, every mode's size for ``tucker`` (one rank per mode), and for
``cp`` the rank with as many parameters as the dense tensor, ``ceil(prod(dims) /
sum(dims))`` (exact CP rank is intractable; this is the budget of the dense weight).
"""

from __future__ import annotations

import abc
import math
import warnings
from typing import Any, ClassVar

import torch
from torch import nn

from engine.errors import UserInputError

ALIGN_STEPS = 300


def _nudged(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` in float64 with every entry at least ``1e-3 * mean|W|`` away from zero."""
    w = weight.detach().to(torch.float64)
    delta = 1e-3 * float(w.abs().mean()) + 1e-12
    return torch.where(w >= 0, w.clamp(min=delta), w.clamp(max=-delta))


class Factorization(nn.Module, abc.ABC):
    """Base class: a parametrization from factors to a weight of fixed ``shape``.

    Subclasses register under a name with ``class X(Factorization, name="x")``;
    :func:`get` builds one from a name, a config dict or returns an instance as is.
    """

    registry: ClassVar[dict[str, type[Factorization]]] = {}
    name: ClassVar[str] = ""

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            Factorization.registry[name] = cls

    def __init__(
        self, shape: tuple[int, ...], rank: float | list[int] = 1.0, residual: bool = False
    ) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.rank = rank
        self.ranks = self.resolve_rank(rank)
        self.residual = bool(residual)
        self.sign_agreement = 1.0

    def resolve_rank(self, rank: float | list[int]) -> list[int]:
        """The integer rank(s) this factorization uses for ``self.shape``."""
        return []

    @abc.abstractmethod
    def reconstruct(self, *factors: torch.Tensor) -> torch.Tensor:
        """The weight of shape ``self.shape`` that ``factors`` represent."""

    @abc.abstractmethod
    def decompose(self, weight: torch.Tensor) -> list[torch.Tensor]:
        """Initial factors of ``weight`` (SVD / HOSVD / PARAFAC, in float64)."""

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        if self.residual:
            return self.reconstruct(*tensors[:-1]) + tensors[-1]
        return self.reconstruct(*tensors)

    def right_inverse(self, weight: torch.Tensor) -> Any:
        """Factors of ``weight`` whose reconstruction has the signs of ``weight``.

        With ``residual`` the last tensor is the dense residual ``W - reconstruct(factors)``,
        so the latent weight equals the (nudged) pretrained weight exactly at any rank.
        """
        if tuple(weight.shape) != self.shape:
            raise ValueError(f"expected a weight of shape {self.shape}, got {tuple(weight.shape)}")
        target = _nudged(weight)
        factors = [f.to(torch.float64) for f in self.decompose(target)]
        if self.residual:
            factors.append(target - self.reconstruct(*factors))
            with torch.no_grad():
                recon = self.forward(*factors)
            self.sign_agreement = float(((recon >= 0) == (target >= 0)).double().mean())
        else:
            factors = self._align_signs(factors, target)
        return tuple(f.to(weight.dtype).contiguous() for f in factors)

    def _align_signs(self, factors: list[torch.Tensor], target: torch.Tensor) -> list[torch.Tensor]:
        sign = torch.where(target >= 0, 1.0, -1.0).to(torch.float64)
        with torch.no_grad():
            agree = (self.reconstruct(*factors) * sign > 0).double().mean().item()
        if agree < 1.0:
            params = [f.clone().requires_grad_(True) for f in factors]
            scale = float(target.abs().mean())
            power = float(target.pow(2).mean())
            groups = [
                {"params": [p], "lr": 0.02 * float(p.detach().pow(2).mean().sqrt()) + 1e-8}
                for p in params
            ]
            opt = torch.optim.Adam(groups)
            with torch.enable_grad():
                for _ in range(ALIGN_STEPS):
                    recon = self.reconstruct(*params)
                    margin = sign * recon
                    if bool((margin > 0).all()):
                        break
                    loss = torch.relu(0.1 * scale - margin).mean() / scale
                    loss = loss + 0.05 * (recon - target).pow(2).mean() / power
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            factors = [p.detach() for p in params]
            with torch.no_grad():
                agree = (self.reconstruct(*factors) * sign > 0).double().mean().item()
        self.sign_agreement = agree
        return factors

    def extra_repr(self) -> str:
        return f"shape={self.shape}, ranks={self.ranks}"


class Dense(Factorization, name="none"):
    """No factorization: the weight itself (per-filter sign, the XNOR-Net baseline).

    It has no residual (the weight already is one dense tensor)."""

    def __init__(
        self, shape: tuple[int, ...], rank: float | list[int] = 1.0, residual: bool = False
    ) -> None:
        super().__init__(shape, rank, residual=False)

    def reconstruct(self, *factors: torch.Tensor) -> torch.Tensor:
        return factors[0]

    def right_inverse(self, weight: torch.Tensor) -> Any:
        if tuple(weight.shape) != self.shape:
            raise ValueError(f"expected a weight of shape {self.shape}, got {tuple(weight.shape)}")
        return weight

    def decompose(self, weight: torch.Tensor) -> list[torch.Tensor]:
        return [weight]


class MatrixFactorization(Factorization, name="matrix"):
    """``W`` unfolded to ``C_out x (C_in*k*k)`` equals ``U V^T`` (truncated SVD init)."""

    def resolve_rank(self, rank: float | list[int]) -> list[int]:
        full = min(self.shape[0], math.prod(self.shape[1:]))
        if isinstance(rank, list):
            if len(rank) != 1:
                raise UserInputError(f"matrix factorization takes one rank, got {rank}")
            return [min(int(rank[0]), full)]
        return [max(1, min(full, math.ceil(rank * full)))]

    def decompose(self, weight: torch.Tensor) -> list[torch.Tensor]:
        r = self.ranks[0]
        u, s, vh = torch.linalg.svd(weight.reshape(self.shape[0], -1), full_matrices=False)
        root = s[:r].sqrt()
        return [u[:, :r] * root, vh[:r].T * root]

    def reconstruct(self, *factors: torch.Tensor) -> torch.Tensor:
        u, v = factors
        return (u @ v.T).reshape(self.shape)


def _tensorly_decomposition(kind: str, tensor: torch.Tensor, rank: Any) -> Any:
    import tensorly as tl
    from tensorly.decomposition import parafac, tucker

    # A rank above a mode's size makes TensorLy's SVD init pad with random columns (seeded).
    with tl.backend_context("pytorch"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if kind == "tucker":
            return tucker(tensor, rank=rank, init="svd", n_iter_max=50, random_state=0)
        return parafac(tensor, rank=rank, init="svd", n_iter_max=25, random_state=0)


class TuckerFactorization(Factorization, name="tucker"):
    """Tucker: a core and one factor per mode (HOSVD init refined by HOOI, TensorLy)."""

    def resolve_rank(self, rank: float | list[int]) -> list[int]:
        if isinstance(rank, list):
            if len(rank) != len(self.shape):
                raise UserInputError(
                    f"tucker needs one rank per mode ({len(self.shape)} for shape "
                    f"{list(self.shape)}), got {rank}"
                )
            return [min(int(r), d) for r, d in zip(rank, self.shape, strict=True)]
        return [max(1, min(d, math.ceil(rank * d))) for d in self.shape]

    def decompose(self, weight: torch.Tensor) -> list[torch.Tensor]:
        core, factors = _tensorly_decomposition("tucker", weight, self.ranks)
        return [core, *factors]

    def reconstruct(self, *factors: torch.Tensor) -> torch.Tensor:
        # Mode products by tensordot: each step contracts the leading (core) axis with a
        # factor and appends the output axis, so after every mode the axes are in order.
        out = factors[0]
        for factor in factors[1:]:
            out = torch.tensordot(out, factor, dims=([0], [1]))
        return out


class CPFactorization(Factorization, name="cp"):
    """CP: a sum of rank-one tensors (PARAFAC init by alternating least squares, TensorLy)."""

    def resolve_rank(self, rank: float | list[int]) -> list[int]:
        full = math.ceil(math.prod(self.shape) / sum(self.shape))
        if isinstance(rank, list):
            if len(rank) != 1:
                raise UserInputError(f"cp factorization takes one rank, got {rank}")
            return [int(rank[0])]
        return [max(1, math.ceil(rank * full))]

    def decompose(self, weight: torch.Tensor) -> list[torch.Tensor]:
        weights, factors = _tensorly_decomposition("cp", weight, self.ranks[0])
        factors = list(factors)
        factors[0] = factors[0] * weights
        return factors

    def reconstruct(self, *factors: torch.Tensor) -> torch.Tensor:
        # W unfolded along mode 0 = A (Khatri-Rao of the other factors)^T: one matmul.
        first, *rest = factors
        rank = first.shape[1]
        kr = rest[0]
        for factor in rest[1:]:
            kr = (kr.unsqueeze(1) * factor.unsqueeze(0)).reshape(-1, rank)
        return (first @ kr.T).reshape(self.shape)


def get(
    identifier: str | dict[str, Any] | Factorization,
    shape: tuple[int, ...] | None = None,
    rank: float | list[int] = 1.0,
    residual: bool = False,
) -> Factorization:
    """A factorization from a name (with ``shape``, ``rank`` and ``residual``), a config dict
    (``{"name": ..., "shape": ..., "rank": ..., "residual": ...}``) or an instance (returned
    as is)."""
    if isinstance(identifier, Factorization):
        return identifier
    if isinstance(identifier, dict):
        config = dict(identifier)
        name = config.pop("name")
        return get(
            name,
            tuple(config.pop("shape", shape or ())),
            config.pop("rank", rank),
            bool(config.pop("residual", residual)),
        )
    if identifier not in Factorization.registry:
        known = ", ".join(sorted(Factorization.registry))
        raise UserInputError(f"unknown factorization {identifier!r}; expected one of {known}")
    if shape is None:
        raise ValueError("a factorization built from its name needs the weight shape")
    return Factorization.registry[identifier](shape, rank, residual)
