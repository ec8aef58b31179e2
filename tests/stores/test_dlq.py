"""Dead letters: in-line retries, DLQ backends (SQLite, SQS on moto), redrive and archive lifecycle."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from tradepulse.models import DeadLetter
from tradepulse.stores.dlq import (
    DLQ_ID_HEADER,
    DLQ_RETRIES_HEADER,
    DeadLetterPolicy,
    SqliteDeadLetterQueue,
    SqsDeadLetterQueue,
    decode_payload,
    encode_payload,
    iso_utc,
    make_dead_letter,
    parse_iso,
    republisher,
    with_retries,
)

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


# --- in-line retries ---------------------------------------------------------------------------------


def test_with_retries_backs_off_exponentially_then_succeeds() -> None:
    calls, sleeps = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("sink down")
        return "ok"

    assert (
        with_retries(flaky, attempts=3, base_delay_s=0.1, sleep=sleeps.append, rng=random.Random(1)) == "ok"
    )
    assert len(calls) == 3 and len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.1 and 0 <= sleeps[1] <= 0.2  # full jitter under 0.1 * 2**attempt


def test_with_retries_reraises_after_the_last_attempt() -> None:
    calls, sleeps = [], []

    def broken() -> None:
        calls.append(1)
        raise TimeoutError(f"attempt {len(calls)}")

    with pytest.raises(TimeoutError, match="attempt 3"):
        with_retries(broken, attempts=3, sleep=sleeps.append)
    assert len(calls) == 3 and len(sleeps) == 2


def test_with_retries_does_not_retry_other_errors() -> None:
    calls = []

    def bug() -> None:
        calls.append(1)
        raise KeyError("x")

    with pytest.raises(KeyError):
        with_retries(bug, retry_on=(ConnectionError,), sleep=lambda s: None)
    assert len(calls) == 1


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
    assert a["retry_count"] == 0 and a["status"] == "pending"
    assert parse_iso(a["first_failure_at"]) == T0 == parse_iso(iso_utc(T0))


@pytest.mark.parametrize("raw", [b"\xff\x00binary", "plain text", b"b64:looks encoded", "ünï"])
def test_payload_round_trip(raw: str | bytes) -> None:
    encoded = encode_payload(raw)
    expected = raw if isinstance(raw, bytes) else raw.encode()
    assert decode_payload(encoded) == expected


def test_headers_of_a_redriven_message_return_it_to_its_letter() -> None:
    again = letter(offset=999, headers=[(DLQ_ID_HEADER, b"abc123"), (DLQ_RETRIES_HEADER, b"2")])
    assert again["dead_letter_id"] == "abc123" and again["retry_count"] == 2


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

    def failing_sink_retry(row: dict) -> None:
        attempts.append((clock.now, row["retry_count"]))
        raise ConnectionError("sink still down")

    policy = DeadLetterPolicy(dlq, redrive=failing_sink_retry, archive=archived.extend, clock=clock)
    dlq.put([letter(now_s=clock.now)])

    report = policy.maybe_redrive()  # first pass right away: the letter is not due yet
    assert report is not None and report.not_due == 1 and not attempts
    clock.now += 5 * MIN
    assert policy.maybe_redrive() is None  # passes run every 15 min
    for n in range(1, 5):
        clock.now = T0 + n * 15 * MIN
        report = policy.maybe_redrive()
        assert report.failed == [letter()["dead_letter_id"]]
        (pending,) = dlq.pending()
        assert pending["retry_count"] == n
        assert parse_iso(pending["last_failure_at"]) == clock.now
        assert parse_iso(pending["first_failure_at"]) == T0
        assert pending["reason"] == "sink still down" and pending["error_type"] == "ConnectionError"
    assert not archived
    clock.now = T0 + 5 * 15 * MIN
    report = policy.maybe_redrive()  # the 5th failed redrive archives
    assert report.archived == [letter()["dead_letter_id"]]
    assert [t for t, _ in attempts] == [T0 + n * 15 * MIN for n in range(1, 6)]
    assert [n for _, n in attempts] == [1, 2, 3, 4, 5]
    assert len(archived) == 1 and archived[0]["status"] == "archived" and archived[0]["retry_count"] == 5
    DeadLetter.model_validate(archived[0])
    assert dlq.depth() == 0 and dlq.pending() == []


def test_redrive_by_republishing_and_a_poison_message_ends_archived(dlq) -> None:
    clock = FakeClock()
    published: list[tuple] = []
    archived: list[dict] = []
    policy = DeadLetterPolicy(
        dlq,
        redrive=republisher(lambda *msg: published.append(msg)),
        archive=archived.extend,
        clock=clock,
    )
    original = letter(now_s=clock.now)
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
            # The consumer fails on it again, in line, and dead-letters it with the message headers.
            again = letter(offset=1000 + n, headers=list(headers.items()), now_s=clock.now)
            dlq.put([again])
            (pending,) = dlq.pending()
            assert pending["dead_letter_id"] == original["dead_letter_id"]
            assert pending["retry_count"] == n
            assert parse_iso(pending["first_failure_at"]) == T0
        else:
            assert report.archived == [original["dead_letter_id"]] and not report.redriven
    assert len(published) == 5
    assert len(archived) == 1 and archived[0]["retry_count"] == 5
    assert dlq.depth() == 0


def test_successful_redrive_and_archive_now(dlq) -> None:
    clock = FakeClock()
    archived: list[dict] = []
    done: list[str] = []
    policy = DeadLetterPolicy(
        dlq, redrive=lambda r: done.append(r["dead_letter_id"]), archive=archived.extend, clock=clock
    )
    a, b = letter(1), letter(2)
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
