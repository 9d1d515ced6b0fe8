"""PostgreSQL with psycopg 3: a pool per service and per-schema SQL migrations.

Each owning service keeps its migrations as numbered `.sql` files in its own folder and its tables in
its own schema. `migrate()` applies the missing ones in order under an advisory lock, so running it
twice, or from two processes at once, is safe.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from shared.settings import Settings

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent

# The connections of this project return rows as dicts (row_factory=dict_row); these name that for the type checker.
DictConnection: TypeAlias = "psycopg.Connection[DictRow]"
DictPool: TypeAlias = "ConnectionPool[psycopg.Connection[DictRow]]"


@dataclass(frozen=True)
class MigrationSet:
    schema: str
    folder: Path


# Every owner of a schema, in the order they are migrated.
MIGRATION_SETS: tuple[MigrationSet, ...] = (
    MigrationSet("ingester", ROOT / "services" / "ingester" / "migrations"),
    MigrationSet("finance_pusher", ROOT / "services" / "finance_pusher" / "migrations"),
    MigrationSet("readmodel", ROOT / "services" / "projector" / "migrations"),
    MigrationSet("poller", ROOT / "services" / "poller" / "migrations"),
    MigrationSet("alerter", ROOT / "services" / "alerter" / "migrations"),
    MigrationSet("finance_sim", ROOT / "sims" / "finance" / "migrations"),
    MigrationSet("ops", ROOT / "cloudbill" / "migrations"),
)


def database_url(settings: Settings) -> str:
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set (dev and tests start the embedded PostgreSQL and set it)")
    return settings.database_url


def make_pool(settings: Settings, *, min_size: int = 1, name: str = "cloudbill") -> DictPool:
    pool: DictPool = ConnectionPool(
        database_url(settings),
        min_size=min_size,
        max_size=settings.database_pool_max,
        kwargs={"row_factory": dict_row, "autocommit": False},
        name=name,
        open=False,
    )
    pool.open(wait=True, timeout=30)
    return pool


def connect(settings_or_url: Settings | str, **kw: Any) -> DictConnection:
    url = settings_or_url if isinstance(settings_or_url, str) else database_url(settings_or_url)
    return psycopg.connect(url, row_factory=dict_row, **kw)


def migrate_schema(conn: DictConnection, ms: MigrationSet) -> list[str]:
    """Apply the missing migrations of one schema. Returns the names applied now."""
    files = sorted(ms.folder.glob("*.sql")) if ms.folder.is_dir() else []
    applied_now: list[str] = []
    with conn.transaction():
        # One lock per schema: concurrent service starts wait for each other instead of racing.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"cloudbill.migrate.{ms.schema}",))
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{ms.schema}"')
        conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{ms.schema}".schema_migrations ('
            " name text PRIMARY KEY, sha256 text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            r["name"]: r["sha256"]
            for r in conn.execute(f'SELECT name, sha256 FROM "{ms.schema}".schema_migrations').fetchall()
        }
        for f in files:
            sql = f.read_text()
            digest = hashlib.sha256(sql.encode()).hexdigest()
            if f.name in done:
                if done[f.name] != digest:
                    log.warning("migration %s/%s changed after it was applied", ms.schema, f.name)
                continue
            conn.execute(f'SET LOCAL search_path TO "{ms.schema}", public')
            conn.execute(sql)
            conn.execute(
                f'INSERT INTO "{ms.schema}".schema_migrations (name, sha256) VALUES (%s, %s)', (f.name, digest)
            )
            applied_now.append(f.name)
            log.info("applied migration %s/%s", ms.schema, f.name)
    return applied_now


def migrate(settings_or_url: Settings | str, schemas: list[str] | None = None) -> dict[str, list[str]]:
    """Apply every (or the named) schema's missing migrations."""
    result: dict[str, list[str]] = {}
    with connect(settings_or_url, autocommit=True) as conn:
        for ms in MIGRATION_SETS:
            if schemas is None or ms.schema in schemas:
                result[ms.schema] = migrate_schema(conn, ms)
    return result
