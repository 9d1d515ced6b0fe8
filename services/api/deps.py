"""FastAPI dependencies: settings, the repository, and the admin check (routes stay thin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.api.queries import ReadModelRepository
from services.api.security import AuthUnavailable, TokenVerifier
from shared.auth import RoleError, TokenError
from shared.settings import Settings

bearer = HTTPBearer(auto_error=False, description="A JWT with the platform_admin role (`cloudbill token`).")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_verifier(request: Request) -> TokenVerifier:
    verifier: TokenVerifier = request.app.state.verifier
    return verifier


def get_repository(request: Request) -> ReadModelRepository:
    pool = getattr(request.app.state, "pool", None)
    if pool is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no database configured (DATABASE_URL)")
    return ReadModelRepository(pool)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
    )


def require_admin(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    verifier: Annotated[TokenVerifier, Depends(get_verifier)],
) -> dict[str, Any]:
    """401 without a valid bearer token, 403 without the admin role; the claims otherwise."""
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "bearer token required", headers={"WWW-Authenticate": "Bearer"}
        )
    try:
        return verifier.require_admin(credentials.credentials)
    except TokenError as e:
        raise _unauthorized(str(e)) from None
    except RoleError as e:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(e)) from None
    except AuthUnavailable as e:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(e)) from None


Admin = Annotated[dict[str, Any], Depends(require_admin)]
Repo = Annotated[ReadModelRepository, Depends(get_repository)]
