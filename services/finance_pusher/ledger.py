"""Postgres adapter for the pusher's ledger (schema `finance_pusher`).

`pushes` is append-only: one row per push finance accepted, with whether its invoice-pushed event was
delivered yet. `invoices` says, per invoice, the highest revision settled and the content finance has:
the input of the push decision. `holds` keeps every revision refused by the money gates, whole, with the
admin release (who, why, when) that later let it through.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from services.finance_pusher.domain import PushedState
from shared.db import DictPool

_PUSH_COLUMNS = (
    "id, invoice_uuid, revision, payload_sha256, idempotency_key, finance_invoice_id, action, account,"
    " pushed_at, published_at"
)


@dataclass(frozen=True)
class PushRecord:
    id: int
    invoice_uuid: str
    revision: int
    payload_sha256: str
    idempotency_key: str
    finance_invoice_id: str
    action: str
    account: str
    pushed_at: datetime
    published_at: datetime | None


@dataclass(frozen=True)
class HoldRecord:
    invoice_uuid: str
    revision: int
    account: str
    completion: dict[str, Any]
    reason: str
    held_at: datetime
    released_at: datetime | None
    released_by: str | None
    release_reason: str | None


@dataclass(frozen=True)
class InvoiceLedger:
    state: PushedState
    last_push: PushRecord


class Ledger:
    def __init__(self, pool: DictPool) -> None:
        self._pool = pool

    def sender_id(self) -> str:
        """This ledger's identity, part of every Idempotency-Key (see domain.idempotency_key)."""
        with self._pool.connection() as conn:
            row = conn.execute("SELECT id FROM finance_pusher.sender").fetchone()
        if row is None:  # pragma: no cover - the migration inserts it
            raise RuntimeError("finance_pusher.sender is empty: run the migrations")
        sender: str = row["id"]
        return sender

    def current(self, invoice_uuid: str) -> InvoiceLedger | None:
        """What finance has for this invoice, per our records (None: never pushed)."""
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT i.revision AS settled_revision, i.payload_sha256 AS settled_sha256,"
                f" {', '.join('p.' + c.strip() for c in _PUSH_COLUMNS.split(','))}"
                " FROM finance_pusher.invoices i JOIN finance_pusher.pushes p ON p.id = i.last_push_id"
                " WHERE i.invoice_uuid = %s",
                (invoice_uuid,),
            ).fetchone()
        if row is None:
            return None
        state = PushedState(row.pop("settled_revision"), row.pop("settled_sha256"))
        return InvoiceLedger(state, PushRecord(**row))

    def record_push(
        self,
        *,
        invoice_uuid: str,
        revision: int,
        payload_sha256: str,
        idempotency_key: str,
        finance_invoice_id: str,
        action: str,
        account: str,
        pushed_at: datetime,
    ) -> PushRecord:
        """One transaction: the push row and the invoice's new settled state."""
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "INSERT INTO finance_pusher.pushes (invoice_uuid, revision, payload_sha256, idempotency_key,"
                " finance_invoice_id, action, account, pushed_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                f" RETURNING {_PUSH_COLUMNS}",
                (
                    invoice_uuid,
                    revision,
                    payload_sha256,
                    idempotency_key,
                    finance_invoice_id,
                    action,
                    account,
                    pushed_at,
                ),
            ).fetchone()
            assert row is not None  # INSERT ... RETURNING returns the inserted row
            conn.execute(
                "INSERT INTO finance_pusher.invoices AS i (invoice_uuid, revision, payload_sha256, finance_invoice_id,"
                " last_push_id, pushed_to_finance_at) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (invoice_uuid) DO UPDATE SET revision = GREATEST(i.revision, EXCLUDED.revision),"
                " payload_sha256 = EXCLUDED.payload_sha256, finance_invoice_id = EXCLUDED.finance_invoice_id,"
                " last_push_id = EXCLUDED.last_push_id, pushed_to_finance_at = EXCLUDED.pushed_to_finance_at,"
                " updated_at = now()",
                (invoice_uuid, revision, payload_sha256, finance_invoice_id, row["id"], pushed_at),
            )
        return PushRecord(**row)

    def note_revision(self, invoice_uuid: str, revision: int) -> None:
        """A newer revision with unchanged content is settled without a push: remember it is the newest."""
        with self._pool.connection() as conn:
            conn.execute(
                "UPDATE finance_pusher.invoices SET revision = GREATEST(revision, %s), updated_at = now()"
                " WHERE invoice_uuid = %s",
                (revision, invoice_uuid),
            )

    def mark_published(self, push_id: int) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                "UPDATE finance_pusher.pushes SET published_at = now() WHERE id = %s AND published_at IS NULL",
                (push_id,),
            )

    def pushes(self, invoice_uuid: str | None = None) -> list[PushRecord]:
        """Every push, oldest first (all invoices, or one)."""
        where, args = ("WHERE invoice_uuid = %s", (invoice_uuid,)) if invoice_uuid else ("", ())
        with self._pool.connection() as conn:
            rows = conn.execute(f"SELECT {_PUSH_COLUMNS} FROM finance_pusher.pushes {where} ORDER BY id", args)
            return [PushRecord(**r) for r in rows.fetchall()]

    # ------------------------------------------------------------------------------ money gates: holds
    def record_hold(
        self, *, invoice_uuid: str, revision: int, account: str, completion: dict[str, Any], reason: str
    ) -> bool:
        """Remember a refused revision (idempotent). True the first time."""
        with self._pool.connection() as conn:
            cur = conn.execute(
                "INSERT INTO finance_pusher.holds (invoice_uuid, revision, account, completion, reason)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (invoice_uuid, revision) DO NOTHING",
                (invoice_uuid, revision, account, Jsonb(completion), reason),
            )
            return cur.rowcount == 1

    def hold(self, invoice_uuid: str, revision: int) -> HoldRecord | None:
        with self._pool.connection() as conn:
            r = conn.execute(
                "SELECT invoice_uuid, revision, account, completion, reason, held_at, released_at, released_by,"
                " release_reason FROM finance_pusher.holds WHERE invoice_uuid = %s AND revision = %s",
                (invoice_uuid, revision),
            ).fetchone()
        return HoldRecord(**r) if r else None

    def mark_released(
        self, invoice_uuid: str, revision: int, *, released_by: str, reason: str, released_at: datetime
    ) -> None:
        """The first release of a hold is the one recorded (a redelivered release changes nothing)."""
        with self._pool.connection() as conn:
            conn.execute(
                "UPDATE finance_pusher.holds SET released_at = %s, released_by = %s, release_reason = %s"
                " WHERE invoice_uuid = %s AND revision = %s AND released_at IS NULL",
                (released_at, released_by, reason, invoice_uuid, revision),
            )

    def latest_revision(self, invoice_uuid: str) -> int | None:
        """The newest revision the pusher has seen complete (settled or held)."""
        with self._pool.connection() as conn:
            r = conn.execute(
                "SELECT GREATEST((SELECT revision FROM finance_pusher.invoices WHERE invoice_uuid = %(u)s),"
                " (SELECT max(revision) FROM finance_pusher.holds WHERE invoice_uuid = %(u)s)) AS revision",
                {"u": invoice_uuid},
            ).fetchone()
        return r["revision"] if r else None

    def holds(self, invoice_uuid: str | None = None) -> list[HoldRecord]:
        where, args = ("WHERE invoice_uuid = %s", (invoice_uuid,)) if invoice_uuid else ("", ())
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT invoice_uuid, revision, account, completion, reason, held_at, released_at, released_by,"
                f" release_reason FROM finance_pusher.holds {where} ORDER BY invoice_uuid, revision",
                args,
            ).fetchall()
        return [HoldRecord(**r) for r in rows]
