"""Migrations against a real PostgreSQL: applied once, safe to run again, concurrent runs serialize."""

from __future__ import annotations

import threading
from pathlib import Path

from shared import db


def test_migrations_apply_then_are_idempotent(database_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "001_t.sql").write_text("CREATE TABLE t (id int primary key);")
    ms = db.MigrationSet("twice", folder)
    with db.connect(database_url, autocommit=True) as conn:
        assert db.migrate_schema(conn, ms) == ["001_t.sql"]
        assert db.migrate_schema(conn, ms) == []
        (folder / "002_u.sql").write_text("CREATE TABLE u (id int primary key);")
        assert db.migrate_schema(conn, ms) == ["002_u.sql"]
        # Unqualified names land in the owner's schema.
        assert conn.execute("SELECT to_regclass('twice.u') IS NOT NULL AS ok").fetchone()["ok"]

    db.migrate(database_url)  # every registered service schema
    second = db.migrate(database_url)
    assert all(applied == [] for applied in second.values())
    with db.connect(database_url) as conn:
        schemas = {r["nspname"] for r in conn.execute("SELECT nspname FROM pg_namespace").fetchall()}
    assert {ms.schema for ms in db.MIGRATION_SETS} <= schemas


def test_concurrent_migrations_do_not_race(database_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "001_t.sql").write_text("CREATE TABLE t (id int primary key);")
    (folder / "002_row.sql").write_text("INSERT INTO t VALUES (1);")
    ms = db.MigrationSet("race", folder)
    results: list[list[str]] = []

    def go() -> None:
        with db.connect(database_url, autocommit=True) as conn:
            results.append(db.migrate_schema(conn, ms))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(r) for r in results) == [0, 0, 0, 2]
    with db.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) AS n FROM race.t").fetchone()["n"] == 1


def test_pool_round_trip(settings) -> None:
    pool = db.make_pool(settings)
    try:
        with pool.connection() as conn:
            assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
    finally:
        pool.close()
