"""API-side commands: `cloudbill token` mints an admin API token for local use."""

from __future__ import annotations

from typing import Annotated

import typer

from shared.auth import check_hmac_secret, mint
from shared.settings import Settings, get_settings


def mint_token(settings: Settings, roles: list[str], ttl_s: int, subject: str) -> str:
    """A token the API accepts: signed with API_JWT_SECRET and the configured (HMAC) algorithm, within
    API_JWT_MAX_TTL_S, with API_JWT_AUDIENCE / API_JWT_ISSUER when those are set."""
    if not settings.api_jwt_algorithm.startswith("HS"):
        raise ValueError(
            f"API_JWT_ALGORITHM={settings.api_jwt_algorithm}: tokens come from your identity provider, not cloudbill"
        )
    secret = settings.api_jwt_secret.get_secret_value() if settings.api_jwt_secret else ""
    if not secret:
        raise ValueError("API_JWT_SECRET is not set")
    check_hmac_secret(secret, "API_JWT_SECRET", settings.api_jwt_algorithm)
    if ttl_s > settings.api_jwt_max_ttl_s:
        raise ValueError(
            f"--ttl {ttl_s} is longer than API_JWT_MAX_TTL_S ({settings.api_jwt_max_ttl_s}): the API refuses it"
        )
    return mint(
        secret,
        algorithm=settings.api_jwt_algorithm,
        ttl_s=ttl_s,
        subject=subject,
        audience=settings.api_jwt_audience or None,
        issuer=settings.api_jwt_issuer or None,
        claims={"roles": roles},
    )


def register(app: typer.Typer) -> None:
    @app.command()
    def token(
        role: Annotated[
            list[str] | None, typer.Option("--role", help="Role claim (repeatable). Default: API_ADMIN_ROLE.")
        ] = None,
        ttl: Annotated[int, typer.Option("--ttl", min=1, help="Lifetime in seconds.")] = 3600,
        subject: Annotated[str, typer.Option("--subject", help="The `sub` claim.")] = "cloudbill-cli",
    ) -> None:
        """Print a bearer token for the admin API (signed with API_JWT_SECRET)."""
        settings = get_settings()
        try:
            typer.echo(mint_token(settings, role or [settings.api_admin_role], ttl, subject))
        except ValueError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
