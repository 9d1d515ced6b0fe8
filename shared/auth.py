"""JWT minting and verification (pyjwt), for the finance client and the admin API.

The algorithm is always pinned by the verifier: a token's own `alg` header is never trusted, so
`alg: none` and algorithm-confusion tokens are refused. `exp` is required; a verifier may also cap a token's
lifetime (a stolen 9999-year token is not a credential) and require an audience and an issuer.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt


class TokenError(Exception):
    """The token is missing, malformed, badly signed, expired or lacks a required claim (HTTP 401)."""


class RoleError(Exception):
    """The token is valid but lacks the required role (HTTP 403)."""


# RFC 7518 3.2: an HMAC key at least as long as the hash output. Shorter keys can be brute-forced offline
# from a single token, and then anyone can mint an admin token.
MIN_HMAC_SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


def check_hmac_secret(secret: str, variable: str, algorithm: str = "HS256") -> None:
    from shared.settings import ConfigError

    n, needed = len(secret.encode()), MIN_HMAC_SECRET_BYTES.get(algorithm, 32)
    if n < needed:
        raise ConfigError(
            f"{variable} is {n} bytes; {algorithm} needs at least {needed} (e.g. `openssl rand -hex {needed}`)"
        )


def mint(
    secret: str,
    *,
    algorithm: str,
    ttl_s: int,
    claims: dict[str, Any] | None = None,
    subject: str | None = None,
    audience: str | None = None,
    issuer: str | None = None,
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
    if audience:
        payload["aud"] = audience
    if issuer:
        payload["iss"] = issuer
    payload |= claims or {}
    return jwt.encode(payload, secret, algorithm=algorithm)


def verify(
    token: str,
    key: Any,
    *,
    algorithms: Sequence[str],
    leeway_s: int = 10,
    audience: str | None = None,
    issuer: str | None = None,
    max_ttl_s: int | None = None,
) -> dict[str, Any]:
    """The verified claims, or TokenError. `audience`/`issuer`: required and checked when given. `max_ttl_s`:
    refuse a token meant to live longer (`exp` - `iat`), or with more than that left (`exp` - now)."""
    if not token:
        raise TokenError("missing token")
    required = ["exp"] + (["aud"] if audience else []) + (["iss"] if issuer else [])
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=list(algorithms),
            leeway=leeway_s,
            audience=audience or None,
            issuer=issuer or None,
            options={"require": required, "verify_aud": bool(audience), "verify_iss": bool(issuer)},
        )
    except jwt.ExpiredSignatureError as e:
        raise TokenError("token expired") from e
    except jwt.InvalidAlgorithmError as e:
        raise TokenError("token algorithm not allowed") from e
    except jwt.InvalidSignatureError as e:
        raise TokenError("bad token signature") from e
    except jwt.MissingRequiredClaimError as e:
        raise TokenError(f"token lacks the {e.claim!r} claim") from e
    except jwt.InvalidAudienceError as e:
        raise TokenError("token audience not accepted") from e
    except jwt.InvalidIssuerError as e:
        raise TokenError("token issuer not accepted") from e
    except jwt.PyJWTError as e:
        raise TokenError(f"invalid token: {type(e).__name__}") from e
    if max_ttl_s is not None:
        exp = claims["exp"]
        iat = claims.get("iat")
        lifetime = exp - iat if isinstance(iat, int | float) else 0
        if max(lifetime, exp - time.time()) > max_ttl_s + leeway_s:
            raise TokenError(f"token lifetime exceeds the {max_ttl_s} s maximum")
    return claims


def roles_of(claims: dict[str, Any]) -> list[str]:
    """Roles from `roles` (list or string) or `role`, wherever the issuer put them."""
    roles = claims.get("roles", claims.get("role", []))
    if isinstance(roles, str):
        roles = [roles]
    return [str(r) for r in roles] if isinstance(roles, list) else []


def require_role(claims: dict[str, Any], role: str) -> None:
    if role not in roles_of(claims):
        raise RoleError(f"role {role!r} required")
