"""The pure half of `cloudbill chaos`: the seeded fault plan, the poison, and the verdicts."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest

from cloudbill.chaos_plan import (
    KILLED_SERVICES,
    OVERSIZE_BYTES,
    POISON_KINDS,
    PlanOptions,
    Report,
    diff_tables,
    final_checks,
    invoice_sizes,
    judge_finance,
    normalise_rows,
    plan,
    poison_value,
)
from shared.events import EventDecodeError, decode
from shared.topics import STAGES


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    assert plan(PlanOptions(seed=1)) == plan(PlanOptions(seed=1))
    assert plan(PlanOptions(seed=1)) != plan(PlanOptions(seed=2))


@pytest.mark.parametrize("seed", range(1, 9))
def test_kills_cover_every_service_and_never_hit_one_service_twice_within_4s(seed: int) -> None:
    faults = plan(PlanOptions(seed=seed, kills=20, window_s=240))
    kills = [f for f in faults if f.kind == "kill"]
    assert len(kills) == 20
    per_service = Counter(f.target for f in kills)
    assert set(per_service) == set(KILLED_SERVICES) and max(per_service.values()) - min(per_service.values()) <= 1
    by_service: dict[str, list[float]] = {}
    for f in kills:
        by_service.setdefault(f.target, []).append(f.at)
    for times in by_service.values():
        assert all(b - a >= 4 for a, b in itertools.pairwise(times))
    assert all(0 < f.at <= 240 * 1.1 for f in kills)
    assert [f.at for f in faults] == sorted(f.at for f in faults)


def test_one_broker_kill_mid_run_and_none_when_asked() -> None:
    (broker,) = [f for f in plan(PlanOptions(seed=3, window_s=200)) if f.kind == "broker_kill"]
    assert 0.25 * 200 <= broker.at <= 0.6 * 200
    assert not [f for f in plan(PlanOptions(seed=3, broker_kills=0)) if f.kind == "broker_kill"]


def test_finance_is_down_then_rate_limits_then_times_out_in_that_order() -> None:
    fin = [f for f in plan(PlanOptions(seed=1, finance_outage_s=60, finance_timeout_s=3)) if f.kind == "finance"]
    assert fin[0].params == {"unavailable_seconds": 60}
    assert fin[1].at - fin[0].at == pytest.approx(60)
    limited = [f for f in fin if "rate_limited_calls" in f.params]
    assert len(limited) == 2 and {f.params["retry_after_s"] for f in limited} == {2, 0}
    slow = [f for f in fin if "slow_ms" in f.params]
    assert slow[0].params["slow_ms"] > 3000 and slow[-1].params["slow_ms"] == 0
    assert fin[0].at < limited[0].at < slow[0].at < slow[-1].at


def test_digitalocean_faults_include_every_kind_the_issue_names() -> None:
    do = [dict(f.params) for f in plan(PlanOptions(seed=5)) if f.kind == "do"]
    assert {"rate_limit": 4, "retry_after": 1} in do and any(p.get("retry_after") == 0 for p in do)
    assert any("rate_limit_reset_only" in p for p in do)
    assert {p.get("server_error_status") for p in do} >= {500, 502, 503}
    assert any(p.get("slow_ms", 0) > 0 for p in do) and any(p.get("slow_ms") == 0 for p in do)


def test_five_poison_kinds_each_into_an_input_topic_and_none_decodes() -> None:
    faults = plan(PlanOptions(seed=1))
    assert sorted(f.target for f in faults if f.kind == "poison") == sorted(POISON_KINDS)
    inputs = {t.base for st in STAGES.values() for t in st.inputs}
    assert set(POISON_KINDS.values()) <= inputs
    for kind in POISON_KINDS:
        with pytest.raises(EventDecodeError):
            decode(poison_value(kind, "acct1"))
    assert OVERSIZE_BYTES - 1000 < len(poison_value("oversize", "acct1")) < 1_048_576
    with pytest.raises(ValueError):
        json.loads(poison_value("not_json", "a"))


def test_tables_compare_row_by_row_ignoring_run_timestamps_finance_ids_and_the_topic_prefix() -> None:
    base = {
        "invoices": normalise_rows(
            "invoices", [{"invoice_uuid": "u1", "pushed_to_finance_at": "t1", "finance_invoice_id": "inv_a"}], "b."
        ),
        "dead_letters": normalise_rows("dead_letters", [{"source_topic": "b.x", "failed_at": "t"}], "b."),
    }
    same = {
        "invoices": normalise_rows(
            "invoices", [{"invoice_uuid": "u1", "pushed_to_finance_at": "t2", "finance_invoice_id": "inv_b"}], "c."
        ),
        "dead_letters": [],  # compared apart (the chaos run has its poison)
    }
    assert all(d.equal for d in diff_tables(base, same))
    other = {"invoices": normalise_rows("invoices", [{"invoice_uuid": "u2"}], "c.")}
    (d,) = diff_tables(base, other)
    assert (d.missing, d.extra, d.equal) == (1, 1, False)
    assert '"invoice_uuid": ["u1", "u2"]' in d.example
    doubled = {"invoices": base["invoices"] * 2}
    assert diff_tables(base, doubled)[0].extra == 1


def test_finance_verdict_counts_lost_doubled_updated_and_wrong_amounts() -> None:
    row = {"amount_net_minor": 90, "amount_tax_minor": 10, "amount_gross_minor": 100}
    gross = {"a": 100, "b": 100, "c": 100, "d": 100}
    rows = [
        row | {"external_id": "a"},
        row | {"external_id": "b"},
        row | {"external_id": "b"},
        row | {"external_id": "c", "update_count": 1},
    ]
    v = judge_finance(rows, gross, [row | {"external_id": k} for k in gross])
    assert (v.lost, v.doubled, v.updated, v.ok) == (["d"], {"b": 2}, {"c": 1}, False)
    split = judge_finance(
        [row | {"external_id": "a", "amount_tax_minor": 0, "amount_net_minor": 100}],
        {"a": 100},
        [row | {"external_id": "a"}],
    )
    assert "a" in split.wrong_amounts  # same gross, another net/tax split than the undisturbed run
    assert judge_finance([row | {"external_id": "a"}], {"a": 100}).ok


def test_invoice_sizes_are_mixed_within_bounds_with_both_ends_and_seeded() -> None:
    sizes = invoice_sizes(1, 200, 5, 2000)
    assert len(sizes) == 200 and min(sizes) == 5 and max(sizes) == 2000
    assert sum(1 for s in sizes if s < 100) > 50 and sum(1 for s in sizes if s > 500) > 20
    assert sizes == invoice_sizes(1, 200, 5, 2000) != invoice_sizes(2, 200, 5, 2000)


def test_the_report_passes_only_when_every_check_does_and_nothing_is_lost_or_doubled() -> None:
    r = Report(seed=1, kafka="apache", invoices_expected=2, lines_expected=10, accounts=1)
    r.converged = r.finance_ok = r.read_models_equal = True
    r.finance_rows, r.kills, r.broker_kills, r.poison_injected, r.poison_dead_lettered = 2, 20, 1, 5, 5
    r.checks = final_checks(r, broker_kill_expected=True, kills_expected=20)
    assert r.ok and r.to_json()["ok"]
    r.doubled = 1
    r.checks = final_checks(r, broker_kill_expected=True, kills_expected=20)
    assert not r.ok
    r.doubled, r.broker_kills = 0, 0
    r.checks = final_checks(r, broker_kill_expected=True, kills_expected=20)
    assert not r.ok and not r.checks["broker killed and restarted"]


def test_dlq_commands_read_a_stage_s_retry_topic_too() -> None:
    """Parked records are visible with `cloudbill dlq list --topic cloudbill.ingester.retry` (same headers)."""
    from cloudbill.dlq import dlq_topics
    from shared.settings import Settings

    s = Settings(_env_file=None, kafka_topic_prefix="x.")
    assert dlq_topics(s, "cloudbill.ingester.retry") == ["x.cloudbill.ingester.retry"]
    assert dlq_topics(s, "x.cloudbill.finance-pusher.retry") == ["x.cloudbill.finance-pusher.retry"]
    assert dlq_topics(s, "billing.cost-lines.v1") == ["x.billing.cost-lines.v1.dlq"]
