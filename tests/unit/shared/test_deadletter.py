"""Dead letters: what a DLQ copy keeps, how it is read back, and how it goes back to its source."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.kafka import deadletter as dl
from shared.kafka.records import Record


def _dlq_record(out, offset: int = 9) -> Record:
    return Record(out.topic, 0, offset, out.key, out.value, {k: v.encode() for k, v in out.headers.items()})


def test_dead_letter_round_trip_and_redrive() -> None:
    src = Record("p.billing.cost-lines.v1", 2, 4711, "inv-1", b"payload", {"trace": b"abc"})
    out = dl.dead_letter(src, ValueError("bad amount"), "matcher")
    assert out.topic == "p.billing.cost-lines.v1.dlq" and out.value == b"payload" and out.key == "inv-1"
    back = dl.DeadLetter.from_record(_dlq_record(out))
    assert back.id == "p.billing.cost-lines.v1.dlq:0:9"
    assert (back.source_topic, back.source_partition, back.source_offset) == ("p.billing.cost-lines.v1", 2, 4711)
    assert (back.error_class, back.error_message, back.service) == ("builtins.ValueError", "bad amount", "matcher")
    assert back.failed_at is not None and back.redrive_count == 0 and back.truncated_from is None
    assert back.headers == {"trace": "abc"}

    again = back.redrive()
    assert (again.topic, again.key, again.value) == ("p.billing.cost-lines.v1", "inv-1", b"payload")
    assert again.headers == {"trace": "abc", dl.H_REDRIVE_COUNT: "1", dl.H_REDRIVE_FROM: back.id}

    # Redriven, it fails again: the new dead letter shows the redrive, and a second redrive counts 2.
    src2 = Record(again.topic, 1, 9000, again.key, again.value, {k: v.encode() for k, v in again.headers.items()})
    back2 = dl.DeadLetter.from_record(_dlq_record(dl.dead_letter(src2, ValueError("still bad"), "matcher"), 10))
    assert back2.redrive_count == 1 and back2.source_offset == 9000
    assert back2.redrive().headers[dl.H_REDRIVE_COUNT] == "2"


def test_oversize_copy_is_truncated_with_a_header_and_cannot_be_redriven() -> None:
    big = b"x" * (dl.MAX_VALUE_BYTES + 5000)
    out = dl.dead_letter(Record("t", 0, 1, "k", big, {}), ValueError("too big"), "svc")
    assert out.value is not None and len(out.value) == dl.MAX_VALUE_BYTES
    assert out.headers[dl.H_TRUNCATED] == str(len(big))
    assert len(out.headers[dl.H_ORIGINAL_SHA256]) == 64
    back = dl.DeadLetter.from_record(_dlq_record(out))
    assert back.truncated_from == len(big)
    with pytest.raises(dl.RedriveError, match="truncated"):
        back.redrive()


def test_a_hand_written_dlq_record_is_read_leniently() -> None:
    rec = Record("p.billing.history.v1.dlq", 1, 3, None, None, {dl.H_FAILED_AT: b"yesterday", dl.H_OFFSET: b"x"})
    back = dl.DeadLetter.from_record(rec)
    assert back.source_topic == "p.billing.history.v1" and back.source_offset is None and back.failed_at is None
    assert back.redrive().topic == "p.billing.history.v1"


@pytest.mark.parametrize("bad", ["", "t.dlq:0", "t:0:1", "t.dlq:a:1", "t.dlq:0:-1", "t.dlq:-1:0"])
def test_bad_dead_letter_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="dead-letter id"):
        dl.parse_dead_letter_id(bad)


@given(
    topic=st.from_regex(r"[a-z][a-z0-9.:_-]{0,40}", fullmatch=True),
    partition=st.integers(0, 10_000),
    offset=st.integers(0, 2**62),
)
def test_dead_letter_ids_parse_back(topic: str, partition: int, offset: int) -> None:
    name = topic + ".dlq"
    assert dl.parse_dead_letter_id(dl.dead_letter_id(name, partition, offset)) == (name, partition, offset)
