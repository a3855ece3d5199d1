"""Reading the S3 Object Created event out of an IngestQueue message body."""

import copy
import json
from typing import Any

import pytest
from handler_support import load_event

from sluice.ingest import MalformedEvent, parse_object_created
from sluice.models import ObjectRef

EVENT = load_event("eventbridge-s3-object-created.json")


def body(**changes: Any) -> str:
    """The sample event with detail.object fields changed (None removes one)."""
    event = copy.deepcopy(EVENT)
    for name, value in changes.items():
        if value is None:
            event["detail"]["object"].pop(name)
        else:
            event["detail"]["object"][name] = value
    return json.dumps(event)


def test_sample_event_names_the_object_version() -> None:
    obj = parse_object_created(json.dumps(EVENT))

    assert obj == ObjectRef(
        bucket="sluice-raw-example",
        key="incoming/orders-valid.csv",
        version_id="3HL4kqtJlcpXroDTDmJ",
        size=1024,
        etag='"9b2cf535f27731c974343645a3985328"',
    )
    assert obj.id == "sluice-raw-example/incoming/orders-valid.csv#3HL4kqtJlcpXroDTDmJ"


def test_url_encoded_key_is_decoded() -> None:
    assert (
        parse_object_created(body(key="incoming/q3+report%2C+final.csv")).key
        == "incoming/q3 report, final.csv"
    )


def test_unversioned_bucket_event_has_no_version_and_its_etag_names_the_content() -> None:
    obj = parse_object_created(body(**{"version-id": None}))

    assert obj.version_id is None
    assert obj.id.endswith("#null-" + obj.etag.strip('"'))  # type: ignore[union-attr]
    # a suspended bucket's "null" version id is no version either: the content tells uploads apart
    suspended = parse_object_created(body(**{"version-id": "null"}))
    other = parse_object_created(body(**{"version-id": "null", "etag": "0123abcd"}))
    assert suspended.id == obj.id
    assert other.id.endswith("#null-0123abcd")
    assert parse_object_created(body(**{"version-id": None, "etag": None})).id.endswith("#null")


def test_moto_spelling_of_the_etag_is_accepted() -> None:
    # moto emits "eTag" where AWS emits "etag"
    assert parse_object_created(body(etag=None, eTag="abc")).etag == '"abc"'


def test_missing_size_and_etag_default() -> None:
    obj = parse_object_created(body(etag=None, size=None))

    assert (obj.size, obj.etag) == (0, None)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("this is not json", "body is not JSON"),
        ("[1, 2]", "body is a JSON list"),
        (json.dumps({**EVENT, "detail-type": "Object Deleted"}), "not an S3 Object Created event"),
        (json.dumps({**EVENT, "source": "aws.sqs"}), "source='aws.sqs'"),
        (json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}), "not an S3 Object Created event"),
        (json.dumps({**EVENT, "detail": {"object": {"key": "k"}}}), "without 'bucket'"),
        (body(key=None), "without 'key'"),
        (body(key=""), "without a bucket name or an object key"),
        (json.dumps({**EVENT, "detail": "oops"}), "malformed detail"),
        (body(size="big"), "malformed detail"),
    ],
)
def test_malformed_bodies_are_refused_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(MalformedEvent, match=reason.replace("[", r"\[")):
        parse_object_created(raw)
