"""Bearer-token verification for the admin API: which key, which (single, pinned) algorithm.

HS256 (HS384/HS512) with API_JWT_SECRET by default (at least 32 bytes, or the API does not start); RS256
with a PEM public key (API_JWT_PUBLIC_KEY) or a JWKS URL (API_JWT_JWKS_URL). The verification itself is
shared.auth.verify: the algorithm list is the configured one only, `exp` is required, the lifetime is capped
(API_JWT_MAX_TTL_S), and `aud`/`iss` are required when API_JWT_AUDIENCE/API_JWT_ISSUER are set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import jwt

from shared.auth import TokenError, check_hmac_secret, require_role, verify
from shared.settings import ConfigError, Settings

log = logging.getLogger(__name__)


class AuthUnavailable(Exception):
    """The key source (JWKS URL) cannot be reached: the server's fault, not the client's (HTTP 503)."""


class JwksKeys:
    """Signing keys of a JWKS URL, refetched when the set is older than `lifespan_s` or a token names an
    unknown key id, but never more than once per `min_refresh_s`: tokens with made-up `kid`s cannot make the
    API hammer the identity provider. Concurrent requests share one fetch."""

    def __init__(
        self,
        url: str,
        *,
        min_refresh_s: float,
        lifespan_s: float = 300.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=timeout_s)
        self.min_refresh_s = min_refresh_s
        self.lifespan_s = lifespan_s
        self._clock = clock
        self._keys: dict[str | None, Any] = {}
        self._fetched_at: float | None = None
        self.fetches = 0
        self._lock = threading.Lock()

    def _fetch(self) -> None:
        self._fetched_at = self._clock()  # a failed fetch counts too: an unreachable provider is not hammered
        self.fetches += 1
        keys = self._client.get_jwk_set(refresh=True).keys
        self._keys = {k.key_id: k.key for k in keys if getattr(k, "public_key_use", None) in (None, "sig")}

    def key(self, kid: str | None) -> Any:
        with self._lock:
            now = self._clock()
            age = None if self._fetched_at is None else now - self._fetched_at
            stale = age is None or age >= self.lifespan_s
            if stale or (kid not in self._keys and age is not None and age >= self.min_refresh_s):
                try:
                    self._fetch()
                except jwt.PyJWKClientConnectionError:
                    if kid not in self._keys:  # a known key keeps working while the provider is down
                        raise
            if kid in self._keys:
                return self._keys[kid]
            if kid is None and len(self._keys) == 1:
                return next(iter(self._keys.values()))
        raise TokenError("no JWKS key for this token")


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        """Raises ConfigError for a key that cannot be right (a short HMAC secret, a bad PEM)."""
        self.algorithm = settings.api_jwt_algorithm
        self.role = settings.api_admin_role
        self.audience = settings.api_jwt_audience or None
        self.issuer = settings.api_jwt_issuer or None
        self.max_ttl_s = settings.api_jwt_max_ttl_s
        self._secret: str | None = None
        self._public_key: Any = None
        self._jwks: JwksKeys | None = None
        if self.algorithm.startswith("HS"):
            secret = settings.api_jwt_secret.get_secret_value() if settings.api_jwt_secret else ""
            if secret:
                check_hmac_secret(secret, "API_JWT_SECRET", self.algorithm)
            self._secret = secret or None
        elif settings.api_jwt_public_key.strip():
            # Parsed once at start: a bad PEM is a configuration error, not a 401 per request.
            rsa = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256)
            try:
                self._public_key = rsa.prepare_key(settings.api_jwt_public_key.encode())
            except (jwt.InvalidKeyError, ValueError) as e:
                raise ConfigError("API_JWT_PUBLIC_KEY is not a PEM RSA public key") from e
        elif settings.api_jwt_jwks_url:
            try:
                self._jwks = JwksKeys(settings.api_jwt_jwks_url, min_refresh_s=settings.api_jwt_jwks_min_refresh_s)
            except jwt.PyJWKClientError as e:
                raise ConfigError(f"API_JWT_JWKS_URL: {e}") from e

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
                kid = jwt.get_unverified_header(token).get("kid")
                return self._jwks.key(kid if isinstance(kid, str) else None)
            except jwt.PyJWKClientConnectionError as e:
                raise AuthUnavailable("the JWKS endpoint cannot be reached") from e
            except (jwt.PyJWKClientError, jwt.DecodeError) as e:
                raise TokenError("no JWKS key for this token") from e
        raise TokenError("the API has no token key configured (API_JWT_SECRET / API_JWT_PUBLIC_KEY / API_JWT_JWKS_URL)")

    def claims(self, token: str) -> dict[str, Any]:
        """Verified claims (TokenError → 401); require_admin adds the role check (RoleError → 403)."""
        if not token:
            raise TokenError("missing token")
        return verify(
            token,
            self._key(token),
            algorithms=[self.algorithm],
            audience=self.audience,
            issuer=self.issuer,
            max_ttl_s=self.max_ttl_s,
        )

    def require_admin(self, token: str) -> dict[str, Any]:
        claims = self.claims(token)
        require_role(claims, self.role)
        return claims
