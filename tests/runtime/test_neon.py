"""The NEON kernels, cross-compiled for aarch64 and run under qemu-user.

Builds ``neon_harness.c`` with the NEON and scalar kernel files of ``runtime/csrc`` using
Debian's ``aarch64-linux-gnu-gcc`` (static, so qemu needs no sysroot) and runs it with
``qemu-aarch64``; the harness compares every NEON kernel with the scalar one on awkward
sizes. ``.ci/run`` installs both tools; where they are missing the test skips and says so.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "runtime" / "csrc"
SOURCES = [
    CSRC / "xnor_gemm" / "xnor_gemm__scalar.c",
    CSRC / "xnor_gemm" / "xnor_gemm__neon.c",
    CSRC / "xnor_panel" / "xnor_panel__scalar.c",
    CSRC / "popcount" / "popcount__scalar.c",
    CSRC / "popcount" / "popcount__neon.c",
    Path(__file__).with_name("neon_harness.c"),
]
CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64"
FLAGS = [CC, "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{CSRC}"]


def test_neon_kernels_equal_scalar_under_qemu(tmp_path: Path) -> None:
    missing = [tool for tool in (CC, QEMU) if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed: "
            "apt-get install gcc-aarch64-linux-gnu qemu-user (.ci/run does)"
        )
    binary = tmp_path / "neon_harness"
    build = subprocess.run(
        [*FLAGS, "-static", *(str(s) for s in SOURCES), "-o", str(binary)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    result = subprocess.run([QEMU, str(binary)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok "), result.stdout
    assert int(result.stdout.split()[1]) > 1000


def test_whole_native_library_compiles_for_aarch64(tmp_path: Path) -> None:
    """Every C file but the Python binding (which needs aarch64 Python headers) compiles."""
    if shutil.which(CC) is None:
        pytest.skip(f"{CC} not installed: apt-get install gcc-aarch64-linux-gnu (.ci/run does)")
    sources = [p for p in sorted(CSRC.rglob("*.c")) if p.name != "module.c"]
    for source in sources:
        build = subprocess.run(
            [*FLAGS, "-D_GNU_SOURCE", "-c", str(source), "-o", str(tmp_path / f"{source.stem}.o")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert build.returncode == 0, f"{source.name}: {build.stderr}"
