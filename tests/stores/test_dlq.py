"""Dead letters: classes, history, DLQ backends (SQLite, SQS on moto), redrive and archive lifecycle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from tradepulse.models import DeadLetter
from tradepulse.stores.dlq import (
    DLQ_ID_HEADER,
    DLQ_ORIGIN_HEADER,
    DLQ_RETRIES_HEADER,
    PERMANENT,
    TRANSIENT,
    DeadLetterPolicy,
    NoRedriveRoute,
    decode_payload,
    encode_payload,
    iso_utc,
    make_dead_letter,
    parse_iso,
    redrive_route,
    republisher,
)
from tradepulse.stores.dlq_queues import SqliteDeadLetterQueue, SqsDeadLetterQueue

T0 = 1_767_000_000.0
MIN = 60.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def letter(offset: int = 5, payload: str | bytes = '{"ev":"T","sym":"AAPL","p":-1}', **kw) -> dict:
    row = make_dead_letter(
        stage="processor",
        payload=payload,
        error=ValueError("price must be > 0"),
        source_topic="market.trades",
        source_partition=2,
        source_offset=offset,
        ticker="AAPL",
        now_s=kw.pop("now_s", T0),
        **kw,
    )
    DeadLetter.model_validate(row)
    return row


def transient(offset: int = 5, **kw) -> dict:
    """A letter that may succeed later: ingest could not deliver a trade to Kafka."""
    row = make_dead_letter(
        stage="ingest",
        payload=f'{{"event_id":"e{offset}","ticker":"AAPL"}}',
        error_type="DeliveryFailed",
        reason="delivery to market.trades failed: Local: Message timed out",
        source_topic="market.trades",
        ticker="AAPL",
        now_s=kw.pop("now_s", T0),
        **kw,
    )
    DeadLetter.model_validate(row)
    return row


@pytest.fixture(params=["sqlite", "sqs"])
def dlq(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    if request.param == "sqlite":
        q = SqliteDeadLetterQueue(tmp_path / "dlq.sqlite3")
        yield q
        q.close()
        return
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        archive_url = sqs.create_queue(QueueName="tradepulse-dlq-archive")["QueueUrl"]
        archive_arn = sqs.get_queue_attributes(QueueUrl=archive_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        url = sqs.create_queue(
            QueueName="tradepulse-dlq",
            Attributes={"RedrivePolicy": f'{{"deadLetterTargetArn":"{archive_arn}","maxReceiveCount":"50"}}'},
        )["QueueUrl"]
        yield SqsDeadLetterQueue(url, client=sqs)


# --- letters ---------------------------------------------------------------------------------------


def test_dead_letter_is_deterministic_and_carries_context() -> None:
    a, b = letter(), letter()
    assert a == b and a["dead_letter_id"] != letter(offset=6)["dead_letter_id"]
    assert a["error_type"] == "ValueError" and a["reason"] == "price must be > 0"
    assert (a["source_topic"], a["source_partition"], a["source_offset"], a["ticker"]) == (
        "market.trades",
        2,
        5,
        "AAPL",
    )
    assert a["retry_count"] == 0 and a["status"] == "pending" and a["history"] == []
    assert parse_iso(a["first_failure_at"]) == T0 == parse_iso(iso_utc(T0))


@pytest.mark.parametrize("raw", [b"\xff\x00binary", "plain text", b"b64:looks encoded", "ünï"])
def test_payload_round_trip(raw: str | bytes) -> None:
    encoded = encode_payload(raw)
    expected = raw if isinstance(raw, bytes) else raw.encode()
    assert decode_payload(encoded) == expected


def test_headers_of_a_redriven_message_return_it_to_its_letter() -> None:
    again = letter(offset=999, headers=[(DLQ_ID_HEADER, b"abc123"), (DLQ_RETRIES_HEADER, b"2")])
    assert again["dead_letter_id"] == "abc123" and again["retry_count"] == 2


@pytest.mark.parametrize(
    ("stage", "error_type", "expected"),
    [
        ("sink:hot", "OperationalError", TRANSIENT),
        ("sink:hot", "ValueError", TRANSIENT),  # whatever broke the sink, the row itself was valid
        ("ingest", "DeliveryFailed", TRANSIENT),
        ("processor", "TimeoutError", TRANSIENT),
        ("ingest", "InvalidEvent", PERMANENT),
        ("ingest", "BadJSON", PERMANENT),
        ("ingest", "MissingField", PERMANENT),
        ("processor", "bad_value", PERMANENT),
        ("news", "InvalidArticle", PERMANENT),
    ],
)
def test_failures_are_classified(stage: str, error_type: str, expected: str) -> None:
    row = make_dead_letter(stage=stage, payload="x", error_type=error_type, reason="r", now_s=T0)
    assert row["failure_class"] == expected


def test_a_redriven_message_that_fails_again_keeps_the_original_failure() -> None:
    """The new failure goes to the history; stage, error type, reason and source stay the first ones."""
    original = transient()
    redriven = dict(original, retry_count=1, history=[{"at": iso_utc(T0 + 900), "outcome": "redriven"}])
    captured: list[tuple] = []
    republisher(lambda *msg: captured.append(msg))(redriven)
    (_topic, _key, value, headers) = captured[0]
    assert set(headers) >= {DLQ_ID_HEADER, DLQ_RETRIES_HEADER, DLQ_ORIGIN_HEADER}
    # The runner consumes it, rejects it, and dead-letters it with the message headers.
    again = make_dead_letter(
        stage="processor",
        payload=value,
        error_type="bad_value",
        reason="field 'price' must be > 0, got -1.0",
        source_topic="market.trades",
        source_partition=0,
        source_offset=77,
        headers=list(headers.items()),
        now_s=T0 + 901,
    )
    DeadLetter.model_validate(again)
    assert again["dead_letter_id"] == original["dead_letter_id"] and again["retry_count"] == 1
    for name in ("stage", "error_type", "reason", "source_topic", "source_partition", "source_offset"):
        assert again[name] == original[name], name
    assert [h["outcome"] for h in again["history"]] == ["redriven", "failed_again"]
    assert again["history"][1] | {"at": None} == {
        "at": None,
        "outcome": "failed_again",
        "stage": "processor",
        "error_type": "bad_value",
        "reason": "field 'price' must be > 0, got -1.0",
    }
    assert again["failure_class"] == PERMANENT  # it can never succeed now: not redriven again


# --- backends --------------------------------------------------------------------------------------


def test_backend_put_pending_depth_update(dlq) -> None:
    first, second = letter(1, now_s=T0), letter(2, payload=b"\xff\xfe", now_s=T0 + 1)
    dlq.put([second, first])
    assert dlq.depth() == 2
    assert dlq.pending() == [first, second]  # oldest first, context intact
    assert decode_payload(dlq.pending()[1]["payload"]) == b"\xff\xfe"
    dlq.pending()
    dlq.update(dict(first, status="redriven", retry_count=1))
    assert [x["dead_letter_id"] for x in dlq.pending()] == [second["dead_letter_id"]]
    assert dlq.depth() == 1


# --- lifecycle -----------------------------------------------------------------------------------------


def test_lifecycle_redrive_every_15_min_then_archive_after_5(dlq) -> None:
    clock = FakeClock()
    attempts: list[tuple[float, int]] = []
    archived: list[dict] = []

    def failing_sink(row: dict) -> None:
        attempts.append((clock.now, row["retry_count"]))
        raise ConnectionError(f"sink still down ({row['retry_count']})")

    policy = DeadLetterPolicy(dlq, redrive=failing_sink, archive=archived.extend, clock=clock)
    original = transient(now_s=clock.now)
    dlq.put([original])

    clock.now += 5 * MIN
    assert policy.redrive_due().not_due == 1 and not attempts  # due 15 min after its last failure
    for n in range(1, 5):
        clock.now = T0 + n * 15 * MIN
        report = policy.redrive_due()
        assert report.failed == [original["dead_letter_id"]]
        (pending,) = dlq.pending()
        assert pending["retry_count"] == n
        assert parse_iso(pending["last_failure_at"]) == clock.now
        assert parse_iso(pending["first_failure_at"]) == T0
        # The original failure is intact; each attempt is in the history.
        assert (pending["error_type"], pending["reason"]) == (original["error_type"], original["reason"])
        assert [(h["outcome"], h["error_type"], h["reason"]) for h in pending["history"]] == [
            ("failed", "ConnectionError", f"sink still down ({i})") for i in range(1, n + 1)
        ]
        assert [parse_iso(h["at"]) for h in pending["history"]] == [
            T0 + i * 15 * MIN for i in range(1, n + 1)
        ]
    assert not archived
    clock.now = T0 + 5 * 15 * MIN
    report = policy.redrive_due()  # the 5th failed redrive archives
    assert report.archived == [original["dead_letter_id"]]
    assert [t for t, _ in attempts] == [T0 + n * 15 * MIN for n in range(1, 6)]
    assert [n for _, n in attempts] == [1, 2, 3, 4, 5]
    (done,) = archived
    assert done["status"] == "archived" and done["retry_count"] == 5 and len(done["history"]) == 5
    assert (done["error_type"], done["reason"]) == (original["error_type"], original["reason"])
    DeadLetter.model_validate(done)
    assert dlq.depth() == 0 and dlq.pending() == []


def test_permanent_letters_are_never_redriven_but_stay_visible_and_archivable(dlq) -> None:
    """The issue-16 reproduction: ingest letters of a negative price, NaN, a missing id and bad JSON."""
    clock = FakeClock(T0 + 60 * MIN)
    tried: list[dict] = []
    archived: list[dict] = []
    policy = DeadLetterPolicy(dlq, redrive=tried.append, archive=archived.extend, clock=clock)
    rejects = [
        ("InvalidEvent", "field 'p' must be > 0, got -1.0", '{"ev":"T","sym":"AAPL","p":-1.0}'),
        ("InvalidEvent", "field 'p' must be a finite number, got nan", '{"ev":"T","sym":"AAPL","p":NaN}'),
        ("MissingField", "missing field 'i'", '{"ev":"T","sym":"AAPL","p":1.0}'),
        ("BadJSON", "bad JSON frame: unexpected end of data", '[{"ev":"T"'),
    ]
    letters = [
        make_dead_letter(stage="ingest", payload=p, error_type=t, reason=r, ticker="AAPL", now_s=T0)
        for t, r, p in rejects
    ]
    dlq.put(letters)
    for force in (False, True):
        report = policy.redrive_due(force=force)
        assert (report.redriven, report.failed, report.archived, report.permanent) == ([], [], [], 4)
    assert tried == []
    pending = dlq.pending()
    assert sorted((x["error_type"], x["reason"]) for x in pending) == sorted((t, r) for t, r, _ in rejects)
    assert all(x["failure_class"] == PERMANENT and x["history"] == [] for x in pending)
    assert dlq.counts() == {TRANSIENT: 0, PERMANENT: 4}
    assert sorted(policy.archive_pending(PERMANENT)) == sorted(x["dead_letter_id"] for x in letters)
    assert sorted(x["reason"] for x in archived) == sorted(r for _, r, _ in rejects)
    assert dlq.depth() == 0


def test_redrive_by_republishing_and_a_repeat_failure_returns_to_its_letter(dlq) -> None:
    clock = FakeClock()
    published: list[tuple] = []
    archived: list[dict] = []
    policy = DeadLetterPolicy(
        dlq,
        redrive=republisher(lambda *msg: published.append(msg)),
        archive=archived.extend,
        clock=clock,
    )
    original = transient(now_s=clock.now)
    dlq.put([original])
    for n in range(1, 7):
        clock.now = T0 + n * 15 * MIN
        report = policy.redrive_due()
        if n <= 5:
            assert report.redriven == [original["dead_letter_id"]]
            topic, key, value, headers = published[-1]
            assert (topic, key, value) == ("market.trades", b"AAPL", original["payload"].encode())
            assert headers[DLQ_ID_HEADER] == original["dead_letter_id"].encode()
            assert headers[DLQ_RETRIES_HEADER] == str(n).encode()
            assert dlq.depth() == 0
            # Delivery times out again, in line, and ingest dead-letters it with the message headers.
            again = transient(headers=list(headers.items()), now_s=clock.now)
            dlq.put([again])
            (pending,) = dlq.pending()
            assert pending["dead_letter_id"] == original["dead_letter_id"]
            assert pending["retry_count"] == n
            assert parse_iso(pending["first_failure_at"]) == T0
            assert [h["outcome"] for h in pending["history"]] == ["redriven", "failed_again"] * n
        else:
            assert report.archived == [original["dead_letter_id"]] and not report.redriven
    assert len(published) == 5
    assert len(archived) == 1 and archived[0]["retry_count"] == 5
    assert dlq.depth() == 0


def test_a_late_redriven_update_does_not_hide_a_newer_failure(tmp_path: Path) -> None:
    """The runner can fail the re-published message before the redrive pass records its success."""
    q = SqliteDeadLetterQueue(tmp_path / "dlq.sqlite3")
    clock = FakeClock(T0 + 15 * MIN)

    def publish_and_fail_downstream(topic: str, key: bytes | None, value: bytes, headers: dict) -> None:
        q.put([transient(headers=list(headers.items()), now_s=clock.now)])

    policy = DeadLetterPolicy(
        q, redrive=republisher(publish_and_fail_downstream), archive=lambda rows: None, clock=clock
    )
    q.put([transient()])
    assert len(policy.redrive_due().redriven) == 1
    (pending,) = q.pending()
    assert [h["outcome"] for h in pending["history"]] == ["redriven", "failed_again"]
    q.close()


def test_a_letter_without_a_route_fails_its_attempt_and_keeps_its_reason(dlq) -> None:
    clock = FakeClock(T0 + 15 * MIN)
    policy = DeadLetterPolicy(dlq, redrive=redrive_route(), archive=lambda rows: None, clock=clock)
    original = make_dead_letter(
        stage="sink:hot", payload='{"kind":"trade","row":{}}', error_type="OperationalError",
        reason="database is locked", now_s=T0,
    )  # fmt: skip
    dlq.put([original])
    assert policy.redrive_due().failed == [original["dead_letter_id"]]
    (pending,) = dlq.pending()
    assert (pending["error_type"], pending["reason"]) == ("OperationalError", "database is locked")
    assert pending["history"][-1]["error_type"] == NoRedriveRoute.__name__


def test_successful_redrive_and_archive_now(dlq) -> None:
    clock = FakeClock()
    archived: list[dict] = []
    done: list[str] = []
    policy = DeadLetterPolicy(
        dlq, redrive=lambda r: done.append(r["dead_letter_id"]), archive=archived.extend, clock=clock
    )
    a, b = transient(1), transient(2)
    dlq.put([a, b])
    assert sorted(policy.redrive_due(force=True).redriven) == sorted(
        [a["dead_letter_id"], b["dead_letter_id"]]
    )
    assert dlq.depth() == 0
    c = letter(3)
    dlq.put([c])
    assert policy.archive_pending() == [c["dead_letter_id"]]
    assert [x["dead_letter_id"] for x in archived] == [c["dead_letter_id"]]
    assert dlq.depth() == 0


def test_sqlite_dlq_keeps_redriven_and_archived_for_inspection(tmp_path: Path) -> None:
    q = SqliteDeadLetterQueue(tmp_path / "dlq.sqlite3")
    a, b = letter(1), letter(2)
    q.put([a, b])
    q.update(dict(a, status="redriven", retry_count=1))
    q.update(dict(b, status="archived", retry_count=5))
    assert [x["status"] for x in q.letters()] == ["redriven", "archived"]
    assert q.letters("archived")[0]["retry_count"] == 5
    q.put([a])  # fails again after its redrive: pending again, retries kept
    assert q.pending()[0]["retry_count"] == 1
    q.close()


@mock_aws
def test_sqs_messages_carry_the_context_as_attributes() -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    dlq = SqsDeadLetterQueue(sqs.create_queue(QueueName="dlq")["QueueUrl"], client=sqs)
    dlq.put([letter()])
    msg = dlq.client.receive_message(QueueUrl=dlq.queue_url, MessageAttributeNames=["All"])["Messages"][0]
    assert msg["Body"] == letter()["payload"]
    attrs = msg["MessageAttributes"]
    assert attrs["source_topic"]["StringValue"] == "market.trades"
    assert attrs["retry_count"] == {"DataType": "Number", "StringValue": "0"}
    assert attrs["error_type"]["StringValue"] == "ValueError"
    assert len(attrs) <= 10  # the SQS per-message limit
