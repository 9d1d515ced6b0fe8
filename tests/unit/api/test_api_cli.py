"""`cloudbill token`: a token the API accepts, and clear errors when it cannot mint one."""

from __future__ import annotations

import jwt
import pytest
from typer.testing import CliRunner

from cloudbill.cli import app
from services.api.cli import mint_token
from services.api.security import TokenVerifier
from shared.settings import Settings, get_settings

SECRET = "cli-test-secret-0123456789abcdef-0123456789abcdef-0123456789abcd"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("API_JWT_SECRET", SECRET)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_token_command_mints_an_admin_token(env: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(app, ["token", "--role", "platform_admin", "--ttl", "120", "--subject", "ops"])
    assert result.exit_code == 0, result.output
    tok = result.output.strip()
    claims = TokenVerifier(Settings(_env_file=None, api_jwt_secret=SECRET)).require_admin(tok)
    assert claims["sub"] == "ops" and claims["roles"] == ["platform_admin"]
    assert claims["exp"] - claims["iat"] == 120
    assert jwt.get_unverified_header(tok)["alg"] == "HS256"


def test_token_command_defaults_to_the_admin_role(env: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(app, ["token"])
    assert result.exit_code == 0
    assert jwt.decode(result.output.strip(), SECRET, algorithms=["HS256"])["roles"] == ["platform_admin"]


def test_token_command_without_secret_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("API_JWT_SECRET", raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["token"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2 and "API_JWT_SECRET" in result.output


def test_rs256_tokens_come_from_the_identity_provider() -> None:
    with pytest.raises(ValueError, match="identity provider"):
        mint_token(Settings(_env_file=None, api_jwt_algorithm="RS256"), ["platform_admin"], 60, "x")
