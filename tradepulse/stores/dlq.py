"""Dead letters (building, classifying, the redrive headers) and the DLQ → redrive → archive policy. The
two queues that hold them (local SQLite, SQS) are in `tradepulse.stores.dlq_queues`.

Policy (times from an injectable clock so the whole lifecycle is testable without waiting):
1. in line, the caller retries (`tradepulse.retry.retry_call`, one layer per call path);
2. still failing: the caller builds a letter with `make_dead_letter(...)` and `put`s it in the DLQ. The
   letter is classified (`classify`): **transient** (a sink, a timeout, throttling, a failed delivery:
   it may succeed later) or **permanent** (validation: the payload can never become valid);
3. every 15 min (`tradepulse dlq redrive`, the redrive Lambda) `DeadLetterPolicy.redrive_due()` retries
   each due *transient* letter along its route (`redrive_route`): a `sink:hot` letter is written to
   the hot store again, any other is re-published to its source topic. Permanent letters are never
   redriven: they stay pending for inspection until archived (`tradepulse dlq archive`);
4. a letter whose 5th redrive failed is archived to the cold store under `dead-letter-archive/` (table `dead_letter_archive`).

The original failure (stage, error type, reason, source) is never overwritten: each redrive attempt,
and each later failure of a redriven message, is appended to the letter's `history`.

A re-published message carries the headers `tp-dlq-id`, `tp-dlq-retries`, `tp-dlq-first-failure` and
`tp-dlq-origin` (the original failure and the history). If it fails again, the consumer passes the
message headers to `make_dead_letter`, which then reuses the original id, retry count, first failure
and context and appends the new failure to the history, so the letter comes back to the same DLQ row
(an upsert) instead of starting over; that is what bounds a poison message to 5 redrives.
"""

from __future__ import annotations

import base64
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from tradepulse.errors import StoreError
from tradepulse.ids import stable_id
from tradepulse.stores.base import DeadLetterQueue, HotStore, Row

DLQ_ID_HEADER = "tp-dlq-id"
DLQ_RETRIES_HEADER = "tp-dlq-retries"
DLQ_FIRST_FAILURE_HEADER = "tp-dlq-first-failure"
DLQ_ORIGIN_HEADER = "tp-dlq-origin"

TRANSIENT = "transient"
PERMANENT = "permanent"
# Error types that mean "try again later" whatever the stage: the broker, a network or a throttled
# service was unavailable. Every `sink:*` failure is transient too; everything else (validation of
# the payload) is permanent.
TRANSIENT_ERROR_TYPES = frozenset(
    {
        "DeliveryFailed",
        "TimeoutError",
        "ConnectionError",
        "OperationalError",  # sqlite3: database is locked / disk I/O
        "KafkaException",
        "ThrottlingError",
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
    }
)

#: The fields of the original failure: set once, never overwritten by a redrive or a repeat failure.
#: (`failure_class` follows the latest failure: a redriven message that fails validation downstream
#: is permanent from then on, whatever made it fail first.)
ORIGIN_FIELDS = ("stage", "error_type", "reason", "source_topic", "source_partition", "source_offset")
REASON_CHARS = 4000
HISTORY_REASON_CHARS = 1000

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


def classify(stage: str, error_type: str) -> str:
    """TRANSIENT for a failed sink and for timeouts, throttling and unreachable services; PERMANENT for
    everything else (a payload that failed validation stays invalid however often it is redriven)."""
    return TRANSIENT if stage.startswith("sink:") or error_type in TRANSIENT_ERROR_TYPES else PERMANENT


def class_of(letter: Row) -> str:
    """The letter's class (letters stored before classes existed are classified now)."""
    return letter.get("failure_class") or classify(letter["stage"], letter["error_type"])


def history_entry(
    outcome: str,
    at: str,
    *,
    stage: str | None = None,
    error_type: str | None = None,
    reason: str | None = None,
) -> Row:
    """One `models.RedriveAttempt`."""
    return {
        "at": at,
        "outcome": outcome,
        "stage": stage,
        "error_type": error_type,
        "reason": None if reason is None else reason[:HISTORY_REASON_CHARS],
    }


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
    returns to its original letter: same id, retry count and original failure kept, this failure
    appended to its history."""
    text = encode_payload(payload)
    meta = _header_map(headers)
    letter_id = meta.get(DLQ_ID_HEADER) or stable_id(
        "DL", stage, source_topic, source_partition, source_offset, text
    )
    stamp = iso_utc(time.time() if now_s is None else now_s)
    kind = error_type or (type(error).__name__ if error is not None else "Error")
    why = (reason if reason is not None else str(error) if error is not None else "")[:REASON_CHARS]
    letter: Row = {
        "dead_letter_id": letter_id,
        "stage": stage,
        "payload": text,
        "error_type": kind,
        "reason": why,
        "source_topic": source_topic,
        "source_partition": source_partition,
        "source_offset": source_offset,
        "ticker": ticker,
        "failure_class": classify(stage, kind),
        "retry_count": int(meta.get(DLQ_RETRIES_HEADER, 0)),
        "first_failure_at": meta.get(DLQ_FIRST_FAILURE_HEADER) or stamp,
        "last_failure_at": stamp,
        "status": "pending",
        "history": [],
    }
    origin = meta.get(DLQ_ORIGIN_HEADER)
    if origin:  # a redriven message failed again: the letter keeps its original failure
        context = orjson.loads(origin)
        again = history_entry("failed_again", stamp, stage=stage, error_type=kind, reason=why)
        letter["history"] = [*context.pop("history", []), again]
        letter.update({k: context[k] for k in ORIGIN_FIELDS if k in context})
    return letter


def redrive_headers(letter: Row) -> dict[str, bytes]:
    """The `tp-dlq-*` headers of a re-published letter: what brings a repeat failure back to it."""
    origin = {k: letter.get(k) for k in ORIGIN_FIELDS} | {"history": letter.get("history", [])}
    return {
        DLQ_ID_HEADER: letter["dead_letter_id"].encode(),
        DLQ_RETRIES_HEADER: str(letter["retry_count"]).encode(),
        DLQ_FIRST_FAILURE_HEADER: letter["first_failure_at"].encode(),
        DLQ_ORIGIN_HEADER: orjson.dumps(origin),
    }


# --- policy -----------------------------------------------------------------------------------------

Redrive = Callable[[Row], None]
"""Hands a letter back to where it failed; raises to signal failure."""

# sink:hot letter payload kinds (`Runner._write_hot`) → `HotStore.write_batch` argument.
_HOT_ARGUMENTS = {
    "trade": "trades",
    "features": "features",
    "anomaly": "anomalies",
    "correlation": "correlations",
    "bar": "bars",
}


class NoRedriveRoute(StoreError, ValueError):
    """A letter that has nowhere to go (no source topic, no sink to write again)."""


def republisher(publish: Callable[[str, bytes | None, bytes, dict[str, bytes]], None]) -> Redrive:
    """A redrive action that re-publishes a letter's payload to its source topic:
    `publish(topic, key, value, headers)`; the headers bring a repeat failure back to this letter."""

    def redrive(letter: Row) -> None:
        if not letter.get("source_topic"):
            raise NoRedriveRoute(f"a {letter['stage']} letter without a source topic cannot be re-published")
        key = letter["ticker"].encode() if letter.get("ticker") else None
        publish(letter["source_topic"], key, decode_payload(letter["payload"]), redrive_headers(letter))

    return redrive


def hot_rewriter(hot: Callable[[], HotStore]) -> Redrive:
    """A redrive action for `sink:hot` letters: writes the letter's row to the hot store again (an
    idempotent upsert by the row's key). `hot` opens the store on first use."""

    def redrive(letter: Row) -> None:
        body = orjson.loads(decode_payload(letter["payload"]))
        kind = body.get("kind") if isinstance(body, dict) else None
        argument = _HOT_ARGUMENTS.get(kind) if isinstance(kind, str) else None
        if argument is None:
            raise NoRedriveRoute("sink:hot payload is not a {kind, row} of a hot-store row")
        hot().write_batch(**{argument: [body["row"]]})

    return redrive


def redrive_route(
    *,
    publish: Callable[[str, bytes | None, bytes, dict[str, bytes]], None] | None = None,
    hot: Callable[[], HotStore] | None = None,
) -> Redrive:
    """The redrive of every letter: `sink:hot` → written to the hot store again; any other → re-published
    to its source topic. A letter whose route was not given raises `NoRedriveRoute`."""
    to_topic = republisher(publish) if publish is not None else None
    to_hot = hot_rewriter(hot) if hot is not None else None

    def redrive(letter: Row) -> None:
        action = to_hot if letter["stage"] == "sink:hot" else to_topic
        if action is None:
            raise NoRedriveRoute(f"no redrive route for {letter['stage']} letters here")
        action(letter)

    return redrive


def lazy(factory: Callable[[], HotStore]) -> functools._lru_cache_wrapper[HotStore]:
    """`factory`, called once on first use (a redrive pass without sink:hot letters opens no store)."""
    return functools.cache(factory)


def attempt_redrive(letter: Row, redrive: Redrive, now_s: float, max_redrives: int) -> tuple[str, Row]:
    """One redrive attempt of a transient letter: ("redriven" | "failed" | "archive", its new state).
    The attempt is appended to the history (with the failure's type and reason when it failed); the
    original failure stays as it was."""
    stamp = iso_utc(now_s)
    history = list(letter.get("history", []))
    attempt = dict(
        letter, retry_count=letter["retry_count"] + 1, history=[*history, history_entry("redriven", stamp)]
    )
    try:
        redrive(attempt)
    except Exception as exc:
        failed = history_entry("failed", stamp, error_type=type(exc).__name__, reason=str(exc))
        attempt.update(last_failure_at=stamp, history=[*history, failed])
        return ("archive" if attempt["retry_count"] >= max_redrives else "failed"), attempt
    return "redriven", dict(attempt, status="redriven")


@dataclass
class RedriveReport:
    """Outcome of one redrive pass (letter ids; `permanent`: permanent letters left pending)."""

    redriven: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    not_due: int = 0
    permanent: int = 0


class DeadLetterPolicy:
    """Redrive due transient letters (last failure `interval_s` ago); archive a letter after
    `max_redrives` failed redrives. Permanent letters are never redriven.

    `redrive(letter)` raises to signal failure (`redrive_route`); `archive(letters)` writes them to the
    cold store (`ParquetColdStore.archive_dead_letters`). Both are injected, as is the clock. The
    schedule is outside: `tradepulse dlq redrive` (cron, or by hand) and the 15-minute redrive Lambda.
    """

    def __init__(
        self,
        dlq: DeadLetterQueue,
        *,
        redrive: Redrive,
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

    @classmethod
    def from_settings(
        cls,
        dlq: DeadLetterQueue,
        settings: Any,
        *,
        redrive: Redrive,
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

    def redrive_due(self, *, force: bool = False) -> RedriveReport:
        """Retry every pending transient letter whose last failure is `interval_s` old (all with force)."""
        now = self.clock()
        report = RedriveReport(permanent=self.dlq.counts()[PERMANENT])
        to_archive: list[Row] = []
        for letter in self.dlq.pending(self.batch, TRANSIENT):
            if not force and now - parse_iso(letter["last_failure_at"]) < self.interval_s:
                report.not_due += 1
                continue
            if letter["retry_count"] >= self.max_redrives:
                to_archive.append(letter)
                continue
            outcome, letter = attempt_redrive(letter, self.redrive, now, self.max_redrives)
            if outcome == "archive":
                to_archive.append(letter)
                continue
            self.dlq.update(letter)
            (report.redriven if outcome == "redriven" else report.failed).append(letter["dead_letter_id"])
        if to_archive:
            self._archive(to_archive)
            report.archived = [letter["dead_letter_id"] for letter in to_archive]
        return report

    def archive_pending(self, failure_class: str | None = None) -> list[str]:
        """Archive every pending letter (of one class) now (the `tradepulse dlq archive` command)."""
        letters = self.dlq.pending(self.batch, failure_class)
        if letters:
            self._archive(letters)
        return [letter["dead_letter_id"] for letter in letters]

    def _archive(self, letters: list[Row]) -> None:
        archived = [dict(letter, status="archived") for letter in letters]
        self.archive(archived)  # cold store first: a crash in between re-archives (same file), never loses
        for letter in archived:
            self.dlq.update(letter)
