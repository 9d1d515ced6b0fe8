"""The matcher's handler: one record (resources, cost lines) → outputs and table changes, decode and dead-letter
decisions, byte-identical outputs when a record is processed again. `inventory`: conftest.py."""

from __future__ import annotations

import pytest

from services.matcher import handler
from services.matcher.domain.matching import InventoryEntry, InventoryIndex
from shared.events import EventDecodeError, Reconciliation, Resource, decode, encode
from shared.kafka.records import Record
from tests.assembly_reader import DictTables
from tests.factories import cost_line, invoice_end, record

ACC = "default"


def test_resource_records_and_tombstones() -> None:
    r = Resource(kind="droplet", resource_id="1", name="web-01")
    ch = handler.resource_change(record(encode(r, "acc"), key="acc:droplet:1"))
    assert ch.entry == InventoryEntry("acc:droplet:1", "acc", "droplet", "1", "web-01")
    gone = handler.resource_change(record(None, key="acc:droplet:1"))
    assert gone.resource_key == "acc:droplet:1" and gone.entry is None


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (b"not json", "acc:droplet:1"),
        (b'{"event_id": "x"}', "acc:droplet:1"),
        (
            encode(cost_line(product="Droplets", description="x", invoice_uuid="inv"), "acc"),
            "acc:droplet:1",
        ),  # wrong type on the topic
        (encode(Resource(kind="droplet", resource_id="1", name="x"), "acc"), None),  # no key
    ],
)
def test_bad_resource_records_raise_for_the_dead_letter_queue(value: bytes, key: str | None) -> None:
    with pytest.raises(EventDecodeError):
        handler.resource_change(record(value, key=key))


def _step(rec: Record, index: InventoryIndex, tables: DictTables) -> handler.Effects:
    fx = handler.cost_lines([rec], index, tables, matched_topic="m", completed_topic="c")
    tables.apply(fx)
    return fx


# The end marker of the two-line invoice (a droplet line of 100 and a tax line of 100).
END_OF_TWO_LINES = invoice_end(
    invoice_uuid="inv",
    invoice_id=None,
    invoice_date="2026-05-01",
    line_count=2,
    amount_net_minor=100,
    amount_tax_minor=100,
    csv_sha256="x",
    reconciliation=Reconciliation(status="unknown"),
)


def test_cost_line_records_enrich_then_complete(inventory: InventoryIndex) -> None:
    tables = DictTables()
    lines = [
        cost_line(0, product="Droplets", description="web-01 (s)", invoice_uuid="inv"),
        cost_line(1, product="Taxes", description="GST (10%)", invoice_uuid="inv", is_tax=True),
    ]
    end = END_OF_TWO_LINES
    outs = []
    for i, ev in enumerate([*lines, end]):
        outs += _step(record(encode(ev, ACC), key="inv", offset=i), inventory, tables).outs
    assert [o.topic for o in outs] == ["m", "m", "c"]
    assert all(o.key == "inv" for o in outs)
    _, done = decode(outs[-1].value)
    assert (done.line_count, done.matched_count, done.amount_gross_minor) == (2, 1, 200)
    _, first = decode(outs[0].value)
    assert first.resource_key == "default:droplet:401"
    assert tables.facts == {} and list(tables.done) == ["inv|1"]


@pytest.mark.parametrize(
    "value",
    [None, b"", b"{}", b"\xff\xfe", encode(Resource(kind="droplet", resource_id="1", name="x"), ACC)],
)
def test_bad_cost_line_records_go_to_the_dead_letter_queue_and_change_nothing(
    inventory: InventoryIndex, value: bytes | None
) -> None:
    """A bad record in the middle of a batch: dead-lettered with its reason, the records around it processed."""
    tables = DictTables()
    good = [cost_line(i, product="Droplets", description=f"web-0{i} (s)", invoice_uuid="inv") for i in range(2)]
    records = [
        record(encode(good[0], ACC), key="inv", offset=0),
        record(value, offset=1),
        record(encode(good[1], ACC), key="inv", offset=2),
    ]
    fx = handler.cost_lines(records, inventory, tables, matched_topic="m", completed_topic="c")
    [(rec, error)] = fx.dead
    assert rec.offset == 1 and isinstance(error, EventDecodeError) and str(error)
    assert [o.topic for o in fx.outs] == ["m", "m"]
    assert fx.fact_chunks == {"inv|1|0": {"0": [0, 100, 0], "1": [1, 100, 0]}}  # web-01 is in the inventory, web-00 not
    assert fx.completed == {} and fx.delete_chunks == [] and fx.waiting == {}


def test_a_batch_sees_its_own_facts_and_completes_within_the_batch(inventory: InventoryIndex) -> None:
    """Lines and their marker in one batch (the usual case): the marker finds the batch's facts; the facts are
    never written, only the completion; records after it in the batch see the completion."""
    tables = DictTables()
    lines = [
        cost_line(0, product="Droplets", description="web-01 (s)", invoice_uuid="inv"),
        cost_line(1, product="Taxes", description="GST (10%)", invoice_uuid="inv", is_tax=True),
    ]
    values = [encode(ev, ACC) for ev in [*lines, END_OF_TWO_LINES, END_OF_TWO_LINES, lines[0]]]
    records = [record(v, key="inv", offset=i) for i, v in enumerate(values)]
    fx = handler.cost_lines(records, inventory, tables, matched_topic="m", completed_topic="c")
    assert [o.topic for o in fx.outs] == ["m", "m", "c", "m"]  # the duplicate marker emits nothing
    assert fx.fact_chunks == {} and fx.delete_chunks == []  # a line after its completion records no fact
    assert list(fx.completed) == ["inv|1"] and fx.completed["inv|1"]["position"] == 2


def test_records_processed_again_after_a_crash_give_byte_identical_outputs(inventory: InventoryIndex) -> None:
    """A crash before the tables' changelog is written means the records are read again: same bytes out."""
    lines = [
        cost_line(0, product="Droplets", description="web-01 (s)", invoice_uuid="inv"),
        cost_line(1, product="Taxes", description="GST (10%)", invoice_uuid="inv", is_tax=True),
    ]
    end = END_OF_TWO_LINES
    records = [record(encode(ev, ACC), key="inv", offset=i) for i, ev in enumerate([*lines, end])]

    def run() -> list[bytes]:
        tables = DictTables()
        return [o.value for r in records for o in _step(r, inventory, tables).outs]

    first = run()
    assert len(first) == 3
    assert run() == first
