"""The XOR/popcount product, sign_pack and the binary convolution, kernel by kernel.

Every ISA the CPU has is compared with the scalar kernel, and the scalar kernel with a
float64 reference (numpy for the popcounts, torch's conv on +/-1 tensors for the
convolution), exactly: the accumulations are integers and the transform is float32
arithmetic in the documented order.
"""

from __future__ import annotations

import platform
import shutil
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import runtime
from runtime import _native
from runtime.ops import BinaryConv, sign_pack
from runtime.packing import pack_signs, unpack_signs, words_for

ISAS = runtime.supported_isas()
SIMD_ISAS = [isa for isa in ISAS if isa != "scalar"]
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _popcount_reference(a: np.ndarray, b: np.ndarray, kw: int) -> np.ndarray:
    x = a[:, None, :kw] ^ b[None, :, :kw]
    bits = np.unpackbits(x.view(np.uint8).reshape(x.shape[0], x.shape[1], -1), axis=-1)
    return bits.sum(axis=-1).astype(np.int32)


def _gemm(a: np.ndarray, b: np.ndarray, m: int, n: int, kw: int, isa: str) -> np.ndarray:
    c = np.full((m, n), -7, dtype=np.int32)
    _native.xnor_gemm(a, b, c, m, n, kw, a.shape[1], b.shape[1], isa)
    return c


@FAST
@given(
    m=st.integers(1, 37),
    n=st.integers(1, 37),
    kw=st.integers(1, 140),
    pad_a=st.integers(0, 3),
    pad_b=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_xnor_gemm_every_isa_equals_scalar_equals_reference(
    m: int, n: int, kw: int, pad_a: int, pad_b: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64, (m, kw + pad_a), dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, (n, kw + pad_b), dtype=np.uint64, endpoint=False)
    scalar = _gemm(a, b, m, n, kw, "scalar")
    np.testing.assert_array_equal(scalar, _popcount_reference(a, b, kw))
    for isa in SIMD_ISAS:
        np.testing.assert_array_equal(_gemm(a, b, m, n, kw, isa), scalar, err_msg=isa)


@pytest.mark.parametrize("isa", ISAS)
def test_xnor_gemm_long_rows_do_not_overflow_byte_counters(isa: str) -> None:
    # all-ones xor all-zeros: every bit counts; 1000 words exceed any byte accumulator
    m, n, kw = 3, 5, 1000
    a = np.full((m, kw), np.uint64(2**64 - 1), dtype=np.uint64)
    b = np.zeros((n, kw), dtype=np.uint64)
    np.testing.assert_array_equal(_gemm(a, b, m, n, kw, isa), np.full((m, n), 64 * kw))


def _panel(a: np.ndarray, w: np.ndarray, n_pix: int, n_ch: int, kw: int, isa: str) -> np.ndarray:
    c = np.full((n_ch, n_pix), -7, dtype=np.int32)
    _native.xnor_panel(a, w, c, n_pix, n_ch, kw, a.shape[1], w.shape[1], isa)
    return c


@FAST
@given(
    n_pix=st.integers(1, 41),
    n_ch=st.integers(1, 75),
    kw=st.integers(1, 80),
    pad_a=st.integers(0, 3),
    pad_w=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_xnor_panel_every_isa_equals_scalar_equals_xnor_gemm(
    n_pix: int, n_ch: int, kw: int, pad_a: int, pad_w: int, seed: int
) -> None:
    # the binary convolution's product: pixel rows against weights repacked into the ISA's
    # lane-interleaved panels; odd channel counts exercise the padded lanes, odd pixel
    # counts the pixel tails, kw > 31 the AVX2 byte-counter flushes
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64, (n_pix, kw + pad_a), dtype=np.uint64, endpoint=False)
    w = rng.integers(0, 2**64, (n_ch, kw + pad_w), dtype=np.uint64, endpoint=False)
    scalar = _panel(a, w, n_pix, n_ch, kw, "scalar")
    np.testing.assert_array_equal(scalar, _gemm(w, a, n_ch, n_pix, kw, "scalar"))
    np.testing.assert_array_equal(scalar, _popcount_reference(w, a, kw))
    for isa in SIMD_ISAS:
        np.testing.assert_array_equal(_panel(a, w, n_pix, n_ch, kw, isa), scalar, err_msg=isa)


@FAST
@given(
    n_pix=st.integers(1, 23),
    n_ch=st.integers(1, 75),
    n_seg=st.integers(1, 4),
    seg_len=st.integers(1, 27),
    gap=st.integers(0, 5),
    pixel_major=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
# the byte counters' chunks of words (31 on AVX2) ending inside a segment, at its end, and
# a segment longer than a chunk
@example(n_pix=9, n_ch=13, n_seg=4, seg_len=27, gap=3, pixel_major=False, seed=1)
@example(n_pix=5, n_ch=8, n_seg=3, seg_len=31, gap=0, pixel_major=True, seed=2)
@example(n_pix=4, n_ch=9, n_seg=2, seg_len=70, gap=1, pixel_major=False, seed=3)
def test_xnor_panel_reads_segments_and_writes_either_layout(
    n_pix: int, n_ch: int, n_seg: int, seg_len: int, gap: int, pixel_major: bool, seed: int
) -> None:
    # how the convolution calls it: a pixel's row is n_seg segments of seg_len words spread
    # over its input (gap words between them here), counts channel- or pixel-major
    rng = np.random.default_rng(seed)
    kw, stride = n_seg * seg_len, seg_len + gap
    lda = n_seg * stride
    a = rng.integers(0, 2**64, (n_pix, lda), dtype=np.uint64, endpoint=False)
    w = rng.integers(0, 2**64, (n_ch, kw), dtype=np.uint64, endpoint=False)
    rows = a.reshape(n_pix, n_seg, stride)[:, :, :seg_len].reshape(n_pix, kw)
    expect = _popcount_reference(w, rows, kw)  # (n_ch, n_pix)
    for isa in ISAS:
        c = np.full((n_pix, n_ch) if pixel_major else (n_ch, n_pix), -7, dtype=np.int32)
        _native.xnor_panel(
            a, w, c, n_pix, n_ch, kw, lda, kw, isa,
            n_seg=n_seg, seg_stride=stride, pixel_major=pixel_major,
        )  # fmt: skip
        np.testing.assert_array_equal(c.T if pixel_major else c, expect, err_msg=isa)


@FAST
@given(
    n_pix=st.integers(1, 23),
    n_ch=st.integers(1, 75),
    kw=st.integers(1, 40),
    pixel_major=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_xnor_panel_adds_each_pixels_add_row_to_its_counts(
    n_pix: int, n_ch: int, kw: int, pixel_major: bool, seed: int
) -> None:
    # the convolution's padding corrections: a border pixel's row of `add` (negative
    # values, rows of n_ch rounded up to 8) joins its counts in the kernel; the binding
    # gives an all-zero row no pointer (the kernel's NULL), so pixels with and without
    # rows share tiles
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64, (n_pix, kw), dtype=np.uint64, endpoint=False)
    w = rng.integers(0, 2**64, (n_ch, kw), dtype=np.uint64, endpoint=False)
    add = rng.integers(-3000, 3000, (n_pix, -(-n_ch // 8) * 8), dtype=np.int32)
    add[rng.random(n_pix) < 0.4] = 0
    expect = _popcount_reference(w, a, kw) + add[:, :n_ch].T  # (n_ch, n_pix)
    for isa in ISAS:
        c = np.full((n_pix, n_ch) if pixel_major else (n_ch, n_pix), -7, dtype=np.int32)
        _native.xnor_panel(a, w, c, n_pix, n_ch, kw, kw, kw, isa, pixel_major=pixel_major, add=add)
        np.testing.assert_array_equal(c.T if pixel_major else c, expect, err_msg=isa)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n_seg", [1, 37])
def test_xnor_panel_long_rows_do_not_overflow_counters(isa: str, n_seg: int) -> None:
    # every word counts 64: the most a byte counter can take, in one segment or in
    # segments of 27 words, whose ends fall anywhere in a chunk
    n_pix, n_ch, kw = 7, 13, 999
    a = np.full((n_pix, kw), np.uint64(2**64 - 1), dtype=np.uint64)
    w = np.zeros((n_ch, kw), dtype=np.uint64)
    c = np.full((n_ch, n_pix), -7, dtype=np.int32)
    _native.xnor_panel(a, w, c, n_pix, n_ch, kw, kw, kw, isa, n_seg=n_seg, seg_stride=kw // n_seg)
    np.testing.assert_array_equal(c, np.full((n_ch, n_pix), 64 * kw))


@pytest.mark.parametrize("lanes", [1, 2, 4, 8])
def test_panel_pack_interleaves_channels_into_lanes(lanes: int) -> None:
    n_ch, kw, ldw = 11, 5, 7
    w = np.arange(n_ch * ldw, dtype=np.uint64).reshape(n_ch, ldw) + np.uint64(1)
    groups = -(-n_ch // lanes)
    panel = np.full(groups * kw * lanes, np.uint64(99), dtype=np.uint64)
    _native.panel_pack(w, panel, n_ch, kw, ldw, lanes)
    expect = np.zeros((groups * lanes, kw), dtype=np.uint64)  # padded channels: zero words
    expect[:n_ch] = w[:, :kw]
    # panel[(g * kw + k) * lanes + l] = channel g * lanes + l, word k
    got = panel.reshape(groups, kw, lanes).transpose(0, 2, 1).reshape(groups * lanes, kw)
    np.testing.assert_array_equal(got, expect)
    assert _native.panel_lanes("scalar") >= 1


def test_xnor_gemm_rejects_short_buffers() -> None:
    a = np.zeros((2, 4), dtype=np.uint64)
    c = np.zeros((2, 2), dtype=np.int32)
    with pytest.raises(ValueError, match="b has"):
        _native.xnor_gemm(a, a[:1], c, 2, 2, 4, 4, 4)
    with pytest.raises(ValueError, match="lda"):
        _native.xnor_gemm(a, a, c, 2, 2, 4, 3, 4)


@FAST
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 150),
    s=st.integers(1, 40),
    with_threshold=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_sign_pack_every_isa_matches_numpy_packing(
    n: int, c: int, s: int, with_threshold: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, s)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = 0.0
    x[rng.random(x.shape) < 0.02] = np.nan
    threshold = rng.standard_normal(c).astype(np.float32) if with_threshold else None
    expected = pack_signs(x.transpose(0, 2, 1), threshold=0.0 if threshold is None else threshold)
    for isa in ISAS:
        out = np.full((n, s, words_for(c)), np.uint64(0xDEAD), dtype=np.uint64)
        sign_pack(x, out, threshold=threshold, isa=isa)
        np.testing.assert_array_equal(out, expected, err_msg=isa)


def test_sign_pack_one_hot_pins_bit_order() -> None:
    c = 130
    for index in (0, 1, 63, 64, 65, 129):
        x = np.ones((1, c, 1), dtype=np.float32)
        x[0, index, 0] = -1.0
        out = np.empty((1, 1, 3), dtype=np.uint64)
        sign_pack(x, out)
        expected = np.zeros(3, dtype=np.uint64)
        expected[index // 64] = np.uint64(1) << np.uint64(index % 64)
        np.testing.assert_array_equal(out[0, 0], expected)


# -- binary convolution -----------------------------------------------------------------


def _pm1(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


def reference_acc(
    x: np.ndarray,
    w: np.ndarray,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    pad_mode: str,
) -> np.ndarray:
    """Integer accumulators of a float64 torch conv of +/-1 tensors."""
    xt = torch.from_numpy(x).double()
    if pad_mode == "one":
        xt = F.pad(xt, (padding[1], padding[1], padding[0], padding[0]), value=1.0)
        padding = (0, 0)
    out = F.conv2d(
        xt, torch.from_numpy(w).double(), stride=stride, padding=padding, dilation=dilation
    )
    return out.numpy()


def reference_transform(
    acc: np.ndarray, op: BinaryConv, residual: np.ndarray | None = None
) -> np.ndarray:
    """The documented float32 output transform, in numpy."""
    y = acc.astype(np.float32) * op.scale[None, :, None, None]
    if op.scale_h is not None and op.scale_w is not None:
        y = y * (op.scale_h[:, None] * op.scale_w[None, :])[None, None]
    if op.bias is not None:
        y = y + op.bias[None, :, None, None]
    if op.activation == "relu":
        y = np.maximum(y, np.float32(0))
    elif op.activation == "prelu":
        assert op.slope is not None
        y = np.where(y >= 0, y, y * op.slope[None, :, None, None])
    elif op.activation == "hardtanh":
        y = np.clip(y, np.float32(op.min_val), np.float32(op.max_val))
    if residual is not None:
        y = y + residual
    if op.post_relu:
        y = np.maximum(y, np.float32(0))
    return y.astype(np.float32)


conv_cases = st.fixed_dictionaries(
    {
        "n": st.integers(1, 3),
        "cin": st.sampled_from([1, 2, 3, 5, 7, 31, 63, 64, 65, 97, 128, 131, 200]),
        "cout": st.integers(1, 70),
        "h": st.integers(1, 11),
        "w": st.integers(1, 11),
        "kh": st.integers(1, 4),
        "kw": st.integers(1, 4),
        "sh": st.integers(1, 3),
        "sw": st.integers(1, 3),
        "ph": st.integers(0, 2),
        "pw": st.integers(0, 2),
        "dh": st.integers(1, 3),
        "dw": st.integers(1, 3),
        "pad_mode": st.sampled_from(["zero", "one"]),
        "seed": st.integers(0, 2**32 - 1),
    }
)


@FAST
@given(case=conv_cases)
def test_bconv_scalar_equals_float64_reference_and_every_isa_equals_scalar(
    case: dict[str, int],
) -> None:
    n, cin, cout, h, w = (case[k] for k in ("n", "cin", "cout", "h", "w"))
    kh, kw, sh, sw = (case[k] for k in ("kh", "kw", "sh", "sw"))
    ph, pw, dh, dw = (case[k] for k in ("ph", "pw", "dh", "dw"))
    assume(h + 2 * ph >= dh * (kh - 1) + 1 and w + 2 * pw >= dw * (kw - 1) + 1)
    rng = np.random.default_rng(case["seed"])
    x = _pm1(rng, (n, cin, h, w))
    wt = _pm1(rng, (cout, cin, kh, kw))
    op = BinaryConv.create(
        pack_signs(wt.transpose(0, 2, 3, 1)),
        in_channels=cin,
        scale=np.ones(cout, dtype=np.float32),
        stride=(sh, sw),
        padding=(ph, pw),
        dilation=(dh, dw),
        pad_mode=str(case["pad_mode"]),
    )
    xb = pack_signs(x.transpose(0, 2, 3, 1))
    expected = reference_acc(x, wt, (sh, sw), (ph, pw), (dh, dw), str(case["pad_mode"]))
    outputs = {}
    for isa in ISAS:
        for threads in (1, 3):
            out = np.full(op.output_shape(n, h, w), np.nan, dtype=np.float32)
            op(xb, out, np.empty(op.scratch_bytes(threads), np.uint8), threads=threads, isa=isa)
            outputs[isa, threads] = out
    np.testing.assert_array_equal(outputs["scalar", 1], expected)
    for key, out in outputs.items():
        np.testing.assert_array_equal(out, outputs["scalar", 1], err_msg=str(key))


@pytest.mark.parametrize("dilation", [(1, 1), (1, 2)])
def test_bconv_kernels_of_more_than_64_taps_pad_exactly(dilation: tuple[int, int]) -> None:
    # 9 x 9 taps: a border pixel's out-of-bounds taps no longer fit one 64-bit mask
    rng = np.random.default_rng(5)
    n, cin, cout, h, w, k = 2, 5, 9, 10, 13, 9
    x = _pm1(rng, (n, cin, h, w))
    wt = _pm1(rng, (cout, cin, k, k))
    op = BinaryConv.create(
        pack_signs(wt.transpose(0, 2, 3, 1)),
        in_channels=cin,
        scale=np.ones(cout, dtype=np.float32),
        padding=(4, 8),
        dilation=dilation,
    )
    expected = reference_acc(x, wt, (1, 1), (4, 8), dilation, "zero")
    xb = pack_signs(x.transpose(0, 2, 3, 1))
    for isa in ISAS:
        out = np.full(op.output_shape(n, h, w), np.nan, dtype=np.float32)
        op(xb, out, np.empty(op.scratch_bytes(1), np.uint8), isa=isa)
        np.testing.assert_array_equal(out, expected, err_msg=isa)


@pytest.mark.parametrize("out_bits", [False, True])
def test_bconv_tiles_with_more_tap_masks_than_kept_corrections_pad_exactly(
    out_bits: bool,
) -> None:
    # 7 x 7 taps, padding 3, a 9 x 9 image: 48 distinct out-of-bounds tap masks in one
    # pixel tile, more than a thread keeps (16); 70 output channels, two channel chunks
    rng = np.random.default_rng(11)
    n, cin, cout, h, w, k = 2, 70, 70, 9, 9, 7
    x = _pm1(rng, (n, cin, h, w))
    wt = _pm1(rng, (cout, cin, k, k))
    threshold = rng.normal(0, 8, cout).astype(np.float32)
    op = BinaryConv.create(
        pack_signs(wt.transpose(0, 2, 3, 1)),
        in_channels=cin,
        scale=np.ones(cout, dtype=np.float32),
        padding=(3, 3),
        out_threshold=threshold if out_bits else None,
        output="bits" if out_bits else "float",
    )
    acc = reference_acc(x, wt, (1, 1), (3, 3), (1, 1), "zero").astype(np.float32)
    expected = pack_signs(acc.transpose(0, 2, 3, 1), threshold=threshold) if out_bits else acc
    xb = pack_signs(x.transpose(0, 2, 3, 1))
    for isa in ISAS:
        for threads in (1, 2):
            out = np.zeros(op.output_shape(n, h, w), np.uint64 if out_bits else np.float32)
            op(xb, out, np.empty(op.scratch_bytes(threads), np.uint8), threads=threads, isa=isa)
            np.testing.assert_array_equal(out, expected, err_msg=f"{isa}, {threads} threads")


transform_cases = st.fixed_dictionaries(
    {
        "n": st.integers(1, 2),
        "cin": st.sampled_from([3, 64, 70]),
        "cout": st.sampled_from([1, 5, 64, 65, 130]),
        "hw": st.integers(2, 7),
        "activation": st.sampled_from(["none", "relu", "prelu", "hardtanh"]),
        "post_activation": st.sampled_from(["none", "relu"]),
        "output": st.sampled_from(["float", "bits"]),
        "bias": st.booleans(),
        "positions": st.booleans(),
        "residual": st.booleans(),
        "threshold": st.booleans(),
        "pad_mode": st.sampled_from(["zero", "one"]),
        "seed": st.integers(0, 2**32 - 1),
    }
)


@FAST
@given(case=transform_cases)
def test_bconv_output_transform_matches_reference(case: dict[str, object]) -> None:
    rng = np.random.default_rng(int(case["seed"]))  # type: ignore[call-overload]
    n, cin, cout, hw = (int(case[k]) for k in ("n", "cin", "cout", "hw"))  # type: ignore[call-overload]
    x = _pm1(rng, (n, cin, hw, hw))
    wt = _pm1(rng, (cout, cin, 3, 3))

    def vec(size: int) -> np.ndarray:
        return rng.standard_normal(size).astype(np.float32)

    scale = vec(cout)  # negative scales included
    output = str(case["output"])
    op = BinaryConv.create(
        pack_signs(wt.transpose(0, 2, 3, 1)),
        in_channels=cin,
        scale=scale,
        padding=(1, 1),
        pad_mode=str(case["pad_mode"]),
        bias=vec(cout) if case["bias"] else None,
        scale_h=vec(hw) if case["positions"] else None,
        scale_w=vec(hw) if case["positions"] else None,
        slope=vec(cout) if case["activation"] == "prelu" else None,
        out_threshold=vec(cout) if case["threshold"] and output == "bits" else None,
        activation=str(case["activation"]),
        min_val=-0.5,
        max_val=2.0,
        post_activation=str(case["post_activation"]),
        output=output,
    )
    residual = (
        rng.standard_normal((n, cout, hw, hw)).astype(np.float32) if case["residual"] else None
    )
    acc = reference_acc(x, wt, (1, 1), (1, 1), (1, 1), str(case["pad_mode"]))
    y = reference_transform(acc, op, residual)
    if output == "bits":
        threshold = op.out_threshold if op.out_threshold is not None else 0.0
        expected = pack_signs(y.transpose(0, 2, 3, 1), threshold=threshold)
        dtype: type = np.uint64
    else:
        expected = y
        dtype = np.float32
    xb = pack_signs(x.transpose(0, 2, 3, 1))
    for isa in ISAS:
        out: np.ndarray = np.zeros(op.output_shape(n, hw, hw), dtype=dtype)
        op(xb, out, np.empty(op.scratch_bytes(2), np.uint8), residual=residual, threads=2, isa=isa)
        np.testing.assert_array_equal(out, expected, err_msg=isa)


def test_bits_output_chains_into_the_next_layer() -> None:
    """Packed output of one layer is the packed sign of its float output."""
    rng = np.random.default_rng(3)
    x = _pm1(rng, (2, 70, 6, 5))
    w1, w2 = _pm1(rng, (67, 70, 3, 3)), _pm1(rng, (9, 67, 3, 3))
    scale = rng.standard_normal(67).astype(np.float32)
    kwargs: dict[str, Any] = {"in_channels": 70, "scale": scale, "padding": (1, 1)}
    as_bits = BinaryConv.create(pack_signs(w1.transpose(0, 2, 3, 1)), output="bits", **kwargs)
    as_float = BinaryConv.create(pack_signs(w1.transpose(0, 2, 3, 1)), **kwargs)
    xb = pack_signs(x.transpose(0, 2, 3, 1))
    bits = np.empty(as_bits.output_shape(2, 6, 5), np.uint64)
    floats = np.empty(as_float.output_shape(2, 6, 5), np.float32)
    scratch = np.empty(as_bits.scratch_bytes(1), np.uint8)
    as_bits(xb, bits, scratch)
    as_float(xb, floats, scratch)
    np.testing.assert_array_equal(bits, pack_signs(floats.transpose(0, 2, 3, 1)))
    second = BinaryConv.create(
        pack_signs(w2.transpose(0, 2, 3, 1)),
        in_channels=67,
        scale=np.ones(9, np.float32),
        padding=(1, 1),
    )
    out = np.empty(second.output_shape(2, 6, 5), np.float32)
    second(bits, out, np.empty(second.scratch_bytes(1), np.uint8))
    signs = unpack_signs(bits, 67).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(out, reference_acc(signs, w2, (1, 1), (1, 1), (1, 1), "zero"))


@pytest.mark.parametrize("isa", ISAS)
def test_bconv_load_time_panels_equal_per_chunk_repacking(isa: str) -> None:
    """The weights repacked once (BinaryConv.panel) give what repacking each 64-channel
    chunk in scratch gives (no panel, or one in another ISA's lane count), exactly."""
    rng = np.random.default_rng(11)
    cin, cout, n, h, w = 70, 139, 2, 7, 6  # three chunks, the last one 11 channels
    xs, ws = _pm1(rng, (n, cin, h, w)), _pm1(rng, (cout, cin, 3, 3))
    x = pack_signs(xs.transpose(0, 2, 3, 1))
    op = BinaryConv.create(
        pack_signs(ws.transpose(0, 2, 3, 1)),
        in_channels=cin,
        scale=rng.standard_normal(cout).astype(np.float32),
        bias=rng.standard_normal(cout).astype(np.float32),
        stride=(2, 1),
        padding=(1, 1),
    )
    ho, wo = op.output_hw(h, w)
    scratch = np.empty(op.scratch_bytes(1), np.uint8)
    with_panel = np.full(op.output_shape(n, h, w), np.nan, np.float32)
    op(x, with_panel, scratch, isa=isa)
    lanes = _native.panel_lanes(isa)
    assert op.panel(lanes).size == -(-cout // lanes) * lanes * op.kpad
    geometry = (n, h, w, cin, cout, 3, 3, 2, 1, 1, 1, 1, 1, op.kpad)
    transform = (1, 0, -1.0, 1.0, 0, 0)
    for panel, panel_lanes in ((None, 0), (op.panel(lanes + 1), lanes + 1)):
        repacked = np.full((n, cout, ho, wo), np.nan, np.float32)
        args = (x, op.weight_rows, op.wsum, op.scale, op.bias, None, None, None, None, None)
        _native.bconv(*args, repacked, scratch, geometry, transform, 1, isa, panel, panel_lanes)
        np.testing.assert_array_equal(repacked, with_panel)
    acc = reference_acc(xs, ws, (2, 1), (1, 1), (1, 1), "zero").astype(np.float32)
    assert op.bias is not None
    expect = acc * op.scale[None, :, None, None] + op.bias[None, :, None, None]
    np.testing.assert_allclose(with_panel, expect, rtol=1e-6, atol=1e-5)


def test_bconv_rejects_undersized_buffers() -> None:
    op = BinaryConv.create(
        np.zeros((4, 3, 3, 1), np.uint64), in_channels=8, scale=np.ones(4, np.float32)
    )
    x = np.zeros((1, 5, 5, 1), np.uint64)
    out = np.empty((1, 4, 2, 2), np.float32)  # needs 3x3
    with pytest.raises(ValueError, match="out has"):
        op(x, out, np.empty(op.scratch_bytes(1), np.uint8))
    with pytest.raises(ValueError, match="scratch has"):
        op(x, np.empty((1, 4, 3, 3), np.float32), np.empty(8, np.uint8))


@pytest.mark.parametrize("isa", ["avx512bw", "avx512"])
def test_avx512_is_not_offered_without_cpu_support(isa: str) -> None:
    if isa in ISAS:
        pytest.skip(f"this CPU runs the {isa} kernels")
    with pytest.raises(ValueError, match="not supported"):
        _gemm(np.zeros((1, 1), np.uint64), np.zeros((1, 1), np.uint64), 1, 1, 1, isa)


def test_isa_levels_are_ordered() -> None:
    """Each x86 level implies the ones below it; the best is the last supported."""
    order = ["scalar", "neon", "avx2", "avx512bw", "avx512"]
    assert [isa for isa in order if isa in ISAS] == ISAS
    assert runtime.best_isa() == ISAS[-1]
    if "avx512" in ISAS:
        assert "avx512bw" in ISAS
    if "avx512bw" in ISAS:
        assert "avx2" in ISAS


@pytest.mark.parametrize("isa", ISAS)
def test_large_layer_splits_over_threads_and_matches_reference(isa: str) -> None:
    rng = np.random.default_rng(11)
    x = _pm1(rng, (2, 128, 28, 27))
    wt = _pm1(rng, (128, 128, 3, 3))
    op = BinaryConv.create(
        pack_signs(wt.transpose(0, 2, 3, 1)),
        in_channels=128,
        scale=np.ones(128, np.float32),
        padding=(1, 1),
    )
    xb = pack_signs(x.transpose(0, 2, 3, 1))
    out = np.empty(op.output_shape(2, 28, 27), np.float32)
    used = op(xb, out, np.empty(op.scratch_bytes(3), np.uint8), threads=3, isa=isa)
    assert used == 3
    np.testing.assert_array_equal(out, reference_acc(x, wt, (1, 1), (1, 1), (1, 1), "zero"))
    single = np.empty_like(out)
    assert op(xb, single, np.empty(op.scratch_bytes(1), np.uint8), threads=1, isa=isa) == 1
    np.testing.assert_array_equal(single, out)


def _large_layer() -> tuple[BinaryConv, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(12)
    x = _pm1(rng, (1, 128, 28, 28))
    wt = _pm1(rng, (128, 128, 3, 3))
    op = BinaryConv.create(
        pack_signs(wt.transpose(0, 2, 3, 1)),
        in_channels=128,
        scale=np.ones(128, np.float32),
        padding=(1, 1),
    )
    return (
        op,
        pack_signs(x.transpose(0, 2, 3, 1)),
        reference_acc(x, wt, (1, 1), (1, 1), (1, 1), "zero"),
    )


def _run_large_layer(op: BinaryConv, xb: np.ndarray, expected: np.ndarray, queue: Any) -> None:
    out = np.empty(op.output_shape(1, 28, 28), np.float32)
    used = op(xb, out, np.empty(op.scratch_bytes(2), np.uint8), threads=2)
    queue.put((used, bool(np.array_equal(out, expected))))


def _run_large_layer_often(
    op: BinaryConv, xb: np.ndarray, expected: np.ndarray, spin_us: str, queue: Any
) -> None:
    import os
    import time

    os.environ["BITFACTOR_SPIN_US"] = spin_us  # read when this process's pool starts
    out = np.empty(op.output_shape(1, 28, 28), np.float32)
    scratch = np.empty(op.scratch_bytes(2), np.uint8)
    results = []
    for i in range(40):
        out.fill(np.nan)
        used = op(xb, out, scratch, threads=2)
        results.append(used == 2 and bool(np.array_equal(out, expected)))
        if i % 8 == 7:
            time.sleep(0.002)  # past the spin: the workers sleep, the next call wakes them
    queue.put(all(results))


@pytest.mark.parametrize("spin_us", ["0", "50", "not a number"])
def test_thread_pool_hands_out_every_range_whatever_the_spin(spin_us: str) -> None:
    """BITFACTOR_SPIN_US=0 sleeps at once, 50 spins less than the pauses, a bad value is the
    default (200): back-to-back calls and calls after the workers slept all compute
    every range once."""
    import multiprocessing

    op, xb, expected = _large_layer()
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_run_large_layer_often, args=(op, xb, expected, spin_us, results))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert results.get(timeout=5) is True


def test_thread_pool_works_in_a_forked_child() -> None:
    """The pool's workers do not survive fork(); the child must start its own."""
    import multiprocessing
    import queue as queue_module

    op, xb, expected = _large_layer()  # torch is not used after the fork
    direct: queue_module.Queue[tuple[int, bool]] = queue_module.Queue()
    _run_large_layer(op, xb, expected, direct)  # starts the pool in this process
    assert direct.get() == (2, True)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_run_large_layer, args=(op, xb, expected, results))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert results.get(timeout=5) == (2, True)


@FAST
@given(
    planes=st.integers(1, 5),
    h=st.integers(1, 13),
    w=st.integers(1, 13),
    k=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    ceil_mode=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_maxpool2d_matches_torch(
    planes: int,
    h: int,
    w: int,
    k: tuple[int, int],
    s: tuple[int, int],
    pad: tuple[int, int],
    ceil_mode: bool,
    seed: int,
) -> None:
    assume(2 * pad[0] <= k[0] and 2 * pad[1] <= k[1] and h + 2 * pad[0] >= k[0])
    assume(w + 2 * pad[1] >= k[1])
    x = np.random.default_rng(seed).standard_normal((1, planes, h, w)).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    expected = F.max_pool2d(torch.from_numpy(x), k, s, pad, ceil_mode=ceil_mode).numpy()
    out = np.full(expected.shape, 7.0, np.float32)
    _, _, ho, wo = expected.shape
    _native.maxpool2d(x, out, np.empty(w, np.float32), (planes, h, w, ho, wo, *k, *s, *pad))
    np.testing.assert_array_equal(out, expected)


def _bench_module(script: str = "runtime") -> Any:
    """bench/<script>.py, loaded by path (on sys.path bench/runtime.py would shadow the
    runtime package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / f"{script}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{script}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_blocks_time_every_function_alike_in_alternating_warm_blocks() -> None:
    bench = _bench_module()
    now = [0.0]
    calls: list[str] = []

    def fn(name: str, seconds: list[float]) -> Any:
        def run() -> None:  # each call takes the next of `seconds` on the clock
            calls.append(name)
            now[0] += seconds[len([c for c in calls if c == name]) % len(seconds)]

        return run

    a = fn("a", [0.001, 0.003, 0.002])
    b = fn("b", [0.010])
    (med_a, min_a), (med_b, min_b) = bench.blocks_ms(
        [a, b], repeat=3, block=4, settle_s=0.0, clock=lambda: now[0]
    )
    # one untimed call, then `block` timed ones, blocks taking turns
    assert calls == (["a"] * 5 + ["b"] * 5) * 3
    assert min_b == pytest.approx(10.0)
    assert med_b == pytest.approx(10.0)
    assert min_a == pytest.approx(1.0)
    assert med_a == pytest.approx(2.0)


def test_bench_blocks_settle_each_function_before_timing_it() -> None:
    # untimed calls until settle_s has passed on the clock: 3 of a (1 ms each) for 2.5 ms,
    # one of b (10 ms), then the timed calls
    bench = _bench_module()
    now = [0.0]
    calls: list[str] = []

    def fn(name: str, seconds: float) -> Any:
        def run() -> None:
            calls.append(name)
            now[0] += seconds

        return run

    bench.blocks_ms(
        [fn("a", 0.001), fn("b", 0.010)], repeat=2, block=4, settle_s=0.0025,
        clock=lambda: now[0],
    )  # fmt: skip
    assert calls == (["a"] * 7 + ["b"] * 5) * 2


def test_bench_several_threads_settle_after_the_pause() -> None:
    # each function's block: a pause, untimed calls for SETTLE_THREADS_S (here 20 ms of
    # 5 ms calls: at least 4, more than the 3 warmup calls alone), then `repeat` timed ones
    import time

    bench = _bench_module()
    calls: list[str] = []

    def run() -> None:
        calls.append("a")
        time.sleep(0.005)

    (median,) = bench.interleaved_ms([run], repeat=3, threads=2)
    assert len(calls) >= 4 + 3
    assert median >= 5.0


@pytest.mark.slow
def test_bench_layers_warm_and_cold_schemes_time_the_same_work() -> None:
    bench = _bench_module()
    for cold in (False, True):
        rows = bench.bench_layers(["scalar"], [1], 1, cold=cold)
        assert [r["shape"] for r in rows] == [f"{c}x{hw}x{hw}-s{s}" for c, hw, s in bench.LAYERS]
        for r in rows:
            assert r["ms_binary"] > 0
            assert r["ms_torch"] > 0
            assert r["speedup"] == pytest.approx(r["ms_torch"] / r["ms_binary"], rel=0.01)
            if cold:  # single calls: a median only
                assert np.isnan(r["ms_binary_min"])
                assert np.isnan(r["ms_torch_min"])
            else:
                assert 0 < r["ms_binary_min"] <= r["ms_binary"]
                assert 0 < r["ms_torch_min"] <= r["ms_torch"]


def test_binary_conv_default_isa_follows_select_isa_between_calls() -> None:
    """A call without ``isa`` runs the ISA in use at that call, also after other ISAs ran
    the same op (whose call arguments, ready-made panel included, are kept per ISA), and
    every ISA's output equals the scalar kernel's."""
    rng = np.random.default_rng(5)
    c, hw = 72, 9  # 72 channels: a partial last lane group under every lane count
    w = np.where(rng.random((c, 3, 3, c)) < 0.5, -1.0, 1.0).astype(np.float32)
    op = BinaryConv.create(
        pack_signs(w),
        in_channels=c,
        scale=rng.random(c).astype(np.float32) + 0.5,
        padding=(1, 1),
    )
    xb = pack_signs(rng.standard_normal((1, hw, hw, c)))
    scratch = np.empty(op.scratch_bytes(1), np.uint8)
    expected = np.empty(op.output_shape(1, hw, hw), np.float32)
    op(xb, expected, scratch, isa="scalar")
    original = _native.isa()
    try:
        for isa in [*ISAS, *ISAS[::-1]]:
            _native.select_isa(isa)
            out = np.full_like(expected, np.nan)
            op(xb, out, scratch)
            np.testing.assert_array_equal(out, expected, err_msg=isa)
    finally:
        _native.select_isa(original)


def test_depthwise_bench_checks_outputs_and_reports_ratios(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _bench_module("depthwise")
    monkeypatch.setattr(module, "SHAPES", [(5, 9, 3, 2), (3, 7, 5, 1)])
    rows = module.bench_depthwise(threads=1, repeat=1)
    assert [r["shape"] for r in rows] == ["5x9x9-k3-s2", "3x7x7-k5-s1"]
    for r in rows:
        assert r["ratio"] == pytest.approx(r["ms_runtime"] / r["ms_torch"], rel=0.02, abs=0.01)
        assert r["isa"] == runtime.isa()


def test_inner_loops_bench_builds_and_every_form_matches_plain_c() -> None:
    """bench/inner_loops.c checks each form's counts before timing it (exit 1 if any
    differ), so a run that returns rates has checked them all."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the loops are x86-64 code")
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    rates = _bench_module("inner_loops").measure(seconds=0.05)
    expected = {"popcnt"}
    if "avx2" in runtime.supported_isas():
        expected |= {"lookup", "split", "lookup+popcnt", "split+popcnt"}
    if "avx512" in runtime.supported_isas():
        expected.add("vpopcntq")
    assert expected <= set(rates)
    assert all(rate > 0 for rate in rates.values())
