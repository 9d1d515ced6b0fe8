"""The ingester's ledger (Postgres, schema `ingester`), and why a crash anywhere loses and duplicates nothing.

The ledger records every invoice revision: CSV sha256, parser version, revision number, line count,
totals, and a state. The ledger (Postgres) and the output (a Kafka transaction carrying the cost lines,
the end marker and the consumed offset) cannot commit atomically together, so the order of operations is:

1. fetch + parse the CSV (no side effects);
2. **reserve** in the ledger, in one DB transaction under a per-invoice advisory lock, using
   `domain.decide` against the invoice's latest revision:
   - same hash + parser version, `committed` → **skip**: the Kafka transaction carries only the offset
     (which is also committed directly afterwards: the embedded broker drops the offsets of a transaction
     that produced nothing; committing a no-op's offset outside a transaction is safe anywhere);
   - same hash + parser version, `pending`   → **re-emit** that same revision;
   - anything else → insert revision `latest + 1` as `pending` (a `pending` latest with other content is
     marked `superseded`; its number is never reused);
3. one Kafka transaction: every CostLine, then the InvoiceEnd, then the consumed offset;
4. after the commit, mark the revision `committed` (`TransactionalProcessor(after_commit=...)`).

Crash analysis (the consumed offset moves only with step 3's commit):
- before 2: nothing happened; the redelivered event starts over.
- between 2 and 3's commit: the revision is `pending`; the Kafka transaction is aborted (the restarted
  producer reuses its transactional id). The event is redelivered, the same CSV re-emits the *same*
  revision with the same deterministic event ids and the same `occurred_at` (the reservation time).
  The embedded broker shows aborted records to read_committed readers, so downstream may already hold
  some or all of that revision's records: they are byte-for-byte what is re-sent, and downstream dedupes
  by (invoice, revision, line_index) and acts on a revision only once its end marker and all
  `line_count` lines are in. If the CSV changed meanwhile, a new revision is taken instead; the abandoned
  one is either incomplete (never acted on) or complete and simply replaced by the newer revision.
- between 3's commit and 4: Kafka has the revision and the offset, the ledger says `pending`. The next
  discovery of this invoice with the same content re-emits it (duplicates downstream drops) and marks it
  committed; with other content it becomes the next revision. Nothing is lost either way.
- after 4: done; a redelivery or a later discovery with the same content is skipped.

Invariant that makes this work: a revision number is bound to exactly one (hash, parser version) for
ever, so any copy of revision N anyone ever sees — committed, aborted or re-sent — has the same lines.
"""

from __future__ import annotations

from datetime import datetime

from psycopg_pool import ConnectionPool

from services.ingester.csv_parser import ParsedInvoice
from services.ingester.domain import Decision, LedgerEntry, decide


class Ledger:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def reserve(self, invoice_uuid: str, account: str, parsed: ParsedInvoice) -> tuple[Decision, datetime | None]:
        """Decide and record the revision for this content. Returns the decision and its reservation time.

        The reservation time is the `occurred_at` of every event of the revision, so a re-emission is
        byte-identical. None for a skip.
        """
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"cloudbill.ingester.{invoice_uuid}",))
            latest = self._latest(conn, invoice_uuid)
            d = decide(latest, parsed.csv_sha256, parsed.parser_version)
            if d.action == "skip":
                return d, None
            if d.action == "reemit":
                assert latest is not None
                return d, latest.reserved_at
            if d.supersede is not None:
                conn.execute(
                    "UPDATE ingester.invoice_revisions SET state = 'superseded'"
                    " WHERE invoice_uuid = %s AND revision = %s AND state = 'pending'",
                    (invoice_uuid, d.supersede),
                )
            t = parsed.totals
            row = conn.execute(
                "INSERT INTO ingester.invoice_revisions (invoice_uuid, revision, account, csv_sha256, parser_version,"
                " line_count, currency, amount_net_minor, amount_tax_minor, amount_gross_minor, state, reserved_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'pending', date_trunc('milliseconds', now()))"
                " RETURNING reserved_at",
                (
                    invoice_uuid,
                    d.revision,
                    account,
                    parsed.csv_sha256,
                    parsed.parser_version,
                    parsed.line_count,
                    parsed.currency,
                    t.net_minor,
                    t.tax_minor,
                    t.gross_minor,
                ),
            ).fetchone()
            assert row is not None
            return d, row["reserved_at"]

    def mark_committed(self, invoice_uuid: str, revision: int) -> bool:
        """The Kafka transaction carrying this revision committed. False if it was not pending any more."""
        with self.pool.connection() as conn, conn.transaction():
            cur = conn.execute(
                "UPDATE ingester.invoice_revisions SET state = 'committed', committed_at = now()"
                " WHERE invoice_uuid = %s AND revision = %s AND state = 'pending'",
                (invoice_uuid, revision),
            )
            return cur.rowcount == 1

    def revisions(self, invoice_uuid: str) -> list[dict]:
        """Every revision of an invoice, oldest first (for operators and tests)."""
        with self.pool.connection() as conn:
            return conn.execute(
                "SELECT * FROM ingester.invoice_revisions WHERE invoice_uuid = %s ORDER BY revision", (invoice_uuid,)
            ).fetchall()

    @staticmethod
    def _latest(conn, invoice_uuid: str) -> LedgerEntry | None:
        r = conn.execute(
            "SELECT invoice_uuid, revision, csv_sha256, parser_version, state, reserved_at"
            " FROM ingester.invoice_revisions WHERE invoice_uuid = %s ORDER BY revision DESC LIMIT 1",
            (invoice_uuid,),
        ).fetchone()
        return LedgerEntry(**r) if r else None
