"""The ``.bfm`` loader and the executor under fuzzing, with ASan and UBSan watching.

``fuzz_bfm.py`` makes deterministic inputs (mutated small valid models) and checks that each
either loads and runs, or is refused with ``FormatError``; ``build_asan.py`` builds the C
extension with the sanitizers, aside. The long run is ``slow``: 100,000 inputs under
``CI=true``, ``BITFACTOR_FUZZ_INPUTS`` (default 4,000) otherwise. The sanitizers are first
shown to report a deliberate heap overflow and a signed overflow in that very build, and
the driver to catch and save an input on which a worker dies: otherwise a clean run would
prove nothing. Last, ThreadSanitizer (the builder's ``thread`` flavor) watches Python threads
sharing loaded models (``threads_drive.py``), after it is shown to report a race planted in
the runtime's thread pool.
"""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runtime
from runtime import FormatError

HERE = Path(__file__).parent


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bitfactor_fuzz_{name}", HERE / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fuzz_bfm = _module("fuzz_bfm")
build_asan = _module("build_asan")


def _sanitizer_tree(flavor: str) -> Path:
    """The sanitizer build (made once per source change). Without gcc's sanitizer runtimes
    the tests skip locally and fail under CI; a source that does not compile fails them."""
    try:
        return Path(build_asan.build(flavor=flavor))
    except build_asan.ToolsMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(f"no {flavor} sanitizer build under CI: {exc}")
        pytest.skip(f"no {flavor} sanitizer build here: {exc}")


@pytest.fixture(scope="session")
def asan_tree() -> Path:
    return _sanitizer_tree("address")


@pytest.fixture(scope="session")
def tsan_tree() -> Path:
    return _sanitizer_tree("thread")


def _run_sanitized(
    tree: Path, code: str, flavor: str = "address", args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *(["-c", code] if code else []), *args],
        env=build_asan.sanitizer_env(tree, flavor=flavor),
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


# ---------------------------------------------------------------------------------------
# the sanitizers are armed


SELFTEST = """
import ctypes, runtime
assert runtime._native.__file__.startswith({tree!r}), runtime._native.__file__
lib = ctypes.CDLL(runtime._native.__file__)
lib.bf_selftest_signed_overflow.argtypes = [ctypes.c_int32]
lib.bf_selftest_data_race.restype = ctypes.c_int64
print("calling", flush=True)
print({call})
"""


@pytest.mark.slow
def test_asan_reports_a_heap_overflow_in_the_sanitizer_build(asan_tree: Path) -> None:
    result = _run_sanitized(
        asan_tree, SELFTEST.format(tree=str(asan_tree), call="lib.bf_selftest_heap_overflow()")
    )
    assert "calling" in result.stdout, result.stderr
    assert result.returncode != 0
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in result.stderr, result.stderr
    assert "bf_popcount__scalar" in result.stderr  # the runtime's own kernel is instrumented


@pytest.mark.slow
def test_ubsan_reports_a_signed_overflow_in_the_sanitizer_build(asan_tree: Path) -> None:
    result = _run_sanitized(
        asan_tree,
        SELFTEST.format(tree=str(asan_tree), call="lib.bf_selftest_signed_overflow(2**30 + 5)"),
    )
    assert "calling" in result.stdout, result.stderr
    assert result.returncode != 0
    assert "runtime error: signed integer overflow" in result.stderr, result.stderr


@pytest.mark.slow
def test_a_valid_model_runs_cleanly_in_the_sanitizer_build(asan_tree: Path) -> None:
    code = (
        "import fuzz_bfm, random, runtime\n"
        f"assert runtime._native.__file__.startswith({str(asan_tree)!r})\n"
        "pool, ops = fuzz_bfm.valid_pool(0, 24, cover=False)\n"
        "for i, data in enumerate(pool):\n"
        "    print(fuzz_bfm.check(data, random.Random(i), runtime.supported_isas())[0])\n"
    )
    result = _run_sanitized(asan_tree, code)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split() == ["ran"] * 24, result.stdout
    assert "Sanitizer" not in result.stderr
    assert "runtime error" not in result.stderr


@pytest.mark.slow
def test_the_driver_saves_the_input_a_worker_dies_on(asan_tree: Path, tmp_path: Path) -> None:
    os.environ["BITFACTOR_FUZZ_CRASH_AT"] = "7"
    try:
        report = fuzz_bfm.fuzz(count=20, seed=3, jobs=1, out=tmp_path, timeout=300)
    finally:
        del os.environ["BITFACTOR_FUZZ_CRASH_AT"]
    assert len(report.failures) == 1, report.text()
    assert "died" in report.failures[0]
    assert "input 7" in report.failures[0]
    assert "AddressSanitizer: heap-buffer-overflow" in report.failures[0]
    pool, _ = fuzz_bfm.valid_pool(3)
    saved = (tmp_path / "crash-3-7.bfm").read_bytes()
    assert saved == fuzz_bfm.make_input(3, 7, pool)[0]


# ---------------------------------------------------------------------------------------
# the fuzzing run


def _fuzz_inputs() -> int:
    if "BITFACTOR_FUZZ_INPUTS" in os.environ:
        return int(os.environ["BITFACTOR_FUZZ_INPUTS"])
    return 100_000 if os.environ.get("CI") else 4_000


@pytest.mark.slow
def test_fuzz_loader_and_executor_under_asan_and_ubsan(asan_tree: Path, tmp_path: Path) -> None:
    count = _fuzz_inputs()
    report = fuzz_bfm.fuzz(count=count, seed=0, jobs=2, out=tmp_path, timeout=540)
    print(report.text())
    assert not report.failures, report.text()
    assert report.inputs == count
    assert all(s["native"].startswith(str(asan_tree)) for s in report.summaries)
    # the inputs reach every part: the parser's refusals, the executor, every op
    assert report.outcomes["rejected"] >= count // 2, report.text()
    assert report.outcomes["ran"] >= count // 20, report.text()
    if count >= 2_000:
        assert set(report.ops_ran) == set(fuzz_bfm.OPS), report.text()
        kernels = {"bconv", "sign_pack", "xnor_gemm", "maxpool2d", "panel_pack", "popcount",
                   "dwconv", "fconv"}  # fmt: skip
        assert {k.split(":")[0] for k in report.binding if k.endswith("ran")} == kernels
        assert report.distinct_rejections >= 100, report.text()


# ---------------------------------------------------------------------------------------
# the driver itself, on the normal build (fast)


def test_valid_pool_covers_every_op_and_every_model_runs() -> None:
    pool, ops = fuzz_bfm.valid_pool(0)
    assert ops == set(fuzz_bfm.OPS)
    isas = runtime.supported_isas()
    for i, data in enumerate(pool):
        assert fuzz_bfm.check(data, random.Random(i), isas)[0] == "ran"


def test_inputs_depend_on_seed_and_index_only() -> None:
    pool, _ = fuzz_bfm.valid_pool(5)
    again, _ = fuzz_bfm.valid_pool(5)
    assert pool == again
    for index in (0, 1, 977):
        assert fuzz_bfm.make_input(5, index, pool)[0] == fuzz_bfm.make_input(5, index, again)[0]
    assert len({fuzz_bfm.make_input(5, i, pool)[0] for i in range(50)}) > 40


def test_short_fuzz_on_the_normal_build(tmp_path: Path) -> None:
    report = fuzz_bfm.fuzz(count=600, seed=11, jobs=1, asan=False, out=tmp_path, timeout=300)
    assert not report.failures, report.text()
    assert report.inputs == 600


# any JSON value anywhere in a valid graph: a clean FormatError or a model that runs
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from([*fuzz_bfm.OPS, "in0", "v0", "n0", "n0.weight", "zero", "bits"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
_POOL = fuzz_bfm.valid_pool(1, 16, cover=False)[0]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=st.integers(0, len(_POOL) - 1), where=st.integers(0, 10**6), value=_json)
def test_any_json_value_anywhere_in_the_graph(model: int, where: int, value: Any) -> None:
    header, body = fuzz_bfm.split(_POOL[model])
    graph = fuzz_bfm.json.loads(header["__metadata__"]["graph"])
    paths: list[tuple[Any, Any]] = []
    fuzz_bfm._paths(graph, paths)
    container, key = paths[where % len(paths)]
    container[key] = value
    header["__metadata__"]["graph"] = fuzz_bfm.json.dumps(graph)
    data = fuzz_bfm.join(header, body)
    try:
        outcome, _ = fuzz_bfm.check(data, random.Random(where), runtime.supported_isas())
    except fuzz_bfm.Failure as exc:
        raise AssertionError(str(exc)) from exc
    assert outcome in ("rejected", "ran", "too big")


def test_check_accepts_only_format_errors() -> None:
    with pytest.raises(FormatError):
        runtime.load(b"\x00" * 7)
    outcome, detail = fuzz_bfm.check(b"\x00" * 7, random.Random(0), ["scalar"])
    assert outcome == "rejected"
    assert "truncated" in detail


# ---------------------------------------------------------------------------------------
# concurrent callers under ThreadSanitizer


@pytest.mark.slow
def test_tsan_reports_a_race_in_the_thread_pool(tsan_tree: Path) -> None:
    result = _run_sanitized(
        tsan_tree,
        SELFTEST.format(tree=str(tsan_tree), call="lib.bf_selftest_data_race()"),
        flavor="thread",
    )
    assert "calling" in result.stdout, result.stderr
    assert result.returncode == 66, result.stderr[-4000:]
    assert "WARNING: ThreadSanitizer: data race" in result.stderr, result.stderr
    assert "worker_main" in result.stderr  # on the pool's own worker thread


@pytest.mark.slow
def test_concurrent_callers_share_models_without_races(tsan_tree: Path) -> None:
    """Four Python threads run the binary ResNet-18 and 24 small models at once, each
    model with 2 kernel threads: no race report, every result as when run alone."""
    result = _run_sanitized(tsan_tree, "", flavor="thread", args=(str(HERE / "threads_drive.py"),))
    assert result.returncode == 0, result.stdout + result.stderr[-6000:]
    assert "ThreadSanitizer" not in result.stderr, result.stderr[-6000:]
    assert "4 callers x 2 rounds, 2 kernel threads" in result.stdout, result.stdout
    assert ": 0 wrong results" in result.stdout, result.stdout
