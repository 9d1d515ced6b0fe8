"""JWT minting and verification (pyjwt), for the finance client and the admin API.

The algorithm is always pinned by the verifier: a token's own `alg` header is never trusted, so
`alg: none` and algorithm-confusion tokens are refused. `exp` is required.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt


class TokenError(Exception):
    """The token is missing, malformed, badly signed, expired or lacks a required claim (HTTP 401)."""


class RoleError(Exception):
    """The token is valid but lacks the required role (HTTP 403)."""


def mint(
    secret: str,
    *,
    algorithm: str,
    ttl_s: int,
    claims: dict[str, Any] | None = None,
    subject: str | None = None,
    now: datetime | None = None,
) -> str:
    now = now or datetime.now(UTC)
    payload: dict[str, Any] = {
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + timedelta(seconds=ttl_s)).timestamp()),
        "jti": str(uuid.uuid4()),
    }
    if subject:
        payload["sub"] = subject
    payload |= claims or {}
    return jwt.encode(payload, secret, algorithm=algorithm)


def verify(
    token: str,
    key: Any,
    *,
    algorithms: Sequence[str],
    leeway_s: int = 10,
    audience: str | None = None,
) -> dict[str, Any]:
    if not token:
        raise TokenError("missing token")
    try:
        return jwt.decode(
            token,
            key,
            algorithms=list(algorithms),
            leeway=leeway_s,
            audience=audience,
            options={"require": ["exp"], "verify_aud": audience is not None},
        )
    except jwt.ExpiredSignatureError as e:
        raise TokenError("token expired") from e
    except jwt.InvalidAlgorithmError as e:
        raise TokenError("token algorithm not allowed") from e
    except jwt.InvalidSignatureError as e:
        raise TokenError("bad token signature") from e
    except jwt.MissingRequiredClaimError as e:
        raise TokenError(f"token lacks the {e.claim!r} claim") from e
    except jwt.PyJWTError as e:
        raise TokenError(f"invalid token: {type(e).__name__}") from e


def roles_of(claims: dict[str, Any]) -> list[str]:
    """Roles from `roles` (list or string) or `role`, wherever the issuer put them."""
    roles = claims.get("roles", claims.get("role", []))
    if isinstance(roles, str):
        roles = [roles]
    return [str(r) for r in roles] if isinstance(roles, list) else []


def require_role(claims: dict[str, Any], role: str) -> None:
    if role not in roles_of(claims):
        raise RoleError(f"role {role!r} required")
