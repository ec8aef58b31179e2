"""AWS resources for adapter tests on moto, defined once and exactly as the CDK stack builds them."""

from __future__ import annotations

from typing import Any


def create_hot_table(client: Any, name: str = "tradepulse-hot") -> None:
    """The DynamoDB hot table of `cdk/storage.py`: pk/sk strings, on-demand, TTL on `expires_at`."""
    client.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    client.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )


class ThrottledSends:
    """Makes a boto3 client's first `times` HTTP sends of `operation` come back throttled (HTTP 400
    ProvisionedThroughputExceededException), below botocore's retry handler, so that botocore's own
    retries (and only they) see them. `sends` counts every send of the operation."""

    def __init__(self, client: Any, operation: str, times: int) -> None:
        self.remaining = times
        self.sends = 0
        client.meta.events.register_first(f"before-send.dynamodb.{operation}", self._before_send)

    def _before_send(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse
        from moto.core.botocore_stubber import MockRawResponse

        self.sends += 1
        if self.remaining <= 0:
            return None  # on to moto
        self.remaining -= 1
        body = (
            b'{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",'
            b'"message":"The level of configured provisioned throughput for the table was exceeded."}'
        )
        headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": "throttled"}
        return AWSResponse(request.url, 400, headers, MockRawResponse(body))
