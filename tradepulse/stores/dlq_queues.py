"""The two dead-letter queues (`tradepulse.stores.base.DeadLetterQueue`): a local SQLite file and an SQS
standard queue. Both keep every letter whole: its original failure, class and redrive history."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from tradepulse.errors import InvalidArgument, StoreError
from tradepulse.stores.base import Row
from tradepulse.stores.dlq import ORIGIN_FIELDS, PERMANENT, TRANSIENT, class_of

# --- local backend -------------------------------------------------------------------------------

_DLQ_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    dead_letter_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    first_failure_at TEXT NOT NULL,
    doc BLOB NOT NULL,
    failure_class TEXT NOT NULL DEFAULT 'permanent'
);
CREATE INDEX IF NOT EXISTS dead_letters_by_status ON dead_letters (status, first_failure_at);
"""


def _merge(old: Row | None, new: Row) -> Row:
    """A letter that fails again: keep its original failure, first failure time, the higher retry
    count and the longer history (a repeat failure carries the whole history in its headers; a replay
    of the original message carries none)."""
    if old is None:
        return dict(new)
    merged = dict(new)
    merged.update({k: old[k] for k in ORIGIN_FIELDS if k in old})
    merged["first_failure_at"] = min(old["first_failure_at"], new["first_failure_at"])
    merged["retry_count"] = max(old["retry_count"], new["retry_count"])
    old_history, new_history = old.get("history", []), new.get("history", [])
    merged["history"] = new_history if len(new_history) >= len(old_history) else old_history
    return merged


def _normalised(letter: Row) -> Row:
    """A letter stored before classes and histories existed, with both filled in."""
    if "failure_class" in letter and "history" in letter:
        return letter
    return letter | {"failure_class": class_of(letter), "history": letter.get("history", [])}


class SqliteDeadLetterQueue:
    """DeadLetterQueue in a local SQLite file (WAL; the CLI reads while the runner writes)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._migrate()
        self._conn.executescript(_DLQ_SCHEMA)

    def _migrate(self) -> None:
        """A file from before failure classes: add the column and classify its letters."""
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(dead_letters)")}
        if not columns or "failure_class" in columns:
            return
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.execute(
            "ALTER TABLE dead_letters ADD COLUMN failure_class TEXT NOT NULL DEFAULT 'permanent'"
        )
        for (doc,) in self._conn.execute("SELECT doc FROM dead_letters").fetchall():
            self._write(_normalised(orjson.loads(doc)))
        self._conn.execute("COMMIT")

    def put(self, letters: Iterable[Row]) -> None:
        """Insert letters; a letter whose id is already there is updated (pending again, retries, original
        failure and history kept)."""
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
        """Store the new state of a letter after a redrive attempt (status, retry count, history). A
        stored state with a longer history is newer (the redriven message already failed again and came
        back) and is kept."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                old = self._get(letter["dead_letter_id"])
                if old is None or len(old["history"]) <= len(letter.get("history", [])):
                    self._write(letter)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _write(self, letter: Row) -> None:
        self._conn.execute(
            "INSERT INTO dead_letters (dead_letter_id, status, first_failure_at, doc, failure_class) "
            "VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (dead_letter_id) DO UPDATE SET status = excluded.status, "
            "first_failure_at = excluded.first_failure_at, doc = excluded.doc, "
            "failure_class = excluded.failure_class",
            (
                letter["dead_letter_id"],
                letter["status"],
                letter["first_failure_at"],
                orjson.dumps(letter),
                class_of(letter),
            ),
        )

    def _get(self, letter_id: str) -> Row | None:
        row = self._conn.execute(
            "SELECT doc FROM dead_letters WHERE dead_letter_id = ?", (letter_id,)
        ).fetchone()
        return _normalised(orjson.loads(row[0])) if row else None

    def get(self, letter_id: str) -> Row | None:
        with self._lock:
            return self._get(letter_id)

    def pending(self, limit: int = 100, failure_class: str | None = None) -> list[Row]:
        """Pending letters (of one class, or both), oldest first."""
        return self.letters("pending", limit, failure_class)

    def letters(
        self, status: str | None = None, limit: int = 100, failure_class: str | None = None
    ) -> list[Row]:
        """Letters with a status and class (all when None), oldest first."""
        where, args = [], []
        for column, value in (("status", status), ("failure_class", failure_class)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT doc FROM dead_letters"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY first_failure_at, dead_letter_id LIMIT ?"
        with self._lock:
            cur = self._conn.execute(sql, (*args, limit))
            return [_normalised(orjson.loads(r[0])) for r in cur]

    def depth(self) -> int:
        """Pending letters."""
        with self._lock:
            return self._conn.execute(
                "SELECT count(*) FROM dead_letters WHERE status = 'pending'"
            ).fetchone()[0]

    def counts(self) -> dict[str, int]:
        """Pending letters per failure class."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT failure_class, count(*) FROM dead_letters WHERE status = 'pending' "
                "GROUP BY failure_class"
            ).fetchall()
        return {TRANSIENT: 0, PERMANENT: 0} | dict(rows)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# --- SQS backend -----------------------------------------------------------------------------------

# Searchable in the console; everything else travels in one JSON "context" attribute, since SQS allows
# at most 10 attributes per message.
_ATTRS = ("dead_letter_id", "stage", "error_type", "failure_class", "source_topic", "ticker")


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
    return _normalised(letter)


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

    def letters(
        self, status: str | None = None, limit: int = 100, failure_class: str | None = None
    ) -> list[Row]:
        """Letters in the queue (pending, not in flight), oldest first; status and class filter."""
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
                if failure_class is not None and letter["failure_class"] != failure_class:
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

    def pending(self, limit: int = 100, failure_class: str | None = None) -> list[Row]:
        return self.letters("pending", limit, failure_class)

    def counts(self, limit: int = 1000) -> dict[str, int]:
        """Pending letters per failure class, of the first `limit` in the queue (SQS has no query)."""
        counts = {TRANSIENT: 0, PERMANENT: 0}
        for letter in self.letters("pending", limit):
            counts[letter["failure_class"]] += 1
        return counts

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
