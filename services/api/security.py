"""Bearer-token verification for the admin API: which key, which (single, pinned) algorithm.

HS256 (HS384/HS512) with API_JWT_SECRET by default; RS256 with a PEM public key (API_JWT_PUBLIC_KEY) or a
JWKS URL (API_JWT_JWKS_URL, keys fetched and cached by pyjwt's PyJWKClient). The verification itself is
shared.auth.verify: the algorithm list is the configured one only, `exp` is required.
"""

from __future__ import annotations

import logging
from typing import Any

import jwt

from shared.auth import TokenError, require_role, verify
from shared.settings import Settings

log = logging.getLogger(__name__)


class AuthUnavailable(Exception):
    """The key source (JWKS URL) cannot be reached: the server's fault, not the client's (HTTP 503)."""


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        self.algorithm = settings.api_jwt_algorithm
        self.role = settings.api_admin_role
        self._secret: str | None = None
        self._public_key: Any = None
        self._jwks: jwt.PyJWKClient | None = None
        if self.algorithm.startswith("HS"):
            secret = settings.api_jwt_secret.get_secret_value() if settings.api_jwt_secret else ""
            self._secret = secret or None
        elif settings.api_jwt_public_key.strip():
            # Parsed once at start: a bad PEM is a configuration error, not a 401 per request.
            rsa = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256)
            self._public_key = rsa.prepare_key(settings.api_jwt_public_key.encode())
        elif settings.api_jwt_jwks_url:
            self._jwks = jwt.PyJWKClient(settings.api_jwt_jwks_url, cache_keys=True, lifespan=300, timeout=5)

    @property
    def configured(self) -> bool:
        return bool(self._secret or self._public_key is not None or self._jwks is not None)

    def _key(self, token: str) -> Any:
        if self._secret:
            return self._secret
        if self._public_key is not None:
            return self._public_key
        if self._jwks is not None:
            try:
                return self._jwks.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientConnectionError as e:
                raise AuthUnavailable("the JWKS endpoint cannot be reached") from e
            except (jwt.PyJWKClientError, jwt.DecodeError) as e:
                raise TokenError("no JWKS key for this token") from e
        raise TokenError("the API has no token key configured (API_JWT_SECRET / API_JWT_PUBLIC_KEY / API_JWT_JWKS_URL)")

    def claims(self, token: str) -> dict[str, Any]:
        """Verified claims (TokenError → 401); require_admin adds the role check (RoleError → 403)."""
        if not token:
            raise TokenError("missing token")
        return verify(token, self._key(token), algorithms=[self.algorithm])

    def require_admin(self, token: str) -> dict[str, Any]:
        claims = self.claims(token)
        require_role(claims, self.role)
        return claims
