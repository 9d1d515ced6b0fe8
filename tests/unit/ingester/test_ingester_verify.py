"""The commit verifier without a broker: end markers told from lines cheaply, and when a checkpoint is judged."""

from __future__ import annotations

from datetime import UTC, datetime

from confluent_kafka import TopicPartition

from services.ingester.csv_parser import parse_invoice_csv
from services.ingester.domain import Checkpoint, build_events, expected_of, reconciliation_of
from services.ingester.verify import CommitVerifier, end_marker
from shared.events import encode
from shared.kafka import StopSignal
from shared.settings import Settings
from tests.factories import invoice_discovered

CSV = "product,description,hours,start,end,USD\nDroplets,a (s),1,,,$1.00\nTaxes,GST (10%),,,,$0.10\n"
T0 = datetime(2026, 5, 1, tzinfo=UTC)


def test_an_end_marker_is_read_and_lines_are_not() -> None:
    d = invoice_discovered(invoice_uuid="inv-1")
    parsed = parse_invoice_csv(CSV)
    lines, end = build_events(d, parsed, 3, reconciliation_of(parsed, expected_of(d, None, None, False), 0))
    assert end_marker(encode(end, "acct", T0)) == ("inv-1", 3)
    assert [end_marker(encode(line, "acct", T0)) for line in lines] == [None, None]


def test_a_line_that_mentions_the_marker_type_is_still_a_line() -> None:
    d = invoice_discovered(invoice_uuid="inv-2")
    text = CSV.replace("a (s)", "billing.invoice-end")
    parsed = parse_invoice_csv(text)
    lines, _ = build_events(d, parsed, 1, reconciliation_of(parsed, expected_of(d, None, None, False), 0))
    assert b"billing.invoice-end" in encode(lines[0], "acct", T0)
    assert end_marker(encode(lines[0], "acct", T0)) is None


def test_unreadable_records_are_not_markers() -> None:
    assert end_marker(None) is None
    assert end_marker(b"") is None
    assert end_marker(b'{"type": "billing.invoice-end", "truncated') is None
    assert end_marker(b"\xff\xfe billing.invoice-end") is None


class FakeConsumer:
    """The verifier's consumer as `prove` uses it: partitions (metadata) and high watermarks."""

    def __init__(self, highs: dict[int, int]) -> None:
        self.highs = highs
        self.assigned: list[int] = []

    def list_topics(self, topic: str, timeout: float) -> object:
        parts = {p: object() for p in self.highs}
        md = type("T", (), {"partitions": parts, "error": None})()
        return type("M", (), {"topics": {topic: md} if parts else {}})()

    def incremental_assign(self, tps: list[TopicPartition]) -> None:
        self.assigned += [tp.partition for tp in tps]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float, cached: bool) -> tuple[int, int]:
        return 0, self.highs[tp.partition]


class FakeLedger:
    def __init__(self) -> None:
        self.claims: list[datetime] = []

    def now(self) -> datetime:
        return T0

    def verified(self, seen: set[tuple[str, int]], topic: str, read_to: dict[int, int]) -> int:
        return 0

    def claim_unreadable(self, before: datetime, **_: object) -> list[tuple[str, str, int, int]]:
        self.claims.append(before)
        return []

    def unverified(self, before: datetime | None = None) -> list[dict[str, object]]:
        return []


def verifier(highs: dict[int, int]) -> tuple[CommitVerifier, FakeLedger, FakeConsumer]:
    ledger, consumer = FakeLedger(), FakeConsumer(highs)
    v = CommitVerifier(Settings(_env_file=None, kafka_topic_prefix="p."), ledger, StopSignal())  # type: ignore[arg-type]
    v._consumer = consumer  # type: ignore[assignment]
    return v, ledger, consumer


def test_nothing_is_judged_before_the_reader_got_past_every_partitions_end() -> None:
    v, ledger, consumer = verifier({0: 40, 1: 0, 2: 12})
    assert v.prove(0.0) == 0 and v.checkpoint == Checkpoint(T0, {0: 40, 1: 0, 2: 12})
    assert consumer.assigned == [0, 1, 2]
    v.read_to.update({0: 40, 2: 11})
    assert v.prove(1.0) == 0 and ledger.claims == []  # partition 2 not read to its end yet
    v.read_to[2] = 12
    assert v.prove(2.0) == 0 and ledger.claims == [T0] and v.checkpoint is None and v.proofs == 1
    assert v.prove(2.5) == 0 and v.checkpoint is None  # the next checkpoint waits for the interval
    assert v.prove(2.0 + v.interval_s) == 0 and v.checkpoint is not None


def test_without_partitions_no_checkpoint_is_taken() -> None:
    """An empty checkpoint is reached at once: it would prove every committed revision unreadable."""
    v, ledger, _ = verifier({})
    for t in (0.0, 20.0, 40.0):
        assert v.prove(t) == 0
    assert v.checkpoint is None and ledger.claims == []
