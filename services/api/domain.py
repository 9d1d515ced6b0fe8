"""The API's own pure code, free of I/O: pagination cursors and the reconciliation shown with an invoice.

The read models it serves are written by the projector (services/projector/), which also owns the status
order (`services.projector.domain`: `RANK`, `HELD`, `status_name`).
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import date, datetime
from typing import Any


# ------------------------------------------------------------------------------------------------ cursors
class CursorError(ValueError):
    """A pagination cursor this API did not issue (HTTP 422)."""


def encode_cursor(values: list[Any]) -> str:
    """Opaque to clients: the sort key of the last row served, as base64url JSON."""
    raw = json.dumps(values, separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, types: tuple[type, ...]) -> list[Any]:
    """Back to the sort key, checking its shape; dates come back from their ISO text."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as e:
        raise CursorError("malformed cursor") from e
    if not isinstance(values, list) or len(values) != len(types):
        raise CursorError("malformed cursor")
    out: list[Any] = []
    for v, t in zip(values, types, strict=True):
        if t is datetime:
            if not isinstance(v, str):
                raise CursorError("malformed cursor")
            try:
                out.append(datetime.fromisoformat(v))
            except ValueError as e:
                raise CursorError("malformed cursor") from e
        elif t is date:
            if not isinstance(v, str):
                raise CursorError("malformed cursor")
            try:
                out.append(date.fromisoformat(v))
            except ValueError as e:
                raise CursorError("malformed cursor") from e
        elif t is int:
            if not isinstance(v, int) or isinstance(v, bool):
                raise CursorError("malformed cursor")
            out.append(v)
        elif not isinstance(v, t):
            raise CursorError("malformed cursor")
        else:
            out.append(v)
    return out


# ------------------------------------------------------------------------------------------ reconciliation
def reconciled(status: str | None, amount_minor: int | None, gross_minor: int | None) -> bool | None:
    """Does the invoice's line total agree with what DigitalOcean billed?

    The ingester's reconciliation decides when it knew the expected amount; otherwise the billing-history
    amount is compared with the gross of the lines. None while either side is unknown.
    """
    if status == "matched":
        return True
    if status == "mismatch":
        return False
    if amount_minor is None or gross_minor is None:
        return None
    return amount_minor == gross_minor
