"""CloudFormation properties → the API calls the offline stack makes (pure translations)."""

from __future__ import annotations

import json
import re

import pytest

from sluice_cli.offline.provision import ProvisionError, physical_name, resource_name
from sluice_cli.offline.provision.compute import _camel, alarm_request, state_machine_definition
from sluice_cli.offline.provision.messaging import queue_attributes, rule_targets, subscription_attributes
from sluice_cli.offline.provision.storage import (
    encryption_rules,
    evaluable_policy,
    generated_secret,
    lifecycle_rules,
    notification_configuration,
    table_request,
)


def test_generated_names_are_stable_bounded_and_cloudformation_shaped() -> None:
    name = physical_name("sluice-local", "IngestQueue", max_length=80)
    assert name == physical_name("sluice-local", "IngestQueue", max_length=80)  # same on every run
    assert re.fullmatch(r"sluice-local-IngestQueue-[A-Z0-9]{12}", name)
    assert physical_name("other", "IngestQueue") != physical_name("sluice-local", "IngestQueue")
    long = physical_name(
        "a-very-long-stack-name-for-testing",
        "AnExtremelyLongLogicalIdentifierForABucket",
        max_length=63,
        lowercase=True,
    )
    assert len(long) <= 63
    assert long == long.lower()


def test_resource_names_honour_the_template_fifo_and_ssm_conventions() -> None:
    assert resource_name("s", "Q", "AWS::SQS::Queue", {"QueueName": "given"}) == "given"
    fifo = resource_name("s", "Q", "AWS::SQS::Queue", {"FifoQueue": True})
    assert fifo.endswith(".fifo")
    assert len(fifo) <= 80
    assert resource_name("s", "P", "AWS::SSM::Parameter", {}).startswith("CFN-P-")
    assert (
        resource_name("s", "B", "AWS::S3::Bucket", {})
        == resource_name("s", "B", "AWS::S3::Bucket", {}).lower()
    )


def test_lifecycle_rules_translate_cloudformation_spelling() -> None:
    rules = lifecycle_rules(
        [
            {
                "Id": "archive",
                "Status": "Enabled",
                "Transitions": [{"StorageClass": "GLACIER", "TransitionInDays": "30"}],
                "ExpirationInDays": "365",
                "NoncurrentVersionTransitions": [{"StorageClass": "GLACIER", "TransitionInDays": 30}],
                "NoncurrentVersionExpiration": {"NoncurrentDays": 365},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
            },
            {"Status": "Enabled", "Prefix": "tmp/", "NoncurrentVersionExpirationInDays": 3},
        ]
    )
    assert rules == [
        {
            "ID": "archive",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "Transitions": [{"StorageClass": "GLACIER", "Days": 30}],
            "Expiration": {"Days": 365},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 365},
            "NoncurrentVersionTransitions": [{"NoncurrentDays": 30, "StorageClass": "GLACIER"}],
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
        },
        {
            "ID": "rule-1",
            "Status": "Enabled",
            "Filter": {"Prefix": "tmp/"},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 3},
        },
    ]


def test_bucket_encryption_and_notifications_translate() -> None:
    by_default = {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "arn:key"}
    assert encryption_rules([{"ServerSideEncryptionByDefault": by_default, "BucketKeyEnabled": "true"}]) == [
        {"ApplyServerSideEncryptionByDefault": by_default, "BucketKeyEnabled": True}
    ]
    request, skipped = notification_configuration(
        {
            "EventBridgeConfiguration": {"EventBridgeEnabled": True},
            "QueueConfigurations": [
                {
                    "Event": "s3:ObjectCreated:*",
                    "Queue": "arn:q",
                    "Filter": {"S3Key": {"Rules": [{"Name": "suffix", "Value": ".csv"}]}},
                }
            ],
            "LambdaConfigurations": [{"Event": "s3:ObjectCreated:*", "Function": "arn:f"}],
        }
    )
    assert request == {
        "EventBridgeConfiguration": {},
        "QueueConfigurations": [
            {
                "QueueArn": "arn:q",
                "Events": ["s3:ObjectCreated:*"],
                "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": ".csv"}]}},
            }
        ],
    }
    assert skipped == ["S3 → Lambda notifications (moto would need Docker to run the function)"]


def test_conditional_policy_statements_are_left_out_because_moto_ignores_conditions() -> None:
    deny_http = {"Effect": "Deny", "Action": "s3:*", "Condition": {"Bool": {"aws:SecureTransport": "false"}}}
    allow = {"Effect": "Allow", "Action": "s3:GetObject", "Principal": "*"}
    assert evaluable_policy({"Version": "2012-10-17", "Statement": [deny_http]}) == (None, 1)
    document, left_out = evaluable_policy(
        json.dumps({"Version": "2012-10-17", "Statement": [deny_http, allow]})
    )
    assert (document, left_out) == ({"Version": "2012-10-17", "Statement": [allow]}, 1)


def test_dynamodb_table_request_maps_billing_sse_and_streams() -> None:
    request = table_request(
        "t",
        {
            "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "SSESpecification": {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": "key"},
            "StreamSpecification": {"StreamViewType": "NEW_IMAGE"},
            "Tags": [{"Key": "app", "Value": "sluice"}],
        },
    )
    assert "ProvisionedThroughput" not in request
    assert request["SSESpecification"] == {"Enabled": True, "SSEType": "KMS", "KMSMasterKeyId": "key"}
    assert request["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}
    provisioned = table_request("t", {"AttributeDefinitions": [], "KeySchema": []})
    assert provisioned["ProvisionedThroughput"] == {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5}


def test_queue_attributes_are_strings_and_the_redrive_policy_is_json_with_an_integer_count() -> None:
    attributes = queue_attributes(
        {
            "VisibilityTimeout": 180,
            "FifoQueue": True,
            "KmsMasterKeyId": "key",
            "RedrivePolicy": {"deadLetterTargetArn": "arn:dlq", "maxReceiveCount": "5"},
            "QueueName": "ignored-here",
        }
    )
    assert attributes["VisibilityTimeout"] == "180"
    assert attributes["FifoQueue"] == "true"
    assert json.loads(attributes["RedrivePolicy"]) == {"deadLetterTargetArn": "arn:dlq", "maxReceiveCount": 5}
    assert "QueueName" not in attributes


def test_subscription_attributes_and_rule_targets() -> None:
    assert subscription_attributes({"RawMessageDelivery": True, "FilterPolicy": {"event": ["x"]}}) == {
        "RawMessageDelivery": "true",
        "FilterPolicy": '{"event": ["x"]}',
    }
    kept, skipped = rule_targets(
        [
            {"Id": "queue", "Arn": "arn:aws:sqs:us-east-1:123456789012:q"},
            {"Id": "machine", "Arn": "arn:aws:states:us-east-1:123456789012:stateMachine:m"},
        ]
    )
    assert [target["Id"] for target in kept] == ["queue"]
    assert skipped == ["target machine (states) not emulated"]


def test_state_machine_definition_applies_substitutions_as_text() -> None:
    definition = state_machine_definition(
        {
            "DefinitionString": json.dumps(
                {"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "${Fn}", "End": True}}}
            ),
            "DefinitionSubstitutions": {
                "Fn": "arn:aws:lambda:us-east-1:123456789012:function:f",
                "Unused": 1,
            },
        }
    )
    assert (
        json.loads(definition)["States"]["A"]["Resource"]
        == "arn:aws:lambda:us-east-1:123456789012:function:f"
    )
    with pytest.raises(ProvisionError, match="not JSON after substitutions"):
        state_machine_definition(
            {"DefinitionString": "{${Broken}", "DefinitionSubstitutions": {"Broken": "x"}}
        )
    with pytest.raises(ProvisionError, match="no Definition"):
        state_machine_definition({})


def test_logging_configuration_keys_become_camel_case() -> None:
    cfn = {"Level": "ALL", "Destinations": [{"CloudWatchLogsLogGroup": {"LogGroupArn": "arn:lg"}}]}
    assert _camel(cfn) == {
        "level": "ALL",
        "destinations": [{"cloudWatchLogsLogGroup": {"logGroupArn": "arn:lg"}}],
    }


def test_alarm_request_types_numbers_and_flags() -> None:
    request = alarm_request(
        "a",
        {
            "Period": "60",
            "EvaluationPeriods": "2",
            "Threshold": "1",
            "ActionsEnabled": "true",
            "ComparisonOperator": "GreaterThanThreshold",
            "Metrics": [
                {"Id": "m", "MetricStat": {"Period": "60", "Stat": "Sum", "Metric": {"MetricName": "x"}}}
            ],
        },
    )
    assert (request["Period"], request["EvaluationPeriods"], request["Threshold"]) == (60, 2, 1.0)
    assert request["ActionsEnabled"] is True
    assert request["Metrics"][0]["MetricStat"]["Period"] == 60


def test_a_generated_secret_fills_its_template() -> None:
    secret = json.loads(
        generated_secret(
            {
                "SecretStringTemplate": '{"user": "app"}',
                "GenerateStringKey": "password",
                "PasswordLength": 20,
                "ExcludePunctuation": True,
            }
        )
    )
    assert secret["user"] == "app"
    assert len(secret["password"]) == 20
    assert secret["password"].isalnum()
