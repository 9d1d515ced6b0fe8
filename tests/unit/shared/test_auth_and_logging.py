from datetime import UTC, datetime, timedelta

import jwt
import pytest

from shared.auth import RoleError, TokenError, mint, require_role, roles_of, verify
from shared.logging import scrub

SECRET = "x" * 32


def test_mint_and_verify() -> None:
    tok = mint(SECRET, algorithm="HS512", ttl_s=60, claims={"tenant_id": "platform-admin", "roles": ["admin"]})
    claims = verify(tok, SECRET, algorithms=["HS512"])
    assert claims["tenant_id"] == "platform-admin"
    assert claims["exp"] - claims["iat"] == 60
    require_role(claims, "admin")


def test_expired_bad_signature_wrong_alg_and_none_are_refused() -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    with pytest.raises(TokenError, match="expired"):
        verify(mint(SECRET, algorithm="HS256", ttl_s=60, now=past), SECRET, algorithms=["HS256"])
    with pytest.raises(TokenError, match="signature"):
        verify(mint("y" * 32, algorithm="HS256", ttl_s=60), SECRET, algorithms=["HS256"])
    with pytest.raises(TokenError, match="algorithm"):
        verify(mint(SECRET, algorithm="HS256", ttl_s=60), SECRET, algorithms=["HS512"])
    unsigned = jwt.encode({"exp": 9999999999, "roles": ["admin"]}, None, algorithm="none")
    with pytest.raises(TokenError):
        verify(unsigned, SECRET, algorithms=["HS256"])
    with pytest.raises(TokenError, match="exp"):
        verify(jwt.encode({"roles": ["admin"]}, SECRET, algorithm="HS256"), SECRET, algorithms=["HS256"])
    with pytest.raises(TokenError, match="missing"):
        verify("", SECRET, algorithms=["HS256"])


def test_roles() -> None:
    assert roles_of({"roles": ["a", "b"]}) == ["a", "b"]
    assert roles_of({"role": "a"}) == ["a"]
    assert roles_of({}) == []
    with pytest.raises(RoleError):
        require_role({"roles": ["viewer"]}, "admin")


def test_scrub_removes_tokens() -> None:
    text = "GET with Authorization: Bearer dop_v1_abc123 and token dop_v1_zzz and jwt eyJhbGc.eyJzdWIi.sig"
    out = scrub(text)
    assert "dop_v1_abc123" not in out and "dop_v1_zzz" not in out and "eyJzdWIi" not in out
    assert "Bearer ****" in out
