"""The real faust worker (in a thread) on the real broker: april-2026, replay after an inventory fix, DLQ."""

from __future__ import annotations

import socket
from collections import Counter
from datetime import UTC, datetime

from services.ingester.csv_parser import parse_invoice_csv
from services.ingester.domain import build_events
from services.matcher.app import SERVICE
from services.poller.domain import resource_from
from shared.digitalocean import RESOURCE_ENDPOINTS
from shared.events import CostLineMatched, InvoiceCompleted, InvoiceDiscovered, Resource
from shared.kafka import EventProducer, Out
from shared.kafka import deadletter as dl
from shared.settings import Settings
from shared.topics import COST_LINES, COST_LINES_MATCHED, INVOICE_COMPLETED, RESOURCES
from sims.scenario import APRIL_2026_INVOICE_UUID, load_scenario
from tests.helpers import read_all
from tests.integration.matcher.matcher_fixtures import (
    end_of,
    events_of,
    line,
    matcher_thread,
    publish_invoice,
    publish_resources,
    publish_tombstone,
)


def _scenario_resources() -> list[Resource]:
    scenario = load_scenario("april-2026")
    kinds = {ep.key: kind for kind, ep in RESOURCE_ENDPOINTS.items()}
    return [resource_from(kinds[listing], raw) for listing, items in scenario.resources.items() for raw in items]


def _april_events() -> list:
    scenario = load_scenario("april-2026")
    parsed = parse_invoice_csv(scenario.csv_bytes(APRIL_2026_INVOICE_UUID))
    discovered = InvoiceDiscovered(
        invoice_uuid=APRIL_2026_INVOICE_UUID,
        invoice_id="9217394",
        period="2026-04-01",
        amount_minor=parsed.totals.gross_minor,
        date=datetime(2026, 5, 1, tzinfo=UTC),
    )
    lines, end = build_events(discovered, parsed, 1)
    return [*lines, end]


def _matched(s: Settings) -> list[tuple[str, CostLineMatched]]:
    return [(i, d) for i, d in events_of(s, COST_LINES_MATCHED.name(s.kafka_topic_prefix))]  # type: ignore[misc]


def _completed(s: Settings) -> list[tuple[str, InvoiceCompleted]]:
    return [(i, d) for i, d in events_of(s, INVOICE_COMPLETED.name(s.kafka_topic_prefix))]  # type: ignore[misc]


def test_april_2026_matches_6_of_33_lines_and_dead_letters_poison(kafka_settings: Settings) -> None:
    s = kafka_settings
    p = s.kafka_topic_prefix
    resources = _scenario_resources()
    # A resource that existed and is gone again (tombstone): its line must not match.
    publish_resources(s, [*resources, Resource(kind="droplet", resource_id="1", name="debug-box")])
    publish_tombstone(s, "droplet", "1")
    poison = EventProducer(s, "test-poison")
    poison.produce(Out(RESOURCES.name(p), "default:droplet:bad", b"not an event"))
    poison.produce(Out(COST_LINES.name(p), APRIL_2026_INVOICE_UUID, b'{"event_id": "truncated'))
    poison.flush()
    events = _april_events()
    assert len(events) == 34
    publish_invoice(s, events)

    with matcher_thread(s) as m:
        m.until(lambda: _completed(s), what="invoice completed")
        m.until(lambda: len(_matched(s)) == 33, what="33 enriched lines")

    matched = [d for _, d in _matched(s)]
    assert sorted(d.line.line_index for d in matched) == list(range(33))
    hits = sorted(d.name for d in matched if d.resource_id is not None)
    assert hits == ["api-01", "db-postgresql-syd1-11111", "lb-prod", "vol-data-syd1", "web-01", "worker-01"]
    reasons = Counter(d.unmatched_reason for d in matched)
    assert reasons == {None: 6, "no_such_resource": 24, "kind_not_inventoried": 2, "tax_line": 1}
    debug_box = next(d for d in matched if d.line.description.startswith("debug-box"))
    assert debug_box.unmatched_reason == "no_such_resource"
    api = next(d for d in matched if d.line.description.startswith("API-01"))
    assert (api.kind, api.resource_id, api.rule) == ("droplet", "401112202", "droplet_name_size")

    [(_, done)] = _completed(s)
    assert (done.invoice_uuid, done.revision, done.line_count, done.matched_count) == (
        APRIL_2026_INVOICE_UUID,
        1,
        33,
        6,
    )
    assert (done.amount_gross_minor, done.amount_tax_minor, done.amount_net_minor) == (8692, 790, 7902)
    assert (done.period, done.currency) == ("2026-04-01", "USD")

    for topic in (RESOURCES.name(p), COST_LINES.name(p)):
        [dead] = read_all(s, topic + ".dlq")
        assert dead.headers[dl.H_TOPIC].decode() == topic
        assert dead.headers[dl.H_ERROR_CLASS].decode() == "shared.events.EventDecodeError"
        assert dead.headers[dl.H_SERVICE].decode() == SERVICE
        assert {dl.H_PARTITION, dl.H_OFFSET, dl.H_ERROR_MESSAGE, dl.H_FAILED_AT} <= set(dead.headers)


def test_replay_after_a_resource_is_added_matches_the_line(kafka_settings: Settings) -> None:
    s = kafka_settings
    inv = "11111111-2222-4333-8444-555555555555"
    publish_resources(s, [Resource(kind="droplet", resource_id="10", name="web-01")])
    lines = [
        line(inv, 0, "Droplets", "web-01 (s-1vcpu-1gb)", 600),
        line(inv, 1, "Droplets", "batch-07 (s-2vcpu-4gb)", 1200),
        line(inv, 2, "Taxes", "GST (10%)", 180),
    ]
    publish_invoice(s, [*lines, end_of(inv, lines)])
    port = _free_port()
    with matcher_thread(s, web_port=port) as m:
        m.until(lambda: _completed(s), what="first completion")
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # the web server is on the configured port when one is configured
    [(first_id, first)] = _completed(s)
    assert first.matched_count == 1

    # The batch droplet is added to the inventory and the cost lines are replayed by a new consumer group
    # (the embedded broker ignores offset resets of a known group: it stays STABLE with no members).
    publish_resources(s, [Resource(kind="droplet", resource_id="77", name="Batch-07")])
    with matcher_thread(s, group_suffix=".replay-1") as m:
        m.until(lambda: len(_completed(s)) == 2, what="completion after the replay")
        m.until(lambda: len(_matched(s)) == 6, what="replayed enrichments")
    batch = [d for _, d in _matched(s) if d.line.line_index == 1]
    assert [d.resource_id for d in batch] == [None, "77"]
    assert batch[1].rule == "droplet_name_size"
    (id1, _), (id2, c2) = _completed(s)
    assert id1 == first_id and id2 != id1
    assert (c2.revision, c2.line_count, c2.matched_count, c2.amount_gross_minor) == (1, 3, 2, 1980)
    # Unchanged lines were re-emitted with the same event ids (harmless duplicates).
    ids = Counter(i for i, d in _matched(s) if d.line.line_index != 1)
    assert sorted(ids.values()) == [2, 2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
