"""Dead-letter queue: two backends (local SQLite, SQS) and the retry → DLQ → redrive → archive policy.

Policy (times from an injectable clock so the whole lifecycle is testable without waiting):
1. in line: `with_retries(fn)` tries an operation 3 times with exponential backoff (and jitter);
2. still failing: the caller builds a letter with `make_dead_letter(...)` and `put`s it in the DLQ;
3. every 15 min `DeadLetterPolicy.maybe_redrive()` retries each due letter through a passed-in
   callable: `republisher(publish)` re-publishes the payload to its source topic, or the runner passes
   its own callable that retries the failed sink operation;
4. a letter that has failed 5 redrives is archived to the cold store under `dead-letters/`.

A re-published message carries the headers `tp-dlq-id`, `tp-dlq-retries` and `tp-dlq-first-failure`.
If it fails again, the consumer passes the message headers to `make_dead_letter`, which then reuses the
original id, retry count and first failure time, so the letter comes back to the same DLQ row (an upsert) instead of starting over; that is what
bounds a poison message to 5 redrives.
"""

from __future__ import annotations

import base64
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from tradepulse.errors import InvalidArgument, StoreError
from tradepulse.ids import stable_id
from tradepulse.retry import backoff_delay
from tradepulse.stores.base import DeadLetterQueue, Row

T = TypeVar("T")

DLQ_ID_HEADER = "tp-dlq-id"
DLQ_RETRIES_HEADER = "tp-dlq-retries"
DLQ_FIRST_FAILURE_HEADER = "tp-dlq-first-failure"

Clock = Callable[[], float]
"""Seconds since the epoch (`time.time` in production, a fake in tests)."""


# --- helpers -----------------------------------------------------------------------------------


def iso_utc(epoch_s: float) -> str:
    """ISO 8601 UTC with milliseconds and a Z suffix."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso(text: str) -> float:
    """Epoch seconds of an ISO 8601 timestamp (Z or offset)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def encode_payload(payload: str | bytes | None) -> str:
    """UTF-8 text as is; other bytes as base64 prefixed with 'b64:' (the DeadLetter.payload format)."""
    if payload is None:
        return ""
    if isinstance(payload, str):
        return payload
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return "b64:" + base64.b64encode(payload).decode("ascii")
    # A text payload that happens to start with the prefix must stay unambiguous.
    return "b64:" + base64.b64encode(payload).decode("ascii") if text.startswith("b64:") else text


def decode_payload(payload: str) -> bytes:
    """Inverse of `encode_payload`: the original bytes."""
    if payload.startswith("b64:"):
        return base64.b64decode(payload[4:])
    return payload.encode("utf-8")


def _header_map(headers: Mapping[str, Any] | Sequence[tuple[str, Any]] | None) -> dict[str, str]:
    if not headers:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    out = {}
    for key, value in items:
        out[key] = value.decode() if isinstance(value, bytes | bytearray) else str(value)
    return out


def make_dead_letter(
    *,
    stage: str,
    payload: str | bytes | None,
    error: BaseException | None = None,
    error_type: str | None = None,
    reason: str | None = None,
    source_topic: str | None = None,
    source_partition: int | None = None,
    source_offset: int | None = None,
    ticker: str | None = None,
    headers: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
    now_s: float | None = None,
) -> Row:
    """A DeadLetter row. Pass the Kafka message headers so that a redriven message that fails again
    returns to its original letter (same id, retry count kept)."""
    text = encode_payload(payload)
    meta = _header_map(headers)
    letter_id = meta.get(DLQ_ID_HEADER) or stable_id(
        "DL", stage, source_topic, source_partition, source_offset, text
    )
    stamp = iso_utc(time.time() if now_s is None else now_s)
    first = meta.get(DLQ_FIRST_FAILURE_HEADER) or stamp
    return {
        "dead_letter_id": letter_id,
        "stage": stage,
        "payload": text,
        "error_type": error_type or (type(error).__name__ if error is not None else "Error"),
        "reason": (reason if reason is not None else str(error) if error is not None else "")[:4000],
        "source_topic": source_topic,
        "source_partition": source_partition,
        "source_offset": source_offset,
        "ticker": ticker,
        "retry_count": int(meta.get(DLQ_RETRIES_HEADER, 0)),
        "first_failure_at": first,
        "last_failure_at": stamp,
        "status": "pending",
    }


def with_retries(
    fn: Callable[[], T],
    *,
    attempts: int = 3,
    base_delay_s: float = 0.05,
    max_delay_s: float = 2.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """Call `fn` up to `attempts` times, sleeping with exponential backoff between attempts; re-raises
    the last error (the caller then dead-letters the input)."""
    for attempt in range(attempts):
        try:
            return fn()
        except retry_on:
            if attempt == attempts - 1:
                raise
            sleep(backoff_delay(attempt, base_delay_s, max_delay_s, rng))
    raise InvalidArgument("attempts must be >= 1")


# --- local backend -------------------------------------------------------------------------------

_DLQ_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    dead_letter_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    first_failure_at TEXT NOT NULL,
    doc BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_status ON dead_letters (status, first_failure_at);
"""


def _merge(old: Row | None, new: Row) -> Row:
    """A letter that fails again: keep its first failure time and the higher retry count."""
    if old is None:
        return dict(new)
    merged = dict(new)
    merged["first_failure_at"] = min(old["first_failure_at"], new["first_failure_at"])
    merged["retry_count"] = max(old["retry_count"], new["retry_count"])
    return merged


class SqliteDeadLetterQueue:
    """DeadLetterQueue in a local SQLite file (WAL; the CLI reads while the runner writes)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.executescript(_DLQ_SCHEMA)

    def put(self, letters: Iterable[Row]) -> None:
        """Insert letters; a letter whose id is already there is updated (pending again, retries kept)."""
        letters = list(letters)
        if not letters:
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for letter in letters:
                    old = self._get(letter["dead_letter_id"])
                    self._write(_merge(old, letter))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def update(self, letter: Row) -> None:
        """Store the new state of a letter after a redrive attempt (status, retry count, times)."""
        with self._lock:
            self._write(letter)

    def _write(self, letter: Row) -> None:
        self._conn.execute(
            "INSERT INTO dead_letters (dead_letter_id, status, first_failure_at, doc) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (dead_letter_id) DO UPDATE SET status = excluded.status, "
            "first_failure_at = excluded.first_failure_at, doc = excluded.doc",
            (letter["dead_letter_id"], letter["status"], letter["first_failure_at"], orjson.dumps(letter)),
        )

    def _get(self, letter_id: str) -> Row | None:
        row = self._conn.execute(
            "SELECT doc FROM dead_letters WHERE dead_letter_id = ?", (letter_id,)
        ).fetchone()
        return orjson.loads(row[0]) if row else None

    def get(self, letter_id: str) -> Row | None:
        with self._lock:
            return self._get(letter_id)

    def pending(self, limit: int = 100) -> list[Row]:
        """Pending letters, oldest first."""
        return self.letters("pending", limit)

    def letters(self, status: str | None = None, limit: int = 100) -> list[Row]:
        """Letters with a status (all when None), oldest first."""
        with self._lock:
            if status is None:
                cur = self._conn.execute(
                    "SELECT doc FROM dead_letters ORDER BY first_failure_at, dead_letter_id LIMIT ?",
                    (limit,),
                )
            else:
                cur = self._conn.execute(
                    "SELECT doc FROM dead_letters WHERE status = ? "
                    "ORDER BY first_failure_at, dead_letter_id LIMIT ?",
                    (status, limit),
                )
            return [orjson.loads(r[0]) for r in cur]

    def depth(self) -> int:
        """Pending letters."""
        with self._lock:
            return self._conn.execute(
                "SELECT count(*) FROM dead_letters WHERE status = 'pending'"
            ).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# --- SQS backend -----------------------------------------------------------------------------------

# Searchable in the console; everything else travels in one JSON "context" attribute, since SQS allows
# at most 10 attributes per message.
_ATTRS = ("dead_letter_id", "stage", "error_type", "source_topic", "ticker")


def _to_message(letter: Row) -> tuple[str, dict[str, Any]]:
    """Body = the original payload; the context travels in message attributes."""
    attrs: dict[str, Any] = {
        name: {"DataType": "String", "StringValue": str(letter[name])} for name in _ATTRS if letter.get(name)
    }
    attrs["retry_count"] = {"DataType": "Number", "StringValue": str(int(letter["retry_count"]))}
    context = {k: v for k, v in letter.items() if k != "payload"}
    attrs["context"] = {"DataType": "String", "StringValue": orjson.dumps(context).decode()}
    return letter["payload"] or " ", attrs  # SQS rejects an empty body


def from_message(message: Mapping[str, Any]) -> Row:
    """The dead letter carried by an SQS message (payload in the body, context in an attribute)."""
    attrs = message.get("MessageAttributes", {})
    letter: Row = orjson.loads(attrs["context"]["StringValue"])
    body = message["Body"]
    letter["payload"] = "" if body == " " else body
    return letter


class SqsDeadLetterQueue:
    """DeadLetterQueue on an SQS standard queue.

    SQS messages are immutable, so a state change (a failed redrive) is a new message with the new
    attributes plus a delete of the old one. Reading leases messages (visibility timeout) and hands
    them back right away, so listing never hides letters from the redrive. The queue itself keeps a
    native redrive policy (maxReceiveCount → an archive queue, set by the CDK stack) as a backstop for
    letters that this policy could not process.
    """

    def __init__(self, queue_url: str, *, client: Any = None, region: str | None = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("sqs", region_name=region)
        self.client = client
        self.queue_url = queue_url
        self._receipts: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> SqsDeadLetterQueue:
        if not settings.sqs_dlq_url:
            raise InvalidArgument("TRADEPULSE_SQS_DLQ_URL is required for the SQS dead-letter queue")
        return cls(settings.sqs_dlq_url, region=settings.aws_region)

    def put(self, letters: Iterable[Row]) -> None:
        entries = []
        for i, letter in enumerate(letters):
            body, attrs = _to_message(letter)
            entries.append({"Id": str(i), "MessageBody": body, "MessageAttributes": attrs})
        for start in range(0, len(entries), 10):  # SendMessageBatch takes at most 10
            chunk = entries[start : start + 10]
            response = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=chunk)
            if response.get("Failed"):
                raise StoreError(f"SQS rejected dead letters: {response['Failed']}")

    def letters(self, status: str | None = None, limit: int = 100) -> list[Row]:
        """Letters in the queue (pending, not in flight), oldest first; status filters on the attribute."""
        letters: dict[str, Row] = {}
        leased: list[str] = []
        while len(letters) < limit:
            response = self.client.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(10, limit - len(letters)),
                MessageAttributeNames=["All"],
                VisibilityTimeout=30,
                WaitTimeSeconds=0,
            )
            messages = response.get("Messages", [])
            if not messages:
                break
            for message in messages:
                leased.append(message["ReceiptHandle"])
                letter = from_message(message)
                if status is not None and letter["status"] != status:
                    continue
                letters[letter["dead_letter_id"]] = letter
                self._receipts[letter["dead_letter_id"]] = message["ReceiptHandle"]
        for start in range(0, len(leased), 10):  # hand the leases back at once
            self.client.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
                    for i, h in enumerate(leased[start : start + 10])
                ],
            )
        return sorted(letters.values(), key=lambda r: (r["first_failure_at"], r["dead_letter_id"]))

    def pending(self, limit: int = 100) -> list[Row]:
        return self.letters("pending", limit)

    def update(self, letter: Row) -> None:
        """Replace the letter's message: re-sent while still pending, removed once redriven/archived."""
        if letter["status"] == "pending":
            self.put([letter])
        handle = self._receipts.pop(letter["dead_letter_id"], None)
        if handle is not None:
            self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=handle)

    def depth(self) -> int:
        attrs = self.client.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"])

    def close(self) -> None:
        self._receipts.clear()


# --- policy -----------------------------------------------------------------------------------------


def republisher(
    publish: Callable[[str, bytes | None, bytes, dict[str, bytes]], None],
) -> Callable[[Row], None]:
    """A redrive action that re-publishes a letter's payload to its source topic:
    `publish(topic, key, value, headers)`; the headers bring a repeat failure back to this letter."""

    def redrive(letter: Row) -> None:
        if not letter.get("source_topic"):
            raise InvalidArgument("letter has no source topic to re-publish to")
        key = letter["ticker"].encode() if letter.get("ticker") else None
        headers = {
            DLQ_ID_HEADER: letter["dead_letter_id"].encode(),
            DLQ_RETRIES_HEADER: str(letter["retry_count"]).encode(),
            DLQ_FIRST_FAILURE_HEADER: letter["first_failure_at"].encode(),
        }
        publish(letter["source_topic"], key, decode_payload(letter["payload"]), headers)

    return redrive


@dataclass
class RedriveReport:
    """Outcome of one redrive pass (letter ids)."""

    redriven: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    not_due: int = 0


class DeadLetterPolicy:
    """Redrive due letters every `interval_s`; archive a letter after `max_redrives` failed redrives.

    `redrive(letter)` raises to signal failure; `archive(letters)` writes them to the cold store
    (`ParquetColdStore.archive_dead_letters`). Both are injected, as is the clock.
    """

    def __init__(
        self,
        dlq: DeadLetterQueue,
        *,
        redrive: Callable[[Row], None],
        archive: Callable[[list[Row]], Any],
        clock: Clock = time.time,
        interval_s: float = 900.0,
        max_redrives: int = 5,
        batch: int = 1000,
    ) -> None:
        self.dlq = dlq
        self.redrive = redrive
        self.archive = archive
        self.clock = clock
        self.interval_s = interval_s
        self.max_redrives = max_redrives
        self.batch = batch
        self._last_pass: float | None = None

    @classmethod
    def from_settings(
        cls,
        dlq: DeadLetterQueue,
        settings: Any,
        *,
        redrive: Callable[[Row], None],
        archive: Callable,
        **kw: Any,
    ) -> DeadLetterPolicy:
        return cls(
            dlq,
            redrive=redrive,
            archive=archive,
            interval_s=settings.dlq_redrive_interval_s,
            max_redrives=settings.dlq_max_redrives,
            **kw,
        )

    def maybe_redrive(self) -> RedriveReport | None:
        """Run a redrive pass if `interval_s` has passed since the last one (call it from a loop)."""
        now = self.clock()
        if self._last_pass is not None and now - self._last_pass < self.interval_s:
            return None
        self._last_pass = now
        return self.redrive_due()

    def redrive_due(self, *, force: bool = False) -> RedriveReport:
        """Retry every pending letter whose last failure is `interval_s` old (all with force)."""
        now = self.clock()
        report = RedriveReport()
        to_archive: list[Row] = []
        for letter in self.dlq.pending(self.batch):
            if not force and now - parse_iso(letter["last_failure_at"]) < self.interval_s:
                report.not_due += 1
                continue
            if letter["retry_count"] >= self.max_redrives:
                to_archive.append(letter)
                continue
            letter = dict(letter, retry_count=letter["retry_count"] + 1)
            try:
                self.redrive(letter)
            except Exception as exc:
                letter.update(
                    last_failure_at=iso_utc(now), error_type=type(exc).__name__, reason=str(exc)[:4000]
                )
                if letter["retry_count"] >= self.max_redrives:
                    to_archive.append(letter)
                else:
                    self.dlq.update(letter)
                    report.failed.append(letter["dead_letter_id"])
            else:
                self.dlq.update(dict(letter, status="redriven"))
                report.redriven.append(letter["dead_letter_id"])
        if to_archive:
            self._archive(to_archive)
            report.archived = [letter["dead_letter_id"] for letter in to_archive]
        return report

    def archive_pending(self) -> list[str]:
        """Archive every pending letter now (the `tradepulse dlq archive` command)."""
        letters = self.dlq.pending(self.batch)
        if letters:
            self._archive(letters)
        return [letter["dead_letter_id"] for letter in letters]

    def _archive(self, letters: list[Row]) -> None:
        archived = [dict(letter, status="archived") for letter in letters]
        self.archive(archived)  # cold store first: a crash in between re-archives (same file), never loses
        for letter in archived:
            self.dlq.update(letter)
