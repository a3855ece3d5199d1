"""The offline stack's intrinsic-function resolver and creation order (pure, no emulator)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from sluice_cli.offline.intrinsics import (
    NO_VALUE,
    IntrinsicError,
    Resolver,
    creation_order,
    pseudo_parameters,
    references,
)

RESOURCES = {
    "Queue": {"ref": "https://queue/url", "Arn": "arn:aws:sqs:us-east-1:123456789012:q", "QueueName": "q"},
    "Bucket": {"ref": "my-bucket", "Arn": "arn:aws:s3:::my-bucket"},
}


def resolver(**kwargs: Any) -> Resolver:
    def ref(name: str) -> Any:
        if name not in RESOURCES:
            raise IntrinsicError(f"no {name}")
        return RESOURCES[name]["ref"]

    def get_att(name: str, attribute: str) -> Any:
        return RESOURCES[name][attribute]

    return Resolver(
        parameters=kwargs.pop("parameters", {"Stage": "dev", "Count": "3", "Names": ["a", "b"]}),
        pseudo=pseudo_parameters("eu-west-1", "demo"),
        ref=ref,
        get_att=get_att,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"Ref": "Stage"}, "dev"),
        ({"Ref": "AWS::Region"}, "eu-west-1"),
        ({"Ref": "AWS::AccountId"}, "123456789012"),
        ({"Ref": "AWS::StackName"}, "demo"),
        ({"Ref": "AWS::Partition"}, "aws"),
        ({"Ref": "AWS::URLSuffix"}, "amazonaws.com"),
        ({"Ref": "Queue"}, "https://queue/url"),
        ({"Fn::GetAtt": "Queue.Arn"}, "arn:aws:sqs:us-east-1:123456789012:q"),
        ({"Fn::GetAtt": ["Queue", "QueueName"]}, "q"),
        ({"Fn::Sub": "${AWS::StackName}-${Stage}-${Bucket}"}, "demo-dev-my-bucket"),
        ({"Fn::Sub": "${Bucket.Arn}/*"}, "arn:aws:s3:::my-bucket/*"),
        ({"Fn::Sub": "${!Literal} and ${Stage}"}, "${Literal} and dev"),
        ({"Fn::Sub": ["${Name}-${Stage}", {"Name": {"Ref": "Bucket"}}]}, "my-bucket-dev"),
        ({"Fn::Join": [",", ["a", {"Ref": "Stage"}, "c"]]}, "a,dev,c"),
        ({"Fn::Select": ["1", {"Fn::Split": [",", "x,y,z"]}]}, "y"),
        ({"Fn::Select": [0, {"Ref": "Names"}]}, "a"),
        ({"Fn::Join": ["-", {"Ref": "Names"}]}, "a-b"),
        ({"Fn::GetAZs": ""}, ["eu-west-1a", "eu-west-1b", "eu-west-1c"]),
        ({"Fn::Base64": "hi"}, base64.b64encode(b"hi").decode()),
        ({"Fn::ToJsonString": {"a": {"Ref": "Stage"}}}, '{"a":"dev"}'),
        ({"Nested": [{"Ref": "Stage"}, {"Fn::Sub": "x${Count}"}]}, {"Nested": ["dev", "x3"]}),
    ],
)
def test_intrinsics_resolve_like_cloudformation(value: Any, expected: Any) -> None:
    assert resolver().resolve(value) == expected


def test_no_value_removes_the_property_and_the_list_item() -> None:
    value = {"Keep": 1, "Drop": {"Ref": "AWS::NoValue"}, "List": ["a", {"Ref": "AWS::NoValue"}]}
    assert resolver().resolve(value) == {"Keep": 1, "List": ["a"]}


def test_conditions_drive_fn_if_and_combine_with_and_or_not() -> None:
    conditions = {
        "IsDev": {"Fn::Equals": [{"Ref": "Stage"}, "dev"]},
        "IsProd": {"Fn::Equals": [{"Ref": "Stage"}, "prod"]},
        "NotProd": {"Fn::Not": [{"Condition": "IsProd"}]},
        "DevAndNotProd": {"Fn::And": [{"Condition": "IsDev"}, {"Condition": "NotProd"}]},
        "Either": {"Fn::Or": [{"Condition": "IsProd"}, {"Fn::Equals": ["3", {"Ref": "Count"}]}]},
    }
    subject = resolver(conditions=conditions)
    assert [subject.condition(name) for name in conditions] == [True, False, True, True, True]
    assert subject.resolve({"Fn::If": ["IsProd", "big", "small"]}) == "small"
    assert subject.resolve({"Fn::If": ["IsDev", {"Ref": "AWS::NoValue"}, "x"]}) is NO_VALUE
    with pytest.raises(IntrinsicError, match="unknown condition"):
        subject.condition("Missing")


def test_find_in_map_with_and_without_a_default() -> None:
    subject = resolver(mappings={"Sizes": {"dev": {"Memory": 128}}})
    assert subject.resolve({"Fn::FindInMap": ["Sizes", {"Ref": "Stage"}, "Memory"]}) == 128
    assert subject.resolve({"Fn::FindInMap": ["Sizes", "prod", "Memory", {"DefaultValue": 512}]}) == 512
    with pytest.raises(IntrinsicError, match="no Sizes/prod/Memory"):
        subject.resolve({"Fn::FindInMap": ["Sizes", "prod", "Memory"]})


def test_a_getatt_without_attribute_is_refused() -> None:
    with pytest.raises(IntrinsicError, match="no attribute"):
        resolver().resolve({"Fn::GetAtt": "Queue"})


def test_references_finds_ref_getatt_and_sub_targets_among_resources() -> None:
    value = {
        "A": {"Ref": "Queue"},
        "B": {"Fn::GetAtt": ["Bucket", "Arn"]},
        "C": {"Fn::Sub": "${Table.Arn}/${Stage}/${!Skip}"},
        "D": {"Fn::Sub": ["${X}", {"X": {"Ref": "Topic"}}]},
        "E": {"Ref": "Stage"},  # a parameter, not a resource
    }
    assert references(value, ["Queue", "Bucket", "Table", "Topic", "Unused"]) == {
        "Queue",
        "Bucket",
        "Table",
        "Topic",
    }


def test_creation_order_puts_dependencies_first_and_keeps_template_order_otherwise() -> None:
    resources = {
        "Rule": {"Properties": {"Targets": [{"Arn": {"Fn::GetAtt": ["Queue", "Arn"]}}]}},
        "Policy": {"Properties": {"Queues": [{"Ref": "Queue"}], "Source": {"Fn::Sub": "${Rule.Arn}"}}},
        "Queue": {"Properties": {"RedrivePolicy": {"deadLetterTargetArn": {"Fn::GetAtt": "DLQ.Arn"}}}},
        "DLQ": {},
        "Later": {"DependsOn": "Policy"},
        "Alone": {},
    }
    order = creation_order(resources)
    assert (
        order.index("DLQ")
        < order.index("Queue")
        < order.index("Rule")
        < order.index("Policy")
        < order.index("Later")
    )
    assert order[0] == "DLQ"
    assert "Alone" in order[:2]


def test_creation_order_reports_cycles_and_unknown_dependencies() -> None:
    with pytest.raises(IntrinsicError, match="circular references between resources: A, B"):
        creation_order({"A": {"Properties": {"X": {"Ref": "B"}}}, "B": {"Properties": {"Y": {"Ref": "A"}}}})
    with pytest.raises(IntrinsicError, match="DependsOn unknown resources: Ghost"):
        creation_order({"A": {"DependsOn": ["Ghost"]}})
