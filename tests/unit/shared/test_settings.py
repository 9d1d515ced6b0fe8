import pytest
from pydantic import SecretStr

from shared.settings import Settings, mask_url, parse_accounts


def _s(**env) -> Settings:
    return Settings(_env_file=None, **env)


def test_defaults_match_the_brief() -> None:
    s = _s()
    assert s.skyai_finance_url == "http://localhost:4010"
    assert s.skyai_finance_jwt_algorithm == "HS512"
    assert s.skyai_finance_tenant_id == "platform-admin"
    assert s.skyai_finance_roles == ["admin"]
    assert s.digitalocean_api_url == "https://api.digitalocean.com"
    assert s.poll_balance_cron == "7 * * * *"
    assert s.poll_history_cron == "23 2 * * *"
    assert not s.finance_configured


def test_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k:1")
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", "dop_v1_abcdef0123456789")
    monkeypatch.setenv("DIGITALOCEAN_ACCOUNTS", "lab=dop_v1_lab,ops=dop_v1_ops")
    monkeypatch.setenv("SKYAI_FINANCE_ROLES", "admin,auditor")
    monkeypatch.setenv("SKYAI_FINANCE_JWT_SECRET", "s3cret-s3cret")
    s = Settings(_env_file=None)
    assert s.kafka_bootstrap_servers == "k:1"
    assert [a.name for a in s.accounts()] == ["default", "lab", "ops"]
    assert s.skyai_finance_roles == ["admin", "auditor"]
    assert s.finance_configured


def test_accounts_as_json() -> None:
    accs = parse_accounts('[{"name": "a", "token": "t1"}, {"name": "b", "token": "t2"}]')
    assert [(a.name, a.token.get_secret_value()) for a in accs] == [("a", "t1"), ("b", "t2")]


@pytest.mark.parametrize("raw", ["justatoken", "bad name=tok", ":x=tok"])
def test_bad_accounts_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_accounts(raw)


def test_same_account_twice_is_refused() -> None:
    s = _s(digitalocean_token=SecretStr("t"), digitalocean_accounts="default=u")
    with pytest.raises(ValueError, match="configured twice"):
        s.accounts()


def test_masked_configuration_hides_every_secret() -> None:
    s = _s(
        digitalocean_token=SecretStr("dop_v1_supersecrettoken1234"),
        digitalocean_accounts="lab=dop_v1_anothersecret9999",
        skyai_finance_jwt_secret=SecretStr("finance-secret-value"),
        api_jwt_secret=SecretStr("api-secret-value-xyz"),
        database_url="postgresql://cb:pgpassword@db:5432/cloudbill",
    )
    text = repr(s.masked())
    for secret in ("supersecrettoken", "anothersecret", "finance-secret", "api-secret-value", "pgpassword"):
        assert secret not in text
    m = s.masked()
    assert m["DIGITALOCEAN_TOKEN"] == "****1234"
    assert m["DATABASE_URL"] == "postgresql://cb:****@db:5432/cloudbill"
    assert _s().masked()["SKYAI_FINANCE_JWT_SECRET"] == "(unset)"


def test_mask_url_without_password_is_unchanged() -> None:
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert mask_url("postgresql:///db?host=/tmp") == "postgresql:///db?host=/tmp"
