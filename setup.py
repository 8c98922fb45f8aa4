"""Build the runtime's C extension; everything else is declared in pyproject.toml.

One build runs on any x86-64 (or aarch64) machine: ISA-specific kernels carry their own
``target`` attributes and are chosen at import by runtime CPU detection, so no global
``-march`` flag is used here.
"""

from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).parent
CSRC = Path("runtime") / "csrc"
sources = sorted(str(p) for p in (ROOT / CSRC).rglob("*.c"))
sources = [str(Path(s).relative_to(ROOT)) for s in sources]

setup(
    ext_modules=[
        Extension(
            "runtime._native",
            sources=sources,
            include_dirs=[str(CSRC)],
            depends=sorted(str(p.relative_to(ROOT)) for p in (ROOT / CSRC).rglob("*.h")),
            extra_compile_args=["-O3", "-std=c11", "-fno-strict-aliasing", "-Wall", "-Wextra"],
            define_macros=[("_GNU_SOURCE", "1")],
            libraries=["m"],  # erff, erfcf (runtime/csrc/gelu)
        )
    ],
)
