"""Settings: embedded defaults, environment overrides, production refuses placeholders."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bitfactor.settings import Settings


def test_embedded_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATA_DIR", "DATABASE_URL", "ARTIFACTS_DIR", "BROKER_URL", "ENVIRONMENT"):
        monkeypatch.delenv(f"BITFACTOR_{name}", raising=False)
    settings = Settings()
    assert settings.data_dir == Path("./var")
    assert settings.embedded_broker
    assert settings.resolved_database_url == f"sqlite:///{Path('var/bitfactor.db').resolve()}"
    assert settings.resolved_artifacts_dir == Path("./var") / "artifacts"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BITFACTOR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BITFACTOR_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("BITFACTOR_DATABASE_URL", "postgresql+psycopg://u@h/db")
    settings = Settings()
    assert settings.data_dir == tmp_path
    assert not settings.embedded_broker
    assert settings.resolved_database_url == "postgresql+psycopg://u@h/db"
    assert settings.resolved_artifacts_dir == tmp_path / "artifacts"


@pytest.mark.parametrize("secret", ["dev-insecure-secret", "changeme", "short"])
def test_production_refuses_placeholder_secret(secret: str) -> None:
    with pytest.raises(ValidationError, match="BITFACTOR_SECRET_KEY"):
        Settings(environment="production", secret_key=secret)


def test_production_accepts_real_secret() -> None:
    assert Settings(environment="production", secret_key="x" * 32).environment == "production"


def test_unknown_environment_is_refused() -> None:
    with pytest.raises(ValidationError, match="environment"):
        Settings(environment="staging-ish")
