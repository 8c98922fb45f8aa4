"""Build ``runtime._native`` with AddressSanitizer and UndefinedBehaviorSanitizer (or,
as the ``thread`` flavor, ThreadSanitizer), aside.

The sanitizer build never replaces the normal extension: it compiles the same C sources
(every ``runtime/csrc/**/*.c``, as ``setup.py`` does) plus ``sanitizer_selftest.c`` into
``build/asan/<key>/runtime/_native<EXT_SUFFIX>``, next to symbolic links to the package's
Python files. A process that puts ``build/asan/<key>`` first on ``sys.path`` imports that
tree as ``runtime``. ``<key>`` hashes the sources, the flags and the compiler, so a rebuild
happens only when one of them changes, and concurrent builds cannot clobber each other
(each builds in a fresh directory and renames it into place).

Python itself is not instrumented, so the sanitizer runtime must be loaded first: run the
process with :func:`sanitizer_env` (``LD_PRELOAD`` of libasan and libubsan, or of libtsan,
and the options that make every report fatal). The thread flavor builds under
``build/tsan/<key>``; its tree keeps only the default clone of the functions GCC compiles
per target (``BF_CLONES`` in ``bf_common.h``: their resolvers run before TSan is ready).

Usage: ``python tests/fuzz/build_asan.py [thread]`` prints the tree to put on ``sys.path``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "runtime" / "csrc"
SELFTEST = Path(__file__).with_name("sanitizer_selftest.c")
CC = os.environ.get("CC", "gcc")
SANITIZE = "-fsanitize=address,undefined,float-cast-overflow"
TSAN = "-fsanitize=thread"
CFLAGS = [
    "-fno-omit-frame-pointer",
    "-fno-sanitize-recover=all",
    "-O1",
    "-g",
    "-std=c11",
    "-fno-strict-aliasing",
    "-fPIC",
    "-D_GNU_SOURCE=1",
    "-DBF_SANITIZER_BUILD=1",
]
# every report is fatal (abort_on_error: the process dies with SIGABRT); leaks are not
# checked (CPython keeps objects alive at exit by design); one allocation above 256 MiB
# fails (MemoryError in Python) instead of being served, so a loader that allocates from
# a declared size shows up; a process above 3 GiB resident is killed as a failure.
ASAN_OPTIONS = (
    "detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1:"
    "max_allocation_size_mb=256:hard_rss_limit_mb=3072:malloc_context_size=8:"
    "strict_string_checks=1:check_initialization_order=1:print_summary=1"
)
UBSAN_OPTIONS = "print_stacktrace=1:halt_on_error=1:abort_on_error=1"
# a race report is fatal too (exit code 66); races in the uninstrumented interpreter or
# numpy are invisible to it, so every report is about the runtime's own C code
TSAN_OPTIONS = "halt_on_error=1:exitcode=66:second_deadlock_stack=1:history_size=4"

FLAVORS = {  # flavor: (compile and link flag, runtimes to preload, build folder)
    "address": (SANITIZE, ("libasan.so", "libubsan.so"), "asan"),
    "thread": (TSAN, ("libtsan.so",), "tsan"),
}


class BuildError(RuntimeError):
    """A source failed to compile or the library to link."""


class ToolsMissing(BuildError):
    """The compiler or its sanitizer runtimes are not installed."""


def _compiler_output(*args: str) -> str:
    try:
        result = subprocess.run(
            [CC, *args], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolsMissing(f"{CC} cannot run: {exc}") from None
    if result.returncode != 0:
        raise ToolsMissing(f"{CC} {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def sanitizer_libraries(flavor: str = "address") -> list[str]:
    """Paths of the compiler's shared sanitizer runtimes (for ``LD_PRELOAD``)."""
    libs = []
    for name in FLAVORS[flavor][1]:
        path = _compiler_output(f"-print-file-name={name}")
        if not os.path.isabs(path) or not os.path.exists(path):
            raise ToolsMissing(f"{CC} has no {name} (install the compiler's sanitizer runtimes)")
        libs.append(path)
    return libs


def sanitizer_env(
    tree: Path, base: dict[str, str] | None = None, *, flavor: str = "address"
) -> dict[str, str]:
    """Environment for a Python subprocess that imports the sanitizer build from ``tree``."""
    env = dict(os.environ if base is None else base)
    env["LD_PRELOAD"] = ":".join(sanitizer_libraries(flavor))
    env["ASAN_OPTIONS"] = ASAN_OPTIONS
    env["UBSAN_OPTIONS"] = UBSAN_OPTIONS
    env["TSAN_OPTIONS"] = TSAN_OPTIONS
    env["PYTHONPATH"] = str(tree)
    env.pop("BITFACTOR_ISA", None)
    return env


def _sources() -> list[Path]:
    return [*sorted(CSRC.rglob("*.c")), SELFTEST]


def _key(sources: list[Path], flags: list[str]) -> str:
    digest = hashlib.sha256()
    digest.update(_compiler_output("--version").encode())
    digest.update(" ".join(flags).encode())
    digest.update(str(sysconfig.get_config_var("EXT_SUFFIX")).encode())
    for path in sources + sorted(CSRC.rglob("*.h")):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _compile(source: Path, obj: Path, flags: list[str]) -> None:
    include = sysconfig.get_paths()["include"]
    result = subprocess.run(
        [CC, *flags, f"-I{include}", f"-I{CSRC}", "-c", str(source), "-o", str(obj)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise BuildError(f"compiling {source.relative_to(ROOT)} failed:\n{result.stderr}")


def build(out_root: Path | None = None, *, flavor: str = "address") -> Path:
    """Build (or reuse) the sanitizer tree; return the directory to put on ``sys.path``."""
    sanitize, _, folder = FLAVORS[flavor]
    out_root = ROOT / "build" / folder if out_root is None else out_root
    sanitizer_libraries(flavor)  # fail early and clearly without the runtimes
    sources = _sources()
    flags = [sanitize, *CFLAGS]
    tree = out_root / _key(sources, flags)
    suffix = str(sysconfig.get_config_var("EXT_SUFFIX"))
    if (tree / "runtime" / f"_native{suffix}").exists():
        return tree
    out_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".building-", dir=out_root))
    try:
        objs = [work / "obj" / f"{i:03d}.o" for i in range(len(sources))]
        objs[0].parent.mkdir()
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            list(pool.map(_compile, sources, objs, [flags] * len(objs)))
        package = work / "tree" / "runtime"
        package.mkdir(parents=True)
        library = package / f"_native{suffix}"
        link = subprocess.run(
            [CC, "-shared", sanitize, *map(str, objs), "-lpthread", "-lm", "-o", str(library)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if link.returncode != 0:
            raise BuildError(f"linking the sanitizer build failed:\n{link.stderr}")
        # the Python half is the checkout's own files (links: edits apply without a rebuild)
        for path in sorted((ROOT / "runtime").iterdir()):
            if path.suffix in (".py", ".pyi") or path.name == "py.typed":
                (package / path.name).symlink_to(path)
        try:
            (work / "tree").rename(tree)
        except OSError:
            if not (tree / "runtime" / f"_native{suffix}").exists():  # not a concurrent build
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for old in out_root.iterdir():  # earlier builds (a process that has one mapped keeps it)
        if old != tree and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return tree


if __name__ == "__main__":
    try:
        print(build(flavor=sys.argv[1] if len(sys.argv) > 1 else "address"))
    except BuildError as exc:
        sys.exit(str(exc))
