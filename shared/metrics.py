"""Prometheus metrics shared by every service (one registry per process)."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

PROCESSED = Counter("cloudbill_records_processed_total", "Records processed", ["service", "topic"])
DEAD_LETTERED = Counter("cloudbill_records_dead_lettered_total", "Records sent to a DLQ", ["service", "topic"])
RETRIES = Counter("cloudbill_record_retries_total", "Record retries (partition waiting)", ["service", "topic"])
PARKED = Counter(
    "cloudbill_records_parked_total", "Records parked in a retry topic after their retry budget", ["service", "topic"]
)
EVENTS_PRODUCED = Counter("cloudbill_events_produced_total", "Events produced", ["service", "type"])
HTTP_CALLS = Counter("cloudbill_http_calls_total", "Outbound HTTP calls", ["service", "target", "status"])
HTTP_LATENCY = Histogram("cloudbill_http_call_seconds", "Outbound HTTP call latency", ["service", "target"])
ITEMS_FETCHED = Counter(
    "cloudbill_ingester_invoice_items_total",
    "Invoice items fetches by outcome (fetched, waiting, not_found, failed, disabled): not fetched means CSV alone, no ids",
    ["outcome"],
)
ITEM_ROWS = Counter(
    "cloudbill_ingester_item_join_rows_total", "CSV rows by how they were joined to an invoice item", ["join"]
)
# The ingester's commit verifier (services/ingester/verify.py).
REVISIONS_VERIFIED = Counter(
    "cloudbill_ingester_revisions_verified_total", "Revisions whose end marker the commit verifier read committed"
)
REVISIONS_REEMITTED = Counter(
    "cloudbill_ingester_revisions_reemitted_total",
    "Committed revisions the commit verifier proved unreadable on cost-lines and asked to emit again",
)
REVISIONS_UNVERIFIED = Gauge(
    "cloudbill_ingester_unverified_revisions",
    "Committed revisions proven unreadable at the verifier's last checkpoint and not seen since",
)
CONFIG_ERRORS = Gauge(
    "cloudbill_configuration_error", "1 while a service reports a configuration error", ["service", "reason"]
)
LAST_SUCCESS = Gauge("cloudbill_last_success_timestamp_seconds", "Last successful run of a job", ["service", "job"])


def serve(port: int) -> None:
    """Expose /metrics for a worker service (the API serves its own at /metrics)."""
    if port:
        start_http_server(port)
        log.info("metrics on :%d/metrics", port)
