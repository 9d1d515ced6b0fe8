from datetime import UTC, datetime, timedelta

import jwt
import pytest

from shared.auth import RoleError, TokenError, mint, require_role, roles_of, verify
from shared.logging import scrub

SECRET = "x" * 32


def test_mint_and_verify() -> None:
    tok = mint(SECRET, algorithm="HS512", ttl_s=60, claims={"tenant_id": "platform-admin", "roles": ["admin"]})
    claims = verify(tok, SECRET, algorithms=["HS512"])
    assert claims["tenant_id"] == "platform-admin"
    assert claims["exp"] - claims["iat"] == 60
    require_role(claims, "admin")


def test_expired_bad_signature_wrong_alg_and_none_are_refused() -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    with pytest.raises(TokenError, match="expired"):
        verify(mint(SECRET, algorithm="HS256", ttl_s=60, now=past), SECRET, algorithms=["HS256"])
    with pytest.raises(TokenError, match="signature"):
        verify(mint("y" * 32, algorithm="HS256", ttl_s=60), SECRET, algorithms=["HS256"])
    with pytest.raises(TokenError, match="algorithm"):
        verify(mint(SECRET, algorithm="HS256", ttl_s=60), SECRET, algorithms=["HS512"])
    unsigned = jwt.encode({"exp": 9999999999, "roles": ["admin"]}, None, algorithm="none")
    with pytest.raises(TokenError):
        verify(unsigned, SECRET, algorithms=["HS256"])
    with pytest.raises(TokenError, match="exp"):
        verify(jwt.encode({"roles": ["admin"]}, SECRET, algorithm="HS256"), SECRET, algorithms=["HS256"])
    with pytest.raises(TokenError, match="missing"):
        verify("", SECRET, algorithms=["HS256"])


def test_roles() -> None:
    assert roles_of({"roles": ["a", "b"]}) == ["a", "b"]
    assert roles_of({"role": "a"}) == ["a"]
    assert roles_of({}) == []
    with pytest.raises(RoleError):
        require_role({"roles": ["viewer"]}, "admin")


def test_scrub_removes_tokens() -> None:
    text = "GET with Authorization: Bearer dop_v1_abc123 and token dop_v1_zzz and jwt eyJhbGc.eyJzdWIi.sig"
    out = scrub(text)
    assert "dop_v1_abc123" not in out and "dop_v1_zzz" not in out and "eyJzdWIi" not in out
    assert "Bearer ****" in out


# ----------------------------------------------------------------------------------------- no secret in logs
LEGACY = "5f0c1d2e3a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f"  # a 64-hex DigitalOcean token


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("connect postgresql://cloudbill:hunter2-pw@db:5432/cloudbill failed", "hunter2-pw"),
        ("GET https://example.test/x?user=a&password=pw-in-query&b=1", "pw-in-query"),
        ("env DIGITALOCEAN_TOKEN=tok-in-env SKYAI_FINANCE_JWT_SECRET=fin-in-env", "tok-in-env"),
        ("env DIGITALOCEAN_TOKEN=tok-in-env SKYAI_FINANCE_JWT_SECRET=fin-in-env", "fin-in-env"),
        ('{"api_secret": "json-secret", "other": 1}', "json-secret"),
        (f"Authorization: {LEGACY}", LEGACY),
        (f"token={LEGACY}", LEGACY),
        ("refresh dor_v1_abcdef0123 and oauth doo_v1_abcdef0123", "_v1_abcdef0123"),
    ],
)
def test_scrub_recognises_credentials_by_shape(text: str, secret: str) -> None:
    assert secret not in scrub(text)


def test_scrub_keeps_content_hashes_and_ordinary_words() -> None:
    text = f"payload_hash={LEGACY} invalid token: expired; max_tokens=5"
    assert scrub(text) == text


def test_registered_secrets_are_masked_whatever_their_shape() -> None:
    from shared.logging import register_secrets

    register_secrets(["plain words as a secret!", "short", None])
    out = scrub("x plain words as a secret! y plain+words+as+a+secret%21 z short")
    assert "plain words" not in out and "plain+words" not in out
    assert out.endswith("short")  # too short to mask without wrecking every log line


def _record(msg: str, *args: object, exc: bool = False, **extra: object):
    import logging
    import sys

    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom with dop_v1_traceback0secret inside")
        except RuntimeError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("t", logging.ERROR, __file__, 1, msg, args, exc_info)
    rec.__dict__.update(extra)
    return rec


def test_json_and_console_lines_are_scrubbed_whole() -> None:
    import json

    from shared.logging import ConsoleFormatter, JsonFormatter

    rec = _record(
        "poll %s", "dop_v1_argsecret0000", exc=True, password="extra-pw-value", url="https://u:urlpw-x@h/?token=qt"
    )
    line = JsonFormatter().format(rec)
    for leaked in ("argsecret", "traceback0secret", "extra-pw-value", "urlpw-x", "token=qt"):
        assert leaked not in line
    body = json.loads(line)
    assert body["password"] == "****" and "Traceback" in body["exc"]
    console = ConsoleFormatter("svc").format(_record("poll %s", "dop_v1_argsecret0000", exc=True))
    assert "Traceback" in console and "traceback0secret" not in console and "argsecret" not in console


def test_uncaught_exceptions_are_logged_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    import logging
    import sys
    import threading

    from shared import logging as cblog

    saved = logging.getLogger().handlers[:], sys.excepthook, threading.excepthook
    try:
        cblog.setup("svc", "json")
        t = threading.Thread(target=lambda: (_ for _ in ()).throw(ValueError("dop_v1_threadsecret99")))
        t.start()
        t.join()
        try:
            raise KeyError("dop_v1_mainsecret0099")
        except KeyError:
            sys.excepthook(*sys.exc_info())
    finally:
        logging.getLogger().handlers[:], sys.excepthook, threading.excepthook = saved
    err = capsys.readouterr().err
    assert err.count('"level": "critical"') == 2
    assert "threadsecret" not in err and "mainsecret" not in err


def test_log_lines_go_to_the_stderr_of_the_moment_not_a_closed_one(capsys: pytest.CaptureFixture[str]) -> None:
    """A CLI command run in-process swaps sys.stderr for a buffer it then closes: later lines must not fail."""
    import io
    import logging
    import sys
    import threading

    from shared import logging as cblog

    saved = logging.getLogger().handlers[:], sys.excepthook, threading.excepthook
    real, swapped = sys.stderr, io.StringIO()
    try:
        sys.stderr = swapped
        cblog.setup("svc", "json")
        logging.getLogger("t").warning("during the command")
        sys.stderr = real
        swapped.close()
        logging.getLogger("t").warning("after the command")
    finally:
        sys.stderr = real
        logging.getLogger().handlers[:], sys.excepthook, threading.excepthook = saved
    err = capsys.readouterr().err
    assert "after the command" in err and "Logging error" not in err and "during the command" not in err
