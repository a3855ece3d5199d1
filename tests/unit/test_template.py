"""template.yaml, transformed offline into the CloudFormation that would be deployed, read for its promises.

The transform (samtranslator, as `sam deploy` runs it) is in sam_transform.py; the ASL walking in
asl_graph.py. These tests need neither AWS nor Docker.
"""

import json
import math
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asl_graph import (
    PLACEHOLDER,
    all_states,
    is_terminal,
    keys_anywhere,
    reachable,
    scopes,
    strings_anywhere,
    targets,
)
from moto.events.models import EventPattern
from sam_transform import REPO, definition_of, load_sam_template, transform_template

from sluice import metadata, ratelimit, settings
from sluice.alerting import Notification, render_alert
from sluice.ratelimit import LIMITER_METRICS

FUNCTIONS: dict[str, tuple[str, type[settings.Settings]]] = {  # logical id -> (code dir, settings model)
    "DispatcherLeaseFunction": ("dispatcher_lease", settings.LeaseSettings),
    "PlanBatchFunction": ("plan_batch", settings.PlanSettings),
    "RegisterObjectFunction": ("register_object", settings.RegisterSettings),
    "ValidateObjectFunction": ("validate_object", settings.ValidateSettings),
    "ProcessObjectFunction": ("process_object", settings.ProcessSettings),
    "WriteOutputFunction": ("write_output", settings.OutputSettings),
    "ScaleConcurrencyFunction": ("scale_concurrency", settings.ScaleSettings),
    "AlertNotifierFunction": ("alert_notifier", settings.AlertSettings),
    "RedriveFunction": ("redrive", settings.RedriveSettings),
    "WakeDispatcherFunction": ("wake_dispatcher", settings.WakeSettings),
}
DISPATCHER_FUNCTIONS = list(FUNCTIONS)[:6]  # the ones the state machine invokes
LOG_GROUPS = {  # the log group of every function and of the state machine
    **{name: name.removesuffix("Function") + "LogGroup" for name in FUNCTIONS},
    "DispatcherStateMachine": "DispatcherLogGroup",
}
LAMBDA_TRANSIENT = {
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
}
# Actions that accept no resource but "*" (no resource-level permissions in IAM). Nothing else may
# be granted on "*".
RESOURCELESS_ACTIONS = {
    # vended log delivery of the state machine
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
    # X-Ray tracing
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
    # ScaleConcurrency reads ProcessObject's metrics and the queue's age
    "cloudwatch:GetMetricData",
}
PSEUDO_PARAMETERS = {"AWS::Partition", "AWS::Region", "AWS::AccountId", "AWS::StackName", "AWS::NoValue"}
SUB_VARIABLE = re.compile(r"\$\{([A-Za-z0-9_:.]+)\}")  # ${Name}, ${Name.Attribute}, ${AWS::Region}
SHIPPING_CONDITIONS = {"DynatraceOn", "SplunkOn", "ShippingOn"}
OPTIONAL_CONDITIONS = {"InVpc", "AuditOn", "BudgetOn"}  # tests/unit/test_template_security.py


@pytest.fixture(scope="module")
def sam() -> dict[str, Any]:
    return load_sam_template()


@pytest.fixture(scope="module")
def cfn() -> Iterator[dict[str, Any]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # the translator asks boto3 for a partition
        yield transform_template()


@pytest.fixture(scope="module")
def resources(cfn: dict[str, Any]) -> dict[str, Any]:
    return cfn["Resources"]


@pytest.fixture(scope="module")
def definition(cfn: dict[str, Any]) -> dict[str, Any]:
    return json.loads(definition_of(cfn))


def props(resources: dict[str, Any], logical_id: str) -> dict[str, Any]:
    return resources[logical_id]["Properties"]


def policies(role: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A role's inline policies; a conditional one (Fn::If, as SAM writes it) counts when it is on."""
    for policy in role["Properties"].get("Policies", []):
        if "Fn::If" in policy:
            _, when_on, _ = policy["Fn::If"]
            yield when_on
        else:
            yield policy


def statements(role: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for policy in policies(role):
        statement = policy["PolicyDocument"]["Statement"]
        yield from statement if isinstance(statement, list) else [statement]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def references(node: Any) -> set[str]:
    """Logical ids and parameters a fragment refers to (Ref, GetAtt, ${X} and ${X.Attr} in Sub)."""
    found: set[str] = set()
    if isinstance(node, dict):
        if "Ref" in node:
            found.add(node["Ref"])
        if "Fn::GetAtt" in node:
            found.add(as_list(node["Fn::GetAtt"])[0].split(".")[0])
        if "Fn::Sub" in node:
            text, *rest = as_list(node["Fn::Sub"])
            local = rest[0].keys() if rest else set()
            # the Sub's own variables and the pseudo parameters name nothing of the stack
            found |= {name.split(".")[0] for name in SUB_VARIABLE.findall(text)} - local - PSEUDO_PARAMETERS
        for value in node.values():
            found |= references(value)
    elif isinstance(node, list):
        for item in node:
            found |= references(item)
    return found


def unconditional_references(node: Any, conditional: dict[str, str]) -> set[str]:
    """references(node), less those made under an Fn::If on the referenced resource's own condition."""
    if isinstance(node, dict) and "Fn::If" in node:
        condition, when_on, when_off = node["Fn::If"]
        on = unconditional_references(when_on, conditional)
        return {name for name in on if conditional.get(name) != condition} | unconditional_references(
            when_off, conditional
        )
    if isinstance(node, dict):
        own = references({k: v for k, v in node.items() if k in ("Ref", "Fn::GetAtt", "Fn::Sub")})
        return own.union(*(unconditional_references(value, conditional) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(unconditional_references(item, conditional) for item in node))
    return set()


def evaluate(condition: Any, conditions: dict[str, Any], parameters: dict[str, str]) -> Any:
    """A CloudFormation condition (And, Or, Not, Equals, Condition, Ref) with these parameter values."""
    if not isinstance(condition, dict):
        return condition
    ((function, argument),) = condition.items()
    operands = [evaluate(a, conditions, parameters) for a in as_list(argument)] if function != "Ref" else []
    results = {
        "Ref": lambda: parameters[argument],
        "Condition": lambda: evaluate(conditions[argument], conditions, parameters),
        "Fn::Equals": lambda: str(operands[0]) == str(operands[1]),
        "Fn::Not": lambda: not operands[0],
        "Fn::And": lambda: all(operands),
        "Fn::Or": lambda: any(operands),
    }
    return results[function]()


def parameter_values(sam: dict[str, Any], **given: str) -> dict[str, str]:
    return {name: str(spec.get("Default", "")) for name, spec in sam["Parameters"].items()} | given


# ------------------------------------------------------------------------------------------ resources


def test_every_contract_resource_is_there_with_its_type(resources: dict[str, Any]) -> None:
    expected = {
        "DataKey": "AWS::KMS::Key",
        "DataKeyAlias": "AWS::KMS::Alias",
        "RawBucket": "AWS::S3::Bucket",
        "RawBucketPolicy": "AWS::S3::BucketPolicy",
        "ProcessedBucket": "AWS::S3::Bucket",
        "AccessLogBucket": "AWS::S3::Bucket",
        "ProcessedBucketPolicy": "AWS::S3::BucketPolicy",
        "IngestRule": "AWS::Events::Rule",
        "IngestRuleDLQ": "AWS::SQS::Queue",
        "IngestQueue": "AWS::SQS::Queue",
        "IngestQueuePolicy": "AWS::SQS::QueuePolicy",
        "IngestDLQ": "AWS::SQS::Queue",
        "InvalidQueue": "AWS::SQS::Queue",
        "FailureDestinationQueue": "AWS::SQS::Queue",
        "MetadataTable": "AWS::DynamoDB::Table",
        "ControlTable": "AWS::DynamoDB::Table",
        "IdempotencyTable": "AWS::DynamoDB::Table",
        "ConcurrencyParameter": "AWS::SSM::Parameter",
        "NotificationTopic": "AWS::SNS::Topic",
        "AlertTopic": "AWS::SNS::Topic",
        "DispatcherStateMachine": "AWS::StepFunctions::StateMachine",
        "WakeDispatcherFunctionDispatchSchedule": "AWS::Events::Rule",
        "WakeDispatcherPermission": "AWS::Lambda::Permission",
        "DispatcherLogGroup": "AWS::Logs::LogGroup",
        "AlertTopicPolicy": "AWS::SNS::TopicPolicy",
        "AlertNotifierFunctionAlertTopic": "AWS::SNS::Subscription",
        "ScaleConcurrencyFunctionScaleSchedule": "AWS::Events::Rule",
        "DispatcherExecutionAlertRule": "AWS::Events::Rule",
        "OperationsDashboard": "AWS::CloudWatch::Dashboard",
        **dict.fromkeys(FUNCTIONS, "AWS::Lambda::Function"),
        **{f"{name}EventInvokeConfig": "AWS::Lambda::EventInvokeConfig" for name in FUNCTIONS},
        **dict.fromkeys(LOG_GROUPS.values(), "AWS::Logs::LogGroup"),
    }
    actual = {logical_id: resource["Type"] for logical_id, resource in resources.items()}
    assert {k: actual.get(k) for k in expected} == expected
    layers = [r for r in resources.values() if r["Type"] == "AWS::Lambda::LayerVersion"]
    assert len(layers) == 1


def key_users(resources: dict, action: str) -> set[str]:
    """The service principals DataKey's key policy lets `action` (a pattern like kms:Encrypt* counts)."""
    return {
        json.dumps(service) if isinstance(service, dict) else service
        for statement in props(resources, "DataKey")["KeyPolicy"]["Statement"]
        if "Fn::If" not in statement  # the optional ones: tests/unit/test_template_security.py
        and any(
            a == action or (a.endswith("*") and action.startswith(a[:-1]))
            for a in as_list(statement["Action"])
        )
        for service in as_list(statement["Principal"].get("Service", []))
    }


def test_the_data_key_rotates_and_admits_the_services_that_write_encrypted_data(resources: dict) -> None:
    assert props(resources, "DataKey")["EnableKeyRotation"] is True
    # EventBridge writes to the encrypted queues and AlertTopic; alarms publish to AlertTopic;
    # CloudWatch Logs encrypts the log groups.
    logs = json.dumps({"Fn::Sub": "logs.${AWS::Region}.amazonaws.com"})
    for action in ("kms:GenerateDataKey", "kms:Decrypt"):
        assert {"events.amazonaws.com", "cloudwatch.amazonaws.com", logs} <= key_users(resources, action)
    assert logs in key_users(resources, "kms:Encrypt")


# ------------------------------------------------------------------------------------------ functions


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_function_runs_python313_on_arm64_traced_with_the_shared_layer(
    resources: dict, logical_id: str
) -> None:
    function = props(resources, logical_id)
    assert function["Runtime"] == "python3.13"
    assert function["Architectures"] == ["arm64"]
    assert function["TracingConfig"] == {"Mode": "Active"}
    assert function["Handler"] == "app.lambda_handler"
    (layer,) = function["Layers"]
    assert resources[layer["Ref"]]["Type"] == "AWS::Lambda::LayerVersion"
    assert layer["Ref"].startswith("SharedLayer")


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_function_code_is_its_directory_with_a_handler(sam: dict, logical_id: str) -> None:
    directory, _ = FUNCTIONS[logical_id]
    assert sam["Resources"][logical_id]["Properties"]["CodeUri"] == f"functions/{directory}/"
    assert (REPO / "functions" / directory / "app.py").is_file()
    assert (REPO / "functions" / directory / "requirements.txt").is_file()


def test_the_shared_layer_builds_powertools_for_python313_arm64(sam: dict) -> None:
    layer = sam["Resources"]["SharedLayer"]
    assert layer["Properties"]["ContentUri"] == "layers/shared"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert layer["Metadata"]["BuildMethod"] == "python3.13"
    # the layer's pins are uv.lock's (make layer-requirements writes them, make lint compares):
    # Powertools, its parser's pydantic and its tracer's X-Ray SDK at the versions the tests ran
    requirements = (REPO / "layers" / "shared" / "requirements.txt").read_text().splitlines()
    locked = {
        package["name"]: package["version"]
        for package in tomllib.loads((REPO / "uv.lock").read_text())["package"]
    }
    for name in ("aws-lambda-powertools", "pydantic", "aws-xray-sdk"):
        assert f"{name}=={locked[name]}" in requirements, name


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_function_environment_is_what_its_settings_model_reads(
    sam: dict, resources: dict, logical_id: str
) -> None:
    _, model = FUNCTIONS[logical_id]
    env = props(resources, logical_id)["Environment"]["Variables"]
    fields = {name.upper(): field for name, field in model.model_fields.items()}
    required = {name for name, field in fields.items() if field.is_required()}
    assert required <= env.keys(), f"{logical_id} misses {required - env.keys()}"
    # The function's own variables (beyond Globals) all configure something.
    own = sam["Resources"][logical_id]["Properties"].get("Environment", {}).get("Variables", {})
    assert own.keys() <= fields.keys(), f"{logical_id} sets unknown {own.keys() - fields.keys()}"
    # The service name and metrics namespace are the stack's constants (dashboards and alarms read
    # them); a function that names the namespace again names the same one.
    constants = {"POWERTOOLS_SERVICE_NAME": "sluice", "POWERTOOLS_METRICS_NAMESPACE": "Sluice"}
    if "METRICS_NAMESPACE" in env:
        constants["METRICS_NAMESPACE"] = env["POWERTOOLS_METRICS_NAMESPACE"]
    assert {name: env[name] for name in constants} == constants
    # Every other value comes from a parameter or a resource of the stack, never a hard-coded name.
    known = sam["Parameters"].keys() | resources.keys() | PSEUDO_PARAMETERS
    for name, value in env.items():
        if name not in constants:
            assert isinstance(value, dict), f"{logical_id} {name} is hard-coded"
            assert references(value) <= known


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_function_sends_failed_async_invocations_to_the_failure_queue(
    resources: dict, logical_id: str
) -> None:
    config = props(resources, f"{logical_id}EventInvokeConfig")
    assert config["FunctionName"] == {"Ref": logical_id}
    assert config["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["FailureDestinationQueue", "Arn"]
    }


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_function_has_its_log_group(resources: dict, logical_id: str) -> None:
    groups = [
        name
        for name, r in resources.items()
        if r["Type"] == "AWS::Logs::LogGroup"
        and r["Properties"]["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/${{{logical_id}}}"}
    ]
    assert groups == [LOG_GROUPS[logical_id]]


def test_every_log_group_keeps_logs_for_the_retention_and_encrypts_them(resources: dict) -> None:
    groups = {k: r["Properties"] for k, r in resources.items() if r["Type"] == "AWS::Logs::LogGroup"}
    assert groups.keys() == set(LOG_GROUPS.values())
    for name, group in groups.items():
        assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name
        assert group["KmsKeyId"] == {"Fn::GetAtt": ["DataKey", "Arn"]}, name


# ------------------------------------------------------------------------------------------ IAM


def test_no_iam_statement_grants_everything(resources: dict) -> None:
    roles = {k: r for k, r in resources.items() if r["Type"] == "AWS::IAM::Role"}
    assert len(roles) >= len(FUNCTIONS) + 1 + 4  # + the state machine, + Dynatrace and Splunk delivery
    for logical_id, role in roles.items():
        for statement in statements(role):
            actions = as_list(statement["Action"])
            assert not any(a == "*" or a.endswith(":*") for a in actions), (logical_id, actions)
            for resource in as_list(statement["Resource"]):
                if resource == "*":
                    # "*" only where the action has no resource-level permissions at all.
                    assert set(actions) <= RESOURCELESS_ACTIONS, (logical_id, actions)
                else:
                    # A resource of this stack, never a literal ARN or name.
                    assert isinstance(resource, dict), (logical_id, resource)


def allowed(role: dict, action: str) -> set[str]:
    """Logical ids of the resources a role may `action` on."""
    found: set[str] = set()
    for statement in statements(role):
        if any(
            a == action or (a.endswith("*") and action.startswith(a[:-1]))
            for a in as_list(statement["Action"])
        ):
            found |= references(statement["Resource"])
    return found


def test_each_function_reaches_only_its_own_tables_and_buckets(resources: dict) -> None:
    role = {name: resources[f"{name}Role"] for name in FUNCTIONS}
    assert allowed(role["DispatcherLeaseFunction"], "dynamodb:PutItem") == {"ControlTable"}
    assert allowed(role["AlertNotifierFunction"], "dynamodb:PutItem") == {"IdempotencyTable"}
    for name in ("ScaleConcurrencyFunction", "RedriveFunction"):
        assert allowed(role[name], "dynamodb:PutItem") == set(), name
    assert allowed(role["PlanBatchFunction"], "dynamodb:PutItem") == set()
    assert allowed(role["RegisterObjectFunction"], "dynamodb:PutItem") == {"MetadataTable"}
    # raw objects only under RawKeyPrefix, the keys the ingest rule routes
    assert allowed(role["ValidateObjectFunction"], "s3:GetObject") == {"RawBucket", "RawKeyPrefix"}
    assert allowed(role["ValidateObjectFunction"], "s3:PutObject") == set()
    assert allowed(role["ProcessObjectFunction"], "s3:GetObject") == {
        "RawBucket",
        "RawKeyPrefix",
        "ProcessedBucket",
    }
    assert allowed(role["ProcessObjectFunction"], "s3:PutObject") == {"ProcessedBucket"}
    assert allowed(role["ProcessObjectFunction"], "dynamodb:UpdateItem") == {
        "MetadataTable",
        "ControlTable",
        "IdempotencyTable",
    }
    assert allowed(role["WriteOutputFunction"], "s3:PutObject") == {"ProcessedBucket"}
    # issue 12: ProcessObject may read the API credential's secret and decrypt it with its own key
    assert allowed(role["ProcessObjectFunction"], "secretsmanager:GetSecretValue") == {"ApiAuthSecretArn"}
    for name in FUNCTIONS:
        own_keys = {"ApiAuthKmsKeyArn"} if name == "ProcessObjectFunction" else set()
        assert allowed(role[name], "kms:Decrypt") == {"DataKey"} | own_keys
        assert allowed(role[name], "s3:PutObject") <= {"ProcessedBucket"}
        # its own failure destination; only Redrive sends anywhere else (back to IngestQueue)
        sends = {"FailureDestinationQueue"} | ({"IngestQueue"} if name == "RedriveFunction" else set())
        assert allowed(role[name], "sqs:SendMessage") == sends, name


def test_the_state_machine_may_call_exactly_what_its_definition_uses(resources: dict) -> None:
    role = resources["DispatcherStateMachineRole"]
    assert allowed(role, "lambda:InvokeFunction") == set(DISPATCHER_FUNCTIONS)
    for action in (
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
    ):
        assert allowed(role, action) == {"IngestQueue"}, action
    assert allowed(role, "sqs:SendMessage") == {"InvalidQueue", "IngestQueue"}  # + a long file's continuation
    assert allowed(role, "sns:Publish") == {"NotificationTopic", "AlertTopic"}
    assert allowed(role, "ssm:GetParameter") == {"ConcurrencyParameter"}
    assert allowed(role, "dynamodb:UpdateItem") == {"MetadataTable"}
    assert allowed(role, "dynamodb:PutItem") == set()
    assert allowed(role, "kms:GenerateDataKey") == {"DataKey"}


# ------------------------------------------------------------------------------ operations functions


def test_scale_concurrency_runs_alone_on_its_schedule_and_writes_only_the_setting(
    sam: dict, resources: dict
) -> None:
    function = props(resources, "ScaleConcurrencyFunction")
    assert function["ReservedConcurrentExecutions"] == 1  # one writer: runs never overlap
    assert (function["MemorySize"], function["Timeout"]) == (128, 30)
    schedule = props(resources, "ScaleConcurrencyFunctionScaleSchedule")
    assert schedule["ScheduleExpression"] == {"Ref": "ScaleSchedule"}
    # on by default; DISABLED for a fixed-concurrency run (the benchmark's seed design)
    assert schedule["State"] == {"Ref": "ScaleScheduleState"}
    assert sam["Parameters"]["ScaleScheduleState"]["Default"] == "ENABLED"
    assert schedule["Targets"][0]["Arn"] == {"Fn::GetAtt": ["ScaleConcurrencyFunction", "Arn"]}
    assert sam["Parameters"]["ScaleSchedule"]["Default"] == "rate(1 minute)"
    role = resources["ScaleConcurrencyFunctionRole"]
    for action in ("ssm:GetParameter", "ssm:PutParameter"):
        assert allowed(role, action) == {"ConcurrencyParameter"}, action
    assert allowed(role, "sqs:GetQueueAttributes") == {"IngestQueue"}
    assert allowed(role, "sqs:ReceiveMessage") == set()  # peeking would count towards the DLQ
    (metrics,) = [s for s in statements(role) if "cloudwatch:GetMetricData" in as_list(s["Action"])]
    assert (as_list(metrics["Action"]), metrics["Resource"]) == (["cloudwatch:GetMetricData"], "*")


def test_alert_notifier_receives_every_alert_topic_message_asynchronously(resources: dict) -> None:
    subscription = props(resources, "AlertNotifierFunctionAlertTopic")
    assert subscription["TopicArn"] == {"Ref": "AlertTopic"}
    assert subscription["Protocol"] == "lambda"
    assert subscription["Endpoint"] == {"Fn::GetAtt": ["AlertNotifierFunction", "Arn"]}
    assert "FilterPolicy" not in subscription  # every alert, whatever its shape
    permission = props(resources, "AlertNotifierFunctionAlertTopicPermission")
    assert (permission["Principal"], permission["SourceArn"]) == ("sns.amazonaws.com", {"Ref": "AlertTopic"})
    # SNS invokes asynchronously: a message that fails is retried, then kept for the redrive.
    config = props(resources, "AlertNotifierFunctionEventInvokeConfig")
    assert config["MaximumRetryAttempts"] == 2


def test_alert_notifier_timeout_covers_every_smtp_attempt(sam: dict) -> None:
    policy = settings.AlertSettings(
        idempotency_table="t", smtp_host="h", smtp_sender="a@b", smtp_recipients="c@d"
    )
    backoff = sum(
        min(policy.smtp_backoff_max_seconds, policy.smtp_backoff_base_seconds * 2 ** (attempt - 1))
        for attempt in range(1, policy.smtp_max_attempts)
    )
    worst = policy.smtp_max_attempts * policy.smtp_timeout_seconds + backoff
    timeout = sam["Resources"]["AlertNotifierFunction"]["Properties"]["Timeout"]
    assert worst < timeout <= math.ceil(worst) + 15  # room for the secret and the idempotency record


def test_the_smtp_password_is_read_from_secrets_manager_only_when_a_secret_is_given(
    sam: dict, resources: dict
) -> None:
    env = props(resources, "AlertNotifierFunction")["Environment"]["Variables"]
    assert env["SMTP_PASSWORD_SECRET"] == {"Ref": "SmtpPasswordSecretArn"}
    role = resources["AlertNotifierFunctionRole"]
    (conditional,) = [p for p in role["Properties"]["Policies"] if "Fn::If" in p]
    condition, when_on, when_off = conditional["Fn::If"]
    assert condition == "HasSmtpPassword"
    assert when_off == {"Ref": "AWS::NoValue"}
    (statement,) = when_on["PolicyDocument"]["Statement"]
    assert statement["Action"] == ["secretsmanager:GetSecretValue"]
    assert references(statement["Resource"]) == {"SmtpPasswordSecretArn"}
    conditions = sam["Conditions"]
    assert not evaluate(conditions["HasSmtpPassword"], conditions, parameter_values(sam))
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:sluice/smtp-AbCdEf"
    assert evaluate(
        conditions["HasSmtpPassword"], conditions, parameter_values(sam, SmtpPasswordSecretArn=arn)
    )


def test_no_parameter_can_hold_a_password_or_token(sam: dict) -> None:
    # Secrets are named by their Secrets Manager ARN, which the pattern insists on (complete, so
    # IAM can match it exactly).
    secretish = [
        n
        for n in sam["Parameters"]
        if re.search("password|token|secret|apikey|accesskey|credential", n, re.IGNORECASE)
    ]
    assert sorted(secretish) == [
        "ApiAuthSecretArn",
        "DynatraceApiTokenSecretArn",
        "SmtpPasswordSecretArn",
        "SplunkHecTokenSecretArn",
    ]
    for name in secretish:
        pattern = sam["Parameters"][name]["AllowedPattern"]
        assert re.fullmatch(pattern, ""), name  # empty: off
        assert re.fullmatch(pattern, "arn:aws:secretsmanager:eu-west-1:123456789012:secret:sluice/x-AbCdEf")
        assert not re.fullmatch(pattern, "arn:aws:secretsmanager:eu-west-1:123456789012:secret:sluice/x")
        assert not re.fullmatch(pattern, "hunter2"), name


def test_redrive_may_move_dead_letters_back_and_redrive_executions_and_nothing_more(resources: dict) -> None:
    role = resources["RedriveFunctionRole"]
    dead_letters = {"IngestDLQ", "IngestRuleDLQ", "FailureDestinationQueue"}
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage"):
        assert allowed(role, action) == dead_letters, action
    # releases what it could not send back: the two DLQs it moves by hand, not the failure records
    assert allowed(role, "sqs:ChangeMessageVisibility") == {"IngestDLQ", "IngestRuleDLQ"}
    assert allowed(role, "sqs:GetQueueAttributes") == dead_letters | {"IngestQueue"}
    assert allowed(role, "sqs:StartMessageMoveTask") == {"IngestDLQ"}  # IngestQueue's own DLQ
    assert allowed(role, "sqs:ListMessageMoveTasks") == {"IngestDLQ"}
    assert allowed(role, "states:ListExecutions") == {"DispatcherStateMachine"}
    for action in ("states:DescribeExecution", "states:RedriveExecution"):
        (statement,) = [s for s in statements(role) if action in as_list(s["Action"])]
        assert statement["Resource"] == {
            "Fn::Sub": "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}"
            ":execution:${DispatcherStateMachine.Name}:*"
        }
    assert allowed(role, "states:StartExecution") == set()
    assert "Events" not in load_sam_template()["Resources"]["RedriveFunction"]["Properties"]
    env = props(resources, "RedriveFunction")["Environment"]["Variables"]
    assert env["DISPATCHER_STATE_MACHINE_ARN"] == {"Ref": "DispatcherStateMachine"}


def test_redrive_can_reinvoke_every_function_aws_invokes_asynchronously(sam: dict, resources: dict) -> None:
    # Their failed events are what FailureDestinationQueue holds (the dispatcher's functions are
    # invoked synchronously by the state machine).
    invoked_by_aws = {name for name in FUNCTIONS if sam["Resources"][name]["Properties"].get("Events")}
    assert invoked_by_aws == {"ScaleConcurrencyFunction", "AlertNotifierFunction", "WakeDispatcherFunction"}
    assert allowed(resources["RedriveFunctionRole"], "lambda:InvokeFunction") == invoked_by_aws


# ------------------------------------------------------------------------------ event-driven alerting


def test_alert_topic_admits_only_this_accounts_alarms_and_the_execution_alert_rule(resources: dict) -> None:
    policy = props(resources, "AlertTopicPolicy")
    assert policy["Topics"] == [{"Ref": "AlertTopic"}]
    granted = {
        statement["Principal"]["Service"]: statement
        for statement in policy["PolicyDocument"]["Statement"]
        if statement.get("Effect") == "Allow"  # (Budgets' Fn::If: tests/unit/test_template_security.py)
    }
    assert granted.keys() == {"cloudwatch.amazonaws.com", "events.amazonaws.com"}
    for statement in granted.values():
        assert (statement["Action"], statement["Resource"]) == ("sns:Publish", {"Ref": "AlertTopic"})
    assert granted["cloudwatch.amazonaws.com"]["Condition"] == {
        "ArnLike": {
            "aws:SourceArn": {
                "Fn::Sub": "arn:${AWS::Partition}:cloudwatch:${AWS::Region}:${AWS::AccountId}:alarm:*"
            }
        }
    }
    assert granted["events.amazonaws.com"]["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["DispatcherExecutionAlertRule", "Arn"]}}
    }


def execution_event(
    status: str, machine: str = "arn:aws:states:us-east-1:123456789012:stateMachine:D"
) -> dict:
    return {
        "version": "0",
        "id": "e-1",
        "detail-type": "Step Functions Execution Status Change",
        "source": "aws.states",
        "account": "123456789012",
        "time": "2026-11-22T03:10:00Z",
        "region": "us-east-1",
        "resources": [f"{machine.replace(':stateMachine:', ':execution:')}:run-1"],
        "detail": {
            "executionArn": f"{machine.replace(':stateMachine:', ':execution:')}:run-1",
            "stateMachineArn": machine,
            "name": "run-1",
            "status": status,
        },
    }


@pytest.mark.parametrize(
    ("status", "machine", "alerts"),
    [
        ("FAILED", "arn:aws:states:us-east-1:123456789012:stateMachine:D", True),
        ("TIMED_OUT", "arn:aws:states:us-east-1:123456789012:stateMachine:D", True),
        ("ABORTED", "arn:aws:states:us-east-1:123456789012:stateMachine:D", True),
        ("SUCCEEDED", "arn:aws:states:us-east-1:123456789012:stateMachine:D", False),
        ("RUNNING", "arn:aws:states:us-east-1:123456789012:stateMachine:D", False),
        ("FAILED", "arn:aws:states:us-east-1:123456789012:stateMachine:Other", False),
    ],
)
def test_execution_alert_rule_sends_failed_timed_out_and_aborted_dispatcher_executions(
    resources: dict, status: str, machine: str, alerts: bool
) -> None:
    rule = props(resources, "DispatcherExecutionAlertRule")
    values = {"DispatcherStateMachine": "arn:aws:states:us-east-1:123456789012:stateMachine:D"}
    pattern = EventPattern.load(json.dumps(resolved(rule["EventPattern"], values)))
    event: Any = execution_event(status, machine)  # the shape moto's EventMessageType stands for
    assert pattern.matches_event(event) is alerts
    # the event goes to the topic as it is, a shape the notifier renders as an execution alert
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Ref": "AlertTopic"}
    assert not target.keys() & {"Input", "InputPath", "InputTransformer"}
    alert = render_alert(Notification(message_id="m-1", message=json.dumps(event)))
    assert (alert.kind, alert.subject) == ("execution", f"[Sluice] Dispatcher execution {status}: run-1")


def test_the_state_machine_announces_invalid_and_failed_files_on_the_alert_topic(definition: dict) -> None:
    announced = {
        state["Parameters"]["MessageAttributes"]["event"]["StringValue"]
        for _, state in all_states(definition)
        if state.get("Resource", "").endswith(":sns:publish")
        and state["Parameters"]["TopicArn"] == "${AlertTopicArn}"
    }
    assert announced == {"file.invalid", "file.failed_for_good"}


# ------------------------------------------------------------------------------------------ storage


def test_raw_bucket_is_versioned_encrypted_private_and_notifies_eventbridge(resources: dict) -> None:
    bucket = props(resources, "RawBucket")
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert bucket["NotificationConfiguration"]["EventBridgeConfiguration"] == {"EventBridgeEnabled": True}
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": {"Fn::GetAtt": ["DataKey", "Arn"]},
    }
    assert rule["BucketKeyEnabled"] is True
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(bucket["PublicAccessBlockConfiguration"]) == 4
    (lifecycle,) = bucket["LifecycleConfiguration"]["Rules"]
    assert lifecycle["Transitions"] == [
        {"StorageClass": "GLACIER", "TransitionInDays": {"Ref": "RawGlacierDays"}}
    ]
    assert lifecycle["ExpirationInDays"] == {"Ref": "RawExpireDays"}
    assert lifecycle["NoncurrentVersionExpiration"] == {"NoncurrentDays": {"Ref": "RawExpireDays"}}


def test_processed_bucket_is_encrypted_private_and_moves_to_infrequent_access(resources: dict) -> None:
    bucket = props(resources, "ProcessedBucket")
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    transitions = [t for r in bucket["LifecycleConfiguration"]["Rules"] for t in r.get("Transitions", [])]
    assert transitions == [{"StorageClass": "STANDARD_IA", "TransitionInDays": {"Ref": "ProcessedIaDays"}}]


@pytest.mark.parametrize("bucket", ["RawBucket", "ProcessedBucket", "AccessLogBucket"])
def test_bucket_policy_refuses_requests_without_tls(resources: dict, bucket: str) -> None:
    policy = props(resources, f"{bucket}Policy")
    assert policy["Bucket"] == {"Ref": bucket}
    (deny,) = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Principal"] == "*"
    assert deny["Action"] == "s3:*"
    assert references(deny["Resource"]) == {bucket}
    assert len(deny["Resource"]) == 2  # the bucket and its objects


@pytest.mark.parametrize(
    ("table", "key", "ttl", "pitr"),
    [
        ("MetadataTable", "pk", "expires_at", True),
        ("ControlTable", "pk", "expires_at", True),
        ("IdempotencyTable", "id", "expiration", True),
    ],
)
def test_table_key_billing_encryption_and_ttl(
    resources: dict, table: str, key: str, ttl: str, pitr: bool
) -> None:
    p = props(resources, table)
    assert p["KeySchema"] == [{"AttributeName": key, "KeyType": "HASH"}]
    assert p["AttributeDefinitions"] == [{"AttributeName": key, "AttributeType": "S"}]
    assert p["BillingMode"] == "PAY_PER_REQUEST"
    assert p["SSESpecification"] == {
        "SSEEnabled": True,
        "SSEType": "KMS",
        "KMSMasterKeyId": {"Ref": "DataKey"},
    }
    assert p["TimeToLiveSpecification"] == {"AttributeName": ttl, "Enabled": True}
    assert p.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled", False) is pitr


def test_concurrency_parameter_starts_at_the_initial_value_under_the_stack_name(resources: dict) -> None:
    p = props(resources, "ConcurrencyParameter")
    assert p["Type"] == "String"
    assert p["Value"] == {"Ref": "ConcurrencyInitial"}
    assert p["Name"]["Fn::Sub"].startswith("/${AWS::StackName}/")
    assert re.fullmatch(p["AllowedPattern"], "3")
    assert not re.fullmatch(p["AllowedPattern"], "three")


@pytest.mark.parametrize("topic", ["NotificationTopic", "AlertTopic"])
def test_topics_are_encrypted_with_the_data_key(resources: dict, topic: str) -> None:
    assert props(resources, topic)["KmsMasterKeyId"] == {"Ref": "DataKey"}


# ------------------------------------------------------------------------------ queues and routing


def test_ingest_queue_redrives_to_its_dlq_after_max_receive_count(resources: dict) -> None:
    queue = props(resources, "IngestQueue")
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["IngestDLQ", "Arn"]},
        "maxReceiveCount": {"Ref": "MaxReceiveCount"},
    }


def test_visibility_timeouts_cover_what_runs_before_the_next_extension(sam: dict, resources: dict) -> None:
    backoff = 2 + 4 + 8  # the state machine's Lambda retries
    default_timeout = sam["Globals"]["Function"]["Timeout"]
    max_stagger = sam["Parameters"]["MaxStaggerSeconds"]["MaxValue"]
    # Received → stagger slot → RegisterObject → ValidateObject → first "Extend message visibility".
    assert props(resources, "IngestQueue")["VisibilityTimeout"] >= max_stagger + 2 * (
        default_timeout + backoff
    )
    # Each extension covers the lease renewal, a ProcessObject segment and the output stage after
    # it, each with its retries.
    timeout = {
        name: sam["Resources"][name]["Properties"].get("Timeout", default_timeout) for name in FUNCTIONS
    }
    substitutions = props(resources, "DispatcherStateMachine")["DefinitionSubstitutions"]
    after_extension = ("DispatcherLeaseFunction", "ProcessObjectFunction", "WriteOutputFunction")
    assert substitutions["SegmentVisibilitySeconds"] >= sum(
        timeout[name] + backoff for name in after_extension
    )
    assert timeout["ProcessObjectFunction"] == 300
    assert sam["Resources"]["ProcessObjectFunction"]["Properties"]["MemorySize"] == 256


def test_a_whole_request_fits_in_every_segment_and_the_margin_covers_what_runs_after_the_stop(
    sam: dict,
) -> None:
    """CloudFormation Rules cannot compare numbers: the bounds hold the arithmetic, and ProcessSettings
    refuses the same values at cold start."""
    parameters = sam["Parameters"]
    timeout = sam["Resources"]["ProcessObjectFunction"]["Properties"]["Timeout"]
    safety, request = parameters["SegmentSafetySeconds"], parameters["ApiTimeoutSeconds"]
    assert timeout == settings.PROCESS_TIMEOUT_SECONDS
    assert safety["MaxValue"] == settings.MAX_SEGMENT_SAFETY_SECONDS
    assert request["MaxValue"] == settings.MAX_API_TIMEOUT_SECONDS <= timeout - safety["MaxValue"]
    assert safety["MinValue"] == settings.MIN_SEGMENT_SAFETY_SECONDS >= 2 * ratelimit.STOPPED_GRACE_SECONDS
    fields = settings.ProcessSettings.model_fields
    for name, low, high in [
        ("api_timeout_seconds", None, request["MaxValue"]),
        ("segment_safety_seconds", safety["MinValue"], safety["MaxValue"]),
    ]:
        bounds = fields[name].metadata
        assert any(getattr(bound, "le", None) == high for bound in bounds), name
        assert low is None or any(getattr(bound, "ge", None) == low for bound in bounds), name


def test_a_claim_outlives_the_longest_gap_between_two_renewals(sam: dict) -> None:
    """docs/metadata.md, The claim: register, start_processing and each checkpoint renew it."""
    backoff = 2 + 4 + 8
    default_timeout = sam["Globals"]["Function"]["Timeout"]
    timeout = {
        name: sam["Resources"][name]["Properties"].get("Timeout", default_timeout) for name in FUNCTIONS
    }
    claim = sam["Parameters"]["ClaimSeconds"]
    # a segment between two checkpoints, then a failed invocation retried; ValidateObject before the first
    longest_gap = timeout["ProcessObjectFunction"] + backoff + timeout["ValidateObjectFunction"] + backoff
    assert claim["Default"] >= longest_gap
    assert (
        claim["Default"]
        == metadata.CLAIM_SECONDS
        == settings.MetadataSettings.model_fields["claim_seconds"].default
    )
    # a deferred message waits out the claim under one ChangeMessageVisibility
    assert claim["MaxValue"] <= metadata.MAX_VISIBILITY_SECONDS
    bounds = settings.MetadataSettings.model_fields["claim_seconds"].metadata
    assert any(getattr(bound, "le", None) == metadata.MAX_VISIBILITY_SECONDS for bound in bounds)
    assert sam["Globals"]["Function"]["Environment"]["Variables"]["CLAIM_SECONDS"] == {"Ref": "ClaimSeconds"}


def test_every_parameter_is_grouped_for_the_console_and_described_in_the_readme(sam: dict) -> None:
    parameters = set(sam["Parameters"])
    groups = sam["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    assert {name for group in groups for name in group["Parameters"]} == parameters
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| `?([^`|]*)`? \|", readme, re.MULTILINE))
    assert rows.keys() == parameters
    for name, default in rows.items():
        expected = str(sam["Parameters"][name].get("Default", "")) or "(empty)"
        assert default.strip() == expected, name


@pytest.mark.parametrize(
    "queue", ["IngestQueue", "IngestDLQ", "IngestRuleDLQ", "InvalidQueue", "FailureDestinationQueue"]
)
def test_queue_is_encrypted_and_dead_letters_are_kept_14_days(resources: dict, queue: str) -> None:
    p = props(resources, queue)
    assert p["KmsMasterKeyId"] == {"Ref": "DataKey"}
    if queue != "IngestQueue":
        assert p["MessageRetentionPeriod"] == 14 * 24 * 3600


def test_ingest_rule_sends_to_the_queue_with_its_own_dlq_and_the_queue_admits_only_it(
    resources: dict,
) -> None:
    rule = props(resources, "IngestRule")
    (target,) = [t for t in rule["Targets"] if t["Arn"] == {"Fn::GetAtt": ["IngestQueue", "Arn"]}]
    # The other target only wakes the dispatcher: a lost wake is the schedule's, so no DLQ there.
    (wake,) = [t for t in rule["Targets"] if t is not target]
    assert wake["Arn"] == {"Fn::GetAtt": ["WakeDispatcherFunction", "Arn"]}
    assert "DeadLetterConfig" not in wake
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["IngestRuleDLQ", "Arn"]}}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] > 0
    for queue in ("IngestQueue", "IngestRuleDLQ"):
        policy = props(resources, f"{queue}Policy")
        assert policy["Queues"] == [{"Ref": queue}]
        (statement,) = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
        assert statement["Principal"] == {"Service": "events.amazonaws.com"}
        assert statement["Action"] == "sqs:SendMessage"
        assert statement["Condition"] == {
            "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["IngestRule", "Arn"]}}
        }


def resolved(node: Any, values: dict[str, str]) -> Any:
    """Ref and string Fn::Sub replaced with `values` (enough for the rule's pattern)."""
    if isinstance(node, dict):
        if "Ref" in node:
            return values[node["Ref"]]
        if "Fn::Sub" in node:
            return PLACEHOLDER.sub(lambda m: values[m.group(1)], node["Fn::Sub"])
        return {k: resolved(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [resolved(item, values) for item in node]
    return node


@pytest.mark.parametrize(
    ("prefix", "suffix", "bucket", "key", "matches"),
    [
        ("", ".csv", "sluice-raw-example", "incoming/orders-valid.csv", True),
        ("", ".csv", "sluice-raw-example", "incoming/orders-valid.csv.tmp", False),
        ("", ".csv", "another-bucket", "incoming/orders-valid.csv", False),
        ("incoming/", ".csv", "sluice-raw-example", "incoming/orders-valid.csv", True),
        ("incoming/", ".csv", "sluice-raw-example", "archive/orders-valid.csv", False),
        ("", "", "sluice-raw-example", "any/key.txt", True),
    ],
)
def test_ingest_rule_matches_created_objects_by_bucket_prefix_and_suffix(  # noqa: PLR0917 (parametrized)
    resources: dict, prefix: str, suffix: str, bucket: str, key: str, matches: bool
) -> None:
    # GIVEN the rule's pattern with the stack's bucket and the key filters as parameters
    values = {"RawBucket": "sluice-raw-example", "RawKeyPrefix": prefix, "RawKeySuffix": suffix}
    pattern = EventPattern.load(json.dumps(resolved(props(resources, "IngestRule")["EventPattern"], values)))
    # WHEN the sample S3 "Object Created" event names this bucket and key
    event = json.loads((REPO / "events" / "eventbridge-s3-object-created.json").read_text())
    event["detail"]["bucket"]["name"] = bucket
    event["detail"]["object"]["key"] = key
    # THEN it is routed to IngestQueue only when all three match
    assert pattern.matches_event(event) is matches


# ------------------------------------------------------------------------------------------ state machine


def test_dispatcher_is_a_logged_traced_standard_workflow_woken_by_arrivals(resources: dict) -> None:
    machine = props(resources, "DispatcherStateMachine")
    assert machine["StateMachineType"] == "STANDARD"
    assert machine["TracingConfiguration"] == {"Enabled": True}
    logging = machine["LoggingConfiguration"]
    assert logging["Level"] == "ALL"
    assert logging["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"] == {
        "Fn::GetAtt": ["DispatcherLogGroup", "Arn"]
    }
    assert props(resources, "DispatcherLogGroup")["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    # Nothing starts it on a clock: a routed file's event wakes it (the IngestRule's second
    # target), and the schedule wakes it only as a safety net, through the same function.
    wake = {"Fn::GetAtt": ["WakeDispatcherFunction", "Arn"]}
    assert not any(
        target["Arn"] == {"Ref": "DispatcherStateMachine"}
        for resource in resources.values()
        if resource["Type"] == "AWS::Events::Rule"
        for target in resource["Properties"].get("Targets", [])
    )
    assert wake in [target["Arn"] for target in props(resources, "IngestRule")["Targets"]]
    schedule = props(resources, "WakeDispatcherFunctionDispatchSchedule")
    assert schedule["ScheduleExpression"] == {"Ref": "DispatchSchedule"}
    assert schedule["Targets"][0]["Arn"] == wake
    permission = props(resources, "WakeDispatcherPermission")
    assert permission["SourceArn"] == {"Fn::GetAtt": ["IngestRule", "Arn"]}
    environment = props(resources, "WakeDispatcherFunction")["Environment"]["Variables"]
    assert environment["DISPATCHER_STATE_MACHINE_ARN"] == {"Ref": "DispatcherStateMachine"}


def test_every_placeholder_in_the_definition_is_substituted_and_every_substitution_used(
    cfn: dict, resources: dict
) -> None:
    used = set(PLACEHOLDER.findall(definition_of(cfn)))
    given = props(resources, "DispatcherStateMachine")["DefinitionSubstitutions"]
    assert used == given.keys()
    # ARNs and names come from the stack; the numbers from parameters or commented arithmetic.
    assert references(given) <= resources.keys() | load_sam_template()["Parameters"].keys() | {
        "AWS::Partition"
    }


def test_every_transition_names_a_state_of_its_scope_and_every_state_is_reachable(definition: dict) -> None:
    for scope in scopes(definition):
        assert scope.start_at in scope.states, scope.path
        for name, state in scope.states.items():
            missing = {target for target in targets(state) if target not in scope.states}
            assert not missing, f"{scope.path}/{name} goes to unknown {missing}"
            assert is_terminal(state) or "Next" in state or state["Type"] == "Choice", f"{scope.path}/{name}"
        unreachable = scope.states.keys() - reachable(scope)
        assert not unreachable, f"{scope.path}: unreachable {unreachable}"


def test_definition_is_jsonpath_only_without_nested_workflows(definition: dict) -> None:
    keys = set(keys_anywhere(definition))
    assert not keys & {"QueryLanguage", "Assign", "Arguments", "Output", "Variables"}
    assert not any(s.startswith("{%") for s in strings_anywhere(definition)), "JSONata expression"
    resources = {state.get("Resource", "") for _, state in all_states(definition)}
    assert not any("states:startExecution" in r for r in resources)
    assert not any(re.search(r"\$\.[\w.]*\[\d+\]", s) for s in strings_anywhere(definition)), "array index"


def test_every_lambda_task_retries_transient_errors_after_2_4_and_8_seconds(definition: dict) -> None:
    lambda_tasks = {
        n: s for n, s in all_states(definition) if s.get("Resource", "").endswith(":lambda:invoke")
    }
    assert len(lambda_tasks) == 11  # six functions, the lease from five places
    for name, state in lambda_tasks.items():
        retriers = [r for r in state["Retry"] if set(r["ErrorEquals"]) >= LAMBDA_TRANSIENT]
        assert len(retriers) == 1, name
        (retrier,) = retriers
        assert (retrier["IntervalSeconds"], retrier["BackoffRate"], retrier["MaxAttempts"]) == (2, 2, 3), name
    assert any(
        "IdempotencyAlreadyInProgressError" in r["ErrorEquals"]
        for r in lambda_tasks["Transform and deliver"]["Retry"]
    )


def test_every_task_of_a_file_catches_into_the_failure_path(definition: dict) -> None:
    (item,) = [s for s in scopes(definition) if s.path == "top/Process batch"]
    for name, state in item.states.items():
        if state["Type"] in {"Task", "Parallel"}:
            catchers = [c for c in state.get("Catch", []) if c["ErrorEquals"] == ["States.ALL"]]
            assert len(catchers) == 1, name
    # a failed file never fails the batch: every way out of the item succeeds
    assert all(s["Type"] != "Fail" for s in item.states.values())


def test_map_concurrency_and_items_come_from_the_live_setting_and_the_plan(definition: dict) -> None:
    batch = definition["States"]["Process batch"]
    assert batch["MaxConcurrencyPath"] == "$.concurrency"
    assert batch["ItemsPath"] == "$.plan.items"
    assert batch["ResultPath"] == "$.batch"  # the items' progress only, for the history count
    assert definition["States"]["Receive messages"]["Parameters"]["MaxNumberOfMessages.$"] == "$.concurrency"


def test_the_message_is_deleted_only_on_terminal_paths(definition: dict) -> None:
    (item,) = [s for s in scopes(definition) if s.path == "top/Process batch"]
    into_delete = {name for name, state in item.states.items() if "Delete message" in targets(state)}
    assert into_delete == {
        "What does registration say?",  # skip: finished before
        "Announce invalid file",  # invalid: routed to InvalidQueue
        "Publish outcome",  # finished now
        "Send continuation",  # yielded: the continuation carries the file on
    }


# ------------------------------------------------------------------------------------------ outputs


def test_outputs_name_everything_a_person_or_tool_needs(cfn: dict) -> None:
    expected = {
        "RawBucketName",
        "ProcessedBucketName",
        "IngestQueueUrl",
        "IngestDLQUrl",
        "InvalidQueueUrl",
        "IngestRuleDLQUrl",
        "FailureDestinationQueueUrl",
        "MetadataTableName",
        "ControlTableName",
        "IdempotencyTableName",
        "DispatcherStateMachineArn",
        "ConcurrencyParameterName",
        "NotificationTopicArn",
        "AlertTopicArn",
        "DashboardName",
        *(f"{name}Name" for name in FUNCTIONS),
    }
    assert expected <= cfn["Outputs"].keys()
    for name in FUNCTIONS:
        assert cfn["Outputs"][f"{name}Name"]["Value"] == {"Ref": name}
    assert cfn["Outputs"]["DashboardName"]["Value"] == {"Ref": "OperationsDashboard"}
    # the Firehose streams' names, only where they exist
    conditional = {
        "DynatraceDeliveryStreamName": "DynatraceOn",
        "DynatraceMetricStreamName": "DynatraceOn",
        "SplunkDeliveryStreamName": "SplunkOn",
        "DeliveryBackupBucketName": "ShippingOn",
    }
    assert {name: cfn["Outputs"][name].get("Condition") for name in conditional} == conditional


def overrides_of(deploy: dict) -> dict[str, str]:
    """samconfig's "Key=value" items, the quotes around a value with spaces removed as the SAM CLI does."""
    return {
        key: value.strip('"') for key, value in (item.split("=", 1) for item in deploy["parameter_overrides"])
    }


def test_samconfig_has_every_environment_deployable(sam: dict) -> None:
    config = tomllib.loads((REPO / "samconfig.toml").read_text())
    assert config["version"] == 0.1
    parameters = sam["Parameters"].keys()
    for env in ("default", "dev", "staging", "prod", "local"):
        deploy = config[env]["deploy"]["parameters"]
        assert deploy["capabilities"] == "CAPABILITY_IAM", env
        assert deploy["resolve_s3"] is True, env
        overrides = overrides_of(deploy)
        assert overrides.keys() <= parameters, f"{env}: unknown {overrides.keys() - parameters}"
        assert config[env]["global"]["parameters"]["stack_name"].startswith("sluice-"), env
    assert config["prod"]["deploy"]["parameters"]["confirm_changeset"] is True
    local = overrides_of(config["local"]["deploy"]["parameters"])
    # CloudFormation's shortest rate (the template's default); the offline stack runs its own period
    assert "DispatchSchedule" not in local
    assert sam["Parameters"]["DispatchSchedule"]["Default"] == "rate(1 minute)"
    assert (local["MaxStaggerSeconds"], local["RetryDelaySeconds"], local["ExecutionTimeBudgetSeconds"]) == (
        "2",
        "2",
        "120",
    )


def test_samconfig_gives_every_deployed_environment_its_alert_email_and_never_a_secret(sam: dict) -> None:
    config = tomllib.loads((REPO / "samconfig.toml").read_text())
    for env in ("default", "dev", "staging", "prod"):
        overrides = overrides_of(config[env]["deploy"]["parameters"])
        assert {
            "SmtpHost",
            "SmtpPort",
            "SmtpSecurity",
            "AlertSender",
            "AlertRecipients",
        } <= overrides.keys(), env
        assert overrides["SmtpSecurity"] in ("starttls", "tls"), env  # never plain text to a real server
        for name, value in overrides.items():
            spec = sam["Parameters"][name]
            assert re.fullmatch(spec.get("AllowedPattern", ".*"), value), (env, name)
            assert value in [str(v) for v in spec.get("AllowedValues", [value])], (env, name)
    # the offline stack's SMTP sink: loopback, no TLS (it sets the port it listens on itself)
    local = overrides_of(config["local"]["deploy"]["parameters"])
    assert (local["SmtpHost"], local["SmtpSecurity"]) == ("127.0.0.1", "none")
    assert "SmtpPort" not in local
    # Dynatrace and Splunk stay off until someone gives their endpoints and secrets
    for env in ("default", "dev", "staging", "prod", "local"):
        overrides = overrides_of(config[env]["deploy"]["parameters"])
        assert not overrides.keys() & {n for n in sam["Parameters"] if n.startswith(("Dynatrace", "Splunk"))}


def test_events_of_the_state_machine_entry_points_parse(tmp_path: Path) -> None:
    for name in ("dispatcher-round", "schedule", "validate-object", "process-object", "write-output"):
        event = json.loads((REPO / "events" / f"{name}.json").read_text())
        assert isinstance(event, dict), name
        assert event, name
    process = json.loads((REPO / "events" / "process-object.json").read_text())
    assert process["object"]["id"] == "sluice-raw-example/incoming/orders-valid.csv#3HL4kqtJlcpXroDTDmJ"
    assert (process["attempt"], process["segment"]) == (1, 0)


# ------------------------------------------------------------------------------ alarms (issue 5)


def watched(alarm: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(namespace, metric, dimension value) of every metric an alarm reads."""
    if "MetricName" in alarm:
        for dimension in alarm["Dimensions"]:
            yield alarm["Namespace"], alarm["MetricName"], dimension["Value"]
    for query in alarm.get("Metrics", []):
        if "MetricStat" in query:
            metric = query["MetricStat"]["Metric"]
            for dimension in metric["Dimensions"]:
                yield metric["Namespace"], metric["MetricName"], dimension["Value"]


@pytest.fixture(scope="module")
def alarms(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: r["Properties"] for k, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}


def alarms_on(alarms: dict[str, dict], namespace: str, metric: str, dimension: Any) -> list[dict]:
    return [a for a in alarms.values() if (namespace, metric, dimension) in list(watched(a))]


def test_every_alarm_goes_to_the_alert_topic(alarms: dict[str, dict]) -> None:
    assert len(alarms) == 13 + 3 * len(FUNCTIONS)  # the components below, three per function
    for name, alarm in alarms.items():
        assert alarm["AlarmActions"] == [{"Ref": "AlertTopic"}], name
        assert alarm["OKActions"] == [{"Ref": "AlertTopic"}], name
        assert alarm["TreatMissingData"] == "notBreaching", name


def title_of(alarm: dict[str, Any]) -> str:
    description = alarm["AlarmDescription"]
    text = description["Fn::Sub"] if isinstance(description, dict) else description
    return text.split("\n", 1)[0]


def test_issue_5_every_component_has_its_alarm(alarms: dict[str, dict]) -> None:
    # GIVEN the components issue 5 lists, each with the alarm title docs/operations.md uses
    expected = {
        "IngestQueue depth": ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "IngestQueue"),
        "IngestQueue oldest message age": ("AWS/SQS", "ApproximateAgeOfOldestMessage", "IngestQueue"),
        "IngestDLQ not empty": ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "IngestDLQ"),
        "IngestRuleDLQ not empty": ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "IngestRuleDLQ"),
        "FailureDestinationQueue not empty": (
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            "FailureDestinationQueue",
        ),
        "Dispatcher executions failed": ("AWS/States", "ExecutionsFailed", "DispatcherStateMachine"),
        "Dispatcher executions timed out": ("AWS/States", "ExecutionsTimedOut", "DispatcherStateMachine"),
        "Dispatcher executions throttled": ("AWS/States", "ExecutionThrottled", "DispatcherStateMachine"),
        "Downstream API throttling": ("Sluice", "ApiThrottles", None),  # dimension service=sluice
        "Downstream API unhealthy": ("Sluice", "DownstreamUnhealthy", None),
        "Rows rejected": ("Sluice", "RowsRejected", None),
        "Dynatrace metric delivery behind": (
            "AWS/Firehose",
            "DeliveryToHttpEndpoint.DataFreshness",
            "DynatraceDeliveryStream",
        ),
        "Splunk log delivery behind": (
            "AWS/Firehose",
            "DeliveryToSplunk.DataFreshness",
            "SplunkDeliveryStream",
        ),
    }
    for name in FUNCTIONS:
        expected[f"{name} errors"] = ("AWS/Lambda", "Errors", name)
        expected[f"{name} throttled"] = ("AWS/Lambda", "Throttles", name)
        expected[f"{name} duration near timeout"] = ("AWS/Lambda", "Duration", name)
    # WHEN the transformed template's alarms are read by their titles
    by_title = {title_of(alarm): alarm for alarm in alarms.values()}
    # THEN there is exactly one alarm per component, on that component's metric
    assert len(by_title) == len(alarms), "two alarms share a title"
    assert by_title.keys() == expected.keys()
    for title, (namespace, metric, component) in expected.items():
        read = {
            (ns, m, frozenset(references(value) if isinstance(value, dict) else {value}))
            for ns, m, value in watched(by_title[title])
        }
        assert (namespace, metric, frozenset({component or "sluice"})) in read, title


def test_each_alarm_title_becomes_the_email_subject_and_names_a_runbook_section(
    sam: dict, alarms: dict[str, dict]
) -> None:
    headings = set(re.findall(r"^### (.+)$", (REPO / "docs" / "operations.md").read_text(), re.MULTILINE))
    defaults = parameter_values(sam)
    for alarm in alarms.values():
        title = title_of(alarm)
        # one runbook section serves every function's alarm of a kind ("Function errors")
        section = re.sub("|".join(FUNCTIONS), "Function", title)
        assert section in headings, title
        # the description as CloudFormation resolves it, in the message CloudWatch publishes
        description = alarm["AlarmDescription"]
        text = (
            SUB_VARIABLE.sub(lambda m: defaults[m.group(1)], description["Fn::Sub"])
            if isinstance(description, dict)
            else description
        )
        message = {"AlarmName": "sluice-dev-X", "AlarmDescription": text, "NewStateValue": "ALARM"}
        alert = render_alert(Notification(message_id="m-1", message=json.dumps(message)))
        assert alert.subject == f"[Sluice ALARM] {title}"
        # the lines after the title are what it means, each one in the email
        meaning = text.split("\n")[1:]
        assert meaning, title
        assert all(line.strip() in alert.body for line in meaning), title


def test_queues_are_watched_for_depth_age_and_dead_letters(alarms: dict[str, dict]) -> None:
    ingest = {"Fn::GetAtt": ["IngestQueue", "QueueName"]}
    (depth,) = alarms_on(alarms, "AWS/SQS", "ApproximateNumberOfMessagesVisible", ingest)
    assert depth["Threshold"] == {"Ref": "AlarmQueueDepthThreshold"}
    (age,) = alarms_on(alarms, "AWS/SQS", "ApproximateAgeOfOldestMessage", ingest)
    assert age["Threshold"] == {"Ref": "AlarmOldestMessageAgeSeconds"}
    for queue in ("IngestDLQ", "IngestRuleDLQ", "FailureDestinationQueue"):
        name = {"Fn::GetAtt": [queue, "QueueName"]}
        (not_empty,) = alarms_on(alarms, "AWS/SQS", "ApproximateNumberOfMessagesVisible", name)
        assert (not_empty["ComparisonOperator"], not_empty["Threshold"]) == ("GreaterThanThreshold", 0), queue


@pytest.mark.parametrize(
    ("alarm_id", "condition", "stream"),
    [
        ("DynatraceDeliveryFreshnessAlarm", "DynatraceOn", "DynatraceDeliveryStream"),
        ("SplunkDeliveryFreshnessAlarm", "SplunkOn", "SplunkDeliveryStream"),
    ],
)
def test_each_delivery_stream_is_watched_only_when_it_exists(
    resources: dict, alarm_id: str, condition: str, stream: str
) -> None:
    # AWS's recommended Firehose alarm: the oldest record held longer than 15 minutes
    assert resources[alarm_id]["Condition"] == resources[stream]["Condition"] == condition
    alarm = resources[alarm_id]["Properties"]
    assert alarm["MetricName"].endswith(".DataFreshness")
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 900)


@pytest.mark.parametrize("metric", ["ExecutionsFailed", "ExecutionsTimedOut", "ExecutionThrottled"])
def test_dispatcher_executions_are_watched(alarms: dict[str, dict], metric: str) -> None:
    (alarm,) = alarms_on(alarms, "AWS/States", metric, {"Ref": "DispatcherStateMachine"})
    assert alarm["Threshold"] == 0


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_function_errors_throttles_and_duration_are_watched(
    sam: dict, alarms: dict[str, dict], logical_id: str
) -> None:
    function = {"Ref": logical_id}
    (errors,) = alarms_on(alarms, "AWS/Lambda", "Errors", function)
    assert (errors["Threshold"]) == {"Ref": "AlarmFunctionErrorRatePercent"}
    assert "100 * errors / invocations" in next(q["Expression"] for q in errors["Metrics"] if q["ReturnData"])
    (throttles,) = alarms_on(alarms, "AWS/Lambda", "Throttles", function)
    assert throttles["Threshold"] == 0
    (duration,) = alarms_on(alarms, "AWS/Lambda", "Duration", function)
    assert duration["Threshold"] == {"Ref": "AlarmDurationPercentOfTimeout"}
    # the expression divides by the function's own timeout: keep them in step
    timeout = sam["Resources"][logical_id]["Properties"].get("Timeout", sam["Globals"]["Function"]["Timeout"])
    expression = next(q["Expression"] for q in duration["Metrics"] if q["ReturnData"])
    assert expression == f"100 * duration / {timeout * 1000}"


def test_downstream_throttle_rate_is_watched(alarms: dict[str, dict]) -> None:
    (alarm,) = alarms_on(alarms, "Sluice", "ApiThrottles", "sluice")
    assert alarm["Threshold"] == {"Ref": "AlarmApiThrottleRatePercent"}
    assert {metric for _, metric, _ in watched(alarm)} == {"ApiThrottles", "ApiRetries", "RowsDelivered"}


# ------------------------------------------------------------------------------ dashboard (issue 5)


@pytest.fixture(scope="module")
def dashboard(resources: dict[str, Any]) -> dict[str, Any]:
    """The dashboard body with every ${...} replaced by its own name, as JSON."""
    body = props(resources, "OperationsDashboard")["DashboardBody"]["Fn::Sub"]
    return json.loads(SUB_VARIABLE.sub(lambda m: m.group(1), body))


def dashboard_metrics(dashboard: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(namespace, metric, dimension value) of every metric a widget shows."""
    found = set()
    for widget in dashboard["widgets"]:
        for metric in widget["properties"].get("metrics", []):
            if isinstance(metric[0], str):
                namespace, name, _, value, *_ = metric
                found.add((namespace, name, value))
    return found


def test_dashboard_names_only_this_stacks_resources(resources: dict) -> None:
    body = props(resources, "OperationsDashboard")["DashboardBody"]["Fn::Sub"]
    named = {name.split(".")[0] for name in SUB_VARIABLE.findall(body)}
    assert named <= resources.keys() | PSEUDO_PARAMETERS
    # a conditional resource would break the dashboard of a stack that has it off
    assert not any(resources[name].get("Condition") for name in named - PSEUDO_PARAMETERS)


def test_dashboard_shows_the_dynatrace_dashboards_metrics_and_the_concurrency_setting(
    dashboard: dict,
) -> None:
    # GIVEN the metric keys of the Dynatrace dashboard ("cloud.aws.sluice.rowsDeliveredBy...")
    tiles = json.loads((REPO / "dashboards" / "dynatrace-dashboard.json").read_text())["tiles"]
    keys = {
        match
        for tile in tiles
        for query in tile.get("queries", [])
        for match in re.findall(r"cloud\.aws\.(\w+)\.(\w+?)By", query["metricSelector"])
    }
    namespaces = {"sluice": "Sluice", "sqs": "AWS/SQS", "states": "AWS/States", "lambda": "AWS/Lambda"}
    wanted = {(namespaces[ns], metric[0].upper() + metric[1:]) for ns, metric in keys}
    # THEN the CloudWatch dashboard shows each of them, and the live concurrency setting
    shown = {(namespace, metric) for namespace, metric, _ in dashboard_metrics(dashboard)}
    assert wanted <= shown, wanted - shown
    sluice = ("FilesReceived", "RowsDelivered", "RowsRejected", "ApiLatency", "ApiRetries", "ApiThrottles")
    assert {("Sluice", name) for name in (*sluice, "ConcurrencySetting")} <= shown


def test_both_dashboards_show_the_rate_limiters_state_and_decisions(dashboard: dict) -> None:
    # GIVEN the metrics sluice/ratelimit.py emits (the rate in force, its steps down, the lateness
    # paced for and what it is made of, slots forfeited), and the 429s that drive them
    wanted = {*LIMITER_METRICS, "ApiThrottles"}
    # THEN the CloudWatch dashboard and the Dynatrace one show each of them
    shown = {metric for namespace, metric, _ in dashboard_metrics(dashboard) if namespace == "Sluice"}
    assert wanted <= shown, wanted - shown
    tiles = json.loads((REPO / "dashboards" / "dynatrace-dashboard.json").read_text())["tiles"]
    selectors = " ".join(q["metricSelector"] for tile in tiles for q in tile.get("queries", []))
    in_dynatrace = {name for name in wanted if f"cloud.aws.sluice.{name[0].lower()}{name[1:]}By" in selectors}
    assert in_dynatrace == wanted, wanted - in_dynatrace


def test_dashboard_shows_every_queue_the_dispatcher_and_every_function(
    dashboard: dict, alarms: dict, resources: dict
) -> None:
    shown = dashboard_metrics(dashboard)
    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "IngestQueue.QueueName") in shown
    assert ("AWS/SQS", "ApproximateAgeOfOldestMessage", "IngestQueue.QueueName") in shown
    for queue in ("IngestDLQ", "IngestRuleDLQ", "FailureDestinationQueue"):
        assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible", f"{queue}.QueueName") in shown
    for metric in ("ExecutionsFailed", "ExecutionsTimedOut", "ExecutionThrottled", "ExecutionsAborted"):
        assert ("AWS/States", metric, "DispatcherStateMachine") in shown
    for name in FUNCTIONS:
        for metric in ("Errors", "Invocations", "Throttles", "Duration"):
            assert ("AWS/Lambda", metric, name) in shown, (name, metric)
    (alarm_widget,) = [w for w in dashboard["widgets"] if w["type"] == "alarm"]
    # every alarm the stack always has; a Dynatrace or Splunk delivery alarm exists only with its
    # stream, and the dashboard's body cannot name an alarm that may not exist
    always = {name for name in alarms if "Condition" not in resources[name]}
    assert always == alarms.keys() - {"DynatraceDeliveryFreshnessAlarm", "SplunkDeliveryFreshnessAlarm"}
    assert {arn.removesuffix(".Arn") for arn in alarm_widget["properties"]["alarms"]} == always


# ------------------------------------------------------------------------ Dynatrace and Splunk (issue 5)


DYNATRACE_SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:dt-AbCdEf"
HEC_SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:hec-AbCdEf"
SHIPPING_TYPES = {
    "AWS::KinesisFirehose::DeliveryStream",
    "AWS::CloudWatch::MetricStream",
    "AWS::Logs::SubscriptionFilter",
}


@pytest.mark.parametrize(
    ("given", "on"),
    [
        ({}, set()),
        ({"DynatraceEndpointUrl": "https://abc12345.live.dynatrace.com"}, set()),
        ({"DynatraceApiTokenSecretArn": DYNATRACE_SECRET}, set()),
        (
            {
                "DynatraceEndpointUrl": "https://abc12345.live.dynatrace.com",
                "DynatraceApiTokenSecretArn": DYNATRACE_SECRET,
            },
            {"DynatraceOn", "ShippingOn"},
        ),
        ({"SplunkHecUrl": "https://http-inputs-firehose-acme.splunkcloud.com:443"}, set()),
        (
            {
                "SplunkHecUrl": "https://http-inputs-firehose-acme.splunkcloud.com:443",
                "SplunkHecTokenSecretArn": HEC_SECRET,
            },
            {"SplunkOn", "ShippingOn"},
        ),
    ],
)
def test_dynatrace_and_splunk_are_on_only_when_both_of_their_parameters_are_given(
    sam: dict, resources: dict, given: dict[str, str], on: set[str]
) -> None:
    conditions = sam["Conditions"]
    values = parameter_values(sam, **given)
    assert {name for name in SHIPPING_CONDITIONS if evaluate(conditions[name], conditions, values)} == on
    # what a stack deployed with these values would have
    present = {
        r["Type"]
        for r in resources.values()
        if r.get("Condition") is None or evaluate({"Condition": r["Condition"]}, conditions, values)
    }
    assert bool(present & SHIPPING_TYPES) is bool(on)


def test_every_shipping_resource_and_output_is_under_its_condition(cfn: dict, resources: dict) -> None:
    conditional = {k: r["Condition"] for k, r in resources.items() if r.get("Condition")}
    assert set(conditional.values()) <= SHIPPING_CONDITIONS | OPTIONAL_CONDITIONS
    for name, resource in resources.items():
        if resource["Type"] in SHIPPING_TYPES:
            assert name in conditional, name
        # an unconditional resource never names a conditional one (it would not deploy with it off)
        # but under an Fn::If on that one's condition
        if name not in conditional:
            assert not unconditional_references(resource, conditional) & conditional.keys(), name
    assert conditional["DynatraceDeliveryStream"] == conditional["DynatraceMetricStream"] == "DynatraceOn"
    assert conditional["SplunkDeliveryStream"] == "SplunkOn"
    assert conditional["DeliveryBackupBucket"] == "ShippingOn"
    for name, output in cfn["Outputs"].items():
        if references(output["Value"]) & conditional.keys():
            assert output.get("Condition") == conditional[next(iter(references(output["Value"])))], name


def test_dynatrace_gets_the_metric_stream_through_firehose_with_its_token_from_secrets_manager(
    resources: dict,
) -> None:
    stream = props(resources, "DynatraceMetricStream")
    assert stream["OutputFormat"] == "opentelemetry0.7"  # what Dynatrace's Firehose endpoint reads
    assert {f["Namespace"] for f in stream["IncludeFilters"]} == {
        "Sluice",
        "AWS/SQS",
        "AWS/Lambda",
        "AWS/States",
    }
    assert stream["FirehoseArn"] == {"Fn::GetAtt": ["DynatraceDeliveryStream", "Arn"]}
    assert allowed(resources["MetricStreamRole"], "firehose:PutRecordBatch") == {"DynatraceDeliveryStream"}
    destination = props(resources, "DynatraceDeliveryStream")["HttpEndpointDestinationConfiguration"]
    assert destination["EndpointConfiguration"]["Url"] == {"Ref": "DynatraceIngestUrl"}
    assert "AccessKey" not in destination["EndpointConfiguration"]
    assert destination["SecretsManagerConfiguration"] == {
        "Enabled": True,
        "SecretARN": {"Ref": "DynatraceApiTokenSecretArn"},
        "RoleARN": {"Fn::GetAtt": ["DynatraceDeliveryRole", "Arn"]},
    }
    attributes = {
        a["AttributeName"]: a["AttributeValue"]
        for a in destination["RequestConfiguration"]["CommonAttributes"]
    }
    assert attributes["dt-url"] == {"Ref": "DynatraceEndpointUrl"}
    assert destination["S3BackupMode"] == "FailedDataOnly"
    assert_backed_up_encrypted(destination["S3Configuration"], "DynatraceDeliveryRole", "dynatrace/")
    role = resources["DynatraceDeliveryRole"]
    assert allowed(role, "secretsmanager:GetSecretValue") == {"DynatraceApiTokenSecretArn"}
    assert allowed(role, "s3:PutObject") == {"DeliveryBackupBucket"}


def test_splunk_gets_every_log_line_through_firehose_with_its_token_from_secrets_manager(
    resources: dict,
) -> None:
    destination = props(resources, "SplunkDeliveryStream")["SplunkDestinationConfiguration"]
    assert destination["HECEndpoint"] == {"Ref": "SplunkHecUrl"}
    assert "HECToken" not in destination
    assert destination["SecretsManagerConfiguration"] == {
        "Enabled": True,
        "SecretARN": {"Ref": "SplunkHecTokenSecretArn"},
        "RoleARN": {"Fn::GetAtt": ["SplunkDeliveryRole", "Arn"]},
    }
    # CloudWatch Logs sends gzip'd envelopes: Splunk gets the log events themselves
    assert [p["Type"] for p in destination["ProcessingConfiguration"]["Processors"]] == [
        "Decompression",
        "CloudWatchLogProcessing",
    ]
    assert destination["S3BackupMode"] == "FailedEventsOnly"
    assert_backed_up_encrypted(destination["S3Configuration"], "SplunkDeliveryRole", "splunk/")
    role = resources["SplunkDeliveryRole"]
    assert allowed(role, "secretsmanager:GetSecretValue") == {"SplunkHecTokenSecretArn"}
    assert allowed(role, "s3:PutObject") == {"DeliveryBackupBucket"}
    logs_role = props(resources, "LogsToSplunkRole")
    (trust,) = logs_role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": {"Fn::Sub": "logs.${AWS::Region}.amazonaws.com"}}
    assert allowed(resources["LogsToSplunkRole"], "firehose:PutRecordBatch") == {"SplunkDeliveryStream"}


def assert_backed_up_encrypted(s3: dict[str, Any], role: str, prefix: str) -> None:
    assert s3["BucketARN"] == {"Fn::GetAtt": ["DeliveryBackupBucket", "Arn"]}
    assert s3["RoleARN"] == {"Fn::GetAtt": [role, "Arn"]}
    assert s3["Prefix"] == prefix
    assert s3["EncryptionConfiguration"] == {
        "KMSEncryptionConfig": {"AWSKMSKeyARN": {"Fn::GetAtt": ["DataKey", "Arn"]}}
    }


def test_the_backup_bucket_is_encrypted_private_and_expires_with_the_logs(resources: dict) -> None:
    bucket = props(resources, "DeliveryBackupBucket")
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": {"Fn::GetAtt": ["DataKey", "Arn"]},
    }
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    (lifecycle,) = bucket["LifecycleConfiguration"]["Rules"]
    assert lifecycle["ExpirationInDays"] == {"Ref": "LogRetentionDays"}
    (deny,) = props(resources, "DeliveryBackupBucketPolicy")["PolicyDocument"]["Statement"]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


@pytest.mark.parametrize("owner", LOG_GROUPS)
def test_every_log_group_is_subscribed_to_splunk_when_splunk_is_on(resources: dict, owner: str) -> None:
    filters = [
        r
        for r in resources.values()
        if r["Type"] == "AWS::Logs::SubscriptionFilter"
        and r["Properties"]["LogGroupName"] == {"Ref": LOG_GROUPS[owner]}
    ]
    assert len(filters) == 1
    (subscription,) = filters
    assert subscription["Condition"] == "SplunkOn"
    assert subscription["Properties"]["FilterPattern"] == ""  # every line
    assert subscription["Properties"]["DestinationArn"] == {"Fn::GetAtt": ["SplunkDeliveryStream", "Arn"]}
    assert subscription["Properties"]["RoleArn"] == {"Fn::GetAtt": ["LogsToSplunkRole", "Arn"]}
