"""The AVX-512 panel and depthwise kernels' logic on any x86-64 CPU.

``avx512_emulated_harness.c`` compiles ``xnor_panel__avx512vpopcnt.c`` (or, with
``-DEMU_BW``, ``xnor_panel__avx512bw.c``) with its AVX-512 intrinsics replaced by plain C
lane loops (the code is otherwise unchanged, and compiled for AVX2 only) and compares it
with the scalar panel kernel on awkward sizes: pixel and channel tails, padded lanes, long
rows (past the BW kernel's 31-word byte folds), saturated counts. The real instructions
are tested in ``test_kernels.py`` on CPUs with AVX-512 (and VPOPCNTDQ).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "runtime" / "csrc"
HARNESS = Path(__file__).with_name("avx512_emulated_harness.c")
CC = "gcc"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only")
@pytest.mark.parametrize("kernel", ["avx512vpopcnt", "avx512bw"])
def test_avx512_panel_kernel_logic_equals_scalar(tmp_path: Path, kernel: str) -> None:
    if shutil.which(CC) is None:
        pytest.skip(f"{CC} not installed (the C extension needs it too)")
    binary = tmp_path / "avx512_emulated"
    build = subprocess.run(
        [
            CC,
            "-O2",
            "-std=c11",
            "-D_GNU_SOURCE",
            "-Wall",
            "-Wextra",
            "-Werror",
            *(["-DEMU_BW"] if kernel == "avx512bw" else []),
            f"-I{CSRC}",
            str(HARNESS),
            str(CSRC / "xnor_panel" / "xnor_panel__scalar.c"),
            "-o",
            str(binary),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok "), result.stdout
    assert int(result.stdout.split()[1]) >= 1000


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only")
def test_avx512_depthwise_kernel_logic_matches_float64(tmp_path: Path) -> None:
    # dwconv__avx512.c on emulated 16-lane vectors: strips, masked row ends, phases
    if shutil.which(CC) is None:
        pytest.skip(f"{CC} not installed (the C extension needs it too)")
    binary = tmp_path / "dwconv_avx512_emulated"
    build = subprocess.run(
        [
            CC, "-O2", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", f"-I{CSRC}",
            str(Path(__file__).with_name("dwconv_avx512_emulated_harness.c")), "-o", str(binary),
            "-lm",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok "), result.stdout
    assert int(result.stdout.split()[1]) >= 300
