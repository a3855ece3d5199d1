"""The offline IAM check (sluice_cli/offline/iam.py): the evaluator, the mapping of requests to
what AWS authorizes, and AccessDenied as boto3 reads it.

Requests are the ones boto3 really sends: a client whose `before-send` hook hands the signed
request to the gate (as the WSGI gateway does) and answers with the gate's refusal, or stops.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.config import Config
from botocore.exceptions import ClientError

from sluice_cli.offline.iam import (
    IAM_REPORT_FILE,
    MANAGED_POLICIES,
    STATE_MACHINE_ACCESS_KEY,
    Check,
    IamGate,
    Lookups,
    RequestMapper,
    Unmapped,
    access_key_for,
    condition_holds,
    evaluate,
    summary_line,
)

ACCOUNT = "123456789012"
REGION = "us-east-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/process"
TABLE_KEYS = {"control": "pk", "metadata": "object_key"}
SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:api-token-AbCdEf"
LOOKUPS = Lookups(
    account=ACCOUNT,
    partition_key=lambda region, table: TABLE_KEYS.get(table),
    secret_arn=lambda region, secret_id: SECRET if secret_id in ("api-token", SECRET) else None,
)


# -- the evaluator ---------------------------------------------------------------------------------


def allow(action: Any, resource: Any, **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def test_an_action_and_resource_wildcard_allow_and_nothing_else_does() -> None:
    statements = [allow("s3:Get*", "arn:aws:s3:::raw/incoming/*")]

    assert evaluate(statements, Check("s3:GetObject", "arn:aws:s3:::raw/incoming/a/b.csv")).allowed
    assert evaluate(statements, Check("S3:getobjectversion", "arn:aws:s3:::raw/incoming/x")).allowed
    assert not evaluate(statements, Check("s3:PutObject", "arn:aws:s3:::raw/incoming/x")).allowed
    assert not evaluate(statements, Check("s3:GetObject", "arn:aws:s3:::raw/other/x")).allowed
    # resources match case-sensitively, `?` is one character
    assert not evaluate(statements, Check("s3:GetObject", "arn:aws:s3:::raw/Incoming/x")).allowed
    assert evaluate(
        [allow("sqs:SendMessage", "arn:aws:sqs:*:*:q?")], Check("sqs:SendMessage", "arn:aws:sqs:r:1:q1")
    ).allowed


def test_an_explicit_deny_wins_over_any_allow() -> None:
    statements = [
        allow("s3:*", "*"),
        {"Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "arn:aws:s3:::processed/results/*"},
    ]

    decision = evaluate(statements, Check("s3:DeleteObject", "arn:aws:s3:::processed/results/a.json"))

    assert not decision.allowed
    assert "explicit deny" in decision.reason
    assert evaluate(statements, Check("s3:DeleteObject", "arn:aws:s3:::processed/parts/a")).allowed


def test_not_resource_and_not_action_allow_everything_but_what_they_name() -> None:
    statements: list[dict[str, Any]] = [
        {"Effect": "Allow", "Action": "sqs:SendMessage", "NotResource": "arn:aws:sqs:*:*:private-*"},
        {"Effect": "Allow", "NotAction": ["sns:*", "sqs:*"], "Resource": "*"},
    ]

    assert evaluate(statements, Check("sqs:SendMessage", "arn:aws:sqs:r:1:public")).allowed
    assert not evaluate(statements, Check("sqs:SendMessage", "arn:aws:sqs:r:1:private-a")).allowed
    assert evaluate(statements, Check("dynamodb:GetItem", "arn:aws:dynamodb:r:1:table/t")).allowed
    assert not evaluate(statements, Check("sns:Publish", "arn:aws:sns:r:1:t")).allowed


def test_the_conditions_the_template_uses_are_evaluated() -> None:
    prefix = allow(
        "s3:ListBucket", "arn:aws:s3:::processed", Condition={"StringLike": {"s3:prefix": "parts/*"}}
    )
    leading = allow(
        "dynamodb:UpdateItem",
        "arn:aws:dynamodb:r:1:table/control",
        Condition={
            "ForAllValues:StringEquals": {
                "dynamodb:LeadingKeys": ["ratelimit#downstream", "health#downstream"]
            }
        },
    )
    via = allow(
        "kms:Decrypt",
        "arn:aws:kms:r:1:key/k",
        Condition={"StringEquals": {"kms:ViaService": "secretsmanager.r.amazonaws.com"}},
    )

    assert evaluate(
        [prefix], Check("s3:ListBucket", "arn:aws:s3:::processed", {"s3:prefix": ["parts/a/"]})
    ).allowed
    assert not evaluate(
        [prefix], Check("s3:ListBucket", "arn:aws:s3:::processed", {"s3:prefix": ["results/"]})
    ).allowed
    assert not evaluate(
        [prefix], Check("s3:ListBucket", "arn:aws:s3:::processed")
    ).allowed  # no prefix: AWS denies
    control = "arn:aws:dynamodb:r:1:table/control"
    assert evaluate(
        [leading], Check("dynamodb:UpdateItem", control, {"dynamodb:LeadingKeys": ["health#downstream"]})
    ).allowed
    assert not evaluate(
        [leading], Check("dynamodb:UpdateItem", control, {"dynamodb:LeadingKeys": ["lease#dispatcher"]})
    ).allowed
    assert evaluate(
        [via],
        Check("kms:Decrypt", "arn:aws:kms:r:1:key/k", {"kms:viaservice": ["secretsmanager.r.amazonaws.com"]}),
    ).allowed
    assert not evaluate(
        [via], Check("kms:Decrypt", "arn:aws:kms:r:1:key/k", {"kms:ViaService": ["s3.r.amazonaws.com"]})
    ).allowed
    assert not evaluate([via], Check("kms:Decrypt", "arn:aws:kms:r:1:key/k")).allowed


@pytest.mark.parametrize(
    ("operator", "wanted", "values", "holds"),
    [
        ("StringLike", "process-object#*", ["process-object#abc"], True),
        ("ForAllValues:StringLike", "process-object#*", ["process-object#a", "alert#b"], False),
        ("ForAllValues:StringLike", "process-object#*", None, True),  # IAM: vacuously true
        ("ForAnyValue:StringEquals", ["a", "b"], ["c", "b"], True),
        ("ForAnyValue:StringEquals", ["a"], None, False),
        ("StringNotEquals", "a", ["b"], True),
        ("StringNotEquals", "a", None, True),
        ("StringEqualsIfExists", "a", None, True),
        ("StringEqualsIfExists", "a", ["b"], False),
        ("Null", "true", None, True),
        ("Null", "false", None, False),
        ("ArnLike", "arn:aws:states:*:*:execution:m:*", ["arn:aws:states:r:1:execution:m:x"], True),
        ("Bool", "true", ["true"], True),
    ],
)
def test_condition_operators(operator: str, wanted: Any, values: list[str] | None, holds: bool) -> None:
    context = {} if values is None else {"k:key": values}
    assert condition_holds(operator, "k:key", wanted, context) is holds


def test_what_cannot_be_evaluated_allows_nothing_and_still_denies() -> None:
    check = Check("sqs:SendMessage", "arn:aws:sqs:r:1:q", {"aws:SourceIp": ["127.0.0.1"]})
    unknown_operator = allow("sqs:SendMessage", "*", Condition={"IpAddress": {"aws:SourceIp": "127.0.0.0/8"}})
    variable = allow("sqs:SendMessage", "arn:aws:sqs:r:1:${aws:username}")

    decision = evaluate([unknown_operator, variable], check)

    assert not decision.allowed
    assert "IpAddress" in decision.reason
    assert "policy variable" in decision.reason
    deny = {
        "Effect": "Deny",
        "Action": "sqs:*",
        "Resource": "*",
        "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}},
    }
    assert not evaluate([allow("sqs:*", "*"), deny], check).allowed  # a Deny it cannot read applies


def test_the_modelled_managed_policies_grant_only_logs_xray_and_network_interfaces() -> None:
    actions = {
        action
        for statements in MANAGED_POLICIES.values()
        for statement in statements
        for action in statement["Action"]
    }
    assert {action.split(":")[0] for action in actions} == {"logs", "xray", "ec2", "lambda"}


# -- requests as boto3 sends them ------------------------------------------------------------------


class _Sent(Exception):
    """Raised by the hook when the gate lets a request through: it would go on to moto."""


class _Raw:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


def environ_of(request: AWSPreparedRequest) -> dict[str, Any]:
    """The WSGI environ a werkzeug server builds from this request."""
    url = urlsplit(request.url)
    body = request.body or b""
    if isinstance(body, str):
        body = body.encode()
    elif not isinstance(body, bytes):
        body = body.read()
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "PATH_INFO": unquote(url.path).encode("utf-8").decode("latin-1"),
        "QUERY_STRING": url.query,
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": url.netloc,
    }
    for name, value in request.headers.items():
        text = value.decode() if isinstance(value, bytes) else value
        environ["HTTP_" + name.upper().replace("-", "_")] = text
    return environ


@pytest.fixture
def gate() -> IamGate:
    gate = IamGate(RequestMapper(LOOKUPS))
    gate.register_role(
        "ProcessRole",
        ROLE,
        {
            "Policies": [
                {
                    "PolicyName": "p",
                    "PolicyDocument": {
                        "Statement": [
                            allow(["s3:GetObject", "s3:GetObjectVersion"], "arn:aws:s3:::raw/incoming/*"),
                            allow(["s3:PutObject", "s3:DeleteObject"], "arn:aws:s3:::processed/parts/*"),
                            allow(
                                "s3:ListBucket",
                                "arn:aws:s3:::processed",
                                Condition={"StringLike": {"s3:prefix": "parts/*"}},
                            ),
                            allow(
                                "dynamodb:UpdateItem",
                                f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/control",
                                Condition={
                                    "ForAllValues:StringEquals": {
                                        "dynamodb:LeadingKeys": ["health#downstream"]
                                    }
                                },
                            ),
                            allow("sqs:SendMessage", f"arn:aws:sqs:{REGION}:{ACCOUNT}:ingest"),
                            allow("sns:Publish", f"arn:aws:sns:{REGION}:{ACCOUNT}:alerts"),
                            allow(
                                "ssm:GetParameter",
                                f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/sluice/concurrency",
                            ),
                            allow("secretsmanager:GetSecretValue", SECRET),
                            allow(
                                "lambda:InvokeFunction", f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:notify"
                            ),
                            allow(
                                "states:ListExecutions",
                                f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:dispatcher",
                            ),
                            allow("cloudwatch:GetMetricData", "*"),
                        ]
                    },
                }
            ],
            "ManagedPolicyArns": ["arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"],
        },
    )
    return gate


def client_as(gate: IamGate, service: str, key: str) -> Any:
    def hand_to_gate(request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        refusal = gate.refuse(environ_of(request))
        if refusal is None:
            raise _Sent
        body = refusal.get_data()
        return AWSResponse(request.url, refusal.status_code, dict(refusal.headers), _Raw(body))

    client = boto3.client(
        service,
        region_name=REGION,
        endpoint_url="http://127.0.0.1:4566",
        aws_access_key_id=key,
        aws_secret_access_key="secret",
        aws_session_token="token",
        config=Config(retries={"total_max_attempts": 1}),
    )
    client.meta.events.register("before-send", hand_to_gate)
    return client


def refused(call: Any, **arguments: Any) -> str:
    """The error code boto3 raised for the call, or "" if the gate let it through."""
    try:
        call(**arguments)
    except _Sent:
        return ""
    except ClientError as error:
        return str(error.response["Error"]["Code"])
    raise AssertionError("the hook neither refused nor passed the request")


QUEUE = f"http://127.0.0.1:4566/{ACCOUNT}/ingest"
OTHER_QUEUE = f"http://127.0.0.1:4566/{ACCOUNT}/invalid"


@pytest.mark.parametrize(
    ("service", "operation", "arguments", "code"),
    [
        ("s3", "get_object", {"Bucket": "raw", "Key": "incoming/a b.csv", "VersionId": "v1"}, ""),
        ("s3", "head_object", {"Bucket": "raw", "Key": "incoming/a.csv"}, ""),
        ("s3", "get_object", {"Bucket": "processed", "Key": "results/a.csv"}, "AccessDenied"),
        ("s3", "put_object", {"Bucket": "processed", "Key": "parts/x/1.json", "Body": b"{}"}, ""),
        ("s3", "put_object", {"Bucket": "processed", "Key": "results/x.json", "Body": b"{}"}, "AccessDenied"),
        ("s3", "list_objects_v2", {"Bucket": "processed", "Prefix": "parts/x/"}, ""),
        ("s3", "list_objects_v2", {"Bucket": "processed", "Prefix": "results/"}, "AccessDenied"),
        ("s3", "list_objects_v2", {"Bucket": "processed"}, "AccessDenied"),
        (
            "s3",
            "delete_objects",
            {
                "Bucket": "processed",
                "Delete": {"Objects": [{"Key": "parts/x/1.json"}, {"Key": "parts/x/2.json"}]},
            },
            "",
        ),
        (
            "s3",
            "delete_objects",
            {
                "Bucket": "processed",
                "Delete": {"Objects": [{"Key": "parts/x/1.json"}, {"Key": "results/x.json"}]},
            },
            "AccessDenied",
        ),
        (
            "s3",
            "copy_object",
            {
                "Bucket": "processed",
                "Key": "parts/c.json",
                "CopySource": {"Bucket": "raw", "Key": "incoming/a.csv"},
            },
            "",
        ),
        (
            "s3",
            "copy_object",
            {
                "Bucket": "processed",
                "Key": "parts/c.json",
                "CopySource": {"Bucket": "processed", "Key": "results/a"},
            },
            "AccessDenied",
        ),
        (
            "s3",
            "put_bucket_lifecycle_configuration",
            {"Bucket": "processed", "LifecycleConfiguration": {"Rules": []}},
            "AccessDenied",
        ),
        ("dynamodb", "update_item", {"TableName": "control", "Key": {"pk": {"S": "health#downstream"}}}, ""),
        (
            "dynamodb",
            "update_item",
            {"TableName": "control", "Key": {"pk": {"S": "lease#dispatcher"}}},
            "AccessDeniedException",
        ),
        (
            "dynamodb",
            "get_item",
            {"TableName": "control", "Key": {"pk": {"S": "health#downstream"}}},
            "AccessDeniedException",
        ),
        (
            "dynamodb",
            "query",
            {"TableName": "control", "KeyConditionExpression": "pk = :v"},
            "AccessDeniedException",
        ),
        ("sqs", "send_message", {"QueueUrl": QUEUE, "MessageBody": "x"}, ""),
        ("sqs", "send_message_batch", {"QueueUrl": QUEUE, "Entries": [{"Id": "1", "MessageBody": "x"}]}, ""),
        ("sqs", "send_message", {"QueueUrl": OTHER_QUEUE, "MessageBody": "x"}, "AccessDenied"),
        ("sqs", "receive_message", {"QueueUrl": QUEUE}, "AccessDenied"),
        ("sns", "publish", {"TopicArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:alerts", "Message": "m"}, ""),
        (
            "sns",
            "publish",
            {"TopicArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:other", "Message": "m"},
            "AuthorizationError",
        ),
        ("ssm", "get_parameter", {"Name": "/sluice/concurrency"}, ""),
        (
            "ssm",
            "put_parameter",
            {"Name": "/sluice/concurrency", "Value": "3", "Overwrite": True},
            "AccessDeniedException",
        ),
        ("secretsmanager", "get_secret_value", {"SecretId": "api-token"}, ""),
        ("secretsmanager", "get_secret_value", {"SecretId": "smtp"}, "AccessDeniedException"),
        ("lambda", "invoke", {"FunctionName": "notify", "Payload": b"{}"}, ""),
        ("lambda", "invoke", {"FunctionName": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:notify"}, ""),
        ("lambda", "invoke", {"FunctionName": "notify", "Qualifier": "live"}, "AccessDeniedException"),
        ("lambda", "invoke", {"FunctionName": "other"}, "AccessDeniedException"),
        ("lambda", "get_function", {"FunctionName": "notify"}, "AccessDeniedException"),
        (
            "stepfunctions",
            "list_executions",
            {"stateMachineArn": f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:dispatcher"},
            "",
        ),
        (
            "stepfunctions",
            "start_execution",
            {"stateMachineArn": f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:dispatcher"},
            "AccessDeniedException",
        ),
        ("cloudwatch", "get_metric_data", {"MetricDataQueries": [], "StartTime": 0, "EndTime": 1}, ""),
        (
            "cloudwatch",
            "put_metric_alarm",
            {"AlarmName": "a", "EvaluationPeriods": 1, "ComparisonOperator": "GreaterThanThreshold"},
            "AccessDenied",
        ),
    ],
)
def test_a_call_is_refused_as_aws_refuses_it_exactly_when_the_role_lacks_it(
    gate: IamGate, service: str, operation: str, arguments: Mapping[str, Any], code: str
) -> None:
    client = client_as(gate, service, access_key_for(ROLE))

    assert refused(getattr(client, operation), **arguments) == code


def test_calls_under_any_other_key_are_not_checked(gate: IamGate) -> None:
    """The stack's own provisioning, tests and `sluice` commands stand for an administrator."""
    s3 = client_as(gate, "s3", "testing")

    assert (
        refused(
            s3.put_bucket_lifecycle_configuration, Bucket="processed", LifecycleConfiguration={"Rules": []}
        )
        == ""
    )
    assert gate.totals() == (0, 0)


def test_the_state_machine_key_stands_for_the_state_machine_role(gate: IamGate) -> None:
    sqs = client_as(gate, "sqs", STATE_MACHINE_ACCESS_KEY)
    assert refused(sqs.send_message, QueueUrl=QUEUE, MessageBody="x") == ""  # not bound: unchecked

    gate.bind_state_machine(ROLE, "dispatcher")

    assert refused(sqs.send_message, QueueUrl=QUEUE, MessageBody="x") == ""
    assert refused(sqs.send_message, QueueUrl=OTHER_QUEUE, MessageBody="x") == "AccessDenied"


def test_a_role_not_in_the_template_may_do_nothing(gate: IamGate) -> None:
    outside = f"arn:aws:iam::{ACCOUNT}:role/made-elsewhere"
    key = gate.credentials_for(outside, "fn")

    assert (
        refused(
            client_as(gate, "sns", key).publish,
            TopicArn=f"arn:aws:sns:{REGION}:{ACCOUNT}:alerts",
            Message="m",
        )
        == "AuthorizationError"
    )
    assert gate.report()["roles_not_in_template"] == [outside]


def test_the_report_counts_each_role_s_allowed_and_denied_calls_and_says_why(gate: IamGate) -> None:
    gate.credentials_for(ROLE, "process-fn")
    s3 = client_as(gate, "s3", access_key_for(ROLE))
    refused(s3.get_object, Bucket="raw", Key="incoming/a.csv")
    refused(s3.get_object, Bucket="raw", Key="incoming/b.csv")
    refused(s3.put_object, Bucket="processed", Key="results/x.json", Body=b"{}")

    report = gate.report()

    assert (report["checked"], report["denied"]) == (3, 1)
    role = report["roles"]["ProcessRole"]
    assert role["used_by"] == ["process-fn"]
    assert role["allowed"] == {"s3:GetObject": 2}
    assert role["denied"] == {"s3:PutObject": 1}
    assert role["denials"][0]["resource"] == "arn:aws:s3:::processed/results/x.json"
    assert "no identity-based policy allows the s3:PutObject action" in role["denials"][0]["reason"]
    assert summary_line(report) == "IAM: 3 calls checked, 1 denied (ProcessRole s3:PutObject)"


def test_the_report_file_is_the_report(gate: IamGate, tmp_path: Path) -> None:
    refused(client_as(gate, "sqs", access_key_for(ROLE)).receive_message, QueueUrl=QUEUE)

    path = gate.write_report(tmp_path)

    assert path.name == IAM_REPORT_FILE
    assert json.loads(path.read_text()) == gate.report()
    assert gate.report()["roles"]["ProcessRole"]["denied"] == {"sqs:ReceiveMessage": 1}


def test_an_unmapped_call_is_denied_and_reported_as_unknown(gate: IamGate) -> None:
    dynamodb = client_as(gate, "dynamodb", access_key_for(ROLE))

    assert refused(dynamodb.list_tables) == "AccessDeniedException"

    denial = gate.report()["roles"]["ProcessRole"]["denials"][0]
    assert "does not know this call" in denial["reason"]


def test_a_table_whose_partition_key_is_unknown_is_not_guessed() -> None:
    mapper = RequestMapper(LOOKUPS)
    body = b'{"TableName": "unknown", "Key": {"id": {"S": "a"}}}'
    environ: dict[str, Any] = {
        "HTTP_X_AMZ_TARGET": "DynamoDB_20120810.GetItem",
        "REQUEST_METHOD": "POST",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }

    with pytest.raises(Unmapped, match="partition key"):
        mapper.checks(environ, "dynamodb", REGION)


def test_a_call_a_service_makes_as_the_caller_is_checked_against_the_caller_s_role(gate: IamGate) -> None:
    """Lambda sends a failed invocation's record to its destination as the function's role."""
    key = access_key_for(ROLE)
    own_queue = Check("sqs:SendMessage", f"arn:aws:sqs:{REGION}:{ACCOUNT}:ingest")
    other_queue = Check("sqs:SendMessage", f"arn:aws:sqs:{REGION}:{ACCOUNT}:failures")

    assert gate.allows(key, own_queue, "destination")
    assert not gate.allows(key, other_queue, "destination")
    assert gate.allows("testing", other_queue, "destination")  # not a role's key: not checked
