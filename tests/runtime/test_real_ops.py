"""The real-valued (float32) kernels: convolution (``fconv``), depthwise convolution
(``dwconv``) and max pooling.

Every ISA is checked against a float64 torch reference within a proven rounding bound and
against the scalar kernel (the specification), on awkward sizes: primes, 1x1, strides,
padding, dilation, batches, channel counts that do not fill a kernel block.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import runtime
from runtime import _native
from runtime.model import NATIVE_FLOAT_ISAS, FloatConv, FloatLinear

ISAS = runtime.supported_isas()
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EPS32 = float(np.finfo(np.float32).eps)


def _conv(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    *,
    relu: bool,
    threads: int,
    isa: str,
    depthwise: bool = False,
) -> np.ndarray:
    """``_native.fconv``, or ``_native.dwconv`` (groups = input channels)."""
    n, cin, h, w = x.shape
    cout, _, kh, kw = weight.shape
    c = cout // cin if depthwise else cout  # the multiplier, or the output channels
    geometry = (n, cin, h, w, c, kh, kw, *stride, *padding, *dilation)
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.full((n, cout, ho, wo), np.nan, np.float32)
    if depthwise:
        scratch = np.empty(_native.dwconv_scratch_bytes(geometry, threads), np.uint8)
        _native.dwconv(x, weight, bias, out, scratch, geometry, relu, threads, isa)
    else:
        scratch = np.empty(_native.fconv_scratch_bytes(geometry), np.uint8)
        packed = FloatConv(weight, bias).packed(isa)
        _native.fconv(x, packed, bias, out, scratch, geometry, relu, threads, isa)
    return out


def _fconv(*args: Any, **kwargs: Any) -> np.ndarray:
    return _conv(*args, **kwargs)


def _dwconv(*args: Any, **kwargs: Any) -> np.ndarray:
    return _conv(*args, depthwise=True, **kwargs)


def _reference(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """float64 result and the rounding bound of a float32 sum of k products:
    k * eps * sum |w x| (+ |bias|)."""
    xt, wt = torch.from_numpy(x).double(), torch.from_numpy(weight).double()
    bt = None if bias is None else torch.from_numpy(bias).double()
    geo = (stride, padding, dilation, groups)
    ref = F.conv2d(xt, wt, bt, *geo).numpy()
    mag = F.conv2d(xt.abs(), wt.abs(), None if bt is None else bt.abs(), *geo)
    k = weight[0].size + 1
    return ref, mag.numpy() * k * EPS32 + 1e-30


conv_cases = st.fixed_dictionaries(
    {
        "n": st.integers(1, 3),
        "cin": st.sampled_from([1, 2, 3, 5, 7, 13]),
        "cout": st.sampled_from([1, 3, 4, 7, 8, 9, 17, 31]),
        "h": st.integers(1, 23),
        "w": st.integers(1, 41),
        "k": st.tuples(st.integers(1, 7), st.integers(1, 7)),
        "stride": st.tuples(st.integers(1, 3), st.integers(1, 3)),
        "padding": st.tuples(st.integers(0, 3), st.integers(0, 3)),
        "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
        "bias": st.booleans(),
        "relu": st.booleans(),
        "threads": st.integers(1, 2),
        "seed": st.integers(0, 2**32 - 1),
    }
)


@FAST
@given(case=conv_cases)
def test_fconv_every_isa_matches_float64_and_scalar(case: dict) -> None:
    (kh, kw), (ph, pw), (dh, dw) = case["k"], case["padding"], case["dilation"]
    assume(case["h"] + 2 * ph >= dh * (kh - 1) + 1 and case["w"] + 2 * pw >= dw * (kw - 1) + 1)
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["n"], case["cin"], case["h"], case["w"])).astype(np.float32)
    weight = rng.standard_normal((case["cout"], case["cin"], kh, kw)).astype(np.float32)
    bias = rng.standard_normal(case["cout"]).astype(np.float32) if case["bias"] else None
    geo = (case["stride"], case["padding"], case["dilation"])
    ref, bound = _reference(x, weight, bias, *geo)
    if case["relu"]:
        ref = np.maximum(ref, 0)
    results = {}
    for isa in ISAS:
        out = _fconv(x, weight, bias, *geo, relu=case["relu"], threads=case["threads"], isa=isa)
        assert out.shape == ref.shape
        assert np.all(np.abs(out - ref) <= bound), isa
        results[isa] = out
    for isa, out in results.items():  # ISAs agree with the specification up to rounding
        assert np.all(np.abs(out - results["scalar"]) <= 2 * bound), isa


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    ("shape", "cout", "k", "stride", "padding"),
    [
        ((1, 3, 224, 224), 64, 7, 2, 3),  # the ResNet stem
        ((2, 64, 56, 56), 128, 1, 2, 0),  # a downsampling shortcut, batch 2
        ((1, 16, 9, 9), 24, 1, 1, 0),  # pointwise: reads its input in place
    ],
)
def test_fconv_network_shapes(
    isa: str, shape: tuple[int, ...], cout: int, k: int, stride: int, padding: int
) -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(np.float32)
    weight = (rng.standard_normal((cout, shape[1], k, k)) / k).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    geo = ((stride, stride), (padding, padding), (1, 1))
    ref, bound = _reference(x, weight, bias, *geo)
    out = _fconv(x, weight, bias, *geo, relu=True, threads=2, isa=isa)
    assert np.all(np.abs(out - np.maximum(ref, 0)) <= bound)


@pytest.mark.parametrize("isa", ISAS)
def test_fconv_relu_keeps_nan_and_bias_only_output(isa: str) -> None:
    x = np.zeros((1, 2, 5, 5), np.float32)
    x[0, 1, 2, 2] = np.nan
    weight = np.ones((3, 2, 1, 1), np.float32)
    bias = np.array([-1.0, 0.5, 2.0], np.float32)
    out = _fconv(x, weight, bias, (1, 1), (0, 0), (1, 1), relu=True, threads=1, isa=isa)
    expected = np.broadcast_to(np.maximum(bias, 0).reshape(1, 3, 1, 1), out.shape).copy()
    expected[0, :, 2, 2] = np.nan
    np.testing.assert_array_equal(out, expected)


def test_fconv_rejects_bad_geometry_and_short_buffers() -> None:
    x = np.zeros((1, 2, 4, 4), np.float32)
    packed = FloatConv(np.zeros((3, 2, 3, 3), np.float32), None).packed()
    out = np.zeros((1, 3, 2, 2), np.float32)
    geometry = (1, 2, 4, 4, 3, 3, 3, 1, 1, 0, 0, 1, 1)
    scratch = np.zeros(_native.fconv_scratch_bytes(geometry), np.uint8)
    _native.fconv(x, packed, None, out, scratch, geometry, False, 1)
    with pytest.raises(ValueError, match="extent"):
        _native.fconv(x, packed, None, out, scratch, (1, 2, 4, 4, 3, 5, 5, 1, 1, 0, 0, 1, 1), 0, 1)
    with pytest.raises(ValueError, match="out of range"):
        _native.fconv(x, packed, None, out, scratch, (1, 2, 4, 4, 3, 3, 3, 0, 1, 0, 0, 1, 1), 0, 1)
    with pytest.raises(ValueError, match="out has"):
        _native.fconv(x, packed, None, out[:, :2], scratch, geometry, False, 1)
    with pytest.raises(ValueError, match="weight has"):
        _native.fconv(x, packed[:-1], None, out, scratch, geometry, False, 1)
    with pytest.raises(ValueError, match="scratch has"):
        _native.fconv(x, packed, None, out, scratch[:8], geometry, False, 1)
    with pytest.raises(ValueError, match="bias has"):
        _native.fconv(x, packed, np.zeros(2, np.float32), out, scratch, geometry, False, 1)


@FAST
@given(
    case=conv_cases,
    mult=st.sampled_from([1, 1, 2, 3]),
    w=st.sampled_from([1, 7, 15, 16, 17, 31, 32, 33, 64, 65, 70]),
)
def test_dwconv_every_isa_matches_float64(case: dict, mult: int, w: int) -> None:
    # row widths around the vectors (8 and 16 floats) and strips of 4 of them
    (kh, kw), (ph, pw), (dh, dw) = case["k"], case["padding"], case["dilation"]
    assume(case["h"] + 2 * ph >= dh * (kh - 1) + 1 and w + 2 * pw >= dw * (kw - 1) + 1)
    rng = np.random.default_rng(case["seed"])
    cin = case["cin"]
    x = rng.standard_normal((case["n"], cin, case["h"], w)).astype(np.float32)
    weight = rng.standard_normal((cin * mult, 1, kh, kw)).astype(np.float32)
    bias = rng.standard_normal(cin * mult).astype(np.float32) if case["bias"] else None
    geo = (case["stride"], case["padding"], case["dilation"])
    ref, bound = _reference(x, weight, bias, *geo, groups=x.shape[1])
    if case["relu"]:
        ref = np.maximum(ref, 0)
    for isa in ISAS:
        out = _dwconv(x, weight, bias, *geo, relu=case["relu"], threads=case["threads"], isa=isa)
        assert out.shape == ref.shape
        assert np.all(np.abs(out - ref) <= bound), isa


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    ("shape", "k", "stride"),
    [((1, 32, 112, 112), 3, 2), ((2, 144, 28, 28), 3, 1), ((1, 96, 14, 14), 5, 1)],
)
def test_dwconv_network_shapes(
    isa: str, shape: tuple[int, ...], k: int, stride: int
) -> None:  # MobileNet's and EfficientNet's depthwise layers
    rng = np.random.default_rng(8)
    x = rng.standard_normal(shape).astype(np.float32)
    weight = rng.standard_normal((shape[1], 1, k, k)).astype(np.float32)
    bias = rng.standard_normal(shape[1]).astype(np.float32)
    geo = ((stride, stride), (k // 2, k // 2), (1, 1))
    ref, bound = _reference(x, weight, bias, *geo, groups=x.shape[1])
    out = _dwconv(x, weight, bias, *geo, relu=True, threads=2, isa=isa)
    assert np.all(np.abs(out - np.maximum(ref, 0)) <= bound)


@pytest.mark.parametrize("isa", ISAS)
def test_dwconv_relu_keeps_nan(isa: str) -> None:
    x = np.zeros((1, 2, 5, 21), np.float32)
    x[0, 1, 2, 20] = np.nan  # in a vector's masked tail
    x[0, 0, 1, 3] = np.nan  # in a full vector
    out = _dwconv(
        x, np.ones((2, 1, 1, 1), np.float32), None, (1, 1), (0, 0), (1, 1),
        relu=True, threads=1, isa=isa,
    )  # fmt: skip
    expected = np.zeros_like(x)
    expected[np.isnan(x)] = np.nan
    np.testing.assert_array_equal(out, expected)


def test_dwconv_rejects_bad_geometry_and_short_buffers() -> None:
    x = np.zeros((1, 2, 4, 4), np.float32)
    weight = np.zeros((4, 3, 3), np.float32)  # multiplier 2
    out = np.zeros((1, 4, 2, 2), np.float32)
    geometry = (1, 2, 4, 4, 2, 3, 3, 1, 1, 0, 0, 1, 1)
    scratch = np.zeros(_native.dwconv_scratch_bytes(geometry), np.uint8)
    _native.dwconv(x, weight, None, out, scratch, geometry, False, 1)
    with pytest.raises(ValueError, match="extent"):
        _native.dwconv(x, weight, None, out, scratch, (1, 2, 4, 4, 2, 5, 5, 1, 1, 0, 0, 1, 1), 0, 1)
    with pytest.raises(ValueError, match="out of range"):
        _native.dwconv(x, weight, None, out, scratch, (1, 2, 4, 4, 2, 3, 3, 0, 1, 0, 0, 1, 1), 0, 1)
    with pytest.raises(TypeError, match="13 integers"):
        _native.dwconv(x, weight, None, out, scratch, (1, 2, 4, 4), False, 1)
    with pytest.raises(ValueError, match="out has"):
        _native.dwconv(x, weight, None, out[:, :3], scratch, geometry, False, 1)
    with pytest.raises(ValueError, match="weight has"):
        _native.dwconv(x, weight[:3], None, out, scratch, geometry, False, 1)
    with pytest.raises(ValueError, match="scratch has"):
        _native.dwconv(x, weight, None, out, scratch[:8], geometry, False, 1)
    with pytest.raises(ValueError, match="bias has"):
        _native.dwconv(x, weight, np.zeros(3, np.float32), out, scratch, geometry, False, 1)
    with pytest.raises(ValueError, match="x has"):
        _native.dwconv(x[:, :1], weight, None, out, scratch, geometry, False, 1)
    # a stride far above the width: 2^24 column phases of a 2^24-row padded plane would
    # need 2^49 floats a thread (and wrapped the scratch size at 8192 threads)
    huge = (1, 1, 1, 1, 1, 1, 1, 1, 1 << 24, 1 << 23, 0, 1, 1)
    with pytest.raises(ValueError, match="above 2\\*\\*31"):
        _native.dwconv_scratch_bytes(huge, 8192)
    assert _native.dwconv_scratch_bytes(geometry, 1 << 20) == _native.dwconv_scratch_bytes(
        geometry, 256
    )  # threads beyond the pool's 256 get no scratch


@FAST
@given(
    planes=st.integers(1, 4),
    h=st.integers(1, 19),
    w=st.integers(1, 70),
    k=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    ceil_mode=st.booleans(),
    nans=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_maxpool2d_every_isa_equals_torch(
    planes: int,
    h: int,
    w: int,
    k: tuple[int, int],
    s: tuple[int, int],
    pad: tuple[int, int],
    ceil_mode: bool,
    nans: int,
    seed: int,
) -> None:
    assume(2 * pad[0] <= k[0] and 2 * pad[1] <= k[1] and h + 2 * pad[0] >= k[0])
    assume(w + 2 * pad[1] >= k[1])
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, planes, h, w)).astype(np.float32)
    for _ in range(nans):
        x[0, rng.integers(planes), rng.integers(h), rng.integers(w)] = np.nan
    expected = F.max_pool2d(torch.from_numpy(x), k, s, pad, ceil_mode=ceil_mode).numpy()
    _, _, ho, wo = expected.shape
    for isa in ISAS:
        out = np.full(expected.shape, 7.0, np.float32)
        row = np.empty(w, np.float32)
        _native.maxpool2d(x, out, row, (planes, h, w, ho, wo, *k, *s, *pad), isa)
        np.testing.assert_array_equal(out, expected, err_msg=isa)


@pytest.mark.parametrize("isa", ISAS)
def test_maxpool2d_resnet_stem_shape(isa: str) -> None:
    x = np.random.default_rng(3).standard_normal((1, 64, 112, 112)).astype(np.float32)
    expected = F.max_pool2d(torch.from_numpy(x), 3, 2, 1).numpy()
    out = np.empty_like(expected)
    _native.maxpool2d(
        x, out, np.empty(112, np.float32), (64, 112, 112, 56, 56, 3, 3, 2, 2, 1, 1), isa
    )
    np.testing.assert_array_equal(out, expected)


def _fconv_pool(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    conv: tuple[int, int],
    pool: tuple[int, int, int, bool],
    *,
    relu: bool,
    threads: int,
    isa: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fconv with a fused max pooling, and the float64 reference with its bound."""
    (stride, padding), (pk, ps, pp, ceil_mode) = conv, pool
    ref, bound = _reference(x, weight, bias, (stride,) * 2, (padding,) * 2, (1, 1))
    y = torch.from_numpy(np.maximum(ref, 0) if relu else ref)
    ref = F.max_pool2d(y, pk, ps, pp, ceil_mode=ceil_mode).numpy()
    # the max of values each within its bound is within the largest bound of the window
    bound = F.max_pool2d(torch.from_numpy(bound), pk, ps, pp, ceil_mode=ceil_mode).numpy()
    n, cin, h, w = x.shape
    cout, _, k, _ = weight.shape
    geometry = (n, cin, h, w, cout, k, k, stride, stride, padding, padding, 1, 1)
    pooled = (pk, pk, ps, ps, pp, pp, ref.shape[2], ref.shape[3])
    out = np.full(ref.shape, np.nan, np.float32)
    scratch = np.empty(_native.fconv_scratch_bytes(geometry, pooled, threads), np.uint8)
    packed = FloatConv(weight, bias).packed(isa)
    _native.fconv(x, packed, bias, out, scratch, geometry, relu, threads, isa, pooled)
    return out, ref, bound


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    ("conv", "pool"),
    [
        ((2, 1), (3, 2, 1, False)),  # the ResNet stem's pattern
        ((1, 1), (3, 2, 1, True)),
        ((1, 0), (2, 2, 0, False)),  # no carried rows
        ((1, 1), (3, 1, 1, False)),  # two carried rows
        ((2, 1), (4, 3, 2, True)),
    ],
)
def test_fconv_fused_maxpool_over_many_bands(
    isa: str, conv: tuple[int, int], pool: tuple[int, int, int, bool]
) -> None:
    # 64 channels x ~200 columns: a band holds a few rows, so bands and carries are used
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 2, 61, 203)).astype(np.float32)
    weight = rng.standard_normal((64, 2, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(64).astype(np.float32)
    for threads in (1, 2):
        out, ref, bound = _fconv_pool(
            x, weight, bias, conv, pool, relu=True, threads=threads, isa=isa
        )
        assert np.all(np.abs(out - ref) <= bound)


@FAST
@given(
    case=conv_cases,
    pool=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(0, 2), st.booleans()),
)
def test_fconv_fused_maxpool_matches_float64(case: dict, pool: tuple[int, int, int, bool]) -> None:
    pk, ps, pp, _ = pool
    k, stride, padding = case["k"][0], case["stride"][0], case["padding"][0]
    h, w = case["h"], case["w"]
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    assume(ho >= 1 and wo >= 1 and ps <= pk and 2 * pp <= pk)
    assume(ho + 2 * pp >= pk and wo + 2 * pp >= pk)
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["n"], case["cin"], h, w)).astype(np.float32)
    weight = rng.standard_normal((case["cout"], case["cin"], k, k)).astype(np.float32)
    bias = rng.standard_normal(case["cout"]).astype(np.float32)
    for isa in ISAS:
        out, ref, bound = _fconv_pool(
            x,
            weight,
            bias,
            (stride, padding),
            pool,
            relu=case["relu"],
            threads=case["threads"],
            isa=isa,
        )
        assert np.all(np.abs(out - ref) <= bound), isa


def test_fconv_pool_rejects_windows_outside_the_input() -> None:
    x = np.zeros((1, 1, 8, 8), np.float32)
    packed = FloatConv(np.zeros((1, 1, 1, 1), np.float32), None).packed()
    geometry = (1, 1, 8, 8, 1, 1, 1, 1, 1, 0, 0, 1, 1)
    out = np.zeros((1, 1, 9, 9), np.float32)
    scratch = np.zeros(_native.fconv_scratch_bytes(geometry, (2, 2, 1, 1, 0, 0, 7, 7)), np.uint8)
    for pool in [(2, 2, 1, 1, 2, 0, 7, 7), (2, 2, 3, 1, 0, 0, 3, 7), (2, 2, 1, 1, 0, 0, 9, 7)]:
        with pytest.raises(ValueError, match="window"):
            _native.fconv(x, packed, None, out, scratch, geometry, False, 1, None, pool)


@FAST
@given(
    n=st.integers(1, 3),
    fin=st.sampled_from([1, 2, 7, 64, 97, 512]),
    fout=st.sampled_from([1, 5, 63, 64, 65, 130, 1000]),
    bias=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_flinear_every_isa_matches_float64_on_the_half_weights(
    n: int, fin: int, fout: int, bias: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, fin)).astype(np.float32)
    weight = rng.standard_normal((fout, fin)).astype(np.float16)
    weight[0, 0] = np.float16(6e-8)  # a subnormal: converted exactly
    b = rng.standard_normal(fout).astype(np.float32) if bias else None
    w64 = weight.astype(np.float64)
    ref = x.astype(np.float64) @ w64.T + (0 if b is None else b)
    bound = (np.abs(x) @ np.abs(w64).T + (0 if b is None else np.abs(b))) * (fin + 1) * EPS32
    packed = FloatLinear(weight).packed
    for isa in ISAS:
        out = np.full((n, fout), np.nan, np.float32)
        _native.flinear(x, packed, b, out, n, fin, fout, isa)
        assert np.all(np.abs(out - ref) <= bound + 1e-30), isa


def test_flinear_rejects_short_buffers() -> None:
    packed = FloatLinear(np.ones((3, 4), np.float16)).packed
    x, out = np.ones((2, 4), np.float32), np.zeros((2, 3), np.float32)
    _native.flinear(x, packed, None, out, 2, 4, 3)
    np.testing.assert_array_equal(out, np.full((2, 3), 4.0, np.float32))
    with pytest.raises(ValueError, match="weight has"):
        _native.flinear(x, packed[:-1], None, out, 2, 4, 3)
    with pytest.raises(ValueError, match="out has"):
        _native.flinear(x, packed, None, out[:1], 2, 4, 3)
    with pytest.raises(ValueError, match="positive"):
        _native.flinear(x, packed, None, out, 0, 4, 3)


def test_half_linear_in_a_model_matches_float64(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((70, 33)).astype(np.float16)
    bias = rng.standard_normal(70).astype(np.float16)
    graph = {
        "inputs": [{"name": "x", "shape": [None, 33], "dtype": "float32"}],
        "outputs": [{"name": "fc", "shape": [None, 70], "dtype": "float32"}],
        "nodes": [
            {
                "op": "linear",
                "name": "fc",
                "inputs": ["x"],
                "outputs": ["fc"],
                "params": {"weight": "fc.weight", "bias": "fc.bias"},
            }
        ],
    }
    x = rng.standard_normal((4, 33)).astype(np.float32)
    tensors = {"fc.weight": weight, "fc.bias": bias}
    runtime.write_bfm(tmp_path / "half.bfm", graph=graph, tensors=tensors, provenance={})
    got = np.asarray(runtime.load(tmp_path / "half.bfm").run(x))
    expected = x.astype(np.float64) @ weight.astype(np.float64).T + bias.astype(np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cout", [64, 70])
def test_fconv_fused_pool_also_sign_packs_each_band(isa: str, cout: int) -> None:
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 2, 61, 203)).astype(np.float32)
    weight = rng.standard_normal((cout, 2, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    threshold = (rng.standard_normal(cout) * 0.5).astype(np.float32)
    ref, bound = _reference(x, weight, bias, (2, 2), (1, 1), (1, 1))
    ref = F.max_pool2d(torch.from_numpy(np.maximum(ref, 0)), 3, 2, 1).numpy()
    bound = F.max_pool2d(torch.from_numpy(bound), 3, 2, 1).numpy()
    geometry = (2, 2, 61, 203, cout, 3, 3, 2, 2, 1, 1, 1, 1)
    pool = (3, 3, 2, 2, 1, 1, ref.shape[2], ref.shape[3])
    packed = FloatConv(weight, bias).packed(isa)
    for threads in (1, 2):
        out = np.full(ref.shape, np.nan, np.float32)
        bits = np.full((2, ref.shape[2], ref.shape[3], -(-cout // 64)), 7, np.uint64)
        size = _native.fconv_scratch_bytes(geometry, pool, threads, True)
        assert size > _native.fconv_scratch_bytes(geometry, pool, threads)
        small = np.empty(_native.fconv_scratch_bytes(geometry, pool, threads), np.uint8)
        with pytest.raises(ValueError, match="scratch has"):  # sized without the stage
            _native.fconv(x, packed, bias, out, small, geometry, True, threads, isa, pool, bits)
        scratch = np.empty(size, np.uint8)
        _native.fconv(
            x, packed, bias, out, scratch, geometry, True, threads, isa, pool, bits, threshold
        )
        assert np.all(np.abs(out - ref) <= bound)
        expected = np.empty_like(bits)  # the same packing of the float output it wrote
        _native.sign_pack(out, threshold, expected, 2, cout, out.shape[2] * out.shape[3], isa)
        np.testing.assert_array_equal(bits, expected)


def test_fconv_bits_need_a_pool() -> None:
    geometry = (1, 1, 4, 4, 1, 1, 1, 1, 1, 0, 0, 1, 1)
    x, out = np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 1, 4, 4), np.float32)
    packed = FloatConv(np.ones((1, 1, 1, 1), np.float32), None).packed()
    scratch = np.zeros(_native.fconv_scratch_bytes(geometry), np.uint8)
    with pytest.raises(ValueError, match="need a pool"):
        _native.fconv(x, packed, None, out, scratch, geometry, False, 1, None, None, out)


@FAST
@given(
    n=st.integers(1, 2),
    c=st.sampled_from([1, 7, 63, 64, 65, 128, 130, 200]),
    s=st.sampled_from([1, 13, 63, 64, 65, 127, 128, 200, 3136]),
    with_threshold=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_sign_pack_every_isa_equals_scalar_over_whole_pixel_blocks(
    n: int, c: int, s: int, with_threshold: bool, seed: int
) -> None:
    # whole 64-pixel blocks and their tails (the AVX-512 kernel's unit), several words
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, s)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = 0.0
    x[rng.random(x.shape) < 0.02] = np.nan
    threshold = rng.standard_normal(c).astype(np.float32) if with_threshold else None
    cw = -(-c // 64)
    expected = np.empty((n, s, cw), np.uint64)
    _native.sign_pack(x, threshold, expected, n, c, s, "scalar")
    for isa in ISAS:
        out = np.full((n, s, cw), 0xDEAD, np.uint64)
        _native.sign_pack(x, threshold, out, n, c, s, isa)
        np.testing.assert_array_equal(out, expected, err_msg=isa)


def _stem_graph() -> tuple[dict, dict[str, np.ndarray]]:
    """conv + relu + maxpool + sign_pack + binary conv, and a half-precision linear."""
    rng = np.random.default_rng(17)
    cw = 1
    tensors = {
        "stem.weight": rng.standard_normal((16, 3, 5, 5)).astype(np.float32),
        "stem.bias": rng.standard_normal(16).astype(np.float32),
        "in.threshold": (rng.standard_normal(16) * 0.1).astype(np.float32),
        "b.weight": rng.integers(0, 2**63, (8, 3, 3, cw), dtype=np.uint64) & np.uint64(0xFFFF),
        "b.scale": np.abs(rng.standard_normal(8)).astype(np.float32) + 0.1,
        "fc.weight": rng.standard_normal((10, 8)).astype(np.float16),
        "fc.bias": rng.standard_normal(10).astype(np.float16),
    }
    conv = {"stride": [2, 2], "padding": [2, 2], "dilation": [1, 1], "groups": 1}
    pool = {"kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1], "ceil_mode": False}
    bconv = {
        "in_channels": 16,
        "out_channels": 8,
        "kernel_size": [3, 3],
        "stride": [1, 1],
        "padding": [1, 1],
        "dilation": [1, 1],
        "pad_mode": "zero",
    }

    def node(op: str, name: str, inputs: list[str], attrs=None, params=None) -> dict:  # type: ignore[no-untyped-def]
        out = {"op": op, "name": name, "inputs": inputs, "outputs": [name]}
        if attrs:
            out["attrs"] = attrs
        if params:
            out["params"] = params
        return out

    nodes = [
        node("conv2d", "stem", ["x"], conv, {"weight": "stem.weight", "bias": "stem.bias"}),
        node("relu", "relu", ["stem"]),
        node("maxpool2d", "pool", ["relu"], pool),
        node("sign_pack", "in", ["pool"], params={"threshold": "in.threshold"}),
        node("bconv2d", "b", ["in"], bconv, {"weight": "b.weight", "scale": "b.scale"}),
        node("global_avgpool", "gap", ["b"]),
        node("linear", "fc", ["gap"], params={"weight": "fc.weight", "bias": "fc.bias"}),
    ]
    graph = {
        "inputs": [{"name": "x", "shape": [None, 3, 37, 41], "dtype": "float32"}],
        "outputs": [{"name": "fc", "shape": [None, 10], "dtype": "float32"}],
        "nodes": nodes,
    }
    return graph, tensors


def test_float_kernels_only_where_the_isa_has_vector_ones(tmp_path: Path) -> None:
    graph, tensors = _stem_graph()
    path = tmp_path / "m.bfm"
    runtime.write_bfm(path, graph=graph, tensors=tensors, provenance={})
    x = np.random.default_rng(2).standard_normal((3, 3, 37, 41)).astype(np.float32)
    original = runtime.isa()
    results = {}
    try:
        for isa in ISAS:
            _native.select_isa(isa)
            model = runtime.load(path, threads=2)
            ops = [(s.op, s.extra_outputs, s.scratch_bytes is not None) for s in model._steps]
            if isa in NATIVE_FLOAT_ISAS:  # conv + relu + pool + sign_pack is one C step
                assert ops[0] == ("conv2d", ["in"], True)
                assert [op for op, _, _ in ops] == ["conv2d", "bconv2d", "global_avgpool", "linear"]
            else:  # numpy's BLAS: scalar C float kernels would be slower
                assert ops[0] == ("conv2d", [], False)
                assert [op for op, _, _ in ops][:3] == ["conv2d", "maxpool2d", "sign_pack"]
            results[isa] = np.asarray(model.run(x))
    finally:
        _native.select_isa(original)
    first = results["scalar"]
    for isa, out in results.items():
        np.testing.assert_allclose(out, first, rtol=1e-4, atol=1e-4, err_msg=isa)


def test_erf_is_float32_exact_enough() -> None:
    """The runtime's erf (runtime/csrc/gelu; numpy has none) against ``math.erf``."""
    import math

    from runtime import _native

    def erf(x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        _native.erf(x, out, False)
        return out

    tiny = np.logspace(-30, 0.5, 400)
    x = np.concatenate(
        [np.linspace(-6, 6, 24001), tiny, -tiny, [0.0, -0.0, 30.0, -30.0, np.inf, -np.inf]]
    ).astype(np.float32)
    want = np.array([math.erf(float(v)) for v in x])
    got = erf(x)
    assert got.dtype == np.float32
    err = np.abs(got.astype(np.float64) - want)
    assert err.max() < 1e-7
    assert (err[x != 0] / np.abs(want[x != 0])).max() < 2e-7  # float32 rounding: 6e-8
    assert np.isnan(erf(np.array([np.nan], np.float32))).all()


def test_gelu_follows_torch_in_its_negative_tail() -> None:
    """The exact GELU (runtime/csrc/gelu) against torch's: within float32 rounding, and 0
    where torch's is 0 (below about -5.4, 1 + erf rounds to 0; x/2 erfc(-x/sqrt 2) would
    give tiny negative numbers there, which a binary layer after it reads as -1 where
    training read +1). libm's erff and torch's may round one value apart at the edge."""
    import torch

    from runtime import _native

    x = np.concatenate([np.linspace(-12, 12, 48001), [0.0, -0.0, np.inf]]).astype(np.float32)
    got = np.empty_like(x)
    _native.erf(x, got, True)
    want = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)  # 1 + erf cancels below 0
    differ = (got == 0) != (want == 0)
    assert differ.sum() <= 2
    assert ((x[differ] > -5.7) & (x[differ] < -5.3)).all()
    assert (got[x < -5.7] == 0).all()
    with pytest.raises(ValueError, match="one length"):
        _native.erf(x, np.empty(3, np.float32), True)
