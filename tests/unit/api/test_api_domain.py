"""The API's own pure code: pagination cursors and reconciliation."""

from __future__ import annotations

import contextlib
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.api.domain import CursorError, decode_cursor, encode_cursor, reconciled


@pytest.mark.parametrize(
    ("status", "amount", "gross", "expected"),
    [
        ("matched", None, None, True),
        ("mismatch", 1, 1, False),
        ("unknown", 5, 5, True),
        ("unknown", 5, 6, False),
        (None, None, 5, None),
        ("unknown", 5, None, None),
    ],
)
def test_reconciled(status: str | None, amount: int | None, gross: int | None, expected: bool | None) -> None:
    assert reconciled(status, amount, gross) is expected


@given(st.text(max_size=60), st.integers(min_value=-(2**40), max_value=2**40))
def test_cursor_round_trip(uuid: str, index: int) -> None:
    assert decode_cursor(encode_cursor([uuid, index]), (str, int)) == [uuid, index]


@given(st.dates(), st.text(max_size=40))
def test_date_cursor_round_trip(d: date, uuid: str) -> None:
    assert decode_cursor(encode_cursor([d.isoformat(), uuid]), (date, str)) == [d, uuid]


@given(st.text(max_size=80))
def test_any_text_is_a_valid_cursor_or_a_cursor_error(text: str) -> None:
    with contextlib.suppress(CursorError):
        decode_cursor(text, (str, int))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "!!!",
        encode_cursor(["a"]),
        encode_cursor([1, 2]),
        encode_cursor(["a", True]),
        encode_cursor({"a": 1}),
        encode_cursor(["a", 1.5]),
    ],
)
def test_malformed_cursors(bad: str) -> None:
    with pytest.raises(CursorError):
        decode_cursor(bad, (str, int))
    with pytest.raises(CursorError):
        decode_cursor(encode_cursor(["2026-13-01", "u"]), (date, str))
