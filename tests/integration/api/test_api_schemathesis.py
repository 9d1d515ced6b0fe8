"""schemathesis against the API's own OpenAPI, with a valid admin token and without one.

Every generated request (schema-valid and not) must get no 5xx, a documented status code, the documented
content type and headers, and a body matching its schema. The app runs in-process on a real PostgreSQL
with a small read model (an invoice with its lines, a balance, a dead letter) and a real broker, so every
route answers from real rows and /readyz is green.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from services.api.main import create_app
from services.projector.domain import to_change
from services.projector.store import ReadModelWriter
from shared.auth import mint
from shared.db import connect, migrate
from shared.settings import Settings
from shared.topics import BALANCE, COST_LINES, COST_LINES_MATCHED, INVOICE_COMPLETED, INVOICE_DISCOVERED, INVOICE_PUSHED
from tests import factories as f

CONFIG = SchemathesisConfig.from_dict(
    {
        # A cursor of the schema's alphabet that this API never issued is a documented 400 (not a 422: the
        # request matches the schema, it just names no position of a listing): schema-valid data may get it.
        "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403", "404"]}},
        # Unknown query parameters are ignored, as HTTP APIs do (cache busters, tracing); the bearer token is
        # ours to give (valid or absent), not generated.
        "generation": {"allow-extra-parameters": False, "with-security-parameters": False},
    }
)
SECRET = "schemathesis-secret-0123456789abcdef-0123456789abcdef"
UUID = "3f6a9c2e-8b41-4d7a-9e15-c2d04b7a6e01"
PREFIX = "st."
SEEN = {"invoice_id": "42", "description": "Invoice"}  # the invoice as the poller saw it


def _seed(database_url: str) -> None:
    lines = [f.cost_line(i, 100 + i, invoice_uuid=UUID, billed=True) for i in range(5)] + [
        f.cost_line(5, 50, invoice_uuid=UUID, is_tax=True, billed=True)
    ]
    events: list[tuple[Any, Any]] = [
        (BALANCE, f.balance(0, 1200)),
        (
            INVOICE_DISCOVERED,
            f.invoice_discovered(invoice_uuid=UUID, **SEEN, amount_minor=sum(x.amount_minor for x in lines)),
        ),
        *((COST_LINES_MATCHED, f.cost_line_matched(x, str(i) if i % 2 else None)) for i, x in enumerate(lines)),
        (COST_LINES, f.invoice_end(lines, invoice_uuid=UUID, revision=1, invoice_id="42", csv_sha256="sha-1")),
        (
            INVOICE_COMPLETED,
            f.invoice_completed(lines, invoice_uuid=UUID, revision=1, invoice_id="42", matched_count=2),
        ),
        (INVOICE_PUSHED, f.invoice_pushed(invoice_uuid=UUID, revision=1)),
        (
            INVOICE_DISCOVERED,
            f.invoice_discovered(
                invoice_uuid="0b9069cd-1c8c-5623-8cd3-86f966b1bbf8", **SEEN, period="2026-03-01", amount_minor=1000
            ),
        ),
    ]
    changes = []
    for offset, (topic, data) in enumerate(events):
        ch = to_change(
            f.event_record(data, account=f.ACCOUNT, topic=topic.name(PREFIX), key=UUID, offset=offset), PREFIX
        )
        assert ch is not None
        changes.append(ch)
    with connect(database_url, autocommit=True) as conn, conn.transaction():
        ReadModelWriter(conn).apply(changes)


@pytest.fixture(scope="module")
def api_schema(kafka, postgres_server: str) -> Iterator[schemathesis.BaseSchema]:
    import psycopg

    from shared.devinfra import url_with_database

    name = "schemathesis_api"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = url_with_database(postgres_server, name)
    migrate(database_url, ["readmodel"])
    _seed(database_url)
    s = Settings(
        _env_file=None,
        api_jwt_secret=SECRET,
        database_url=database_url,
        kafka_bootstrap_servers=kafka.bootstrap,
        kafka_broker_flavor=kafka.flavor,
    )
    app = create_app(s)
    pool = ConnectionPool(database_url, min_size=1, max_size=4, kwargs={"row_factory": dict_row, "autocommit": True})
    app.state.pool = pool  # what the lifespan does when uvicorn serves the app
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
    finally:
        pool.close()


TOKEN = mint(SECRET, algorithm="HS256", ttl_s=3600, claims={"roles": ["platform_admin"]})


def _run_every_operation(schema: schemathesis.BaseSchema, headers: dict[str, str], examples: int) -> int:
    """Each operation through hypothesis, schema-valid requests and invalid ones (schemathesis' own pytest
    plugin needs pytest < 9.2); returns how many requests were sent. A failing check raises with a curl line
    that reproduces it."""
    sent = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and not list(operation.iter_parameters()):
                continue  # nothing to get wrong (/healthz, /metrics...)

            @given(case=operation.as_strategy(mode))
            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
            def check(case: schemathesis.Case) -> None:
                nonlocal sent
                sent += 1
                case.call_and_validate(headers=headers)

            check()
    return sent


def test_api_with_an_admin_token(api_schema: schemathesis.BaseSchema) -> None:
    assert (
        _run_every_operation(api_schema, {"Authorization": f"Bearer {TOKEN}"}, examples=25) > 400
    )  # about as many as the run that found ?period=0


def test_api_without_a_token(api_schema: schemathesis.BaseSchema) -> None:
    assert _run_every_operation(api_schema, {}, examples=10) > 30
