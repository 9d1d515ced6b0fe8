"""Logging: JSON lines in production, readable on a terminal. Secrets never reach a log line.

Every line a handler writes goes through `scrub` whole: the message, `extra=` fields, tracebacks and stack
info, in both formats. `scrub` removes what looks like a credential (bearer tokens, DigitalOcean tokens in
both shapes, JWTs, URL passwords, `password=`/`token=`-style values) and every configured secret value
registered with `register_secrets` (`shared.settings.get_settings` registers them), whatever its shape.
Uncaught exceptions (main thread and threads) are logged through the same handler, so a crash's traceback
is scrubbed too.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "****"
# Registered values shorter than this are not masked: a 3-character "secret" would mask every word it is in
# (and such a secret is refused where it matters: see shared.auth.check_hmac_secret).
MIN_REGISTERED_LEN = 8

_KEYWORDS = r"(?:[a-z0-9_]*(?:password|passwd|secret|token)|pwd|api[_-]?key|apikey|authorization)"
_SECRET_RES: list[tuple[re.Pattern[str], str]] = [
    # Authorization headers, whatever the token's shape.
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1" + MASK),
    # DigitalOcean personal access, OAuth and refresh tokens.
    (re.compile(r"\bdo[opr]_v1_[A-Za-z0-9]+"), MASK),
    # JWTs.
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), MASK),
    # A password in a URL's user info: scheme://user:password@host.
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)[^\s@/]+(@)"), r"\1" + MASK + r"\2"),
    # key=value (URL queries, environment dumps, libpq strings): ?password=x, DIGITALOCEAN_TOKEN=x.
    (re.compile(r"(?i)(\b" + _KEYWORDS + r"=)[^\s&'\",;)}\]]+"), r"\1" + MASK),
    # JSON and repr fields: "password": "x", 'api_secret': 'x'.
    (re.compile(r"(?i)([\"']" + _KEYWORDS + r"[\"']\s*:\s*[\"'])[^\"']+"), r"\1" + MASK),
    # Legacy DigitalOcean tokens (64 hex digits, no prefix) named as a token or secret. Bare 64-hex strings
    # stay: they are the content hashes and idempotency keys that make logs useful.
    (re.compile(r"(?i)((?:token|secret|password|authorization)[\s\"':=]{1,4})[0-9a-f]{64}\b"), r"\1" + MASK),
]

_registered: set[str] = set()
_registered_re: re.Pattern[str] | None = None
_lock = threading.Lock()


def register_secrets(values: Iterable[str | None]) -> None:
    """Mask these exact values (and their URL-encoded forms) wherever they appear in a log line."""
    global _registered_re
    with _lock:
        before = len(_registered)
        for v in values:
            if v and len(v) >= MIN_REGISTERED_LEN:
                _registered.update({v, quote(v, safe=""), quote_plus(v)})
        if len(_registered) != before:
            alternatives = sorted(_registered, key=len, reverse=True)  # longest first: no partial leftovers
            _registered_re = re.compile("|".join(re.escape(v) for v in alternatives))


def scrub(text: str) -> str:
    if _registered_re is not None:
        text = _registered_re.sub(MASK, text)
    for rx, repl in _SECRET_RES:
        text = rx.sub(repl, text)
    return text


_SECRET_KEY = re.compile(r"(?i)" + _KEYWORDS)


def scrub_value(value: Any, key: str = "") -> Any:
    """Scrub every string inside a JSON-able value (log `extra=` fields); a field named like a secret is masked."""
    if key and _SECRET_KEY.fullmatch(key) and value not in (None, ""):
        return MASK
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrub_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [scrub_value(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return scrub(str(value))  # SecretStr, URLs, paths...: their text, scrubbed


_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        out |= {k: scrub_value(v, k) for k, v in vars(record).items() if k not in _STD}
        if record.exc_info:
            out["exc"] = scrub(self.formatException(record.exc_info))
        if record.stack_info:
            out["stack"] = scrub(self.formatStack(record.stack_info))
        return json.dumps(out, default=lambda v: scrub(str(v)))


class ConsoleFormatter(logging.Formatter):
    """One readable line (plus a traceback when there is one), scrubbed as a whole."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)-7s {service} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, where: str = "main thread"
) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("cloudbill").critical("uncaught exception in the %s", where, exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread else "?"
    _log_uncaught(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback, f"thread {name}")


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the `sys.stderr` of the moment, not the one at setup.

    A CLI command run in-process (typer's CliRunner, as tests do) swaps `sys.stderr` for a buffer it closes
    afterwards; a handler that kept that buffer made every later log line of the process a "--- Logging error
    --- ValueError: I/O operation on closed file" instead of the line (seen in CI from the finance pusher's
    threads). The standard library's last-resort handler resolves it the same way.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        """`StreamHandler.__init__` and `setStream` assign it: always the current `sys.stderr` instead."""


def setup(service: str, fmt: str = "auto", level: str = "INFO") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if use_json else ConsoleFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "aiokafka", "faust", "mode", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
