"""SQS dead-letter queue (TRADEPULSE_SQS_DLQ_URL) and the parking queue its redrive policy feeds."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_sqs as sqs
from constructs import Construct

#: Receives of one dead letter (one per 15-minute redrive run that failed it) before SQS parks it.
MAX_RECEIVE_COUNT = 5


class DeadLetterQueues(Construct):
    """`queue`: where services put dead letters (DeadLetter JSON bodies); the redrive Lambda drains it.
    `parking`: SQS moves a letter here after MAX_RECEIVE_COUNT failed redrives; the archival Lambda
    writes it to S3."""

    def __init__(self, scope: Construct, id: str, *, redrive_visibility: Duration) -> None:
        super().__init__(scope, id)
        self.parking = sqs.Queue(
            self,
            "Parking",
            retention_period=Duration.days(14),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            visibility_timeout=Duration.minutes(2),
        )
        self.queue = sqs.Queue(
            self,
            "Queue",
            retention_period=Duration.days(14),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            # Longer than the redrive Lambda's timeout, so a letter is not received twice in one run.
            visibility_timeout=redrive_visibility,
            dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=MAX_RECEIVE_COUNT, queue=self.parking),
        )
