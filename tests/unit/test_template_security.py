"""template.yaml as a security reviewer reads it (issue 13): TLS only, no confused deputy, checkov.

(Plain-text SMTP and an http:// ApiUrl outside the local stage: tests/unit/test_settings_api_mode.py.)
"""

import json
import re
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest
from sam_transform import REPO, load_sam_template, transform_template
from test_least_privilege import GRANTS
from test_template import evaluate, parameter_values

POLICY_TYPES = {"AWS::SQS::Queue": "AWS::SQS::QueuePolicy", "AWS::SNS::Topic": "AWS::SNS::TopicPolicy"}
TLS_ONLY = {"Bool": {"aws:SecureTransport": "false"}}


@pytest.fixture(scope="module")
def resources() -> Iterator[dict[str, Any]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield transform_template()["Resources"]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def logical_id(node: dict[str, Any]) -> str:
    return str(node["Ref"] if "Ref" in node else node["Fn::GetAtt"][0])


@pytest.mark.parametrize("kind", list(POLICY_TYPES))
def test_every_queue_and_topic_refuses_requests_without_tls(resources: dict, kind: str) -> None:
    wanted = {name for name, resource in resources.items() if resource["Type"] == kind}
    assert wanted, kind
    governed: dict[str, int] = {}  # each queue/topic → how many policies name it (AWS keeps one)
    for resource in resources.values():
        if resource["Type"] != POLICY_TYPES[kind]:
            continue
        props = resource["Properties"]
        named = {logical_id(node) for node in props["Queues" if "Queues" in props else "Topics"]}
        for name in named:
            governed[name] = governed.get(name, 0) + 1
        denies = [s for s in statements_when_on(props["PolicyDocument"]) if s["Effect"] == "Deny"]
        (deny,) = denies
        assert deny["Principal"] == "*"
        assert deny["Condition"] == TLS_ONLY
        assert {logical_id(node) for node in as_list(deny["Resource"])} == named
        action = "sqs:*" if kind == "AWS::SQS::Queue" else "sns:Publish"
        assert deny["Action"] == action
    assert governed == dict.fromkeys(wanted, 1)


def statements_when_on(document: dict[str, Any]) -> list[dict[str, Any]]:
    """A policy's statements, a conditional one (Fn::If) as it is when its condition holds."""
    return [s["Fn::If"][1] if "Fn::If" in s else s for s in document["Statement"]]


def test_the_data_keys_service_principals_act_only_for_this_account(resources: dict) -> None:
    statements = statements_when_on(resources["DataKey"]["Properties"]["KeyPolicy"])
    services = {json.dumps(s["Principal"]["Service"]): s for s in statements if "Service" in s["Principal"]}
    logs = json.dumps({"Fn::Sub": "logs.${AWS::Region}.amazonaws.com"})
    assert set(services) == {
        '"events.amazonaws.com"',
        '"cloudwatch.amazonaws.com"',
        '"budgets.amazonaws.com"',  # BudgetOn
        '"cloudtrail.amazonaws.com"',  # AuditOn: the trail's own ARN (test below)
        logs,
    }
    # CloudWatch Logs: bound by the encryption context to this account's log groups
    assert services.pop(logs)["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"] == {
        "Fn::Sub": "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:*"
    }
    assert "aws:SourceArn" in services.pop('"cloudtrail.amazonaws.com"')["Condition"]["StringEquals"]
    sources = {'"events.amazonaws.com"': "events:${AWS::Region}:${AWS::AccountId}:rule/*"}
    sources['"cloudwatch.amazonaws.com"'] = "cloudwatch:${AWS::Region}:${AWS::AccountId}:alarm:*"
    for service, statement in services.items():
        condition = statement["Condition"]
        assert condition["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}, service
        if service in sources:
            assert condition["ArnLike"] == {
                "aws:SourceArn": {"Fn::Sub": "arn:${AWS::Partition}:" + sources[service]}
            }
        assert sorted(statement["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey"]


# ------------------------------------------------------------------------------------------ checkov


def test_every_checkov_skip_says_why() -> None:
    # checkov fails `make lint` on any finding neither fixed nor skipped; a skip must carry its reason.
    skips = [
        (name, skip)
        for name, resource in load_sam_template()["Resources"].items()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]
    assert skips
    for name, skip in skips:
        assert re.fullmatch(r"CKV2?_AWS_\d+", skip["id"]), name
        assert len(skip.get("comment", "").split()) >= 8, (name, skip["id"])  # a sentence, not a tag


def test_every_bucket_is_versioned_and_logs_access_but_the_log_bucket(resources: dict) -> None:
    buckets = {name: r["Properties"] for name, r in resources.items() if r["Type"] == "AWS::S3::Bucket"}
    assert set(buckets) >= {"RawBucket", "ProcessedBucket", "DeliveryBackupBucket", "AccessLogBucket"}
    for name, props in buckets.items():
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}, name
        rules = props["LifecycleConfiguration"]["Rules"]
        assert any("NoncurrentVersionExpiration" in rule for rule in rules), name  # old versions go
        if name == "AccessLogBucket":
            assert "LoggingConfiguration" not in props
            continue
        assert props["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": "AccessLogBucket"}, name
    prefixes = [
        props["LoggingConfiguration"]["LogFilePrefix"]
        for props in buckets.values()
        if "LoggingConfiguration" in props
    ]
    assert len(set(prefixes)) == len(prefixes)
    # S3 delivers access logs only to an SSE-S3 bucket, and only this account's, over TLS
    (rule,) = buckets["AccessLogBucket"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    statements = resources["AccessLogBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    (delivery,) = [s for s in statements if s["Effect"] == "Allow"]
    assert delivery["Principal"] == {"Service": "logging.s3.amazonaws.com"}
    assert delivery["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    (deny,) = [s for s in statements if s["Effect"] == "Deny"]
    assert deny["Condition"] == TLS_ONLY


def test_every_table_has_point_in_time_recovery(resources: dict) -> None:
    tables = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::DynamoDB::Table"]
    assert len(tables) == 3
    for props in tables:
        assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


def test_every_functions_environment_is_encrypted_with_the_stacks_key(resources: dict) -> None:
    functions = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Lambda::Function"]
    assert len(functions) == 10
    for props in functions:
        assert props["KmsKeyArn"] == {"Fn::GetAtt": ["DataKey", "Arn"]}


# ------------------------------------------------------------------- optional: network, audit, cost

OPTIONAL = {"InVpc": "VpcId", "AuditOn": "AuditTrail", "BudgetOn": "MonthlyBudgetUsd"}
ON = {"VpcId": "vpc-0abc", "AuditTrail": "ENABLED", "MonthlyBudgetUsd": "500"}
ENDPOINT_NAME = {"cloudwatch": "monitoring"}  # an IAM service prefix whose endpoint is named otherwise
GATEWAY = {"s3", "dynamodb"}  # S3 and DynamoDB: gateway endpoints in the route tables


def test_network_audit_and_cost_guard_are_off_by_default_and_on_by_their_parameter(resources: dict) -> None:
    sam = load_sam_template()
    conditions = sam["Conditions"]
    for condition, parameter in OPTIONAL.items():
        assert not evaluate(conditions[condition], conditions, parameter_values(sam)), condition
        assert evaluate(
            conditions[condition], conditions, parameter_values(sam, **{parameter: ON[parameter]})
        )
    optional = {name for name, r in resources.items() if r.get("Condition") in OPTIONAL}
    assert {
        "FunctionSecurityGroup",
        "S3Endpoint",
        "AuditBucket",
        "RawDataEventsTrail",
        "MonthlyBudget",
    } <= optional
    for resource in resources.values():
        if resource["Type"].startswith(("AWS::EC2::", "AWS::CloudTrail::", "AWS::Budgets::")):
            assert resource.get("Condition") in OPTIONAL, resource["Type"]
    functions = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Lambda::Function"]
    for props in functions:
        condition, in_vpc, off = props["VpcConfig"]["Fn::If"]
        assert (condition, off) == ("InVpc", {"Ref": "AWS::NoValue"})
        assert in_vpc["SubnetIds"] == {"Ref": "VpcSubnetIds"}


def test_in_a_vpc_every_service_the_functions_call_has_an_endpoint(resources: dict) -> None:
    called = {
        action.split(":")[0]
        for role, rows in GRANTS.items()
        if role != "DispatcherStateMachine"  # Step Functions is not in the VPC
        for row in rows
        for action in row.actions
        if not action.startswith(
            "kms:"
        )  # KMS is called by S3, SQS, SNS, DynamoDB, Secrets Manager, never by the code
    }
    endpoints = {
        r["Properties"]["ServiceName"]["Fn::Sub"].rsplit(".", 1)[1]: r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::EC2::VPCEndpoint"
    }
    assert set(endpoints) == {ENDPOINT_NAME.get(service, service) for service in called}
    for service, props in endpoints.items():
        if service in GATEWAY:
            assert (props["VpcEndpointType"], props["RouteTableIds"]) == (
                "Gateway",
                {"Ref": "VpcRouteTableIds"},
            )
        else:
            assert props["VpcEndpointType"] == "Interface"
            assert props["PrivateDnsEnabled"] is True
            assert props["SecurityGroupIds"] == [{"Ref": "EndpointSecurityGroup"}]
    # the endpoints admit HTTPS from the functions only; the functions send HTTPS and SMTP only
    (ingress,) = resources["EndpointSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert ingress["SourceSecurityGroupId"] == {"Ref": "FunctionSecurityGroup"}
    assert (ingress["FromPort"], ingress["ToPort"]) == (443, 443)
    egress = resources["FunctionSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    assert [(rule["FromPort"], rule["ToPort"]) for rule in egress] == [
        (443, 443),
        ({"Ref": "SmtpPort"}, {"Ref": "SmtpPort"}),
    ]


def test_the_audit_trail_records_raw_object_data_events_encrypted_into_its_own_bucket(
    resources: dict,
) -> None:
    trail = resources["RawDataEventsTrail"]["Properties"]
    (selector,) = trail["AdvancedEventSelectors"]
    fields = {f["Field"]: f for f in selector["FieldSelectors"]}
    assert fields["eventCategory"]["Equals"] == ["Data"]
    assert fields["resources.type"]["Equals"] == ["AWS::S3::Object"]
    assert fields["resources.ARN"]["StartsWith"] == [{"Fn::Sub": "${RawBucket.Arn}/"}]
    assert trail["S3BucketName"] == {"Ref": "AuditBucket"}
    assert trail["KMSKeyId"] == {"Fn::GetAtt": ["DataKey", "Arn"]}
    assert trail["EnableLogFileValidation"] is True
    # the trail's ARN, which the bucket and key policies name (its name is fixed for that)
    arn = {
        "Fn::Sub": "arn:${AWS::Partition}:cloudtrail:${AWS::Region}:${AWS::AccountId}:trail/"
        + trail["TrailName"]["Fn::Sub"]
    }
    bucket_statements = resources["AuditBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    for statement in [s for s in bucket_statements if s["Effect"] == "Allow"]:
        assert statement["Principal"] == {"Service": "cloudtrail.amazonaws.com"}
        assert statement["Condition"] == {"StringEquals": {"aws:SourceArn": arn}}
    key_statements = resources["DataKey"]["Properties"]["KeyPolicy"]["Statement"]
    (for_trail,) = [s["Fn::If"] for s in key_statements if "Fn::If" in s and s["Fn::If"][0] == "AuditOn"]
    assert for_trail[1]["Condition"] == {"StringEquals": {"aws:SourceArn": arn}}
    assert for_trail[2] == {"Ref": "AWS::NoValue"}


def test_the_budget_alerts_the_alert_topic_which_admits_only_this_accounts_budgets(resources: dict) -> None:
    budget = resources["MonthlyBudget"]["Properties"]
    assert budget["Budget"]["BudgetLimit"] == {"Amount": {"Ref": "MonthlyBudgetUsd"}, "Unit": "USD"}
    assert budget["Budget"]["CostFilters"] == {
        "TagKeyValue": [{"Fn::Sub": "aws:cloudformation:stack-name$${AWS::StackName}"}]
    }
    for notification in budget["NotificationsWithSubscribers"]:
        assert notification["Subscribers"] == [{"SubscriptionType": "SNS", "Address": {"Ref": "AlertTopic"}}]
    topic = resources["AlertTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    (condition, statement, off) = next(s["Fn::If"] for s in topic if "Fn::If" in s)
    assert (condition, off) == ("BudgetOn", {"Ref": "AWS::NoValue"})
    assert statement["Principal"] == {"Service": "budgets.amazonaws.com"}
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}


def test_every_deployed_environment_tags_the_stack_for_cost_allocation() -> None:
    config = tomllib.loads((REPO / "samconfig.toml").read_text())
    for env, sections in config.items():
        if env == "version":
            continue
        deploy = sections["deploy"]["parameters"]
        tags = dict(pair.split("=", 1) for pair in deploy["tags"].split())
        stage = next(o.split("=", 1)[1] for o in deploy["parameter_overrides"] if o.startswith("Stage="))
        assert tags == {"app": "sluice", "stage": stage}, env
