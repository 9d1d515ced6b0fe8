"""`cloudbill invoices release|refetch`: an admin's word on a held invoice, recorded with who and why.

Both are events, never direct writes: a release (`InvoiceReleased`) goes to the invoice-completed topic, where
the finance pusher pushes exactly the held revision and the projector records it; a re-fetch
(`InvoiceRefetchRequested`) goes to the invoice-discovered topic, where the ingester fetches the CSV again.
Keyed by the invoice, both are ordered with everything else about it. The read model says which invoice is
held, at which revision, for which account.
"""

from __future__ import annotations

import getpass
from datetime import datetime
from typing import Annotated, Any

import typer

from cloudbill.context import settings as _settings
from shared.events import InvoiceRefetchRequested, InvoiceReleased, utcnow

app = typer.Typer(help="Held invoices (the money gates): release one as it is, or fetch its CSV again.")


class AdminRefused(ValueError):
    """The command cannot apply to this invoice (unknown, not held, another revision)."""


def who(by: str | None) -> str:
    """The admin: --by, else the operating-system user."""
    if by and by.strip():
        return by.strip()
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container without one)
        return "unknown"


def release_event(
    row: dict[str, Any] | None, *, reason: str, by: str, revision: int | None, now: datetime
) -> InvoiceReleased:
    """The release of the invoice's held revision; refused unless it is held (at that revision)."""
    if not reason.strip():
        raise AdminRefused("a release needs a reason (--reason)")
    if row is None:
        raise AdminRefused("no such invoice in the read models")
    if not row["held"] or row["status_rank"] != 3:
        raise AdminRefused(f"invoice {row['invoice_uuid']} is not held (nothing to release)")
    if revision is not None and revision != row["revision"]:
        raise AdminRefused(f"invoice {row['invoice_uuid']} is held at revision {row['revision']}, not {revision}")
    return InvoiceReleased(
        invoice_uuid=row["invoice_uuid"],
        revision=row["revision"],
        released_by=by,
        reason=reason.strip(),
        released_at=now,
    )


def refetch_event(row: dict[str, Any] | None, *, reason: str, by: str, now: datetime) -> InvoiceRefetchRequested:
    if row is None:
        raise AdminRefused("no such invoice in the read models (it must have been discovered)")
    return InvoiceRefetchRequested(
        invoice_uuid=row["invoice_uuid"], requested_by=by, reason=reason.strip() or "admin request", requested_at=now
    )


def _invoice(settings: Any, invoice_uuid: str) -> dict[str, Any] | None:
    from shared.db import connect

    with connect(settings) as conn:
        return conn.execute(
            "SELECT invoice_uuid, account, revision, status_rank, held, hold_reason FROM readmodel.invoices"
            " WHERE invoice_uuid = %s",
            (invoice_uuid,),
        ).fetchone()


def _send(settings: Any, topic: str, event: InvoiceReleased | InvoiceRefetchRequested, account: str) -> None:
    from shared.kafka import EventProducer

    producer = EventProducer(settings, "cloudbill-cli")
    try:
        producer.publish(topic, event.invoice_uuid, event, account)
    finally:
        producer.close()


@app.command()
def release(
    invoice_uuid: Annotated[str, typer.Argument(help="The held invoice.")],
    reason: Annotated[str, typer.Option("--reason", help="Why it may go to finance as it is (recorded).")],
    by: Annotated[str | None, typer.Option("--by", help="Who releases it (default: your user name).")] = None,
    revision: Annotated[int | None, typer.Option("--revision", help="Release only if held at this revision.")] = None,
) -> None:
    """Push a held invoice's revision to finance as it is, recorded with who and why."""
    from shared.topics import INVOICE_COMPLETED

    settings = _settings()
    try:
        row = _invoice(settings, invoice_uuid)
        event = release_event(row, reason=reason, by=who(by), revision=revision, now=utcnow())
    except AdminRefused as e:
        typer.echo(f"refused: {e}", err=True)
        raise typer.Exit(2) from None
    assert row is not None
    _send(settings, INVOICE_COMPLETED.name(settings.kafka_topic_prefix), event, row["account"])
    typer.echo(
        f"released invoice {invoice_uuid} revision {event.revision} by {event.released_by} ({event.reason}); "
        f"it was held: {row['hold_reason']}"
    )


@app.command()
def refetch(
    invoice_uuid: Annotated[str, typer.Argument(help="A discovered invoice.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded).")] = "admin request",
    by: Annotated[str | None, typer.Option("--by", help="Who asks (default: your user name).")] = None,
) -> None:
    """Fetch an invoice's CSV again now (a changed, reconciling CSV releases a held invoice)."""
    from shared.topics import INVOICE_DISCOVERED

    settings = _settings()
    try:
        row = _invoice(settings, invoice_uuid)
        event = refetch_event(row, reason=reason, by=who(by), now=utcnow())
    except AdminRefused as e:
        typer.echo(f"refused: {e}", err=True)
        raise typer.Exit(2) from None
    assert row is not None
    _send(settings, INVOICE_DISCOVERED.name(settings.kafka_topic_prefix), event, row["account"])
    typer.echo(f"re-fetch of invoice {invoice_uuid} requested by {event.requested_by}")
