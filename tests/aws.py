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
