"""`cloudbill dlq list | show | redrive`: dead letters you can read and send back after a fix.

Dead letters are read from the dead-letter topics themselves (Kafka is the record of what failed), so
`list` and `show` need only the broker. `redrive` sends a dead letter's record back to its source topic
with a redrive count (shared.kafka.deadletter) and records it in the `ops.redrives` table first: a dead
letter already redriven is skipped unless `--again` is given, so running the same redrive twice sends
nothing twice. Consumers are idempotent anyway (deterministic event ids, ledgers), so even a repeated
send is processed once downstream; the ledger keeps the history (who, why, how often) visible.
"""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cloudbill.context import settings as _settings
from shared.kafka.deadletter import DeadLetter, RedriveError, parse_dead_letter_id
from shared.settings import Settings

app = typer.Typer(help="Dead letters: list, show, redrive after a fix.", no_args_is_help=True)
console = Console()


def dlq_topics(settings: Settings, topic: str | None = None) -> list[str]:
    """Every dead-letter topic of the registry, or the one of `topic` (a source or a DLQ name, or a stage's retry
    topic: its parked records)."""
    from shared.topics import ALL

    p = settings.kafka_topic_prefix
    names = [t.dlq(p) for t in ALL if t.has_dlq]
    if topic is None:
        return names
    from shared.topics import STAGES

    retries = {st.retry_topic(settings) for st in STAGES.values() if st.parks}
    for name in (topic, f"{p}{topic}"):
        if name in retries:  # a stage's parked records carry the same headers (shared/kafka/retry.py)
            return [name]
    wanted = topic if topic.endswith(".dlq") else f"{topic}.dlq"
    if wanted not in names and f"{p}{wanted}" in names:
        wanted = f"{p}{wanted}"
    if wanted not in names:
        raise typer.BadParameter(f"{topic!r} is not a topic with a dead-letter topic (see `cloudbill topics list`)")
    return [wanted]


def read_dead_letters(
    settings: Settings, *, topic: str | None = None, since: datetime | None = None, error_class: str | None = None
) -> list[DeadLetter]:
    from shared.kafka.admin import read_topic

    out = []
    for name in dlq_topics(settings, topic):
        for rec in read_topic(settings, name, committed_only=True, timeout=60):
            dl = DeadLetter.from_record(rec)
            if since is not None and (dl.failed_at is None or dl.failed_at < since):
                continue
            if error_class is not None and error_class not in (dl.error_class, dl.error_class.rsplit(".", 1)[-1]):
                continue
            out.append(dl)
    return sorted(out, key=lambda d: (d.failed_at or datetime.min.replace(tzinfo=UTC), d.id))


def read_dead_letter(settings: Settings, dead_letter_id: str) -> DeadLetter:
    from shared.kafka.admin import read_record

    try:
        topic, partition, offset = parse_dead_letter_id(dead_letter_id)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    rec = read_record(settings, topic, partition, offset)
    if rec is None:
        raise typer.BadParameter(f"no dead letter at {dead_letter_id}")
    return DeadLetter.from_record(rec)


# ------------------------------------------------------------------------------------------------ ledger
@dataclass(frozen=True)
class Claim:
    dead_letter_id: str
    state: str  # what the row said before this claim: "new", "pending" (an interrupted send) or "sent"
    times: int


class RedriveLedger:
    """`ops.redrives`: claim before sending, mark after the broker acknowledged."""

    def __init__(self, settings: Settings) -> None:
        from shared.db import connect, migrate

        migrate(settings, ["ops"])
        self.conn = connect(settings, autocommit=True)

    def claim(self, dl: DeadLetter, *, by: str, reason: str, again: bool) -> Claim | None:
        """None when the dead letter was already sent back and `again` is not set."""
        row = self.conn.execute(
            "SELECT state, times FROM ops.redrives WHERE dead_letter_id = %s FOR UPDATE", [dl.id]
        ).fetchone()
        if row is None:
            self.conn.execute(
                "INSERT INTO ops.redrives (dead_letter_id, source_topic, state, requested_by, reason) "
                "VALUES (%s, %s, 'pending', %s, %s) ON CONFLICT (dead_letter_id) DO NOTHING",
                [dl.id, dl.source_topic or "", by, reason],
            )
            return Claim(dl.id, "new", 1)
        if row["state"] == "sent" and not again:
            return None
        times = row["times"] + (1 if row["state"] == "sent" else 0)
        self.conn.execute(
            "UPDATE ops.redrives SET state = 'pending', times = %s, requested_by = %s, reason = %s, "
            "requested_at = now() WHERE dead_letter_id = %s",
            [times, by, reason, dl.id],
        )
        return Claim(dl.id, row["state"], times)

    def sent(self, dead_letter_id: str) -> None:
        self.conn.execute(
            "UPDATE ops.redrives SET state = 'sent', sent_at = now() WHERE dead_letter_id = %s", [dead_letter_id]
        )

    def history(self) -> dict[str, dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM ops.redrives").fetchall()
        return {r["dead_letter_id"]: r for r in rows}

    def close(self) -> None:
        self.conn.close()


@dataclass
class RedriveResult:
    sent: list[str]
    skipped: dict[str, str]  # id -> why


def redrive(
    settings: Settings,
    dead_letters: list[DeadLetter],
    *,
    by: str,
    reason: str = "",
    again: bool = False,
    dry_run: bool = False,
) -> RedriveResult:
    """Send each dead letter's record back to its source topic (see the module docstring)."""
    from shared.kafka import EventProducer

    result = RedriveResult([], {})
    sendable = []
    for dl in dead_letters:
        try:
            sendable.append((dl, dl.redrive()))
        except RedriveError as e:
            result.skipped[dl.id] = str(e)
    if dry_run:
        result.sent = [dl.id for dl, _ in sendable]
        return result
    ledger = RedriveLedger(settings)
    producer = EventProducer(settings, "cloudbill-redrive")
    try:
        for dl, out in sendable:
            if ledger.claim(dl, by=by, reason=reason, again=again) is None:
                result.skipped[dl.id] = "already redriven (use --again to send it once more)"
                continue
            producer.produce(out)
            producer.flush()  # acknowledged before it is marked sent: a crash leaves it pending, retried next time
            ledger.sent(dl.id)
            result.sent.append(dl.id)
    finally:
        producer.close()
        ledger.close()
    return result


# ------------------------------------------------------------------------------------------------ commands
def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"--since: not an ISO-8601 date/time: {text!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _summary(dl: DeadLetter) -> dict[str, Any]:
    return {
        "id": dl.id,
        "source": f"{dl.source_topic}[{dl.source_partition}]@{dl.source_offset}",
        "key": dl.key,
        "error_class": dl.error_class,
        "error_message": dl.error_message,
        "service": dl.service,
        "failed_at": dl.failed_at.isoformat() if dl.failed_at else None,
        "redrive_count": dl.redrive_count,
        "value_bytes": len(dl.value) if dl.value is not None else None,
        "truncated_from": dl.truncated_from,
    }


@app.command("list")
def list_(
    topic: Annotated[str | None, typer.Option(help="A source topic (or its .dlq); default: every one.")] = None,
    since: Annotated[str | None, typer.Option(help="Only dead letters failed at/after this ISO time.")] = None,
    error_class: Annotated[str | None, typer.Option(help="Only this error class (full or short name).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Dead letters, oldest first: where they came from and why they failed."""
    dls = read_dead_letters(_settings(), topic=topic, since=_since(since), error_class=error_class)
    if as_json:
        typer.echo(json.dumps([_summary(d) for d in dls], indent=2))
        return
    table = Table("id", "source", "key", "error", "service", "failed at", "redriven")
    for d in dls:
        s = _summary(d)
        table.add_row(
            s["id"],
            s["source"],
            str(d.key),
            f"{d.error_class.rsplit('.', 1)[-1]}: {d.error_message[:80]}",
            d.service,
            s["failed_at"] or "?",
            str(d.redrive_count),
        )
    console.print(table)
    console.print(f"{len(dls)} dead letter(s)")


@app.command()
def show(dead_letter_id: Annotated[str, typer.Argument(help="<dlq topic>:<partition>:<offset>")]) -> None:
    """One dead letter: headers, error and the record (text when it is UTF-8, else its size)."""
    dl = read_dead_letter(_settings(), dead_letter_id)
    out = _summary(dl) | {"headers": dl.headers}
    if dl.value is not None:
        try:
            out["value"] = dl.value.decode("utf-8")
        except UnicodeDecodeError:
            out["value"] = f"<{len(dl.value)} bytes, not UTF-8: {dl.value[:64]!r}...>"
    typer.echo(json.dumps(out, indent=2, ensure_ascii=False))


@app.command("redrive")
def redrive_cmd(
    dead_letter_id: Annotated[
        str | None, typer.Argument(help="One dead letter: <dlq topic>:<partition>:<offset>")
    ] = None,
    topic: Annotated[str | None, typer.Option(help="Every dead letter of this topic instead of one.")] = None,
    error_class: Annotated[str | None, typer.Option(help="With --topic: only this error class.")] = None,
    reason: Annotated[str, typer.Option(help="Why (kept with the redrive).")] = "",
    again: Annotated[bool, typer.Option("--again", help="Send dead letters already redriven once more.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be sent; send nothing.")] = False,
) -> None:
    """Send dead letters back to their source topic (after the fix that makes them processable)."""
    if (dead_letter_id is None) == (topic is None):
        raise typer.BadParameter("give one dead-letter ID or --topic")
    if error_class and topic is None:
        raise typer.BadParameter("--error-class needs --topic")
    settings = _settings()
    dls = (
        [read_dead_letter(settings, dead_letter_id)]
        if dead_letter_id
        else read_dead_letters(settings, topic=topic, error_class=error_class)
    )
    result = redrive(settings, dls, by=getpass.getuser(), reason=reason, again=again, dry_run=dry_run)
    verb = "would send" if dry_run else "sent"
    for i in result.sent:
        console.print(f"{verb} {i}")
    for i, why in result.skipped.items():
        console.print(f"[yellow]skipped[/yellow] {i}: {why}")
    console.print(f"{len(result.sent)} {verb}, {len(result.skipped)} skipped")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="dlq")
