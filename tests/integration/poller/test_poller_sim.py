"""The poller against the DigitalOcean simulator (in-thread), the real broker and real Postgres."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from services.poller import main as poller_main
from services.poller.poller import Poller
from shared.digitalocean import DigitalOceanClient
from shared.events import decode
from shared.kafka import StopSignal
from shared.settings import DigitalOceanAccount, Settings, get_settings
from shared.topics import BALANCE, HISTORY, INVOICE_DISCOVERED, RESOURCES
from sims.do.app import create_app
from sims.scenario import APRIL_2026_INVOICE_UUID, load_scenario
from sims.server import RunningServer, run_in_thread
from tests.helpers import read_all, wait_until

GOOD_TOKEN = "dop_v1_" + "a1" * 32
BAD_TOKEN = "dop_v1_" + "bd" * 32


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def sim() -> Iterator[RunningServer]:
    """april-2026, any non-empty token accepted; faults and request log reset per test."""
    server = run_in_thread(create_app(load_scenario("april-2026")))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _clean_sim(request: pytest.FixtureRequest) -> None:
    for name in ("sim", "strict_sim"):
        if name in request.fixturenames:
            url = request.getfixturevalue(name).url
            httpx.delete(f"{url}/_sim/faults")
            httpx.delete(f"{url}/_sim/requests")


def sim_requests(sim: RunningServer, path: str | None = None) -> list[dict]:
    entries = httpx.get(f"{sim.url}/_sim/requests").json()["requests"]
    return [e for e in entries if path is None or e["path"] == path]


def set_faults(sim: RunningServer, **faults) -> None:
    httpx.post(f"{sim.url}/_sim/faults", json=faults).raise_for_status()


def sim_settings(settings: Settings, url: str, **update) -> Settings:
    return settings.model_copy(
        update={
            "digitalocean_api_url": url,
            "digitalocean_token": SecretStr(GOOD_TOKEN),
            "digitalocean_per_page": 10,
            **update,
        }
    )


class Sleeps:
    """Injected sleep: records the waits the client asked for, sleeps not at all."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def factory(settings: Settings, sleeps: Sleeps):
    def make(account: DigitalOceanAccount) -> DigitalOceanClient:
        return DigitalOceanClient(
            settings.digitalocean_api_url,
            account.token,
            per_page=settings.digitalocean_per_page,
            max_retries=settings.digitalocean_max_retries,
            sleep=sleeps,
            rng=lambda: 0.5,
        )

    return make


def events(
    settings: Settings, topic, seen: set[tuple[int, int]] | None = None
) -> list[tuple[str | None, object, object]]:
    """(key, envelope, data) of every record, or only those not in `seen` (which is then updated).
    Tombstones are (key, None, None)."""
    out = []
    for r in read_all(settings, topic.name(settings.kafka_topic_prefix)):
        if seen is not None:
            if (r.partition, r.offset) in seen:
                continue
            seen.add((r.partition, r.offset))
        if r.value is None:
            out.append((r.key, None, None))
        else:
            env, data = decode(r.value)
            out.append((r.key, env, data))
    return out


# ------------------------------------------------------------------------------------------ history
def test_history_april_2026_all_pages_137_invoices_deterministic(settings: Settings, sim: RunningServer) -> None:
    s = sim_settings(settings, sim.url)
    sleeps = Sleeps()
    poller, close = poller_main.build(s, factory(s, sleeps))
    try:
        [result] = poller.poll("history")
        assert result.status == "ok", result
        assert result.detail == {"entries": 278, "invoices": 137}
        # every page of both listings was walked with per_page=10
        pages = sim_requests(sim, "/v2/customers/my/billing_history")
        assert len(pages) == 28 and all("per_page=10" in p["query"] for p in pages)
        assert len(sim_requests(sim, "/v2/customers/my/invoices")) == 14

        discovered = events(s, INVOICE_DISCOVERED)
        assert len(discovered) == 137
        assert len({d.invoice_uuid for _, _, d in discovered}) == 137
        assert all(key == d.invoice_uuid and env.account == "default" for key, env, d in discovered)
        april = next(d for _, _, d in discovered if d.invoice_uuid == APRIL_2026_INVOICE_UUID)
        assert (april.period, april.amount_minor, april.invoice_id) == ("2026-04-01", 8692, "9217394")
        assert april.date == datetime(2026, 5, 1, 8, 57, 37, tzinfo=UTC)
        periods = sorted(d.period for _, _, d in discovered)
        assert periods[0] == "2014-11-01" and periods[-1] == "2026-04-01"

        history = events(s, HISTORY)
        assert len(history) == 278
        assert Counter(d.entry_type for _, _, d in history)["Payment"] == 137
        assert {key for key, _, _ in history} == {"default"}

        # Polling unchanged data again: the very same event ids (duplicates are recognisable downstream).
        [again] = poller.poll("history")
        assert again.status == "ok"
        discovered2 = events(s, INVOICE_DISCOVERED)
        assert len(discovered2) == 274
        ids = Counter(env.event_id for _, env, _ in discovered2)
        assert len(ids) == 137 and set(ids.values()) == {2}
        assert len({env.event_id for _, env, _ in events(s, HISTORY)}) == 278
    finally:
        close()
    assert sleeps.waits == []


def test_429_and_5xx_bursts_are_survived_with_the_right_waits(settings: Settings, sim: RunningServer) -> None:
    s = sim_settings(settings, sim.url, digitalocean_max_retries=5)
    # in order: two 429 with retry-after 3, one 429 with ratelimit-reset only (3 s ahead), two 503
    set_faults(sim, rate_limit=2, retry_after=3, rate_limit_reset_only=1, server_errors=2, server_error_status=503)
    sleeps = Sleeps()
    poller, close = poller_main.build(s, factory(s, sleeps))
    try:
        [result] = poller.poll("history")
    finally:
        close()
    assert result.status == "ok", result
    assert len(events(s, INVOICE_DISCOVERED)) == 137
    statuses = [r["status"] for r in sim_requests(sim)]
    assert statuses[:6] == [429, 429, 429, 503, 503, 200]
    assert set(statuses[6:]) == {200}
    w = sleeps.waits
    assert len(w) == 5
    assert w[:2] == [3.0, 3.0]  # retry-after honoured
    assert 1.0 < w[2] <= 3.0  # until ratelimit-reset (epoch seconds, whole-second resolution)
    assert w[3:] == [6.0, 12.0]  # 5xx: exponential backoff (ceilings 8 and 16 s), equal jitter at rng 0.5


def test_retries_exhausted_is_a_recorded_failure_naming_the_call(settings: Settings, sim: RunningServer) -> None:
    s = sim_settings(settings, sim.url, digitalocean_max_retries=2)
    set_faults(sim, server_errors=50, paths="/v2/customers/my/balance")
    sleeps = Sleeps()
    poller, close = poller_main.build(s, factory(s, sleeps))
    try:
        [result] = poller.poll("balance")
        rows = poller.store.statuses()
    finally:
        close()
    assert result.failed
    assert "GET /v2/customers/my/balance" in result.error and "gave up after 3 attempts" in result.error
    assert len(sleeps.waits) == 2
    assert rows[0]["status"] == "failed" and rows[0]["error"] == result.error and rows[0]["last_success_at"] is None
    assert events(s, BALANCE) == []


# ------------------------------------------------------------------------------------------ resources
def test_resources_and_a_history_record_for_a_removed_resource(settings: Settings) -> None:
    """A resource gone is sent once more with exists=False and its first/last seen times (no tombstone)."""
    scenario = load_scenario("april-2026")  # our own copy: this test removes resources from it
    server = run_in_thread(create_app(scenario))
    s = sim_settings(settings, server.url, digitalocean_max_retries=0)
    sleeps = Sleeps()
    poller, close = poller_main.build(s, factory(s, sleeps))
    try:
        [first] = poller.poll("resources")
        assert first.status == "ok" and first.detail["resources"] == 9 and first.detail["gone"] == 0
        seen: set[tuple[int, int]] = set()
        recs = events(s, RESOURCES, seen)
        assert len(recs) == 9
        by_key = {key: (env, data) for key, env, data in recs}
        web01 = next(d for _, d in by_key.values() if d.name == "web-01")
        assert by_key[f"default:droplet:{web01.resource_id}"][1].region == "syd1"
        assert {d.kind for _, d in by_key.values()} == {
            "droplet",
            "volume",
            "database",
            "load_balancer",
            "snapshot",
            "reserved_ip",
        }
        assert all(d.exists for _, d in by_key.values())

        # Between two syncs: a droplet is destroyed, and the volume disappears while its listing fails.
        gone = next(d for d in scenario.resources["droplets"] if d["name"] == "worker-01")
        scenario.resources["droplets"] = [d for d in scenario.resources["droplets"] if d is not gone]
        volume = scenario.resources["volumes"].pop()
        httpx.post(f"{server.url}/_sim/faults", json={"server_errors": 5, "paths": "/v2/volumes"}).raise_for_status()
        [second] = poller.poll("resources")
        assert second.status == "partial" and "volume" in second.detail["failed_kinds"]
        assert (second.detail["gone"], second.detail["tombstones"]) == (1, 0)
        new = events(s, RESOURCES, seen)
        history = [(key, data) for key, env, data in new if env is not None and not data.exists]
        assert [k for k, _ in history] == [f"default:droplet:{gone['id']}"]  # none for the volume: listing failed
        [(_, was)] = history
        assert (was.name, was.region, was.attributes.get("created_at")) == ("worker-01", "syd1", gone["created_at"])
        assert was.first_seen is not None and was.last_seen is not None and was.first_seen <= was.last_seen
        assert len(new) == 1 + 7  # the history record, and the 7 resources still listed
        for key, env, data in new:  # unchanged resources: the same ids as the first sync
            if env is not None and data.exists:
                assert env.event_id == by_key[key][0].event_id

        # The listing works again and the volume is really gone: now it gets its history record, once.
        httpx.delete(f"{server.url}/_sim/faults")
        [third] = poller.poll("resources")
        assert third.status == "ok" and third.detail["gone"] == 1
        newest = events(s, RESOURCES, seen)
        assert [k for k, env, d in newest if env is not None and not d.exists] == [f"default:volume:{volume['id']}"]
        [fourth] = poller.poll("resources")
        assert fourth.detail["gone"] == 0
        assert [k for k, env, d in events(s, RESOURCES, seen) if env is None or not d.exists] == []
    finally:
        close()
        server.stop()


# ------------------------------------------------------------------------------------------ accounts and auth
@pytest.fixture(scope="module")
def strict_sim() -> Iterator[RunningServer]:
    """A simulator that only accepts GOOD_TOKEN."""
    server = run_in_thread(create_app(load_scenario("april-2026"), tokens=[GOOD_TOKEN]))
    yield server
    server.stop()


def test_failing_account_does_not_stop_the_others(
    settings: Settings, strict_sim: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    s = settings.model_copy(
        update={
            "digitalocean_api_url": strict_sim.url,
            "digitalocean_accounts": [
                DigitalOceanAccount(name="broken", token=SecretStr(BAD_TOKEN)),
                DigitalOceanAccount(name="acme", token=SecretStr(GOOD_TOKEN)),
            ],
        }
    )
    sleeps = Sleeps()
    poller, close = poller_main.build(s, factory(s, sleeps))
    try:
        results = poller.poll("balance")
        rows = {r["account"]: r for r in poller.store.statuses()}
    finally:
        close()
    by_account = {r.account: r for r in results}
    assert by_account["acme"].status == "ok"
    broken = by_account["broken"]
    assert broken.failed and sleeps.waits == []  # auth errors are not retried
    assert "GET /v2/customers/my/balance" in broken.error and "HTTP 401" in broken.error
    assert "Unable to authenticate you" in broken.error
    assert rows["broken"]["status"] == "failed" and rows["acme"]["status"] == "ok"
    assert rows["acme"]["last_success_at"] is not None
    balances = events(s, BALANCE)
    assert [(k, env.account) for k, env, _ in balances] == [("acme", "acme")]
    assert balances[0][2].month_to_date_balance_minor > 0
    for text in [caplog.text, broken.error, str(rows)]:
        assert BAD_TOKEN not in text and GOOD_TOKEN not in text


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch):
    """Run `cloudbill ...` in-process with the given settings as environment; logging restored after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)

    def apply(s: Settings, token: str) -> None:
        for k, v in {
            "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
            "KAFKA_TOPIC_PREFIX": s.kafka_topic_prefix,
            "KAFKA_PARTITIONS": str(s.kafka_partitions),
            "DATABASE_URL": s.database_url,
            "DIGITALOCEAN_API_URL": s.digitalocean_api_url,
            "DIGITALOCEAN_TOKEN": token,
            "DIGITALOCEAN_PER_PAGE": "50",
            "DIGITALOCEAN_ACCOUNT_NAME": "main",
            "LOG_FORMAT": "console",
        }.items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("DIGITALOCEAN_ACCOUNTS", raising=False)
        get_settings.cache_clear()

    yield apply
    get_settings.cache_clear()
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def test_cli_poll_history_end_to_end(settings: Settings, strict_sim: RunningServer, cli_env) -> None:
    from cloudbill.cli import app

    s = settings.model_copy(update={"digitalocean_api_url": strict_sim.url})
    cli_env(s, GOOD_TOKEN)
    res = CliRunner().invoke(app, ["poll", "history", "--account", "main"])
    assert res.exit_code == 0, res.output
    assert "history poll of account main: ok" in res.output
    discovered = events(s, INVOICE_DISCOVERED)
    assert len(discovered) == 137 and {env.account for _, env, _ in discovered} == {"main"}

    res = CliRunner().invoke(app, ["poll", "balance", "--account", "nobody"])
    assert res.exit_code == 2 and "no DigitalOcean account named 'nobody'" in res.output


def test_cli_bad_token_one_clear_error(settings: Settings, strict_sim: RunningServer, cli_env) -> None:
    from cloudbill.cli import app

    s = settings.model_copy(update={"digitalocean_api_url": strict_sim.url})
    cli_env(s, BAD_TOKEN)
    res = CliRunner().invoke(app, ["poll", "all"])
    assert res.exit_code == 1
    failures = [line for line in res.output.splitlines() if "FAILED" in line]
    assert len(failures) == 3  # resources, balance, history: each one line, no retry storm
    assert [line.split(" poll of")[0].split()[-1] for line in failures] == ["resources", "balance", "history"]
    assert any("balance poll of account main FAILED: DigitalOcean GET /v2/customers/my/balance" in f for f in failures)
    assert all("HTTP 401" in line for line in failures)
    assert BAD_TOKEN not in res.output
    assert len(sim_requests(strict_sim)) == 1 + 1 + 11  # balance, invoices, 11 listings (GPU droplets too): no retries


# ------------------------------------------------------------------------------------------ replicas
def test_two_replicas_poll_each_tick_once(settings: Settings, sim: RunningServer) -> None:
    """Two poller services on the same DB and broker, balance every second: each tick polled once."""
    s = sim_settings(
        settings,
        sim.url,
        poll_balance_cron="* * * * * *",
        poll_history_cron="0 0 1 1 *",
        poll_resources_cron="0 0 1 1 *",
        poll_catch_up=False,  # ticks only (the catch-up at start has its own tests)
    )
    stop = StopSignal()
    threads = [
        threading.Thread(target=poller_main.run, args=(s, stop), kwargs={"replica": f"r{i}"}, daemon=True)
        for i in (1, 2)
    ]
    started = time.time()
    for t in threads:
        t.start()
    wait_until(lambda: len(sim_requests(sim, "/v2/customers/my/balance")) >= 3, timeout=20, what="3 balance ticks")
    stop.set()
    for t in threads:
        t.join(15)
    stopped = time.time()
    assert not any(t.is_alive() for t in threads)
    polls = sim_requests(sim, "/v2/customers/my/balance")
    # Each replica alone polls every tick in (started, stopped]: both polling would double the count.
    ticks_max = int(stopped) - int(started)
    assert 2 <= len(polls) <= ticks_max, (len(polls), ticks_max)
    assert len(events(s, BALANCE)) == len(polls)


def test_concurrent_replicas_same_tick_and_one_off_duplicates_share_ids(settings: Settings, sim: RunningServer) -> None:
    s = sim_settings(settings, sim.url)
    built = [poller_main.build(s, replica=f"r{i}") for i in (1, 2)]
    pollers: list[Poller] = [p for p, _ in built]
    tick = datetime(2026, 5, 14, 8, 0, tzinfo=UTC)
    barrier = threading.Barrier(2)
    results: dict[str, list] = {}

    def go(p: Poller) -> None:
        barrier.wait()
        results[p.replica] = p.poll("resources", tick=tick)

    try:
        threads = [threading.Thread(target=go, args=(p,)) for p in pollers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        statuses = sorted(r[0].status for r in results.values())
        assert statuses == ["ok", "skipped"], results
        assert len(events(s, RESOURCES)) == 9
        # the same tick again on either replica: skipped
        assert pollers[0].poll("resources", tick=tick)[0].status == "skipped"
        # a one-off poll (no tick) always polls; what it re-sends has the same ids
        assert pollers[1].poll("resources", wait_lock_s=5)[0].status == "ok"
        recs = events(s, RESOURCES)
        assert len(recs) == 18
        assert len({env.event_id for _, env, _ in recs}) == 9
        # a one-off poll waits for a poll running elsewhere, up to its limit
        with pollers[0].store.lock("balance", "default") as held:
            assert held
            t0 = time.monotonic()
            [waited] = pollers[1].poll("balance", wait_lock_s=0.5)
            assert waited.status == "skipped" and 0.4 < time.monotonic() - t0 < 5
        assert pollers[1].poll("balance", wait_lock_s=0.5)[0].status == "ok"
    finally:
        for _, close in built:
            close()


# ------------------------------------------------------------------------------------------ catch-up
def _history_polls(s: Settings) -> int:
    """Completed history polls so far (each discovers the scenario's 137 invoices)."""
    return len(events(s, INVOICE_DISCOVERED)) // 137


def test_catch_up_runs_missed_jobs_once_across_replicas_then_never_again(
    settings: Settings, sim: RunningServer
) -> None:
    """Deployed at 10:00 with history due daily at 02:23 and never polled: the history is polled at start,
    once for two replicas starting together; a restart does not poll again; a last success older than the
    previous tick (the deployment was down over 02:23) is made up once more."""
    from services.poller.main import catch_up, crons
    from services.poller.schedule import Schedule

    s = sim_settings(settings, sim.url)
    now = datetime(2026, 5, 14, 10, 0, tzinfo=UTC)
    built = [poller_main.build(s, replica=f"r{i}") for i in (1, 2)]
    barrier = threading.Barrier(2)

    def start(poller: Poller) -> None:
        barrier.wait()
        catch_up(poller, Schedule(crons(s), now), now, StopSignal())

    try:
        threads = [threading.Thread(target=start, args=(p,)) for p, _ in built]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert _history_polls(s) == 1
        assert len(events(s, BALANCE)) == 1 and len(events(s, RESOURCES)) == 9  # never ran either: caught up
        status = {r["job"]: r for r in built[0][0].store.statuses()}
        assert status["history"]["last_tick"] == datetime(2026, 5, 14, 2, 23, tzinfo=UTC)

        # A restart the same day: every job succeeded since its previous tick, nothing is polled.
        requests_before = len(sim_requests(sim))
        catch_up(built[0][0], Schedule(crons(s), now), now, StopSignal())
        assert len(sim_requests(sim)) == requests_before

        # Down over the next 02:23: the history is missed again and made up at the next start, once.
        tomorrow = datetime(2026, 5, 15, 9, 0, tzinfo=UTC)
        with built[0][0].store.pool.connection() as conn:  # its last success was at (real) now, far after
            conn.execute("UPDATE poller.poll_status SET last_success_at = %s", (now,))
        for poller, _ in built:
            catch_up(poller, Schedule(crons(s), tomorrow), tomorrow, StopSignal())
        assert _history_polls(s) == 2
    finally:
        for _, close in built:
            close()


def test_the_poller_service_catches_up_at_start_unless_turned_off(settings: Settings, sim: RunningServer) -> None:
    yearly = {"poll_balance_cron": "0 0 1 1 *", "poll_history_cron": "0 0 1 1 *", "poll_resources_cron": "0 0 1 1 *"}
    off = sim_settings(settings, sim.url, poll_catch_up=False, **yearly)
    stop = StopSignal()
    t = threading.Thread(target=poller_main.run, args=(off, stop), daemon=True)
    t.start()
    time.sleep(3)  # started and waiting for next year's tick
    stop.set()
    t.join(15)
    assert not t.is_alive() and sim_requests(sim) == []

    on = off.model_copy(update={"poll_catch_up": True})
    stop = StopSignal()
    t = threading.Thread(target=poller_main.run, args=(on, stop), daemon=True)
    t.start()
    try:
        wait_until(lambda: _history_polls(on) == 1, timeout=60, what="the history polled at start")
    finally:
        stop.set()
        t.join(15)
