"""Postgres adapter of the poller (schema `poller`): poll status, previous inventory, replica locks.

Replicas: every poll of one (job, account) runs under a session advisory lock. A scheduled poll takes it
with `pg_try_advisory_lock` (busy → another replica is polling: skip) and then claims its cron tick in
`poll_status.last_tick` (already claimed → another replica polled this tick: skip). So N replicas poll
each tick once. A one-off `cloudbill poll` waits for the lock instead, then polls (it was asked to).
The catch-up at start (`claim_missed`) takes the same lock and claims the schedule's previous tick only
when no poll succeeded since that tick: replicas starting together catch up once, a restart after a
successful catch-up (or after a one-off poll) does not poll again, and a failed catch-up is retried by the
next replica that starts.
Should a replica die mid-poll, its connection closes and Postgres frees the lock; anything it had sent
is re-sent by the next poll with the same deterministic ids, which downstream consumers dedup.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from services.poller.domain import Known
from shared.db import DictPool
from shared.events import Resource

log = logging.getLogger(__name__)

LOCK_NAMESPACE = "cloudbill.poller"


class PollStore:
    def __init__(self, pool: DictPool) -> None:
        self.pool = pool

    # ------------------------------------------------------------------------------ replica lock
    @contextmanager
    def lock(self, job: str, account: str, *, wait_s: float | None = None) -> Iterator[bool]:
        """Hold the (job, account) advisory lock for the block. Yields False when it could not be taken
        (at once with `wait_s=None`, or within `wait_s` seconds)."""
        with self.pool.connection() as conn:
            conn.autocommit = True
            args = (LOCK_NAMESPACE, f"{job}:{account}")
            if wait_s is None:
                row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s), hashtext(%s)) AS ok", args).fetchone()
                assert row is not None  # a SELECT without FROM returns one row
                got = row["ok"]
            else:
                try:
                    conn.execute(f"SET lock_timeout = '{int(max(wait_s, 0.001) * 1000)}ms'")
                    conn.execute("SELECT pg_advisory_lock(hashtext(%s), hashtext(%s))", args)
                    got = True
                except pg_errors.LockNotAvailable:
                    got = False
                finally:
                    conn.execute("RESET lock_timeout")
            try:
                yield bool(got)
            finally:
                if got:
                    conn.execute("SELECT pg_advisory_unlock(hashtext(%s), hashtext(%s))", args)
                conn.autocommit = False

    # ------------------------------------------------------------------------------ status
    def claim(self, job: str, account: str, tick: datetime | None, replica: str) -> bool:
        """Record a poll as running. With a cron tick: False when that tick was already claimed."""
        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "SELECT last_tick FROM poller.poll_status WHERE job = %s AND account = %s FOR UPDATE", (job, account)
            ).fetchone()
            if tick is not None and row and row["last_tick"] is not None and row["last_tick"] >= tick:
                return False
            conn.execute(
                """
                INSERT INTO poller.poll_status (job, account, status, last_tick, started_at, replica)
                VALUES (%(job)s, %(account)s, 'running', %(tick)s, now(), %(replica)s)
                ON CONFLICT (job, account) DO UPDATE SET
                    status = 'running', started_at = now(), finished_at = NULL, replica = EXCLUDED.replica,
                    last_tick = COALESCE(EXCLUDED.last_tick, poller.poll_status.last_tick)
                """,
                {"job": job, "account": account, "tick": tick, "replica": replica},
            )
            return True

    def claim_missed(self, job: str, account: str, tick: datetime, replica: str) -> str | None:
        """Catch-up claim (call under `lock`): when no poll succeeded since `tick`, record the poll as running
        for that tick and say why it was missed ("never polled" or the last success); else None."""
        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "SELECT last_success_at FROM poller.poll_status WHERE job = %s AND account = %s FOR UPDATE",
                (job, account),
            ).fetchone()
            last = row["last_success_at"] if row else None
            if last is not None and last >= tick:
                return None
            conn.execute(
                """
                INSERT INTO poller.poll_status (job, account, status, last_tick, started_at, replica)
                VALUES (%(job)s, %(account)s, 'running', %(tick)s, now(), %(replica)s)
                ON CONFLICT (job, account) DO UPDATE SET
                    status = 'running', started_at = now(), finished_at = NULL, replica = EXCLUDED.replica,
                    last_tick = GREATEST(EXCLUDED.last_tick, poller.poll_status.last_tick)
                """,
                {"job": job, "account": account, "tick": tick, "replica": replica},
            )
            return "never polled" if last is None else f"last success {last.isoformat()}"

    def finish(
        self, job: str, account: str, status: str, *, events: int, detail: Mapping[str, Any], error: str | None = None
    ) -> None:
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(
                """
                UPDATE poller.poll_status SET
                    status = %(status)s, finished_at = now(), events = %(events)s, detail = %(detail)s,
                    error = %(error)s,
                    last_success_at = CASE WHEN %(status)s IN ('ok', 'partial') THEN now() ELSE last_success_at END
                WHERE job = %(job)s AND account = %(account)s
                """,
                {
                    "job": job,
                    "account": account,
                    "status": status,
                    "events": events,
                    "detail": Jsonb(dict(detail)),
                    "error": error,
                },
            )

    def statuses(self) -> list[dict[str, Any]]:
        """Every (job, account) last poll, for `cloudbill status`."""
        with self.pool.connection() as conn:
            return conn.execute("SELECT * FROM poller.poll_status ORDER BY account, job").fetchall()

    # ------------------------------------------------------------------------------ inventory
    def previous_inventory(self, account: str) -> dict[str, set[str]]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT kind, resource_id FROM poller.inventory WHERE account = %s", (account,)
            ).fetchall()
        out: dict[str, set[str]] = {}
        for r in rows:
            out.setdefault(r["kind"], set()).add(r["resource_id"])
        return out

    def known_inventory(self, account: str) -> dict[str, dict[str, Known]]:
        """kind → id → what the previous syncs knew of it (for the history records of resources gone since)."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT kind, resource_id, name, first_seen_at, last_seen_at, resource"
                " FROM poller.inventory WHERE account = %s",
                (account,),
            ).fetchall()
        out: dict[str, dict[str, Known]] = {}
        for r in rows:
            out.setdefault(r["kind"], {})[r["resource_id"]] = Known(
                r["name"], r["first_seen_at"], r["last_seen_at"], r["resource"]
            )
        return out

    def save_inventory(
        self, account: str, current: Mapping[str, Mapping[str, tuple[Resource, str]]], listed_kinds: set[str]
    ) -> None:
        """Replace the known inventory of the kinds listed this time (others keep their previous state).

        `current[kind][resource_id] = (resource, event_id)`. Called after the producer flushed, so a crash
        in between only re-sends the same records and tombstones on the next sync.
        """
        with self.pool.connection() as conn, conn.transaction():
            for kind in sorted(listed_kinds):
                items = current.get(kind, {})
                conn.execute(
                    "DELETE FROM poller.inventory WHERE account = %s AND kind = %s AND NOT (resource_id = ANY(%s))",
                    (account, kind, list(items)),
                )
                if items:
                    with conn.cursor() as cur:
                        cur.executemany(
                            """
                            INSERT INTO poller.inventory (account, kind, resource_id, name, event_id, resource)
                            VALUES (%s, %s, %s, %s, %s, %s)
                            ON CONFLICT (account, kind, resource_id) DO UPDATE SET
                                name = EXCLUDED.name, event_id = EXCLUDED.event_id, last_seen_at = now(),
                                resource = EXCLUDED.resource
                            """,
                            [
                                (account, kind, rid, res.name, eid, Jsonb(res.model_dump(mode="json")))
                                for rid, (res, eid) in sorted(items.items())
                            ],
                        )
