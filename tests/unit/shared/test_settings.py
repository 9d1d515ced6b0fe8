import pytest
from pydantic import SecretStr

from shared.settings import Settings, mask_url, parse_accounts


def _s(**env) -> Settings:
    return Settings(_env_file=None, **env)


def test_defaults_match_the_documented_contract() -> None:
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


def test_repr_and_str_never_show_a_secret() -> None:
    s = _s(
        database_url="postgresql://cb:pgpassword@db:5432/cloudbill?sslpassword=keypw",
        digitalocean_token=SecretStr("dop_v1_supersecrettoken1234"),
        api_jwt_secret=SecretStr("api-secret-value-xyz-0123456789-abcdef"),
        skyai_finance_url="https://fin:finpw@finance.example",
    )
    for text in (repr(s), str(s)):
        for secret in ("pgpassword", "keypw", "supersecrettoken", "api-secret-value", "finpw"):
            assert secret not in text


def test_every_secret_is_known_to_the_log_scrubber() -> None:
    s = _s(
        database_url="postgresql://cb:p%40ssword@db/cloudbill?password=q-pw",
        digitalocean_token=SecretStr("t" * 64),
        digitalocean_accounts="lab=" + "a" * 64,
        skyai_finance_jwt_secret=SecretStr("f" * 40),
        api_jwt_secret=SecretStr("s" * 40),
        alert_webhook_url=SecretStr("https://hooks.example/services/T0/B0/whsecretpath"),
        alert_webhook_secret=SecretStr("w" * 40),
    )
    assert set(s.secret_values()) == {
        "p@ssword",
        "q-pw",
        "t" * 64,
        "a" * 64,
        "f" * 40,
        "s" * 40,
        "https://hooks.example/services/T0/B0/whsecretpath",
        "w" * 40,
    }


@pytest.mark.parametrize(
    "raw",
    [
        "lab:" + "ab" * 32,  # the typo: ':' for '='
        "bad name=" + "ab" * 32,
        '[{"name": "x y", "token": "' + "ab" * 32 + '"}]',
        '[{"name": "x", "token": "' + "ab" * 32 + '"',
    ],
)
def test_a_mistyped_account_list_is_one_line_without_the_token(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from shared.settings import describe_validation_error

    monkeypatch.setenv("DIGITALOCEAN_ACCOUNTS", raw)
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)
    for text in (str(info.value), repr(info.value), describe_validation_error(info.value)):
        assert "abab" not in text  # not even a part of it
    line = describe_validation_error(info.value)
    assert "\n" not in line and line.startswith("invalid configuration: DIGITALOCEAN_ACCOUNTS")


def test_mask_url_hides_secret_query_values() -> None:
    assert mask_url("https://h/p?user=u&password=x&api_key=y&db_password=z") == (
        "https://h/p?user=u&password=****&api_key=****&db_password=****"
    )
