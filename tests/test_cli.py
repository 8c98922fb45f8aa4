"""The ``bitfactor`` console script as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from bitfactor import __version__


def _bitfactor(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("bitfactor")
    cmd = [exe] if exe else [sys.executable, "-m", "bitfactor"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, check=False)


def test_help_lists_commands() -> None:
    result = _bitfactor("--help")
    assert result.returncode == 0, result.stderr
    assert "info" in result.stdout
    assert "demo" in result.stdout


def test_version() -> None:
    result = _bitfactor("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"bitfactor {__version__}"
    assert __version__ != "0.0.0+unknown"


def test_info_json_reports_isa_and_embedded_defaults(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bitfactor", "info", "--json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["isa"] in data["supported_isas"]
    assert data["broker"] == "embedded"
    assert data["database_url"].startswith("sqlite:///")
    assert data["database_url"].endswith("var/bitfactor.db")


def test_unknown_command_is_a_usage_error() -> None:
    result = _bitfactor("no-such-command")
    assert result.returncode == 2
    assert "No such command" in result.stderr
