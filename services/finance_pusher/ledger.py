"""Postgres adapter for the pusher's ledger (schema `finance_pusher`).

`pushes` is append-only: one row per push finance accepted, with whether its invoice-pushed event was
delivered yet. `invoices` says, per invoice, the highest revision settled and the content finance has:
the input of the push decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg_pool import ConnectionPool

from services.finance_pusher.payload import PushedState

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
class InvoiceLedger:
    state: PushedState
    last_push: PushRecord


class Ledger:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

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
