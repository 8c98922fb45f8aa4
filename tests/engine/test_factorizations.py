"""Factorizations: the registry, ranks, and sign(reconstruction) == sign(W) at init."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from engine import factorizations
from engine.errors import UserInputError
from engine.layers import TWINS, layer_kwargs, make_twin

SHAPES = [(8, 4, 3, 3), (16, 8, 1, 1), (12, 6, 5), (10, 40), (5, 3, 3, 3)]


@pytest.mark.parametrize("name", ["none", "matrix", "tucker", "cp"])
@pytest.mark.parametrize("shape", SHAPES)
def test_initial_reconstruction_has_the_signs_of_the_weight(
    name: str, shape: tuple[int, ...]
) -> None:
    torch.manual_seed(1)
    weight = torch.randn(shape)
    weight.view(-1)[:3] = 0.0  # sign(0) = +1 must survive the factorization
    factor = factorizations.get(name, shape, 1.0)
    pieces = factor.right_inverse(weight)
    pieces = pieces if isinstance(pieces, tuple) else (pieces,)
    recon = factor(*pieces)
    assert recon.shape == weight.shape
    assert torch.equal(recon >= 0, weight >= 0)
    assert factor.sign_agreement == 1.0


@settings(max_examples=15, deadline=None)
@given(
    cout=st.integers(1, 12),
    cin=st.integers(1, 6),
    k=st.integers(1, 3),
    name=st.sampled_from(["matrix", "tucker"]),
)
def test_full_rank_matrix_and_tucker_are_exact(cout: int, cin: int, k: int, name: str) -> None:
    weight = torch.randn(cout, cin, k, k, generator=torch.Generator().manual_seed(cout * cin))
    factor = factorizations.get(name, tuple(weight.shape), 1.0)
    recon = factor(*factor.right_inverse(weight))
    assert torch.equal(recon >= 0, weight >= 0)
    # exact up to the 1e-3 * mean|W| nudge of near-zero entries
    assert torch.allclose(recon, weight, atol=2e-3 * float(weight.abs().mean()) + 1e-5)


def test_low_rank_is_refined_towards_the_signs() -> None:
    torch.manual_seed(0)
    weight = torch.randn(32, 16, 3, 3)
    factor = factorizations.get("matrix", tuple(weight.shape), 0.5)
    assert factor.ranks == [16]
    u, v = factor.right_inverse(weight)
    assert u.shape == (32, 16)
    assert v.shape == (144, 16)
    agree = float(((factor(u, v) >= 0) == (weight >= 0)).float().mean())
    assert agree == pytest.approx(factor.sign_agreement)
    assert agree > 0.9  # plain truncated SVD at half rank agrees on ~75%


@pytest.mark.parametrize("name", ["matrix", "tucker", "cp"])
def test_residual_makes_any_rank_exact(name: str) -> None:
    torch.manual_seed(0)
    weight = torch.randn(16, 8, 3, 3)
    weight.view(-1)[:3] = 0.0
    factor = factorizations.get(name, tuple(weight.shape), 0.25, residual=True)
    plain = factorizations.get(name, tuple(weight.shape), 0.25)
    pieces = factor.right_inverse(weight)
    n_factors = len(plain.right_inverse(weight))
    assert len(pieces) == n_factors + 1  # the factors, then the dense residual
    assert pieces[-1].shape == weight.shape
    recon = factor(*pieces)
    assert torch.equal(recon >= 0, weight >= 0)
    assert factor.sign_agreement == 1.0
    # the residual is what the low-rank factors miss, so the latent weight is W itself
    torch.testing.assert_close(recon, weight, atol=2e-3 * float(weight.abs().mean()), rtol=0)
    low_rank = factor.reconstruct(*pieces[:-1])
    assert float((low_rank - weight).abs().max()) > 0.1
    assert not factorizations.get("none", tuple(weight.shape), residual=True).residual


def test_ranks() -> None:
    assert factorizations.get("matrix", (64, 32, 3, 3), 0.25).ranks == [16]
    assert factorizations.get("tucker", (64, 32, 3, 3), 0.5).ranks == [32, 16, 2, 2]
    assert factorizations.get("tucker", (64, 32, 3, 3), [8, 8, 3, 3]).ranks == [8, 8, 3, 3]
    assert factorizations.get("cp", (16, 16, 3, 3), 1.0).ranks == [61]  # ceil(2304 / 38)
    with pytest.raises(UserInputError, match="one rank per mode"):
        factorizations.get("tucker", (64, 32, 3, 3), [8, 8])


def test_registry_get_accepts_name_dict_and_instance() -> None:
    by_name = factorizations.get("cp", (4, 4), 0.5)
    assert isinstance(by_name, factorizations.CPFactorization)
    by_dict = factorizations.get({"name": "tucker", "shape": [4, 5], "rank": 1.0})
    assert by_dict.ranks == [4, 5]
    assert factorizations.get(by_name) is by_name
    with pytest.raises(UserInputError, match="unknown factorization 'svd'"):
        factorizations.get("svd", (4, 4))
    assert set(factorizations.Factorization.registry) >= {"none", "matrix", "tucker", "cp"}


def test_twin_constructor_signatures_match_the_torch_layers() -> None:
    for base, twin in TWINS.items():
        assert issubclass(twin, base)
        assert inspect.signature(twin.__init__) == inspect.signature(base.__init__)


@pytest.mark.parametrize("name", ["none", "matrix", "tucker"])
@pytest.mark.parametrize(
    ("make_layer", "shape"),
    [
        (lambda: nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=True), (2, 4, 9, 9)),
        (
            lambda: nn.Conv2d(
                6, 6, (3, 1), stride=(1, 2), padding=(2, 0), dilation=(2, 1), bias=False
            ),
            (2, 6, 7, 8),
        ),
        (lambda: nn.Conv1d(4, 8, 5, stride=3, padding=2, dilation=1), (2, 4, 17)),
        (lambda: nn.Linear(12, 5), (3, 12)),
    ],
)
def test_twin_without_binarization_reproduces_the_layer(
    name: str, make_layer: Any, shape: tuple[int, ...]
) -> None:
    # the layer is made here, seeded: made at collection its weights (and how many sit
    # near zero, where the twin moves them by 1e-3 mean|W| to fix their sign) would depend
    # on which test modules were imported first
    torch.manual_seed(0)
    layer = make_layer()
    x = torch.randn(shape)
    twin = make_twin(layer, factorization=name, scales="xnorpp")
    assert layer_kwargs(twin) == layer_kwargs(layer)
    twin.set_binary(weights=False, inputs=False)
    torch.testing.assert_close(twin(x), layer(x), atol=1e-4, rtol=1e-4)


def test_cp_reconstruction_loaded_into_a_plain_layer_matches_the_twin() -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(4, 8, 3, padding=1)
    twin = make_twin(layer, factorization="cp")
    twin.set_binary(weights=False, inputs=False)
    plain = nn.Conv2d(4, 8, 3, padding=1)
    with torch.no_grad():
        plain.weight.copy_(twin.latent_weight())
        plain.bias.copy_(layer.bias)
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(twin(x), plain(x))


def test_binary_twin_computes_scaled_sign_conv_and_trains() -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, 3, padding=1)
    twin = make_twin(layer, factorization="matrix", scales="channel")
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        twin.input_sign.threshold.fill_(0.1)
    xb = torch.where(x >= 0.1, 1.0, -1.0)
    wb = torch.where(layer.weight >= 0, 1.0, -1.0)
    alpha = layer.weight.abs().flatten(1).mean(1)
    expected = nn.functional.conv2d(xb, wb, padding=1) * alpha.view(1, -1, 1, 1)
    expected = expected + layer.bias.view(1, -1, 1, 1)
    y = twin(x)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    y.square().sum().backward()
    grads = {n: p.grad for n, p in twin.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), grads.keys()
    assert grads["parametrizations.weight.original0"].abs().sum() > 0
    assert grads["input_sign.threshold"].abs().sum() > 0
