"""The ingester's ledger (Postgres, schema `ingester`), and why a crash anywhere loses and duplicates nothing.

The ledger records every invoice revision: CSV sha256, parser version, revision number, line count,
totals, and a state. The ledger (Postgres) and the output (a Kafka transaction carrying the cost lines,
the end marker and the consumed offset) cannot commit atomically together, so the order of operations is:

1. fetch + parse the CSV (no side effects);
2. **reserve** in the ledger, in one DB transaction under a per-invoice advisory lock, using
   `domain.decide` against the invoice's latest revision:
   - same hash + parser version, `committed` → **skip**: the Kafka transaction carries only the offset
     (on the embedded broker, which drops the offsets of a transaction that produced nothing, the offset
     is committed directly instead: committing a no-op's offset outside a transaction is safe anywhere);
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

- after 4, the broker loses the commit: a broker restarted between its transaction's PrepareCommit and the
  partition's COMMIT marker can complete the transaction without the marker (Apache Kafka skips a marker
  whose partition has no known leader yet), and the producer's next `init_transactions` then aborts the
  records whose commit had been acknowledged. The ledger says `committed`, the topic holds nothing readable.
  The commit verifier (services/ingester/verify.py) reads the topic read_committed and marks each revision
  `verified` when it sees its end marker; a committed revision it has provably read past without seeing is
  fetched and emitted again as the same revision (`decide(..., reemit_unverified=N)`).

Invariant that makes this work: a revision number is bound to exactly one (hash, parser version, evidence)
for ever, so any copy of revision N anyone ever sees — committed, aborted or re-sent — has the same lines.

The money gates add a table per invoice (`ingester.invoices`): its last discovery, which a re-fetch runs
again, and while the invoice is held, when its CSV is fetched next (`domain.next_hold`). That bookkeeping is
advisory: done again on a redelivery, it at worst counts one attempt twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from services.ingester.csv_parser import ParsedInvoice
from services.ingester.domain import Decision, Hold, LedgerEntry, Outcome, RefetchPolicy, decide, next_hold
from shared.db import DictConnection, DictPool
from shared.events import InvoiceDiscovered


class Ledger:
    def __init__(self, pool: DictPool) -> None:
        self.pool = pool

    def reserve(
        self,
        invoice_uuid: str,
        account: str,
        parsed: ParsedInvoice,
        evidence_sha256: str | None = None,
        reconciliation_status: str | None = None,
        *,
        reemit_unverified: int | None = None,
    ) -> tuple[Decision, datetime | None]:
        """Decide and record the revision for this content. Returns the decision and its reservation time.

        The reservation time is the `occurred_at` of every event of the revision, so a re-emission is
        byte-identical. None for a skip.
        """
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"cloudbill.ingester.{invoice_uuid}",))
            latest = self._latest(conn, invoice_uuid)
            d = decide(
                latest, parsed.csv_sha256, parsed.parser_version, evidence_sha256, reemit_unverified=reemit_unverified
            )
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
                " line_count, currency, amount_net_minor, amount_tax_minor, amount_gross_minor, state, reserved_at,"
                " evidence_sha256, reconciliation_status)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'pending', date_trunc('milliseconds', now()), %s, %s)"
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
                    evidence_sha256,
                    reconciliation_status,
                ),
            ).fetchone()
            assert row is not None
            return d, row["reserved_at"]

    def mark_committed(self, invoice_uuid: str, revision: int) -> bool:
        """The Kafka transaction carrying this revision committed. False if it was not pending any more.

        A committed revision emitted again at the verifier's request (unverified, asked for after its last
        commit) is marked again: its commit time moves on, so the verifier judges the new emission.
        """
        with self.pool.connection() as conn, conn.transaction():
            cur = conn.execute(
                "UPDATE ingester.invoice_revisions SET state = 'committed', committed_at = now()"
                " WHERE invoice_uuid = %s AND revision = %s AND (state = 'pending' OR (state = 'committed'"
                " AND verified_at IS NULL AND reemit_requested_at IS NOT NULL AND committed_at < reemit_requested_at))",
                (invoice_uuid, revision),
            )
            return cur.rowcount == 1

    # ------------------------------------------------------------------------------ commit verification
    def now(self) -> datetime:
        """The database's clock (the one `committed_at` is written with)."""
        with self.pool.connection() as conn:
            r = conn.execute("SELECT now() AS now").fetchone()
        assert r is not None
        now: datetime = r["now"]
        return now

    def read_to(self, topic: str) -> dict[int, int]:
        """Where the verifier read `topic` to: the next offset per partition."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT partition, next_offset FROM ingester.verify_positions WHERE topic = %s", (topic,)
            ).fetchall()
        return {r["partition"]: r["next_offset"] for r in rows}

    def verified(self, seen: set[tuple[str, int]], topic: str, read_to: dict[int, int]) -> int:
        """Revisions whose end marker was read committed, and how far the topic was read, in one transaction.

        A `pending` revision seen is committed too (the crash between the Kafka commit and `mark_committed`).
        Positions only move forward (several replicas verify the same partitions). Returns how many revisions
        were verified now.
        """
        pairs = sorted(seen)
        with self.pool.connection() as conn, conn.transaction():
            n = 0
            if pairs:
                cur = conn.execute(
                    "UPDATE ingester.invoice_revisions r SET verified_at = now(), state = 'committed',"
                    " committed_at = coalesce(r.committed_at, now())"
                    " FROM unnest(%s::text[], %s::int[]) AS s(invoice_uuid, revision)"
                    " WHERE r.invoice_uuid = s.invoice_uuid AND r.revision = s.revision AND r.verified_at IS NULL"
                    " AND r.state IN ('pending', 'committed')",
                    ([u for u, _ in pairs], [r for _, r in pairs]),
                )
                n = cur.rowcount
            for partition, offset in sorted(read_to.items()):
                conn.execute(
                    "INSERT INTO ingester.verify_positions (topic, partition, next_offset) VALUES (%s, %s, %s)"
                    " ON CONFLICT (topic, partition) DO UPDATE"
                    " SET next_offset = greatest(verify_positions.next_offset, EXCLUDED.next_offset)",
                    (topic, partition, offset),
                )
            return n

    def claim_unreadable(
        self, committed_before: datetime, *, max_reemits: int, lease: timedelta, limit: int = 100
    ) -> list[tuple[str, str, int, int]]:
        """Committed, unverified revisions whose commit is older than a checkpoint the verifier got past:
        (invoice uuid, account, revision, re-emission number), leased so that replicas ask once.

        Only an invoice's latest revision (a newer one replaces it downstream anyway), and at most
        `max_reemits` times each; one asked for is asked again only after its lease, when the request
        produced no new emission (say the CSV fetch failed).
        """
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "SELECT r.invoice_uuid, r.account, r.revision, r.reemits FROM ingester.invoice_revisions r"
                " WHERE r.state = 'committed' AND r.verified_at IS NULL AND r.committed_at <= %s"
                " AND r.reemits < %s"
                " AND (r.reemit_requested_at IS NULL OR r.reemit_requested_at < r.committed_at"
                "      OR r.reemit_requested_at < now() - %s)"
                " AND NOT EXISTS (SELECT 1 FROM ingester.invoice_revisions n"
                "                 WHERE n.invoice_uuid = r.invoice_uuid AND n.revision > r.revision)"
                " ORDER BY r.committed_at LIMIT %s FOR UPDATE OF r SKIP LOCKED",
                (committed_before, max_reemits, lease, limit),
            ).fetchall()
            for r in rows:
                conn.execute(
                    "UPDATE ingester.invoice_revisions SET reemits = reemits + 1, reemit_requested_at = now()"
                    " WHERE invoice_uuid = %s AND revision = %s",
                    (r["invoice_uuid"], r["revision"]),
                )
            return [(r["invoice_uuid"], r["account"], r["revision"], r["reemits"] + 1) for r in rows]

    def unverified(self, committed_before: datetime | None = None) -> list[dict[str, Any]]:
        """`unverified_revisions`, optionally only those committed before a time (the verifier's checkpoint)."""
        with self.pool.connection() as conn:
            return unverified_revisions(conn, committed_before=committed_before)

    def revisions(self, invoice_uuid: str) -> list[dict[str, Any]]:
        """Every revision of an invoice, oldest first (for operators and tests)."""
        with self.pool.connection() as conn:
            return conn.execute(
                "SELECT * FROM ingester.invoice_revisions WHERE invoice_uuid = %s ORDER BY revision", (invoice_uuid,)
            ).fetchall()

    @staticmethod
    def _latest(conn: DictConnection, invoice_uuid: str) -> LedgerEntry | None:
        r = conn.execute(
            "SELECT invoice_uuid, revision, csv_sha256, parser_version, state, reserved_at, evidence_sha256,"
            " verified_at IS NOT NULL AS verified FROM ingester.invoice_revisions WHERE invoice_uuid = %s ORDER BY revision DESC LIMIT 1",
            (invoice_uuid,),
        ).fetchone()
        return LedgerEntry(**r) if r else None

    # ------------------------------------------------------------------------------ money gates: holds
    def remember(self, account: str, discovered: InvoiceDiscovered) -> None:
        """The invoice's latest discovery: what an automatic or admin re-fetch runs again."""
        with self.pool.connection() as conn:
            conn.execute(
                "INSERT INTO ingester.invoices (invoice_uuid, account, discovered) VALUES (%s, %s, %s)"
                " ON CONFLICT (invoice_uuid) DO UPDATE SET account = EXCLUDED.account,"
                " discovered = EXCLUDED.discovered, updated_at = now()",
                (discovered.invoice_uuid, account, Jsonb(discovered.model_dump(mode="json"))),
            )

    def last_discovery(self, invoice_uuid: str) -> tuple[str, InvoiceDiscovered] | None:
        with self.pool.connection() as conn:
            r = conn.execute(
                "SELECT account, discovered FROM ingester.invoices WHERE invoice_uuid = %s", (invoice_uuid,)
            ).fetchone()
        return (r["account"], InvoiceDiscovered.model_validate(r["discovered"])) if r else None

    def settle(
        self, invoice_uuid: str, outcome: Outcome, *, revision: int | None, reason: str, policy: RefetchPolicy
    ) -> Hold | None:
        """Apply one fetch's outcome to the invoice's hold (domain.next_hold, the database's clock)."""
        with self.pool.connection() as conn, conn.transaction():
            r = conn.execute(
                "SELECT held_revision, held_since, hold_reason, refetch_attempts, next_refetch_at, now() AS now"
                " FROM ingester.invoices WHERE invoice_uuid = %s FOR UPDATE",
                (invoice_uuid,),
            ).fetchone()
            if r is None:
                return None
            current = _hold(r)
            new = next_hold(current, outcome, revision=revision, reason=reason, now=r["now"], policy=policy)
            if new == current:
                return new
            conn.execute(
                "UPDATE ingester.invoices SET held_revision = %s, held_since = %s, hold_reason = %s,"
                " refetch_attempts = %s, next_refetch_at = %s, updated_at = now() WHERE invoice_uuid = %s",
                (
                    new.revision if new else None,
                    new.since if new else None,
                    new.reason if new else None,
                    new.attempts if new else 0,
                    new.next_at if new else None,
                    invoice_uuid,
                ),
            )
            return new

    def hold(self, invoice_uuid: str) -> Hold | None:
        with self.pool.connection() as conn:
            r = conn.execute(
                "SELECT held_revision, held_since, hold_reason, refetch_attempts, next_refetch_at"
                " FROM ingester.invoices WHERE invoice_uuid = %s",
                (invoice_uuid,),
            ).fetchone()
        return _hold(r) if r else None

    def claim_due_refetches(self, policy: RefetchPolicy, limit: int = 50) -> list[tuple[str, str, int]]:
        """Held invoices whose re-fetch is due, as (invoice uuid, account, attempt), leased so that several
        replicas never ask twice at once; the fetch's outcome (`settle`) then sets the real next time."""
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "SELECT invoice_uuid, account, refetch_attempts FROM ingester.invoices"
                " WHERE next_refetch_at <= now() ORDER BY next_refetch_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (limit,),
            ).fetchall()
            out = []
            for r in rows:
                attempt = r["refetch_attempts"] + 1
                lease = timedelta(seconds=policy.delay(attempt + 1))
                conn.execute(
                    "UPDATE ingester.invoices SET next_refetch_at = now() + %s, updated_at = now()"
                    " WHERE invoice_uuid = %s",
                    (lease, r["invoice_uuid"]),
                )
                out.append((r["invoice_uuid"], r["account"], attempt))
            return out


def unverified_revisions(
    conn: Any, *, committed_before: datetime | None = None, min_age: timedelta = timedelta(0)
) -> list[dict[str, Any]]:
    """Committed revisions whose end marker the commit verifier has not read yet, oldest first, with their age in
    seconds and re-emissions: for the verifier and `cloudbill status`. Only an invoice's latest revision: a newer
    one replaces an older downstream, readable or not."""
    rows: list[dict[str, Any]] = conn.execute(
        "SELECT invoice_uuid, revision, account, line_count, reemits,"
        " extract(epoch FROM now() - committed_at)::bigint AS age_s"
        " FROM ingester.invoice_revisions r WHERE state = 'committed' AND verified_at IS NULL"
        " AND (%s::timestamptz IS NULL OR committed_at <= %s) AND committed_at <= now() - %s"
        " AND NOT EXISTS (SELECT 1"
        " FROM ingester.invoice_revisions n WHERE n.invoice_uuid = r.invoice_uuid AND n.revision > r.revision)"
        " ORDER BY committed_at",
        (committed_before, committed_before, min_age),
    ).fetchall()
    return rows


def _hold(r: dict[str, Any]) -> Hold | None:
    if r["held_revision"] is None:
        return None
    return Hold(
        r["held_revision"], r["held_since"], r["hold_reason"] or "", r["refetch_attempts"], r["next_refetch_at"]
    )
