"""Write side of the read models: idempotent upserts of the projector's changes, in the caller's transaction.

Every statement is keyed by a natural key or an event id and guarded so that the final state does not
depend on how the topics interleave: an invoice's status only grows by (revision, rank), its served
revision only grows, and a line of a revision older than the served one is dropped.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from typing import Any, cast

import psycopg
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from services.projector.domain import (
    RANK,
    AdminAction,
    AlertRaised,
    BalanceSnapshot,
    Change,
    Completed,
    DeadLettered,
    Discovered,
    HistoryEntry,
    Ingested,
    LineMatched,
    Pushed,
    ResourceGone,
    ResourceSeen,
)
from shared.db import DictConnection

S = "readmodel"

# Status only moves to a higher (revision, rank): the one place that order is applied (ranks: domain.RANK).
_STATUS_SET = """
    status_revision = CASE WHEN ROW(EXCLUDED.status_revision, EXCLUDED.status_rank)
                                > ROW(i.status_revision, i.status_rank)
                           THEN EXCLUDED.status_revision ELSE i.status_revision END,
    status_rank     = CASE WHEN ROW(EXCLUDED.status_revision, EXCLUDED.status_rank)
                                > ROW(i.status_revision, i.status_rank)
                           THEN EXCLUDED.status_rank ELSE i.status_rank END"""

_HEADER_SET = """
    invoice_id   = COALESCE(EXCLUDED.invoice_id, i.invoice_id),
    period       = COALESCE(EXCLUDED.period, i.period),
    invoice_date = COALESCE(EXCLUDED.invoice_date, i.invoice_date),
    currency     = COALESCE(EXCLUDED.currency, i.currency)"""

_TOTALS = (
    "lines_count",
    "amount_net_minor",
    "amount_tax_minor",
    "amount_gross_minor",
    "reconciliation_status",
    "reconciliation_expected_minor",
    "reconciliation_difference_minor",
    "reconciliation_actual_minor",
    "reconciliation_tolerance_minor",
    "reconciliation_reason",
    "reconciliation_checks",
)
_TOTALS_VALUES = (
    "%(line_count)s, %(net)s, %(tax)s, %(gross)s, %(rec_status)s, %(rec_expected)s, %(rec_difference)s,"
    " %(rec_actual)s, %(rec_tolerance)s, %(rec_reason)s, %(rec_checks)s"
)


def _when(cond: str, cols: Iterable[str]) -> str:
    return ",\n".join(f"    {c} = CASE WHEN {cond} THEN EXCLUDED.{c} ELSE i.{c} END" for c in cols)


SQL_BALANCE = f"""
INSERT INTO {S}.balance_snapshots AS b (account, generated_at, month_to_date_balance_minor, account_balance_minor,
    month_to_date_usage_minor, currency, raw, event_id)
VALUES (%(account)s, %(generated_at)s, %(mtd_balance)s, %(account_balance)s, %(mtd_usage)s, %(currency)s, %(raw)s,
    %(event_id)s)
ON CONFLICT (account, generated_at) DO UPDATE SET
    month_to_date_balance_minor = EXCLUDED.month_to_date_balance_minor,
    account_balance_minor = EXCLUDED.account_balance_minor,
    month_to_date_usage_minor = EXCLUDED.month_to_date_usage_minor,
    currency = EXCLUDED.currency, raw = EXCLUDED.raw, event_id = EXCLUDED.event_id
"""

SQL_HISTORY = f"""
INSERT INTO {S}.history_entries AS h (event_id, account, entry_type, description, amount_minor, currency, date,
    invoice_id, invoice_uuid)
VALUES (%(event_id)s, %(account)s, %(entry_type)s, %(description)s, %(amount_minor)s, %(currency)s, %(date)s,
    %(invoice_id)s, %(invoice_uuid)s)
ON CONFLICT (event_id) DO UPDATE SET
    account = EXCLUDED.account, entry_type = EXCLUDED.entry_type, description = EXCLUDED.description,
    amount_minor = EXCLUDED.amount_minor, currency = EXCLUDED.currency, date = EXCLUDED.date,
    invoice_id = EXCLUDED.invoice_id, invoice_uuid = EXCLUDED.invoice_uuid
"""

SQL_DISCOVERED = f"""
INSERT INTO {S}.invoices AS i (invoice_uuid, account, invoice_id, period, description, history_date, currency,
    amount_minor, status_revision, status_rank)
VALUES (%(invoice_uuid)s, %(account)s, %(invoice_id)s, %(period)s, %(description)s, %(date)s, %(currency)s,
    %(amount_minor)s, 0, {RANK["discovered"]})
ON CONFLICT (invoice_uuid) DO UPDATE SET
    account = EXCLUDED.account,
    description = EXCLUDED.description,
    history_date = EXCLUDED.history_date,
    amount_minor = EXCLUDED.amount_minor,
{_HEADER_SET},
{_STATUS_SET}
"""

_END_IS_LATEST = "(i.ingested_revision IS NULL OR EXCLUDED.ingested_revision >= i.ingested_revision)"
SQL_INGESTED = f"""
INSERT INTO {S}.invoices AS i (invoice_uuid, account, invoice_id, period, invoice_date, currency,
    status_revision, status_rank, ingested_revision, ingested_lines_count, csv_sha256, parser_version,
    {", ".join(_TOTALS)})
VALUES (%(invoice_uuid)s, %(account)s, %(invoice_id)s, %(period)s, %(invoice_date)s, %(currency)s,
    %(revision)s, {RANK["ingested"]}, %(revision)s, %(line_count)s, %(csv_sha256)s, %(parser_version)s,
    {_TOTALS_VALUES})
ON CONFLICT (invoice_uuid) DO UPDATE SET
{_HEADER_SET},
{_STATUS_SET},
{_when(_END_IS_LATEST, ("ingested_revision", "ingested_lines_count", "csv_sha256", "parser_version"))},
{_when("i.revision IS NULL AND " + _END_IS_LATEST, _TOTALS)}
"""

_COMPLETION_IS_LATEST = "(i.revision IS NULL OR EXCLUDED.revision >= i.revision)"
SQL_COMPLETED = f"""
INSERT INTO {S}.invoices AS i (invoice_uuid, account, invoice_id, period, invoice_date, currency,
    status_revision, status_rank, revision, matched_count, held, hold_reason, {", ".join(_TOTALS)})
VALUES (%(invoice_uuid)s, %(account)s, %(invoice_id)s, %(period)s, %(invoice_date)s, %(currency)s,
    %(revision)s, {RANK["completed"]}, %(revision)s, %(matched_count)s, %(held)s, %(hold_reason)s,
    {_TOTALS_VALUES})
ON CONFLICT (invoice_uuid) DO UPDATE SET
{_HEADER_SET},
{_STATUS_SET},
{_when(_COMPLETION_IS_LATEST, ("revision", "matched_count", "held", "hold_reason", *_TOTALS))}
RETURNING revision, period
"""

SQL_ADMIN_ACTION = f"""
INSERT INTO {S}.invoice_actions (event_id, invoice_uuid, action, revision, actor, reason, at)
VALUES (%(event_id)s, %(invoice_uuid)s, %(action)s, %(revision)s, %(actor)s, %(reason)s, %(at)s)
ON CONFLICT (event_id) DO NOTHING
"""

# The revision that just became current: older lines go, its own lines become served — one transaction.
SQL_DROP_OLDER_LINES = f"DELETE FROM {S}.cost_lines WHERE invoice_uuid = %s AND revision < %s"
SQL_SERVE_LINES = f"""
UPDATE {S}.cost_lines SET current = true, period = %(period)s
WHERE invoice_uuid = %(invoice_uuid)s AND revision = %(revision)s
  AND (NOT current OR period IS DISTINCT FROM %(period)s)
"""

_PUSH_IS_LATEST = (
    "ROW(EXCLUDED.pushed_revision, EXCLUDED.pushed_to_finance_at)"
    " >= ROW(COALESCE(i.pushed_revision, -1), COALESCE(i.pushed_to_finance_at, '-infinity'::timestamptz))"
)
SQL_PUSHED = f"""
INSERT INTO {S}.invoices AS i (invoice_uuid, account, status_revision, status_rank, pushed_revision,
    pushed_to_finance_at, finance_invoice_id, finance_action, payload_sha256)
VALUES (%(invoice_uuid)s, %(account)s, %(revision)s, {RANK["pushed"]}, %(revision)s, %(pushed_at)s,
    %(finance_invoice_id)s, %(action)s, %(payload_sha256)s)
ON CONFLICT (invoice_uuid) DO UPDATE SET
{_STATUS_SET},
{_when(_PUSH_IS_LATEST, ("pushed_revision", "pushed_to_finance_at", "finance_invoice_id", "finance_action", "payload_sha256"))}
"""

# Matched lines, the bulk of any month's traffic, go in batches: COPY into a session-local staging table, then
# one INSERT ... SELECT. A line is stored unless its revision is older than the served one; it is served (current,
# with the invoice's period) only when its revision is the served one. A batch may hold the same line twice (a
# redelivery): the last copy wins (DISTINCT ON ... seq DESC), as it would applied one by one.
LINE_FIELDS: tuple[tuple[str, str], ...] = (
    ("invoice_uuid", "text"),
    ("revision", "integer"),
    ("line_index", "integer"),
    ("account", "text"),
    ("product", "text"),
    ("group_description", "text"),
    ("description", "text"),
    ("hours", "integer"),
    ("start_at", "timestamptz"),
    ("end_at", "timestamptz"),
    ("amount_minor", "bigint"),
    ("currency", "text"),
    ("project_name", "text"),
    ("category", "text"),
    ("is_tax", "boolean"),
    ("kind", "text"),
    ("name", "text"),
    ("resource_id", "text"),
    ("resource_key", "text"),
    ("rule", "text"),
    ("unmatched_reason", "text"),
    ("event_id", "text"),
    ("attributed_by", "text"),
    ("still_exists", "boolean"),
    ("item_resource_id", "text"),
    ("item_resource_uuid", "text"),
    ("duration", "text"),
    ("duration_unit", "text"),
    ("item_join", "text"),
    ("item_note", "text"),
)
_LINE_NAMES = ", ".join(n for n, _ in LINE_FIELDS)
# ON COMMIT DELETE ROWS: emptied at every commit without vacuum; `batch` tells the writes of one transaction apart.
SQL_LINES_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS cost_lines_in (batch bigint NOT NULL, seq integer NOT NULL, "
    + ", ".join(f"{n} {t}" for n, t in LINE_FIELDS)
    + ") ON COMMIT DELETE ROWS"
)
SQL_LINES_COPY = f"COPY pg_temp.cost_lines_in (batch, seq, {_LINE_NAMES}) FROM STDIN"
SQL_LINES_UPSERT = f"""
INSERT INTO {S}.cost_lines AS c (invoice_uuid, revision, line_index, account, current, period, product,
    group_description, description, hours, start_at, end_at, amount_minor, currency, project_name, category,
    is_tax, kind, name, resource_id, resource_key, rule, unmatched_reason, event_id, attributed_by, still_exists,
    item_resource_id, item_resource_uuid, duration, duration_unit, item_join, item_note)
SELECT DISTINCT ON (v.invoice_uuid, v.revision, v.line_index)
       v.invoice_uuid, v.revision, v.line_index, v.account,
       COALESCE(inv.revision = v.revision, false),
       CASE WHEN inv.revision = v.revision THEN inv.period END,
       v.product, v.group_description, v.description, v.hours, v.start_at, v.end_at, v.amount_minor, v.currency,
       v.project_name, v.category, v.is_tax, v.kind, v.name, v.resource_id, v.resource_key, v.rule,
       v.unmatched_reason, v.event_id, v.attributed_by, v.still_exists, v.item_resource_id, v.item_resource_uuid,
       v.duration, v.duration_unit, v.item_join, v.item_note
FROM pg_temp.cost_lines_in v
LEFT JOIN {S}.invoices inv ON inv.invoice_uuid = v.invoice_uuid
WHERE v.batch = %s AND (inv.revision IS NULL OR v.revision >= inv.revision)
ORDER BY v.invoice_uuid, v.revision, v.line_index, v.seq DESC
ON CONFLICT (invoice_uuid, revision, line_index) DO UPDATE SET
    account = EXCLUDED.account, current = EXCLUDED.current, period = EXCLUDED.period, product = EXCLUDED.product,
    group_description = EXCLUDED.group_description, description = EXCLUDED.description, hours = EXCLUDED.hours,
    start_at = EXCLUDED.start_at, end_at = EXCLUDED.end_at, amount_minor = EXCLUDED.amount_minor,
    currency = EXCLUDED.currency, project_name = EXCLUDED.project_name, category = EXCLUDED.category,
    is_tax = EXCLUDED.is_tax, kind = EXCLUDED.kind, name = EXCLUDED.name, resource_id = EXCLUDED.resource_id,
    resource_key = EXCLUDED.resource_key, rule = EXCLUDED.rule, unmatched_reason = EXCLUDED.unmatched_reason,
    event_id = EXCLUDED.event_id, attributed_by = EXCLUDED.attributed_by, still_exists = EXCLUDED.still_exists,
    item_resource_id = EXCLUDED.item_resource_id, item_resource_uuid = EXCLUDED.item_resource_uuid,
    duration = EXCLUDED.duration, duration_unit = EXCLUDED.duration_unit, item_join = EXCLUDED.item_join,
    item_note = EXCLUDED.item_note
"""
_BATCHES = itertools.count(1)

# "matched": every line of the latest ingested revision is in, its completion not yet.
SQL_MARK_MATCHED = f"""
UPDATE {S}.invoices i SET status_revision = i.ingested_revision, status_rank = {RANK["matched"]}
WHERE i.invoice_uuid = ANY(%s) AND i.ingested_revision IS NOT NULL
  AND ROW(i.status_revision, i.status_rank) < ROW(i.ingested_revision, {RANK["matched"]})
  AND i.ingested_lines_count = (SELECT count(*) FROM {S}.cost_lines c
                                WHERE c.invoice_uuid = i.invoice_uuid AND c.revision = i.ingested_revision)
"""

SQL_RESOURCE = f"""
INSERT INTO {S}.resources AS r (account, kind, resource_id, name, region, attributes, event_id, exists_now,
    first_seen, last_seen)
VALUES (%(account)s, %(kind)s, %(resource_id)s, %(name)s, %(region)s, %(attributes)s, %(event_id)s, %(exists)s,
    %(first_seen)s, %(last_seen)s)
ON CONFLICT (account, kind, resource_id) DO UPDATE SET
    name = EXCLUDED.name, region = EXCLUDED.region, attributes = EXCLUDED.attributes, event_id = EXCLUDED.event_id,
    exists_now = EXCLUDED.exists_now, first_seen = COALESCE(EXCLUDED.first_seen, r.first_seen),
    last_seen = COALESCE(EXCLUDED.last_seen, r.last_seen)
"""
SQL_RESOURCE_GONE = f"DELETE FROM {S}.resources WHERE account = %s AND kind = %s AND resource_id = %s"

SQL_ALERT = f"""
INSERT INTO {S}.alerts (alert_id, account, kind, period, subject, threshold_pct, currency, budget_minor,
    observed_minor, reference_minor, detected_at, message, event_id)
VALUES (%(alert_id)s, %(account)s, %(kind)s, %(period)s, %(subject)s, %(threshold_pct)s, %(currency)s,
    %(budget_minor)s, %(observed_minor)s, %(reference_minor)s, %(detected_at)s, %(message)s, %(event_id)s)
ON CONFLICT (alert_id) DO NOTHING
"""

SQL_DEAD_LETTER = f"""
INSERT INTO {S}.dead_letters (dedup_key, dlq_topic, dlq_partition, dlq_offset, source_topic, source_partition,
    source_offset, error_class, error_message, service, failed_at, record_key, record_value)
VALUES (%(dedup_key)s, %(dlq_topic)s, %(dlq_partition)s, %(dlq_offset)s, %(source_topic)s, %(source_partition)s,
    %(source_offset)s, %(error_class)s, %(error_message)s, %(service)s, %(failed_at)s, %(record_key)s,
    %(record_value)s)
ON CONFLICT (dedup_key) DO NOTHING
"""


# ------------------------------------------------------------------------------------------------ params
def _recon(d: Any) -> dict[str, Any]:
    r = d.reconciliation
    return {
        "rec_status": r.status,
        "rec_expected": r.expected_minor,
        "rec_difference": r.difference_minor,
        "rec_actual": r.actual_minor,
        "rec_tolerance": r.tolerance_minor,
        "rec_reason": r.reason or None,
        "rec_checks": Jsonb([c.model_dump(mode="json") for c in r.checks]),
    }


def _line_row(ch: LineMatched) -> tuple[Any, ...]:
    """One staging row, in LINE_FIELDS order."""
    m, line = ch.data, ch.data.line
    return (
        line.invoice_uuid,
        line.revision,
        line.line_index,
        ch.account,
        line.product,
        line.group_description,
        line.description,
        line.hours,
        line.start,
        line.end,
        line.amount_minor,
        line.currency,
        line.project_name,
        line.category,
        line.is_tax,
        m.kind,
        m.name,
        m.resource_id,
        m.resource_key,
        m.rule,
        m.unmatched_reason,
        ch.event_id,
        m.attributed_by,
        m.still_exists,
        line.resource_id,
        line.resource_uuid,
        line.duration,
        line.duration_unit,
        line.item_join,
        line.item_note or None,
    )


class ReadModelWriter:
    """Applies changes on one connection; the caller owns the transaction (one per polled batch)."""

    def __init__(self, conn: DictConnection) -> None:
        self.conn = conn

    def apply(self, changes: Sequence[Change]) -> None:
        """Every change but the lines in order, then all the lines in one COPY + upsert.

        Moving the lines last gives the same rows as applying everything in order: a line's row depends only on
        its invoice's served revision and period, and a completion treats the lines already in exactly as it
        treats those arriving after it (it serves its own revision's lines, drops older ones; a later line of
        the served revision is stored served, an older one is not stored).
        """
        touched: set[str] = set()
        cur = self.conn.cursor()
        lines: list[LineMatched] = []
        for ch in changes:
            if isinstance(ch, LineMatched):
                lines.append(ch)
            else:
                self._apply_one(cur, ch, touched)
        if lines:
            self._upsert_lines(cur, lines)
            touched.update(ch.data.line.invoice_uuid for ch in lines)
        if touched:
            cur.execute(SQL_MARK_MATCHED, (sorted(touched),))

    def _upsert_lines(self, cur: psycopg.Cursor[DictRow], lines: Sequence[LineMatched]) -> None:
        batch = next(_BATCHES)
        cur.execute(SQL_LINES_STAGING)
        with cur.copy(SQL_LINES_COPY) as copy:
            for seq, ch in enumerate(lines):
                copy.write_row((batch, seq, *_line_row(ch)))
        cur.execute(SQL_LINES_UPSERT, (batch,))

    def _apply_one(self, cur: psycopg.Cursor[DictRow], ch: Change, touched: set[str]) -> None:
        """One change but a line: its statement; an ingestion marks its invoice as touched."""
        match ch:
            case BalanceSnapshot():
                cur.execute(SQL_BALANCE, _balance_params(ch))
            case HistoryEntry(data=d):
                cur.execute(SQL_HISTORY, {"event_id": ch.event_id, "account": ch.account, **d.model_dump()})
            case Discovered():
                cur.execute(SQL_DISCOVERED, _discovered_params(ch))
            case Ingested():
                cur.execute(SQL_INGESTED, _ingested_params(ch))
                touched.add(ch.data.invoice_uuid)
            case Completed():
                self._complete(cur, ch)
            case Pushed():
                cur.execute(SQL_PUSHED, _pushed_params(ch))
            case ResourceSeen():
                cur.execute(SQL_RESOURCE, _resource_params(ch))
            case ResourceGone(kind=kind, resource_id=rid):
                cur.execute(SQL_RESOURCE_GONE, (ch.account, kind, rid))
            case AdminAction():
                cur.execute(SQL_ADMIN_ACTION, _fields(ch))
            case AlertRaised(data=d):
                cur.execute(SQL_ALERT, {"account": ch.account, "event_id": ch.event_id, **d.model_dump()})
            case DeadLettered():
                cur.execute(SQL_DEAD_LETTER, _fields(ch))
            case _:
                raise TypeError(f"no writer for {type(ch).__name__}")

    def _complete(self, cur: psycopg.Cursor[DictRow], ch: Completed) -> None:
        """The completion's row; when its revision is the one served, its lines are served and older ones go."""
        d = ch.data
        # The upsert always returns one row: a dict (dict_row connections), or a tuple from a plain cursor.
        row = cast("DictRow | tuple[Any, ...]", cur.execute(SQL_COMPLETED, _completed_params(ch)).fetchone())
        served = row["revision"] if isinstance(row, dict) else row[0]
        served_period = row["period"] if isinstance(row, dict) else row[1]
        if served == d.revision:
            cur.execute(SQL_DROP_OLDER_LINES, (d.invoice_uuid, d.revision))
            cur.execute(
                SQL_SERVE_LINES, {"invoice_uuid": d.invoice_uuid, "revision": d.revision, "period": served_period}
            )


# One function per change kind: the named parameters of its statement.
def _balance_params(ch: BalanceSnapshot) -> dict[str, Any]:
    d = ch.data
    return {
        "account": ch.account,
        "generated_at": d.generated_at,
        "mtd_balance": d.month_to_date_balance_minor,
        "account_balance": d.account_balance_minor,
        "mtd_usage": d.month_to_date_usage_minor,
        "currency": d.currency,
        "raw": Jsonb(d.raw),
        "event_id": ch.event_id,
    }


def _discovered_params(ch: Discovered) -> dict[str, Any]:
    d = ch.data
    return {
        "invoice_uuid": d.invoice_uuid,
        "account": ch.account,
        "invoice_id": d.invoice_id,
        "period": ch.period,
        "description": d.description,
        "date": d.date,
        "currency": d.currency,
        "amount_minor": d.amount_minor,
    }


def _revision_params(ch: Ingested | Completed) -> dict[str, Any]:
    """What an ingested and a completed revision both say about the invoice."""
    d = ch.data
    return {
        "invoice_uuid": d.invoice_uuid,
        "account": ch.account,
        "invoice_id": d.invoice_id,
        "period": ch.period,
        "invoice_date": d.invoice_date,
        "currency": d.currency,
        "revision": d.revision,
        "line_count": d.line_count,
        "net": d.amount_net_minor,
        "tax": d.amount_tax_minor,
        "gross": d.amount_gross_minor,
        **_recon(d),
    }


def _ingested_params(ch: Ingested) -> dict[str, Any]:
    return _revision_params(ch) | {"csv_sha256": ch.data.csv_sha256, "parser_version": ch.data.parser_version}


def _completed_params(ch: Completed) -> dict[str, Any]:
    return _revision_params(ch) | {
        "matched_count": ch.data.matched_count,
        "held": ch.hold_reason is not None,
        "hold_reason": ch.hold_reason,
    }


def _pushed_params(ch: Pushed) -> dict[str, Any]:
    d = ch.data
    return {
        "invoice_uuid": d.invoice_uuid,
        "account": ch.account,
        "revision": d.revision,
        "pushed_at": d.pushed_at,
        "finance_invoice_id": d.finance_invoice_id,
        "action": d.action,
        "payload_sha256": d.payload_sha256,
    }


def _resource_params(ch: ResourceSeen) -> dict[str, Any]:
    d = ch.data
    return {
        "account": ch.account,
        "kind": d.kind,
        "resource_id": d.resource_id,
        "name": d.name,
        "region": d.region,
        "attributes": Jsonb(d.attributes),
        "event_id": ch.event_id,
        "exists": d.exists,
        "first_seen": d.first_seen,
        "last_seen": d.last_seen,
    }


def _fields(ch: AdminAction | DeadLettered) -> dict[str, Any]:
    """A change whose statement's parameters are its own fields (plus, for a dead letter, its dedup key)."""
    params = {f.name: getattr(ch, f.name) for f in dataclasses.fields(ch)}
    if isinstance(ch, DeadLettered):
        params["dedup_key"] = ch.dedup_key
    return params
