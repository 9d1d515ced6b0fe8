"""One settings object for every service, read from the environment (and an optional settings file).

Every variable is documented in the README's configuration table; `cloudbill config` prints the
effective values with secrets masked.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class DigitalOceanAccount(BaseModel):
    """A named DigitalOcean account; every event carries its name."""

    name: str
    token: SecretStr

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        v = v.strip()
        if not v or any(c in v for c in ":/ \t"):
            raise ValueError(f"account name {v!r} must be non-empty without ':', '/' or spaces")
        return v


def parse_accounts(raw: str) -> list[DigitalOceanAccount]:
    """`name=token,name2=token2` or a JSON list of `{"name":..., "token":...}`."""
    raw = raw.strip()
    if not raw:
        return []
    if raw.startswith("["):
        return [DigitalOceanAccount.model_validate(x) for x in json.loads(raw)]
    out = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ValueError("DIGITALOCEAN_ACCOUNTS entries must look like name=token")
        name, token = part.split("=", 1)
        out.append(DigitalOceanAccount(name=name, token=SecretStr(token.strip())))
    return out


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=(".env",), env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # --- infrastructure
    kafka_bootstrap_servers: str = Field("localhost:9092", description="Kafka bootstrap servers.")
    kafka_topic_prefix: str = Field(
        "", description="Prefix for every topic and consumer group (several environments on one cluster)."
    )
    kafka_partitions: int = Field(6, ge=1, description="Partitions for topics created by `topics create`.")
    kafka_replication_factor: int = Field(1, ge=1, description="Replication factor for created topics.")
    kafka_session_timeout_ms: int = Field(10000, description="Consumer session timeout (dev/tests: 6000).")
    kafka_heartbeat_interval_ms: int = Field(3000, description="Consumer heartbeat interval (dev: 1000).")
    database_url: str = Field("", description="PostgreSQL URL. Empty in dev/tests: the embedded PostgreSQL is started.")
    database_pool_max: int = Field(8, ge=1, description="Max connections per service pool.")

    # --- DigitalOcean
    digitalocean_token: SecretStr | None = Field(None, description="Token of the single account.")
    digitalocean_account_name: str = Field("default", description="Name of the DIGITALOCEAN_TOKEN account.")
    digitalocean_accounts: Annotated[list[DigitalOceanAccount], NoDecode] = Field(
        default_factory=list,
        description="Several accounts: `name=token,name2=token2` or a JSON list.",
    )
    digitalocean_api_url: str = Field("https://api.digitalocean.com", description="DigitalOcean API base URL.")
    digitalocean_per_page: int = Field(200, ge=1, le=200, description="Page size for paginated listings.")
    digitalocean_max_retries: int = Field(5, ge=0, description="Retries on 429/5xx/timeouts per request.")
    digitalocean_timeout_s: float = Field(30.0, description="Per-request timeout in seconds.")

    # --- poller schedules (cron)
    poll_balance_cron: str = Field("7 * * * *", description="Balance poll schedule.")
    poll_history_cron: str = Field("23 2 * * *", description="Billing-history poll schedule.")
    poll_resources_cron: str = Field("*/30 * * * *", description="Resource inventory poll schedule.")

    # --- finance
    skyai_finance_url: str = Field("http://localhost:4010", description="Finance service base URL.")
    skyai_finance_jwt_secret: SecretStr | None = Field(
        None, description="Shared secret for finance JWTs. Unset: the pusher stays idle."
    )
    skyai_finance_jwt_algorithm: str = Field("HS512", description="Finance JWT algorithm (pinned).")
    skyai_finance_tenant_id: str = Field("platform-admin", description="Identity tenant_id in finance JWTs.")
    skyai_finance_roles: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["admin"], description="Identity roles (comma separated)."
    )
    skyai_finance_jwt_ttl_s: int = Field(120, ge=10, le=300, description="Finance JWT lifetime (<= 5 min).")
    skyai_finance_timeout_s: float = Field(15.0, description="Finance request timeout in seconds.")
    skyai_finance_max_backoff_s: float = Field(
        60.0, gt=0, description="Cap of the pusher's retry backoff while finance is unavailable (5xx/429/down)."
    )
    skyai_finance_auth_retry_s: float = Field(
        300.0, gt=0, description="Retry interval while finance refuses the pusher's credentials (401/403)."
    )

    # --- HTTP API
    api_jwt_secret: SecretStr | None = Field(None, description="HS256 secret for the admin API's tokens.")
    api_jwt_algorithm: Literal["HS256", "HS384", "HS512", "RS256"] = Field(
        "HS256", description="Admin API JWT algorithm (pinned)."
    )
    api_jwt_public_key: str = Field("", description="PEM public key when API_JWT_ALGORITHM=RS256.")
    api_jwt_jwks_url: str = Field("", description="JWKS URL when API_JWT_ALGORITHM=RS256 (instead of a key).")
    api_admin_role: str = Field("platform_admin", description="Role required for billing routes.")
    api_host: str = Field("127.0.0.1", description="API bind address.")
    api_port: int = Field(8000, description="API port.")

    # --- operations
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="`auto`: readable on a terminal, JSON otherwise."
    )
    log_level: str = Field("INFO", description="Log level.")
    metrics_port: int = Field(0, description="Prometheus port for worker services (0: off).")
    currency: str = Field("USD", description="Currency of DigitalOcean amounts.")

    @field_validator("digitalocean_accounts", mode="before")
    @classmethod
    def _accounts(cls, v: Any) -> Any:
        return parse_accounts(v) if isinstance(v, str) else v

    @field_validator("skyai_finance_roles", mode="before")
    @classmethod
    def _roles(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip()
            return json.loads(v) if v.startswith("[") else [r.strip() for r in v.split(",") if r.strip()]
        return v

    # --- derived
    def accounts(self) -> list[DigitalOceanAccount]:
        """All configured accounts: DIGITALOCEAN_ACCOUNTS plus the single-token account."""
        accs = list(self.digitalocean_accounts)
        if self.digitalocean_token is not None and self.digitalocean_token.get_secret_value():
            if any(a.name == self.digitalocean_account_name for a in accs):
                raise ValueError(f"account {self.digitalocean_account_name!r} configured twice")
            accs.insert(0, DigitalOceanAccount(name=self.digitalocean_account_name, token=self.digitalocean_token))
        return accs

    @property
    def finance_configured(self) -> bool:
        return bool(self.skyai_finance_jwt_secret and self.skyai_finance_jwt_secret.get_secret_value()) and bool(
            self.skyai_finance_url
        )

    def masked(self) -> dict[str, Any]:
        """The effective configuration with every secret masked (for `cloudbill config`)."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "digitalocean_accounts":
                value = [{"name": a.name, "token": mask(a.token)} for a in value]
            elif isinstance(value, SecretStr) or (value is None and name.endswith(("_token", "_secret"))):
                value = mask(value)
            elif name == "database_url" and value:
                value = mask_url(value)
            out[name.upper()] = value
        return out


def mask(secret: SecretStr | None) -> str:
    if secret is None or not secret.get_secret_value():
        return "(unset)"
    s = secret.get_secret_value()
    return f"****{s[-4:]}" if len(s) >= 12 else "****"


def mask_url(url: str) -> str:
    """Hide a password in a URL such as postgresql://user:pw@host/db."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        return f"{scheme}://{user}:****@{host}" if ":" in cred else url
    return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
