"""`cloudbill invoices release|refetch`: what each asks for, and what it refuses."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cloudbill.invoices import AdminRefused, refetch_event, release_event, who

NOW = datetime(2026, 5, 2, 9, 0, tzinfo=UTC)


def row(**changes: object) -> dict:
    return {
        "invoice_uuid": "u1",
        "account": "default",
        "revision": 2,
        "status_rank": 3,
        "held": True,
        "hold_reason": "billing history says 8692, the lines give 2733 (variance -5959)",
    } | changes


def test_release_names_the_held_revision_who_and_why() -> None:
    ev = release_event(row(), reason="  credit note agreed  ", by="ops", revision=None, now=NOW)
    assert (ev.invoice_uuid, ev.revision, ev.released_by, ev.reason, ev.released_at) == (
        "u1",
        2,
        "ops",
        "credit note agreed",
        NOW,
    )
    assert release_event(row(), reason="x", by="ops", revision=2, now=NOW).revision == 2


@pytest.mark.parametrize(
    ("r", "kw", "why"),
    [
        (None, {}, "no such invoice"),
        (row(held=False), {}, "not held"),
        (row(status_rank=4), {}, "not held"),  # pushed meanwhile (released, or a newer revision)
        (row(), {"revision": 1}, "held at revision 2, not 1"),
        (row(), {"reason": "  "}, "needs a reason"),
    ],
)
def test_release_is_refused_unless_held(r: dict | None, kw: dict, why: str) -> None:
    args = {"reason": "ok", "by": "ops", "revision": None, "now": NOW} | kw
    with pytest.raises(AdminRefused, match=why):
        release_event(r, **args)


def test_refetch_of_any_discovered_invoice() -> None:
    ev = refetch_event(row(held=False), reason="", by="ops", now=NOW)
    assert (ev.invoice_uuid, ev.requested_by, ev.reason, ev.attempt) == ("u1", "ops", "admin request", 0)
    with pytest.raises(AdminRefused):
        refetch_event(None, reason="", by="ops", now=NOW)


def test_who_defaults_to_the_user_name() -> None:
    assert who(" alice ") == "alice"
    assert who(None) and who("")
