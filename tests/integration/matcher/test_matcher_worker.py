"""The real faust worker (in a thread) on the real broker: april-2026, replay after an inventory fix, DLQ."""

from __future__ import annotations

import socket
from collections import Counter
from datetime import UTC, datetime

import pytest

from services.ingester.csv_parser import parse_invoice_csv
from services.ingester.domain import build_events
from services.matcher.app import SERVICE
from services.poller.domain import resource_from
from shared.devinfra import free_port
from shared.digitalocean import RESOURCE_ENDPOINTS
from shared.events import CostLineMatched, InvoiceCompleted, InvoiceDiscovered, Resource
from shared.kafka import EventProducer, Out
from shared.kafka import deadletter as dl
from shared.settings import Settings
from shared.topics import COST_LINES, COST_LINES_MATCHED, INVOICE_COMPLETED, RESOURCES
from sims.scenario import APRIL_2026_INVOICE_UUID, load_scenario
from tests.factories import cost_line, invoice_end
from tests.helpers import read_all
from tests.integration.matcher.support import (
    MARKER,
    events_of,
    matcher_thread,
    publish_invoice,
    publish_resources,
    publish_tombstone,
)


def _scenario_resources() -> list[Resource]:
    scenario = load_scenario("april-2026")
    kinds = {ep.key: kind for kind, ep in RESOURCE_ENDPOINTS.items() if not ep.params}  # not type=gpus
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
        cost_line(0, 600, invoice_uuid=inv, droplet="web-01"),
        cost_line(1, 1200, invoice_uuid=inv, product="Droplets", description="batch-07 (s-2vcpu-4gb)"),
        cost_line(2, 180, invoice_uuid=inv, is_tax=True),
    ]
    publish_invoice(s, [*lines, invoice_end(lines, invoice_uuid=inv, **MARKER)])
    port = free_port()
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


def test_a_revision_with_a_line_missing_waits_visibly_until_a_new_revision_completes(
    kafka_settings: Settings,
) -> None:
    from prometheus_client import REGISTRY

    from cloudbill.status import collect
    from services.matcher.options import waiting_revisions

    s = kafka_settings
    inv = "22222222-3333-4444-8555-666666666666"
    lines = [cost_line(i, 100 + i, invoice_uuid=inv, droplet=f"gone-{i}") for i in range(4)]
    end = invoice_end(lines, invoice_uuid=inv, **MARKER)
    publish_invoice(s, [lines[0], lines[1], lines[3], end])  # line 2 never arrives (poison upstream)
    with matcher_thread(s) as m:
        m.until(lambda: waiting_revisions(s), what="the revision listed as waiting")
        [w] = waiting_revisions(s)
        assert (w.invoice_uuid, w.revision, w.line_count, w.missing) == (inv, 1, 4, 1)
        [shown] = collect(s)["waiting"]
        assert shown["invoice_uuid"] == inv and shown["missing"] == 1 and shown["age_s"] >= 0
        m.until(lambda: REGISTRY.get_sample_value("cloudbill_matcher_revisions_waiting") == 1, what="the waiting gauge")
        assert REGISTRY.get_sample_value("cloudbill_matcher_oldest_waiting_revision_age_seconds") >= 0
        assert _completed(s) == []
        # The invoice is ingested again, whole, as revision 2: it completes and revision 1 stops waiting.
        rev2 = [cost_line(i, 100 + i, invoice_uuid=inv, revision=2, droplet=f"gone-{i}") for i in range(4)]
        publish_invoice(s, [*rev2, invoice_end(rev2, invoice_uuid=inv, revision=2, **MARKER)])
        m.until(lambda: _completed(s), what="revision 2 completed")
        m.until(lambda: not waiting_revisions(s), what="nothing waiting")
        m.until(lambda: REGISTRY.get_sample_value("cloudbill_matcher_revisions_waiting") == 0, what="gauge at 0")
    [(_, done)] = _completed(s)
    assert (done.revision, done.line_count, done.amount_gross_minor) == (2, 4, sum(x.amount_minor for x in lines))


@pytest.mark.apache_kafka
def test_replay_matcher_from_the_beginning_keeps_the_tables_and_re_matches(kafka_settings: Settings) -> None:
    """`cloudbill replay matcher --from-beginning` on Apache Kafka: same group, tables recovered, group rewound."""
    import subprocess
    import sys

    from tests.helpers import settings_env

    s = kafka_settings
    fixed, same = "33333333-4444-4555-8666-777777777777", "44444444-5555-4666-8777-888888888888"
    publish_resources(s, [Resource(kind="droplet", resource_id="10", name="web-01")])
    a = [
        cost_line(0, 600, invoice_uuid=fixed, droplet="web-01"),
        cost_line(1, 1200, invoice_uuid=fixed, product="Droplets", description="batch-07 (s)"),
    ]
    b = [cost_line(0, 300, invoice_uuid=same, droplet="web-01")]
    publish_invoice(
        s, [*a, invoice_end(a, invoice_uuid=fixed, **MARKER), *b, invoice_end(b, invoice_uuid=same, **MARKER)]
    )
    with matcher_thread(s) as m:
        m.until(lambda: len(_completed(s)) == 2, what="both invoices completed")
    before = {d.invoice_uuid: (i, d.matched_count) for i, d in _completed(s)}
    assert before[fixed][1] == 1 and before[same][1] == 1

    publish_resources(s, [Resource(kind="droplet", resource_id="77", name="Batch-07")])  # the inventory fix
    res = subprocess.run(
        [sys.executable, "-m", "cloudbill", "replay", "matcher", "--from-beginning"],
        env=settings_env(s),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "rewound" in res.stdout
    with matcher_thread(s) as m:
        m.until(lambda: len({i for i, _ in _completed(s)}) == 3, what="the re-matched completion")
        m.until(lambda: len(_matched(s)) == 6, what="every line enriched again")
    after: dict[str, set[tuple[str, int]]] = {}
    for i, d in _completed(s):
        after.setdefault(d.invoice_uuid, set()).add((i, d.matched_count))
    assert after[fixed] == {before[fixed], (after[fixed] - {before[fixed]}).pop()}
    assert {n for _, n in after[fixed]} == {1, 2}, "the replay re-matched batch-07"
    assert after[same] == {before[same]}, "an unchanged invoice is re-emitted with the same event id"
