"""The options of a binarization job, shared by the engine, the CLI, the worker and the API.

This module is torch-free on purpose: the API validates a job's ``config`` with
:class:`BinarizeConfig` without importing the engine, and the worker hands the same object
to ``engine``. :class:`Progress` is what the engine reports while it trains.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Factorization = Literal["none", "matrix", "tucker", "cp"]
Scales = Literal["analytic", "channel", "xnorpp"]
Device = Literal["auto", "cpu", "cuda"]
ActivationGrad = Literal["ste", "approxsign"]


class BinarizeConfig(BaseModel):
    """How to turn a real model into a factorized-binary one (every field has a default)."""

    # NaN and infinities are refused where the request is checked, not as a NaN loss later
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    factorization: Factorization = Field(
        default="matrix",
        description="Weight parametrization: 'none' (per-filter sign, XNOR-Net), 'matrix' "
        "(W unfolded = U V^T), 'tucker' or 'cp'.",
    )
    rank: float | list[int] = Field(
        default=1.0,
        description="Rank as a fraction of full rank (0 < r <= 1), or one rank per mode.",
    )
    residual: bool = Field(
        default=True,
        description="Latent weight = reconstruct(factors) + a dense residual (trained at lr, "
        "the factors at factor_lr * lr); False: the factors alone. Ignored for 'none'.",
    )
    factor_lr: float | None = Field(
        default=None,
        gt=0,
        le=100.0,
        description="Learning rate of the factors relative to lr (before each layer's step-gain "
        "normalization); default 0.1 with the residual, 1.0 without.",
    )
    scales: Scales = Field(
        default="channel",
        description="'analytic' (mean|W|), 'channel' (learned per output channel) or "
        "'xnorpp' (learned alpha x beta x gamma).",
    )
    activation_grad: ActivationGrad = Field(
        default="ste", description="Gradient of the activation sign: clipped STE or ApproxSign."
    )
    epochs: int = Field(default=10, ge=0, le=10_000, description="0 converts without training.")
    lr: float = Field(
        default=1e-2,
        gt=0,
        le=10.0,
        description="AdamW learning rate (1e-3 under-fits short jobs; see docs/engine.md).",
    )
    weight_decay: float = Field(default=0.0, ge=0, le=1.0)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1)
    two_stage: bool = Field(
        default=False,
        description="First train with binary activations and real weights, then binarize weights.",
    )
    distill_temperature: float = Field(default=4.0, gt=0, le=100.0)
    distill_weight: float = Field(
        default=1.0, ge=0, le=1, description="Share of the KD loss; the rest is cross-entropy."
    )
    val_fraction: float = Field(
        default=0.1, ge=0, lt=1, description="Held out when no validation set is given."
    )
    keep_real: list[str] = Field(
        default_factory=list,
        description="Glob patterns of layer names kept real (first and last always are, "
        "unless binarize_first_last).",
    )
    binarize_first_last: bool = False
    min_layer_size: int = Field(
        default=256, ge=0, description="Layers with fewer weights than this stay real."
    )
    seed: int = Field(default=0, ge=0)
    device: Device = "auto"

    @field_validator("rank")
    @classmethod
    def _valid_rank(cls, value: float | list[int]) -> float | list[int]:
        if isinstance(value, list):
            if not value or any(r < 1 for r in value):
                raise ValueError("per-mode ranks must be positive integers")
        elif not 0 < value <= 1:
            raise ValueError("a rank fraction must be in (0, 1]")
        return value

    @model_validator(mode="after")
    def _ranks_fit_the_factorization(self) -> BinarizeConfig:
        one_rank = self.factorization in ("matrix", "cp")
        if one_rank and isinstance(self.rank, list) and len(self.rank) != 1:
            raise ValueError(
                f"{self.factorization} factorization takes one rank, got {self.rank} "
                "(one per mode is for tucker)"
            )
        return self


class Progress(BaseModel):
    """A progress report of a running job."""

    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    eta_seconds: float | None = None
    stage: str = "train"
