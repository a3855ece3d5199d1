"""Least privilege: each role may do exactly what its code calls, on what it touches (issue 13).

GRANTS is the one table of what every role's code calls and the permission each call needs:
per row, the calls (boto3 operations of the handler and the sluice modules it imports; Task
resources for the state machine), the IAM actions, the resources, the condition that narrows
them. Three checks hold it to both sides:

- the transformed template grants each role exactly the table's rows, nothing more, nothing less;
- the calls found in the code (an AST scan of the handler and its sluice modules; the ASL's Tasks)
  are exactly the table's calls, less the ones written under NOT_CALLED with the reason;
- no row grants an action that none of its calls needs (OPERATION_ACTIONS: what AWS asks of each).

Resources are written as the template names them, shortened: `RawBucket` for its Arn (or Ref),
`RawBucket/parts/*` for `${RawBucket.Arn}/parts/*`, an `arn:…:` prefix dropped.
"""

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore import xform_name
from sam_transform import REPO, definition_of, load_sam_template, transform_template

from sluice.health import HEALTH_KEY
from sluice.lease import LEASE_KEY
from sluice.ratelimit import BUCKET_KEY
from sluice.settings import IDEMPOTENCY_KEY_PREFIXES


@dataclass(frozen=True)
class Row:
    calls: tuple[str, ...]  # boto3 operations, or "task@Target" for the state machine
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    condition: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (operator, key, values)


def via(*services: str) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    return (
        ("StringEquals", "kms:ViaService", tuple(f"{s}.${{AWS::Region}}.amazonaws.com" for s in services)),
    )


def leading(operator: str, *keys: str) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    return ((operator, "dynamodb:LeadingKeys", keys),)


def own_idempotency_records(function: str) -> Row:
    # Powertools idempotency: put (in progress), update (done), delete (failed), get (a clash)
    return Row(
        ("idempotent",),
        ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"),
        ("IdempotencyTable",),
        leading("ForAllValues:StringLike", f"{IDEMPOTENCY_KEY_PREFIXES[function]}#*"),
    )


# Reading an encrypted queue, topic, bucket or table needs kms:Decrypt; writing one needs
# kms:GenerateDataKey and, for SQS and SNS, kms:Decrypt too. Every function also sends its failed
# asynchronous invocations to the encrypted FailureDestinationQueue (Globals EventInvokeConfig).
def data_key(decrypt: tuple[str, ...], encrypt: tuple[str, ...]) -> list[Row]:
    return [
        Row(("kms",), ("kms:Decrypt",), ("DataKey",), via(*decrypt)),
        Row(("kms",), ("kms:GenerateDataKey",), ("DataKey",), via(*encrypt)),
    ]


FAILURE_DESTINATION = Row(("failure destination",), ("sqs:SendMessage",), ("FailureDestinationQueue",))
RAW_OBJECTS = "RawBucket/${RawKeyPrefix}*"  # only keys the ingest rule routes

GRANTS: dict[str, list[Row]] = {
    "DispatcherLeaseFunction": [
        Row(
            ("put_item", "update_item", "delete_item"),
            ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"),
            ("ControlTable",),
            leading("ForAllValues:StringEquals", LEASE_KEY),
        ),
        *data_key(("dynamodb", "sqs"), ("dynamodb", "sqs")),
        FAILURE_DESTINATION,
    ],
    "WakeDispatcherFunction": [
        Row(
            ("get_item", "put_item", "delete_item"),
            ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem"),
            ("ControlTable",),
            leading("ForAllValues:StringEquals", LEASE_KEY),
        ),
        Row(("start_execution",), ("states:StartExecution",), ("DispatcherStateMachine",)),
        Row(("get_queue_attributes",), ("sqs:GetQueueAttributes",), ("IngestQueue",)),
        *data_key(("dynamodb", "sqs"), ("dynamodb", "sqs")),
        FAILURE_DESTINATION,
    ],
    "PlanBatchFunction": [*data_key(("sqs",), ("sqs",)), FAILURE_DESTINATION],
    "RegisterObjectFunction": [
        Row(
            ("put_item", "update_item", "get_item"),
            ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:GetItem"),
            ("MetadataTable",),
        ),
        *data_key(("dynamodb", "sqs"), ("dynamodb", "sqs")),
        FAILURE_DESTINATION,
    ],
    "ValidateObjectFunction": [
        Row(("head_object", "get_object"), ("s3:GetObject", "s3:GetObjectVersion"), (RAW_OBJECTS,)),
        Row(("head_object",), ("s3:ListBucket",), ("RawBucket",)),  # a deleted object: 404, not 403
        *data_key(("s3", "sqs"), ("sqs",)),
        FAILURE_DESTINATION,
    ],
    "ProcessObjectFunction": [
        Row(("head_object", "S3Object"), ("s3:GetObject", "s3:GetObjectVersion"), (RAW_OBJECTS,)),
        Row(
            ("put_object", "get_object", "delete_objects"),
            ("s3:PutObject", "s3:GetObject", "s3:DeleteObject"),
            ("ProcessedBucket/parts/*",),
        ),
        Row(
            ("list_objects_v2",),
            ("s3:ListBucket",),
            ("ProcessedBucket",),
            (("StringLike", "s3:prefix", ("parts/*",)),),
        ),
        Row(
            ("delete_objects",),
            ("s3:DeleteObject",),
            ("ProcessedBucket/results/*", "ProcessedBucket/results-by-id/*"),
        ),
        Row(("update_item", "get_item"), ("dynamodb:UpdateItem", "dynamodb:GetItem"), ("MetadataTable",)),
        Row(
            ("update_item",),
            ("dynamodb:UpdateItem",),
            ("ControlTable",),
            leading("ForAllValues:StringEquals", BUCKET_KEY, HEALTH_KEY),
        ),
        Row(
            ("get_item",),
            ("dynamodb:GetItem",),
            ("ControlTable",),
            leading("ForAllValues:StringEquals", BUCKET_KEY, HEALTH_KEY),
        ),
        own_idempotency_records("ProcessObjectFunction"),
        Row(("publish",), ("sns:Publish",), ("AlertTopic",)),
        # the API's credential (ApiAuthSecretArn), its key only through Secrets Manager
        Row(("SecretsProvider",), ("secretsmanager:GetSecretValue",), ("ApiAuthSecretArn",)),
        Row(("SecretsProvider",), ("kms:Decrypt",), ("ApiAuthKmsKeyArn",), via("secretsmanager")),
        *data_key(("s3", "dynamodb", "sns", "sqs"), ("s3", "dynamodb", "sns", "sqs")),
        FAILURE_DESTINATION,
    ],
    "WriteOutputFunction": [
        Row(
            ("get_object", "upload_part_copy", "delete_objects"),
            ("s3:GetObject", "s3:DeleteObject"),
            ("ProcessedBucket/parts/*",),
        ),
        Row(
            (
                "put_object",
                "create_multipart_upload",
                "upload_part",
                "upload_part_copy",
                "complete_multipart_upload",
                "list_parts",
                "head_object",
            ),
            ("s3:PutObject", "s3:GetObject", "s3:ListMultipartUploadParts"),
            ("ProcessedBucket/results/*", "ProcessedBucket/results-by-id/*"),
        ),
        Row(("list_objects_v2", "head_object"), ("s3:ListBucket",), ("ProcessedBucket",)),
        *data_key(("s3", "sqs"), ("s3", "sqs")),
        FAILURE_DESTINATION,
    ],
    "ScaleConcurrencyFunction": [
        Row(
            ("get_parameter", "put_parameter"),
            ("ssm:GetParameter", "ssm:PutParameter"),
            ("parameter${ConcurrencyParameter}",),
        ),
        Row(("get_queue_attributes",), ("sqs:GetQueueAttributes",), ("IngestQueue",)),
        Row(("get_metric_data",), ("cloudwatch:GetMetricData",), ("*",)),  # no resource-level permissions
        Row(
            ("get_item",),
            ("dynamodb:GetItem",),
            ("ControlTable",),
            leading("ForAllValues:StringEquals", HEALTH_KEY),
        ),
        *data_key(("dynamodb", "sqs"), ("sqs",)),
        FAILURE_DESTINATION,
    ],
    "AlertNotifierFunction": [
        own_idempotency_records("AlertNotifierFunction"),
        Row(
            ("get_secret",), ("secretsmanager:GetSecretValue",), ("SmtpPasswordSecretArn",)
        ),  # HasSmtpPassword
        *data_key(("dynamodb", "sqs"), ("dynamodb", "sqs")),
        FAILURE_DESTINATION,
    ],
    "RedriveFunction": [
        Row(
            (
                "receive_message",
                "delete_message_batch",
                "change_message_visibility",
                "start_message_move_task",
            ),
            ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"),
            ("IngestDLQ", "IngestRuleDLQ"),
        ),
        Row(
            ("receive_message", "delete_message"),
            ("sqs:ReceiveMessage", "sqs:DeleteMessage"),
            ("FailureDestinationQueue",),
        ),
        Row(("send_message_batch", "start_message_move_task"), ("sqs:SendMessage",), ("IngestQueue",)),
        Row(
            ("invoke",),
            ("lambda:InvokeFunction",),
            (
                "AlertNotifierFunction",
                "AlertNotifierFunction:*",
                "ScaleConcurrencyFunction",
                "ScaleConcurrencyFunction:*",
                "WakeDispatcherFunction",
                "WakeDispatcherFunction:*",
            ),
        ),
        Row(
            ("get_queue_attributes",),
            ("sqs:GetQueueAttributes",),
            ("IngestQueue", "IngestDLQ", "IngestRuleDLQ", "FailureDestinationQueue"),
        ),
        Row(
            ("start_message_move_task", "list_message_move_tasks"),
            ("sqs:StartMessageMoveTask", "sqs:ListMessageMoveTasks"),
            ("IngestDLQ",),
        ),
        Row(("list_executions",), ("states:ListExecutions",), ("DispatcherStateMachine",)),
        Row(
            ("describe_execution", "redrive_execution"),
            ("states:DescribeExecution", "states:RedriveExecution"),
            ("execution:${DispatcherStateMachine.Name}:*",),
        ),
        *data_key(("sqs",), ("sqs",)),
        FAILURE_DESTINATION,
    ],
    "DispatcherStateMachine": [
        Row(
            (
                "lambda:invoke@DispatcherLeaseFunction",
                "lambda:invoke@PlanBatchFunction",
                "lambda:invoke@RegisterObjectFunction",
                "lambda:invoke@ValidateObjectFunction",
                "lambda:invoke@ProcessObjectFunction",
                "lambda:invoke@WriteOutputFunction",
            ),
            ("lambda:InvokeFunction",),
            (
                "DispatcherLeaseFunction",
                "PlanBatchFunction",
                "RegisterObjectFunction",
                "ValidateObjectFunction",
                "ProcessObjectFunction",
                "WriteOutputFunction",
            ),
        ),
        Row(
            (
                "aws-sdk:sqs:getQueueAttributes@IngestQueue",
                "aws-sdk:sqs:receiveMessage@IngestQueue",
                "aws-sdk:sqs:changeMessageVisibility@IngestQueue",
                "aws-sdk:sqs:deleteMessage@IngestQueue",
                "sqs:sendMessage@IngestQueue",
            ),
            (
                "sqs:GetQueueAttributes",
                "sqs:ReceiveMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:DeleteMessage",
                "sqs:SendMessage",
            ),
            ("IngestQueue",),
        ),
        Row(("sqs:sendMessage@InvalidQueue",), ("sqs:SendMessage",), ("InvalidQueue",)),
        Row(
            ("sns:publish@NotificationTopic", "sns:publish@AlertTopic"),
            ("sns:Publish",),
            ("NotificationTopic", "AlertTopic"),
        ),
        Row(
            ("aws-sdk:ssm:getParameter@ConcurrencyParameter",),
            ("ssm:GetParameter",),
            ("parameter${ConcurrencyParameter}",),
        ),
        Row(("dynamodb:updateItem@MetadataTable",), ("dynamodb:UpdateItem",), ("MetadataTable",)),
        *data_key(("sqs", "sns", "dynamodb"), ("sqs", "sns", "dynamodb")),
        # Step Functions itself, for the execution's logs (vended log delivery): resourceless actions.
        Row(
            ("logging",),
            (
                "logs:CreateLogDelivery",
                "logs:GetLogDelivery",
                "logs:UpdateLogDelivery",
                "logs:DeleteLogDelivery",
                "logs:ListLogDeliveries",
                "logs:PutResourcePolicy",
                "logs:DescribeResourcePolicies",
                "logs:DescribeLogGroups",
            ),
            ("*",),
        ),
    ],
}
CODE_DIRS = {
    "DispatcherLeaseFunction": "dispatcher_lease",
    "PlanBatchFunction": "plan_batch",
    "RegisterObjectFunction": "register_object",
    "ValidateObjectFunction": "validate_object",
    "ProcessObjectFunction": "process_object",
    "WriteOutputFunction": "write_output",
    "ScaleConcurrencyFunction": "scale_concurrency",
    "AlertNotifierFunction": "alert_notifier",
    "RedriveFunction": "redrive",
    "WakeDispatcherFunction": "wake_dispatcher",
}
# The scan reads whole modules; these calls are in a module the function imports, on a path it
# never takes.
NOT_CALLED_ANYWHERE = {
    (
        "ratelimit",
        "update_item",
    ): "settings imports a constant from ratelimit; only ProcessObject's client claims slots",
    ("ratelimit", "get_item"): "only ProcessObject's client looks at the shared rate before a slot",
    ("metadata", "scan"): "MetadataStore.list_items is `sluice status`'s, run by a person",
    ("mailer", "send_message"): "smtplib's send_message, not SQS's",
}
NOT_CALLED = {
    "DispatcherLeaseFunction": {("lease", "get_item"): "DispatcherLease.holder is WakeDispatcher's"},
    "WakeDispatcherFunction": {("lease", "update_item"): "renew is the dispatcher's (DispatcherLease)"},
    "ProcessObjectFunction": {
        ("metadata", "put_item"): "MetadataStore.register is RegisterObject's",
        ("results", "create_multipart_upload"): "merge_results is WriteOutput's",
        ("results", "upload_part"): "merge_results is WriteOutput's",
        ("results", "upload_part_copy"): "merge_results is WriteOutput's",
        ("results", "complete_multipart_upload"): "merge_results is WriteOutput's",
        ("results", "list_parts"): "merge_results is WriteOutput's",
        ("results", "head_object"): "merge_results is WriteOutput's",
    },
    "ValidateObjectFunction": {
        (
            "csvstream",
            "S3Object",
        ): "CsvStream.from_s3 is ProcessObject's; filecheck parses a ranged GET's sample",
    },
    "RegisterObjectFunction": {
        ("filecheck", "head_object"): "it imports filecheck.bounded only",
        ("filecheck", "get_object"): "it imports filecheck.bounded only",
        ("csvstream", "S3Object"): "CsvStream.from_s3 is ProcessObject's",
    },
    "ScaleConcurrencyFunction": {
        ("health", "update_item"): "it reads the breaker (health.breaker_open); ProcessObject moves it",
        ("health", "publish"): "it reads the breaker; ProcessObject announces its transitions",
        ("filecheck", "head_object"): "health's alerting imports filecheck.bounded only",
        ("filecheck", "get_object"): "health's alerting imports filecheck.bounded only",
        ("csvstream", "S3Object"): "CsvStream.from_s3 is ProcessObject's",
    },
    "AlertNotifierFunction": {
        ("filecheck", "head_object"): "alerting imports filecheck.bounded only",
        ("filecheck", "get_object"): "alerting imports filecheck.bounded only",
        ("csvstream", "S3Object"): "CsvStream.from_s3 is ProcessObject's",
    },
}
# Powertools utilities that call AWS for the code (the scan sees the name, not the call).
LIBRARY_CALLS = {
    "idempotent": "idempotent",
    "idempotent_function": "idempotent",
    "S3Object": "S3Object",  # a ranged GetObject of the version
    "get_secret": "get_secret",  # secretsmanager GetSecretValue
    "SecretsProvider": "SecretsProvider",  # Powertools: GetSecretValue (sluice/apiauth.py)
}
# What AWS asks of each call (the service authorization reference); kms, the failure destination,
# logging is what the services do for a caller of the others.
OPERATION_ACTIONS: dict[str, set[str]] = {
    "head_object": {"s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket"},  # ListBucket: 404, not 403
    "get_object": {"s3:GetObject", "s3:GetObjectVersion"},
    "S3Object": {"s3:GetObject", "s3:GetObjectVersion"},
    "SecretsProvider": {"secretsmanager:GetSecretValue", "kms:Decrypt"},  # kms: a customer managed key
    "put_object": {"s3:PutObject"},
    "create_multipart_upload": {"s3:PutObject"},
    "upload_part": {"s3:PutObject"},
    "upload_part_copy": {"s3:PutObject", "s3:GetObject"},  # GetObject on the source
    "complete_multipart_upload": {"s3:PutObject"},
    "list_parts": {"s3:ListMultipartUploadParts"},
    "delete_objects": {"s3:DeleteObject"},
    "list_objects_v2": {"s3:ListBucket"},
    "get_item": {"dynamodb:GetItem"},
    "put_item": {"dynamodb:PutItem"},
    "update_item": {"dynamodb:UpdateItem"},
    "delete_item": {"dynamodb:DeleteItem"},
    "idempotent": {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"},
    "publish": {"sns:Publish"},
    "get_parameter": {"ssm:GetParameter"},
    "put_parameter": {"ssm:PutParameter"},
    "get_metric_data": {"cloudwatch:GetMetricData"},
    "get_secret": {"secretsmanager:GetSecretValue"},
    "get_queue_attributes": {"sqs:GetQueueAttributes"},
    "receive_message": {"sqs:ReceiveMessage"},
    "delete_message": {"sqs:DeleteMessage"},
    "delete_message_batch": {"sqs:DeleteMessage"},
    "change_message_visibility": {"sqs:ChangeMessageVisibility"},
    "send_message_batch": {"sqs:SendMessage"},
    # the move task receives and deletes from the DLQ and sends to the destination as its caller
    "start_message_move_task": {
        "sqs:StartMessageMoveTask",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:SendMessage",
    },
    "list_message_move_tasks": {"sqs:ListMessageMoveTasks"},
    "invoke": {"lambda:InvokeFunction"},
    "start_execution": {"states:StartExecution"},
    "list_executions": {"states:ListExecutions"},
    "describe_execution": {"states:DescribeExecution"},
    "redrive_execution": {"states:RedriveExecution"},
    "lambda:invoke": {"lambda:InvokeFunction"},
    "aws-sdk:sqs:getQueueAttributes": {"sqs:GetQueueAttributes"},
    "aws-sdk:sqs:receiveMessage": {"sqs:ReceiveMessage"},
    "aws-sdk:sqs:changeMessageVisibility": {"sqs:ChangeMessageVisibility"},
    "aws-sdk:sqs:deleteMessage": {"sqs:DeleteMessage"},
    "sqs:sendMessage": {"sqs:SendMessage"},
    "sns:publish": {"sns:Publish"},
    "aws-sdk:ssm:getParameter": {"ssm:GetParameter"},
    "dynamodb:updateItem": {"dynamodb:UpdateItem"},
    "kms": {"kms:Decrypt", "kms:GenerateDataKey"},
    "failure destination": {"sqs:SendMessage"},
    "logging": {
        "logs:CreateLogDelivery",
        "logs:GetLogDelivery",
        "logs:UpdateLogDelivery",
        "logs:DeleteLogDelivery",
        "logs:ListLogDeliveries",
        "logs:PutResourcePolicy",
        "logs:DescribeResourcePolicies",
        "logs:DescribeLogGroups",
    },
}
# What SAM attaches for a function's logs, for X-Ray (Tracing: Active / Enabled) and for its
# network interfaces in a VPC: SAM adds the last whenever VpcConfig is there, even as an Fn::If
# that is off (Globals VpcConfig, InVpc); it allows only ENI actions, useless outside a VPC.
BASIC_EXECUTION = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
XRAY = "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess"
VPC_ACCESS = "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
ARN_PREFIX = re.compile(r"^arn:\$\{AWS::Partition\}:[a-z0-9-]+:\$\{AWS::Region\}:\$\{AWS::AccountId\}:")


@pytest.fixture(scope="module")
def cfn() -> Iterator[dict[str, Any]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield transform_template()


def short(node: Any) -> str:
    """A policy value as GRANTS writes it."""
    if isinstance(node, str):
        return node
    if "Ref" in node:
        return str(node["Ref"])
    if "Fn::GetAtt" in node:
        logical_id, attribute = node["Fn::GetAtt"]
        assert attribute == "Arn", node
        return str(logical_id)
    text, variables = (node["Fn::Sub"], {}) if isinstance(node["Fn::Sub"], str) else node["Fn::Sub"]
    for name, value in variables.items():
        text = text.replace(f"${{{name}}}", short(value))
    return re.sub(r"\$\{(\w+)\.Arn\}", r"\1", ARN_PREFIX.sub("", text))


def granted(role: dict[str, Any]) -> set[tuple[str, str, tuple]]:
    """(action, resource, condition) for every Allow of the role's inline policies (conditional ones on)."""
    found = set()
    for listed in role["Properties"].get("Policies", []):
        policy = listed["Fn::If"][1] if "Fn::If" in listed else listed
        statements = policy["PolicyDocument"]["Statement"]
        for statement in statements if isinstance(statements, list) else [statements]:
            assert statement["Effect"] == "Allow", statement
            assert "NotAction" not in statement, statement
            condition = tuple(
                sorted(
                    (
                        operator,
                        key,
                        tuple(short(v) for v in (values if isinstance(values, list) else [values])),
                    )
                    for operator, tests in statement.get("Condition", {}).items()
                    for key, values in tests.items()
                )
            )
            actions, resources = statement["Action"], statement["Resource"]
            for action in actions if isinstance(actions, list) else [actions]:
                for resource in resources if isinstance(resources, list) else [resources]:
                    found.add((action, short(resource), condition))
    return found


def expected(rows: list[Row]) -> set[tuple[str, str, tuple]]:
    return {
        (action, resource, tuple(sorted(row.condition)))
        for row in rows
        for action in row.actions
        for resource in row.resources
    }


@pytest.mark.parametrize("role", list(GRANTS))
def test_the_role_grants_exactly_what_its_code_calls_on_what_it_touches(cfn: dict, role: str) -> None:
    resources = cfn["Resources"]
    iam_role = resources[f"{role}Role"]
    want, have = expected(GRANTS[role]), granted(iam_role)
    assert have - want == set(), f"{role} may do more than its code calls"
    assert want - have == set(), f"{role} lacks what its code calls"
    managed = iam_role["Properties"].get("ManagedPolicyArns", [])
    assert managed == ([BASIC_EXECUTION, XRAY, VPC_ACCESS] if role in CODE_DIRS else [XRAY]), role


@pytest.mark.parametrize("role", list(GRANTS))
def test_no_row_grants_an_action_none_of_its_calls_needs(role: str) -> None:
    for row in GRANTS[role]:
        needed = set().union(*(OPERATION_ACTIONS[call.split("@")[0]] for call in row.calls))
        assert set(row.actions) <= needed, (role, row)


def sluice_modules(app: Path) -> dict[str, ast.Module]:
    """The handler and every sluice module it imports, directly or not: module name → tree."""
    found: dict[str, ast.Module] = {}
    todo = [("app", app)]
    while todo:
        name, path = todo.pop()
        if name in found:
            continue
        found[name] = tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sluice":
                names = [str(node.module), *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if alias.name.split(".")[0] == "sluice"]
            for dotted in names:
                base = REPO / "layers" / "shared" / Path(*dotted.split("."))
                for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                    if candidate.exists():
                        todo.append(
                            (dotted.split(".")[-1] if candidate.name != "__init__.py" else dotted, candidate)
                        )
    return found


def boto3_operations() -> set[str]:
    session = botocore.session.get_session()
    services = (
        "s3",
        "sqs",
        "sns",
        "dynamodb",
        "ssm",
        "cloudwatch",
        "lambda",
        "stepfunctions",
        "secretsmanager",
    )
    return {xform_name(op) for s in services for op in session.get_service_model(s).operation_names}


def calls_in(tree: ast.Module, operations: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            if name == "get_paginator" and node.args and isinstance(node.args[0], ast.Constant):
                found.add(str(node.args[0].value))
            elif name in operations:
                found.add(name)
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
        if name in LIBRARY_CALLS:
            found.add(LIBRARY_CALLS[name])
    return found


@pytest.mark.parametrize("function", list(CODE_DIRS))
def test_the_table_names_every_aws_call_the_function_code_makes(function: str) -> None:
    operations = boto3_operations()
    not_called = NOT_CALLED_ANYWHERE | NOT_CALLED.get(function, {})
    code = {
        call
        for module, tree in sluice_modules(REPO / "functions" / CODE_DIRS[function] / "app.py").items()
        for call in calls_in(tree, operations)
        if (module, call) not in not_called
    }
    table = {call for row in GRANTS[function] for call in row.calls} - {"kms", "failure destination"}
    assert code == table, f"{function}: in the code, not the table {code - table}; the reverse {table - code}"


def test_the_table_names_every_task_of_the_state_machine(cfn: dict) -> None:
    sam = load_sam_template()
    substitutions = sam["Resources"]["DispatcherStateMachine"]["Properties"]["DefinitionSubstitutions"]
    target_of = {name: short(value) for name, value in substitutions.items() if isinstance(value, dict)}
    tasks = set()

    def walk(states: dict[str, Any]) -> None:
        for state in states.values():
            if state["Type"] == "Task":
                kind = state["Resource"].split(":::", 1)[1]
                text = json.dumps(state.get("Parameters", {}))
                (target,) = {target_of[n] for n in re.findall(r"\$\{(\w+)\}", text) if n in target_of}
                tasks.add(f"{kind}@{target}")
            for branch in state.get("Branches", []):
                walk(branch["States"])
            for key in ("Iterator", "ItemProcessor"):
                if key in state:
                    walk(state[key]["States"])

    walk(json.loads(definition_of(cfn))["States"])
    table = {call for row in GRANTS["DispatcherStateMachine"] for call in row.calls if "@" in call}
    assert tasks == table


def test_no_idempotency_key_prefix_admits_another_functions_records() -> None:
    prefixes = list(IDEMPOTENCY_KEY_PREFIXES.values())
    assert not any(f"{a}#".startswith(f"{b}#") for a in prefixes for b in prefixes if a != b)
    assert set(IDEMPOTENCY_KEY_PREFIXES) <= set(CODE_DIRS)
