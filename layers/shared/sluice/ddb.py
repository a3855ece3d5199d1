"""Small DynamoDB helpers the table-owning modules (metadata, lease) share."""

from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError


def condition_failed_item(error: ClientError) -> dict | None:
    """The item a failed ConditionExpression saw, or None when there was no item.

    Needs `ReturnValuesOnConditionCheckFailure="ALL_OLD"` on the write, which makes "what beat us"
    part of the same atomic answer instead of a second read that could see a later state.
    Anything but a failed condition (throttling, validation) is re-raised: it is the caller's error.
    """
    if error.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
        raise error
    raw = error.response.get("Item")
    if not raw:
        return None
    # The Table resource deserializes answers, but not the item carried inside an error.
    deserializer = TypeDeserializer()
    return plain({name: deserializer.deserialize(value) for name, value in raw.items()})


def plain(value: Any) -> Any:
    """DynamoDB numbers (Decimal) as int or float, recursively, for JSON and pydantic."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {name: plain(inner) for name, inner in value.items()}
    if isinstance(value, list | set):
        return [plain(inner) for inner in value]
    return value
