"""One settings object for every service, read from the environment (and an optional settings file).

Every variable is documented in the README's configuration table; `cloudbill config` prints the
effective values with secrets masked. No secret leaves this object in clear: `repr()` masks them (URL
passwords included), a validation error never quotes the input it refused, and `get_settings()` registers
every secret value with the log scrubber (shared.logging).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.money import parse_minor
from shared.retry import RetryPolicy
from shared.tax import DEFAULT_TAX_NAMES, TaxRule


class ConfigError(ValueError):
    """The configuration cannot work (the message names the variable and what to do): one line, no traceback."""


class DigitalOceanAccount(BaseModel):
    """A named DigitalOcean account; every event carries its name."""

    model_config = ConfigDict(hide_input_in_errors=True)

    name: str
    token: SecretStr
    # This account's API base URL when it differs from DIGITALOCEAN_API_URL (a per-team proxy or gateway; the
    # chaos run serves each generated account from its own simulator).
    api_url: str | None = None

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        v = v.strip()
        if not v or any(c in v for c in ":/ \t"):
            # The name is not quoted back: a mistyped entry may have a token where the name should be.
            raise ValueError("an account name must be non-empty, without ':', '/' or spaces")
        return v


def parse_accounts(raw: str) -> list[DigitalOceanAccount]:
    """`name=token,name2=token2` or a JSON list of `{"name":..., "token":..., "api_url":...}` (api_url optional)."""
    raw = raw.strip()
    if not raw:
        return []
    if raw.startswith("["):
        return [DigitalOceanAccount.model_validate(x) for x in json.loads(raw)]
    out: list[DigitalOceanAccount] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ValueError(
                f"entry {len(out) + 1} is not name=token (expected name=token,name2=token2 or a JSON list)"
            )
        name, token = part.split("=", 1)
        out.append(DigitalOceanAccount(name=name, token=SecretStr(token.strip())))
    return out


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=(".env",), env_file_encoding="utf-8", extra="ignore", case_sensitive=False, hide_input_in_errors=True
    )

    # --- infrastructure
    kafka_bootstrap_servers: str = Field("localhost:9092", description="Kafka bootstrap servers.")
    kafka_topic_prefix: str = Field(
        "", description="Prefix for every topic and consumer group (several environments on one cluster)."
    )
    kafka_broker_flavor: Literal["apache", "embedded"] = Field(
        "apache",
        description="`apache` (Kafka, production) or `embedded` (the dev broker): turns on the embedded broker's workarounds only.",
    )
    kafka_partitions: int = Field(6, ge=1, description="Partitions for topics created by `topics create`.")
    kafka_replication_factor: int = Field(1, ge=1, description="Replication factor for created topics.")
    kafka_session_timeout_ms: int = Field(10000, description="Consumer session timeout (dev/tests: 6000).")
    kafka_heartbeat_interval_ms: int = Field(3000, description="Consumer heartbeat interval (dev: 1000).")
    kafka_max_poll_interval_ms: int = Field(
        300000,
        ge=10000,
        description="Longest a consumer may go without polling before the group evicts it; DigitalOcean retries inside a record are bounded well below it.",
    )
    database_url: str = Field("", description="PostgreSQL URL. Empty in dev/tests: the embedded PostgreSQL is started.")
    database_pool_max: int = Field(8, ge=1, description="Max connections per service pool.")

    # --- DigitalOcean
    digitalocean_token: SecretStr | None = Field(None, description="Token of the single account.")
    digitalocean_account_name: str = Field("default", description="Name of the DIGITALOCEAN_TOKEN account.")
    digitalocean_accounts: Annotated[list[DigitalOceanAccount], NoDecode] = Field(
        default_factory=list,
        description="Several accounts: `name=token,name2=token2` or a JSON list of {name, token, api_url (optional)}.",
    )
    digitalocean_api_url: str = Field("https://api.digitalocean.com", description="DigitalOcean API base URL.")
    digitalocean_per_page: int = Field(200, ge=1, le=200, description="Page size for paginated listings.")
    digitalocean_max_retries: int = Field(5, ge=0, description="Retries on 429/5xx/timeouts per request.")
    digitalocean_timeout_s: float = Field(30.0, description="Per-request timeout in seconds.")
    digitalocean_retry_budget_s: float = Field(
        120.0,
        gt=0,
        description="Longest one request may take with its retries and waits (the ingester also keeps a record's calls under KAFKA_MAX_POLL_INTERVAL_MS / 2).",
    )

    # --- poller schedules (cron)
    poll_balance_cron: str = Field("7 * * * *", description="Balance poll schedule.")
    poll_history_cron: str = Field("23 2 * * *", description="Billing-history poll schedule.")
    poll_resources_cron: str = Field("*/30 * * * *", description="Resource inventory poll schedule.")
    poll_catch_up: bool = Field(
        True,
        description="At start, run each job whose last success is older than its schedule's previous tick (or that never ran).",
    )
    poll_retry_initial_s: float = Field(
        30.0,
        gt=0,
        description="A failed poll is tried again after this long, then after doubling waits (with jitter)...",
    )
    poll_retry_max_s: float = Field(
        1800.0, gt=0, description="...up to this long between two tries, until it succeeds or its next scheduled tick."
    )

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

    # --- money gates (docs/architecture.md, "Money gates")
    reconciliation_tolerance_minor: int = Field(
        0, ge=0, description="Largest variance (minor units) between the lines' gross and DigitalOcean's amounts."
    )
    tax_names: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_TAX_NAMES),
        description="Tax names a description must name as a word to be tax (comma separated); product `Taxes` always is.",
    )
    ingester_fetch_summary: bool = Field(
        True, description="Fetch each invoice's summary to cross-check its amount and taxes."
    )
    ingester_fetch_items: bool = Field(
        True,
        description="Fetch each invoice's items (all pages) for resource ids; missing or failing: the CSV alone.",
    )
    ingester_items_wait_s: float = Field(
        600.0,
        ge=0,
        description=(
            "An items outage (5xx, 429, timeouts) makes the invoice wait and retry like a CSV outage, up to this "
            "long; then it is ingested from the CSV alone, with a note (0: never wait)."
        ),
    )
    ingester_verify_interval_s: float = Field(
        10.0,
        ge=0,
        description=(
            "The commit verifier's checkpoints: committed revisions whose records it has provably read past without"
            " seeing them (aborted after the commit was acknowledged) are emitted again (0: no verification)."
        ),
    )
    ingester_verify_max_reemits: int = Field(
        5,
        ge=1,
        description="Re-emissions of one unreadable committed revision before it only shows in `cloudbill status`.",
    )
    held_refetch_initial_s: float = Field(
        60.0, gt=0, description="First re-fetch of a held invoice's CSV after this long; doubles each attempt."
    )
    held_refetch_max_s: float = Field(21600.0, gt=0, description="Longest wait between re-fetches of a held invoice.")
    held_refetch_max_attempts: int = Field(
        20, ge=0, description="Automatic re-fetches of a held invoice before it waits for an admin (0: never)."
    )

    # --- retries of records that fail transiently (docs/architecture.md, "Failure handling")
    retry_min_s: float = Field(
        0.5, gt=0, description="No record or request is retried sooner than this, whatever a server's Retry-After says."
    )
    retry_max_attempts: int = Field(
        10,
        ge=1,
        description="A record failing transiently is retried in place (its partition paused) this many times...",
    )
    retry_max_s: float = Field(
        600.0, gt=0, description="...or for this long, then parked in its stage's retry topic so its partition flows."
    )
    retry_park_delay_s: float = Field(
        60.0, gt=0, description="A parked record is retried from the retry topic after this long, doubling per park..."
    )
    retry_park_max_delay_s: float = Field(3600.0, gt=0, description="...up to this long.")
    retry_max_parks: int = Field(
        24, ge=1, description="After this many parks a record is dead-lettered with its last reason."
    )

    # --- FinOps: budgets and alerts (docs/architecture.md, "FinOps outputs")
    budgets: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Monthly budgets per account, pre-tax usage: `account=150.00,other=80` or a JSON object.",
    )
    alert_thresholds: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [50, 80, 100],
        description="Budget thresholds in percent (comma separated); each alerts once per month on actual and forecast.",
    )
    alert_forecast_min_days: int = Field(
        3, ge=1, description="Forecast thresholds alert only from this many complete days of the month's usage on."
    )
    forecast_window_days: int = Field(7, ge=1, le=31, description="Complete days whose usage gives the run rate.")
    anomaly_spike_factor: float = Field(
        3.0, gt=1, description="A day's usage this many times the median of its recent days is a spike."
    )
    anomaly_baseline_days: int = Field(7, ge=3, description="Recent days the spike baseline (median) is taken from.")
    anomaly_min_increase: str = Field(
        "5.00", description="A spike must also exceed its baseline by at least this amount (currency units)."
    )
    anomaly_new_cost_min: str = Field(
        "10.00", description="A new product or resource alerts when it costs at least this much on its first invoice."
    )
    anomaly_new_cost_share_pct: int = Field(
        10, ge=0, le=100, description="... and at least this share (percent) of that invoice's net amount."
    )
    anomaly_lookback_months: int = Field(
        3, ge=1, description="A product or resource is new when absent from this many previous invoices' periods."
    )
    alert_webhook_url: SecretStr | None = Field(
        None, description="Slack-compatible webhook for alerts (a secret: its path often holds a token). Unset: none."
    )
    alert_webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key signing each webhook body (X-Cloudbill-Signature). Never logged."
    )
    alert_webhook_timeout_s: float = Field(10.0, gt=0, description="Webhook request timeout in seconds.")
    alert_webhook_max_attempts: int = Field(
        10, ge=1, description="Webhook deliveries tried per alert before it is marked failed."
    )
    alert_webhook_backoff_s: float = Field(
        2.0, gt=0, description="First webhook retry after this long, doubling up to ALERT_WEBHOOK_MAX_BACKOFF_S."
    )
    alert_webhook_max_backoff_s: float = Field(300.0, gt=0, description="Longest wait between webhook retries.")

    # --- HTTP API
    api_jwt_secret: SecretStr | None = Field(
        None,
        description="HMAC secret for the admin API's tokens: at least 32 bytes for HS256 (48 HS384, 64 HS512; `openssl rand -hex 32`), or the API refuses to start.",
    )
    api_jwt_algorithm: Literal["HS256", "HS384", "HS512", "RS256"] = Field(
        "HS256", description="Admin API JWT algorithm (pinned)."
    )
    api_jwt_public_key: str = Field("", description="PEM public key when API_JWT_ALGORITHM=RS256.")
    api_jwt_jwks_url: str = Field("", description="JWKS URL when API_JWT_ALGORITHM=RS256 (instead of a key).")
    api_jwt_max_ttl_s: int = Field(
        43200, ge=60, description="Tokens living longer than this (`exp` - `iat`, or `exp` - now) are refused."
    )
    api_jwt_audience: str = Field("", description="When set, tokens must carry this `aud`.")
    api_jwt_issuer: str = Field("", description="When set, tokens must carry this `iss`.")
    api_jwt_jwks_min_refresh_s: float = Field(
        30.0, ge=0, description="An unknown key id refetches the JWKS at most once per this many seconds."
    )
    api_admin_role: str = Field("platform_admin", description="Role required for billing routes.")
    api_host: str = Field("127.0.0.1", description="API bind address.")
    api_port: int = Field(8000, ge=0, le=65535, description="API port.")
    api_docs: Literal["main", "ops", "off"] = Field(
        "main", description="`/docs`, `/redoc`, `/openapi.json`: on the API port, on API_OPS_PORT, or off."
    )
    api_metrics: Literal["main", "ops", "off"] = Field(
        "main", description="`/metrics`: on the API port, on API_OPS_PORT, or off."
    )
    api_ops_host: str = Field("127.0.0.1", description="Bind address of the operations port.")
    api_ops_port: int = Field(0, ge=0, le=65535, description="Operations port (docs and/or metrics set to `ops`).")

    # --- operations
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="`auto`: readable on a terminal, JSON otherwise."
    )
    log_level: str = Field("INFO", description="Log level.")
    metrics_port: int = Field(0, description="Prometheus port for worker services (0: off).")
    currency: str = Field("USD", description="Currency of DigitalOcean amounts.")

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """repr() and str() show URLs without their passwords (SecretStr fields mask themselves)."""
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if isinstance(value, str) and "://" in value else value

    def secret_values(self) -> list[str]:
        """Every secret this configuration holds, for the log scrubber: tokens, JWT secrets, URL passwords."""
        out = [a.token.get_secret_value() for a in self.digitalocean_accounts]
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                out.append(value.get_secret_value())
            elif isinstance(value, str) and "://" in value:
                out += url_secrets(value)
        return [v for v in out if v]

    @field_validator("digitalocean_accounts", mode="before")
    @classmethod
    def _accounts(cls, v: Any) -> Any:
        return parse_accounts(v) if isinstance(v, str) else v

    @field_validator("tax_names", mode="before")
    @classmethod
    def _tax_names(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip()
            return json.loads(v) if v.startswith("[") else [n.strip() for n in v.split(",") if n.strip()]
        return v

    @field_validator("budgets", mode="before")
    @classmethod
    def _budgets(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("{"):
                return {str(k): str(x) for k, x in json.loads(v).items()}
            out = {}
            for part in (p.strip() for p in v.split(",")):
                if not part:
                    continue
                if "=" not in part:
                    raise ValueError("BUDGETS entries must look like account=amount")
                name, amount = part.split("=", 1)
                out[name.strip()] = amount.strip()
            v = out
        if isinstance(v, dict):
            for amount in v.values():
                parse_minor(str(amount))  # a budget that is not an amount fails when settings load
        return v

    @field_validator("alert_thresholds", mode="before")
    @classmethod
    def _thresholds(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip()
            v = json.loads(v) if v.startswith("[") else [t.strip().rstrip("%") for t in v.split(",") if t.strip()]
        return sorted({int(t) for t in v})

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

    def budgets_minor(self) -> dict[str, int]:
        """Each account's monthly budget in minor units of CURRENCY (BUDGETS is checked when settings load)."""
        return {name: parse_minor(amount, self.currency) for name, amount in self.budgets.items()}

    def retry_policy(self, max_backoff_s: float = 30.0) -> RetryPolicy:
        """How a stage retries records that fail transiently (shared/retry.py)."""
        return RetryPolicy(
            min_s=self.retry_min_s,
            max_backoff_s=max_backoff_s,
            max_attempts=self.retry_max_attempts,
            max_s=self.retry_max_s,
            park_delay_s=self.retry_park_delay_s,
            park_max_delay_s=self.retry_park_max_delay_s,
            max_parks=self.retry_max_parks,
        )

    def tax_rule(self) -> TaxRule:
        """The one tax rule with the configured names (shared/tax.py)."""
        return TaxRule.from_names(self.tax_names)

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
            elif isinstance(value, SecretStr) or (
                value is None and name.endswith(("_token", "_secret", "_webhook_url"))
            ):
                value = mask(value)
            elif isinstance(value, str) and "://" in value:
                value = mask_url(value)
            out[name.upper()] = value
        return out


def mask(secret: SecretStr | None) -> str:
    if secret is None or not secret.get_secret_value():
        return "(unset)"
    s = secret.get_secret_value()
    return f"****{s[-4:]}" if len(s) >= 12 else "****"


_SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "secret", "token", "sslpassword", "api_key", "apikey")


def _secret_query_key(key: str) -> bool:
    k = key.lower()
    return k in _SECRET_QUERY_KEYS or k.endswith(("_password", "_secret", "_token"))


def mask_url(url: str) -> str:
    """Hide the password of a URL (postgresql://user:pw@host/db) and secret query values (?password=pw)."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        authority, sep, tail = rest.partition("/")
        if "@" in authority:
            cred, host = authority.rsplit("@", 1)
            if ":" in cred:
                authority = f"{cred.split(':', 1)[0]}:****@{host}"
        url = f"{scheme}://{authority}{sep}{tail}"
    if "?" in url:
        base, _, query = url.partition("?")
        parts = []
        for part in query.split("&"):
            key, eq, _value = part.partition("=")
            parts.append(f"{key}=****" if eq and _secret_query_key(unquote(key)) else part)
        url = f"{base}?{'&'.join(parts)}"
    return url


def url_secrets(url: str) -> list[str]:
    """The password and secret query values a URL carries (decoded), for the log scrubber."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    out = [parts.password] if parts.password else []
    out += [v for k, v in parse_qsl(parts.query) if v and _secret_query_key(k)]
    return [unquote(v) for v in out]


def describe_validation_error(e: ValidationError) -> str:
    """One line naming each variable that is wrong and why (never its value)."""
    problems = []
    for err in e.errors(include_input=False, include_url=False):
        loc = [str(p) for p in err["loc"]]
        where = (loc[0].upper() + "".join(f"[{p}]" for p in loc[1:])) if loc else "settings"
        problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "invalid configuration: " + "; ".join(problems)


_extra_env_files: tuple[Path, ...] = ()


def use_env_files(files: Sequence[Path]) -> None:
    """Settings files read after `.env` (and before the environment, which always wins): the dev stack's."""
    global _extra_env_files
    _extra_env_files = tuple(files)
    get_settings.cache_clear()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    s = Settings(_env_file=(".env", *_extra_env_files))
    from shared.logging import register_secrets

    register_secrets(s.secret_values())
    return s
