"""IAM enforced offline: each function and the state machine call AWS as their own role.

Every function's workers get an access key of their own role (the template's, after the SAM
transform: inline policies, SAM policy templates, the event-invoke destination policy); the state
machine's Task calls come with moto's interpreter key, mapped to the state machine's role. The WSGI
gateway asks `IamGate.refuse` about each request signed with one of these keys: the request is
mapped to what AWS would authorize (action, resource ARN, condition keys; one request may need
several, e.g. CopyObject reads its source), the role's policies are evaluated, and a denied call is
answered with the service's AccessDenied error before moto sees it. Requests signed with any other
key (the stack's own provisioning, tests, `sluice` commands) are not checked: they stand for an
administrator.

Fail closed: a call the mapper does not know, a condition operator or key the evaluator does not
know, a policy variable in a resource, a managed policy not modelled here: all deny, with the
reason in the report. A new call in the code thus fails offline until this module learns it.

What is not evaluated: resource policies (bucket, queue, topic, key policies), the KMS calls the
services make on the caller's behalf (moto encrypts nothing), permission boundaries, SCPs,
session policies. docs/offline.md, "IAM enforced offline", says why.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlparse
from xml.etree import ElementTree

from werkzeug.wrappers import Response

from sluice_cli.offline.quotas import _form_body, _json_body, _read_body

IAM_REPORT_FILE: Final = "iam.json"  # in the stack's state directory
# The key moto's Step Functions interpreter signs every Task call with (asl/utils/boto_client.py).
STATE_MACHINE_ACCESS_KEY: Final = "ak"
_MAX_DENIALS_KEPT = 50  # per role, in the report

# AWS managed policies the template attaches, modelled by what they allow (from their published
# documents). A managed policy not listed here grants nothing offline, and the report says so.
MANAGED_POLICIES: Final[dict[str, list[dict[str, Any]]]] = {
    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole": [
        {
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": "*",
        }
    ],
    "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess": [
        {
            "Effect": "Allow",
            "Action": [
                "xray:PutTraceSegments",
                "xray:PutTelemetryRecords",
                "xray:GetSamplingRules",
                "xray:GetSamplingTargets",
                "xray:GetSamplingStatisticSummaries",
            ],
            "Resource": "*",
        }
    ],
    "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole": [
        {
            "Effect": "Allow",
            "Action": [
                "logs:CreateLogGroup",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
                "ec2:CreateNetworkInterface",
                "ec2:DescribeNetworkInterfaces",
                "ec2:DescribeSubnets",
                "ec2:DeleteNetworkInterface",
                "ec2:AssignPrivateIpAddresses",
                "ec2:UnassignPrivateIpAddresses",
            ],
            "Resource": "*",
        }
    ],
    "arn:aws:iam::aws:policy/service-role/AWSLambdaRole": [
        {"Effect": "Allow", "Action": ["lambda:InvokeFunction"], "Resource": ["*"]}
    ],
}


# -- the evaluator ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One authorization AWS makes for a request: the action on the resource, with its context."""

    action: str
    resource: str
    context: Mapping[str, Sequence[str]] = field(default_factory=dict)  # condition key → values


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # "allowed by <sid>", "no identity-based policy allows …", "explicit deny …", "cannot …"


class Unevaluable(Exception):
    """A statement this evaluator cannot decide (unknown operator, policy variable, ...)."""


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@lru_cache(maxsize=4096)
def _wildcard(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """IAM's wildcards: `*` any run of characters (across `:` and `/`), `?` one character."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"^{body}$", re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _matches(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    if "${" in pattern:
        raise Unevaluable(f"policy variable in {pattern!r}")
    return _wildcard(pattern, ignore_case).match(value) is not None


def _string_test(operator: str) -> Callable[[str, str], bool] | None:
    """The test of one value against one policy value, or None for an operator not known here."""
    tests: dict[str, Callable[[str, str], bool]] = {
        "StringEquals": lambda value, wanted: value == wanted,
        "StringEqualsIgnoreCase": lambda value, wanted: value.lower() == wanted.lower(),
        "StringLike": lambda value, wanted: _matches(wanted, value),
        "ArnEquals": lambda value, wanted: value == wanted,
        "ArnLike": lambda value, wanted: _matches(wanted, value),
        "Bool": lambda value, wanted: value.lower() == str(wanted).lower(),
    }
    return tests.get(operator)


_NEGATED: Final = {
    "StringNotEquals": "StringEquals",
    "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
}


def condition_holds(operator: str, key: str, wanted: Any, context: Mapping[str, Sequence[str]]) -> bool:
    """One condition (operator, key, values) against the request's context, as IAM evaluates it."""
    values = next((list(v) for k, v in context.items() if k.lower() == key.lower()), None)
    wanted_values = [str(item) for item in _as_list(wanted)]
    qualifier, _, base = operator.rpartition(":")
    if_exists = base.endswith("IfExists")
    base = base.removesuffix("IfExists")
    if base == "Null":
        present = bool(values)
        return any((w.lower() == "true") != present for w in wanted_values)
    negated = base in _NEGATED
    test = _string_test(_NEGATED.get(base, base))
    if test is None or qualifier not in ("", "ForAllValues", "ForAnyValue"):
        raise Unevaluable(f"condition operator {operator!r}")

    def one(value: str) -> bool:
        hit = any(test(value, item) for item in wanted_values)
        return not hit if negated else hit

    if qualifier == "ForAllValues":
        return all(one(value) for value in values or [])  # vacuously true without the key, as IAM
    if qualifier == "ForAnyValue":
        return any(one(value) for value in values or [])
    if not values:
        return if_exists or negated  # a missing key: only IfExists and the negated operators hold
    if len(values) > 1:
        raise Unevaluable(f"single-valued operator {operator!r} on multi-valued key {key!r}")
    return one(values[0])


def _statement_applies(statement: Mapping[str, Any], check: Check) -> bool:
    if "Action" in statement:
        acts = any(_matches(p, check.action, ignore_case=True) for p in _as_list(statement["Action"]))
    elif "NotAction" in statement:
        acts = not any(_matches(p, check.action, ignore_case=True) for p in _as_list(statement["NotAction"]))
    else:
        raise Unevaluable("a statement with neither Action nor NotAction")
    if not acts:
        return False
    if "Resource" in statement:
        on = any(_matches(str(p), check.resource) for p in _as_list(statement["Resource"]))
    elif "NotResource" in statement:
        on = not any(_matches(str(p), check.resource) for p in _as_list(statement["NotResource"]))
    else:
        raise Unevaluable("a statement with neither Resource nor NotResource")
    if not on:
        return False
    conditions = statement.get("Condition") or {}
    if not isinstance(conditions, Mapping):
        raise Unevaluable(f"condition block {conditions!r}")
    return all(
        condition_holds(operator, key, wanted, check.context)
        for operator, tests in conditions.items()
        for key, wanted in tests.items()
    )


def evaluate(statements: Iterable[Mapping[str, Any]], check: Check) -> Decision:
    """IAM's identity-policy logic: an explicit Deny wins, else an Allow allows, else denied.

    A statement that cannot be evaluated counts as a Deny if it is one, and allows nothing if it is
    an Allow: never more access than AWS would give.
    """
    allowed_by: str | None = None
    unsure: list[str] = []
    for number, statement in enumerate(statements):
        effect = statement.get("Effect")
        name = str(statement.get("Sid") or f"statement {number}")
        try:
            applies = _statement_applies(statement, check)
        except Unevaluable as error:
            if effect == "Deny":
                return Decision(False, f"explicit deny in {name} (cannot evaluate: {error})")
            unsure.append(f"{name}: cannot evaluate {error}")
            continue
        if not applies:
            continue
        if effect == "Deny":
            return Decision(False, f"explicit deny in {name}")
        if effect == "Allow":
            allowed_by = allowed_by or name
        else:
            unsure.append(f"{name}: Effect {effect!r}")
    if allowed_by is not None:
        return Decision(True, f"allowed by {allowed_by}")
    note = f" ({'; '.join(unsure)})" if unsure else ""
    return Decision(False, f"no identity-based policy allows the {check.action} action{note}")


def role_statements(properties: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """A resolved AWS::IAM::Role's statements (inline and modelled managed policies); the managed
    policies not modelled (they grant nothing here)."""
    statements: list[dict[str, Any]] = []
    for policy in properties.get("Policies") or []:
        document = policy.get("PolicyDocument", {})
        if isinstance(document, str):
            document = json.loads(document)
        statements.extend(dict(item) for item in _as_list(document.get("Statement", [])))
    unknown: list[str] = []
    for arn in properties.get("ManagedPolicyArns") or []:
        modelled = MANAGED_POLICIES.get(re.sub(r"^arn:aws[a-z-]*:", "arn:aws:", str(arn)))
        if modelled is None:
            unknown.append(str(arn))
        else:
            statements.extend(modelled)
    return statements, unknown


# -- requests → checks ---------------------------------------------------------------------------

_CREDENTIAL: Final = re.compile(
    r"Credential=(?P<key>[^/]+)/\d{8}/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request"
)
_CBOR_PATH: Final = re.compile(r"^/service/(?P<service>[^/]+)/operation/(?P<operation>[^/]+)$")
_LAMBDA_INVOKE: Final = re.compile(
    r"^/(?:2015-03-31/functions/(?P<name>[^/]+)/invocations|2014-11-13/functions/(?P<async>[^/]+)/invoke-async)/?$"
)
# Batch operations authorize as their single form (the Service Authorization Reference).
_SQS_ACTIONS: Final = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}
_S3_LIST_PARAMETERS: Final = frozenset(
    {
        "list-type",
        "prefix",
        "delimiter",
        "max-keys",
        "continuation-token",
        "start-after",
        "encoding-type",
        "fetch-owner",
        "marker",
    }
)
_S3_LIST_CONDITION_KEYS: Final = ("prefix", "delimiter", "max-keys")
_DYNAMODB_ITEM_OPERATIONS: Final = {
    "GetItem": "Key",
    "PutItem": "Item",
    "UpdateItem": "Key",
    "DeleteItem": "Key",
}


class Unmapped(Exception):
    """A request the mapper does not know how to authorize: denied (fail closed)."""


@dataclass(frozen=True)
class Lookups:
    """What a mapping needs from the emulator's state: a table's partition key, a secret's ARN."""

    account: str
    partition_key: Callable[[str, str], str | None]  # (region, table name) → attribute name
    secret_arn: Callable[[str, str], str | None]  # (region, name or ARN) → ARN


def _arn(service: str, region: str, account: str, resource: str) -> str:
    return f"arn:aws:{service}:{region}:{account}:{resource}"


def _path(environ: Mapping[str, Any]) -> str:
    """PATH_INFO as the client sent it, decoded once (WSGI hands it over as latin-1)."""
    raw = str(environ.get("PATH_INFO", ""))
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return raw


class RequestMapper:
    """An HTTP request to the AWS API → the authorizations AWS makes for it."""

    def __init__(self, lookups: Lookups) -> None:
        self.lookups = lookups

    def checks(self, environ: dict[str, Any], service: str, region: str) -> tuple[str, list[Check]]:
        """(the operation's name, its checks); Unmapped for anything not known."""
        target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
        if service == "s3":
            return self._s3(environ, region)
        if service == "lambda":
            return self._lambda(environ, region)
        if service == "monitoring":
            return self._cloudwatch(environ)
        if target:
            prefix, _, operation = target.partition(".")
            body = _json_body(environ)
            handler = {
                "DynamoDB_20120810": self._dynamodb,
                "AmazonSQS": self._sqs,
                "AmazonSSM": self._ssm,
                "secretsmanager": self._secretsmanager,
                "AWSStepFunctions": self._states,
                "TrentService": self._kms,
            }.get(prefix)
            if handler is None:
                raise Unmapped(f"{target}: no mapping for this service")
            return operation, handler(operation, body, region)
        if service == "sns":
            form = _form_body(environ)
            return form.get("Action", "?"), self._sns(form)
        raise Unmapped(f"{service} {environ.get('REQUEST_METHOD')} {_path(environ)}: no mapping")

    # -- S3 (REST) ---------------------------------------------------------------------------------

    def _s3(self, environ: dict[str, Any], region: str) -> tuple[str, list[Check]]:
        method = str(environ.get("REQUEST_METHOD", ""))
        pairs = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items()
        query = {key: values[0] for key, values in pairs if key != "x-id"}  # x-id: botocore's label
        host = str(environ.get("HTTP_HOST", "")).split(":")[0]
        path = _path(environ).lstrip("/")
        if host.count(".") and not re.fullmatch(r"[\d.]+", host) and not host.startswith("s3."):
            bucket, key = host.split(".")[0], path  # virtual-hosted style
        else:
            bucket, _, key = path.partition("/")
        if not bucket:
            raise Unmapped(f"S3 {method} / (ListBuckets): no mapping")
        if key:
            return self._s3_object(environ, method, query, f"arn:aws:s3:::{bucket}/{key}")
        return self._s3_bucket(environ, method, query, f"arn:aws:s3:::{bucket}")

    def _s3_bucket(
        self, environ: dict[str, Any], method: str, query: Mapping[str, str], bucket_arn: str
    ) -> tuple[str, list[Check]]:
        if method == "GET" and not set(query) - _S3_LIST_PARAMETERS:
            context = {f"s3:{name}": [query[name]] for name in _S3_LIST_CONDITION_KEYS if name in query}
            operation = "ListObjectsV2" if query.get("list-type") == "2" else "ListObjects"
            return operation, [Check("s3:ListBucket", bucket_arn, context)]
        if method == "HEAD" and not query:
            return "HeadBucket", [Check("s3:ListBucket", bucket_arn)]
        if method == "POST" and "delete" in query:
            return "DeleteObjects", self._s3_delete_objects(environ, bucket_arn)
        raise Unmapped(f"S3 {method} bucket ?{'&'.join(sorted(query))}: no mapping")

    def _s3_object(
        self, environ: dict[str, Any], method: str, query: Mapping[str, str], object_arn: str
    ) -> tuple[str, list[Check]]:
        """GET/HEAD, PUT (with a copy source: also a read of it), multipart, DELETE."""
        parameters = set(query)
        version = "Version" if "versionId" in query else ""
        operation, checks = "", []
        if method in ("GET", "HEAD") and not parameters - {"versionId", "partNumber"}:
            operation = "HeadObject" if method == "HEAD" else "GetObject"
            checks = [Check(f"s3:GetObject{version}", object_arn)]
        elif method == "PUT" and not parameters - {"partNumber", "uploadId"}:
            operation = "UploadPart" if "uploadId" in query else "PutObject"
            checks = [Check("s3:PutObject", object_arn)]
            if copy_source := environ.get("HTTP_X_AMZ_COPY_SOURCE"):
                source, _, source_query = unquote(str(copy_source)).lstrip("/").partition("?")
                read = "s3:GetObjectVersion" if "versionId=" in source_query else "s3:GetObject"
                checks.append(Check(read, f"arn:aws:s3:::{source}"))
                operation = operation.replace("Part", "PartCopy").replace("PutObject", "CopyObject")
        elif method == "POST" and parameters in ({"uploads"}, {"uploadId"}):
            operation = "CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload"
            checks = [Check("s3:PutObject", object_arn)]
        elif method == "DELETE" and parameters == {"uploadId"}:
            operation, checks = "AbortMultipartUpload", [Check("s3:AbortMultipartUpload", object_arn)]
        elif method == "DELETE" and not parameters - {"versionId"}:
            operation, checks = "DeleteObject", [Check(f"s3:DeleteObject{version}", object_arn)]
        if not checks:
            raise Unmapped(f"S3 {method} object ?{'&'.join(sorted(query))}: no mapping")
        return operation, checks

    def _s3_delete_objects(self, environ: dict[str, Any], bucket_arn: str) -> list[Check]:
        """DeleteObjects: one DeleteObject(Version) per key. (AWS answers a denied key in the
        result's Errors; here the whole request is refused, which a caller sees at least as well.)"""
        try:
            # a local client's request body, which moto parses next in the same way
            root = ElementTree.fromstring(_read_body(environ))  # noqa: S314
        except ElementTree.ParseError as error:
            raise Unmapped(f"S3 DeleteObjects: body is not XML ({error})") from error
        checks = []
        for item in root.iter():
            if item.tag.rsplit("}", 1)[-1] != "Object":
                continue
            fields = {child.tag.rsplit("}", 1)[-1]: child.text or "" for child in item}
            action = "s3:DeleteObjectVersion" if fields.get("VersionId") else "s3:DeleteObject"
            checks.append(Check(action, f"{bucket_arn}/{fields.get('Key', '')}"))
        if not checks:
            raise Unmapped("S3 DeleteObjects with no keys")
        return checks

    # -- Lambda (REST) -----------------------------------------------------------------------------

    def _lambda(self, environ: dict[str, Any], region: str) -> tuple[str, list[Check]]:
        match = _LAMBDA_INVOKE.match(_path(environ))
        if match is None or environ.get("REQUEST_METHOD") != "POST":
            raise Unmapped(f"Lambda {environ.get('REQUEST_METHOD')} {_path(environ)}: no mapping")
        name = unquote(match.group("name") or match.group("async"))
        qualifier = parse_qs(environ.get("QUERY_STRING", "")).get("Qualifier", [""])[0]
        if name.startswith("arn:"):
            arn = name
        elif ":" in name and name.split(":")[1] == "function":  # 123456789012:function:name[:qualifier]
            arn = f"arn:aws:lambda:{region}:{name}"
        else:
            arn = _arn("lambda", region, self.lookups.account, f"function:{name}")
        if qualifier and qualifier != "$LATEST" and arn.count(":") == 6:
            arn = f"{arn}:{qualifier}"
        return "Invoke", [Check("lambda:InvokeFunction", arn)]

    # -- CloudWatch (rpc-v2-cbor, JSON, query) ---------------------------------------------------

    def _cloudwatch(self, environ: dict[str, Any]) -> tuple[str, list[Check]]:
        match = _CBOR_PATH.match(_path(environ))
        target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
        if match is not None:
            operation = match.group("operation")
        elif target:
            operation = target.rpartition(".")[2]
        else:
            operation = _form_body(environ).get("Action", "")
        # Of CloudWatch's metric calls, none has resource-level permissions.
        if operation in ("GetMetricData", "GetMetricStatistics", "ListMetrics", "PutMetricData"):
            return operation, [Check(f"cloudwatch:{operation}", "*")]
        raise Unmapped(f"CloudWatch {operation or '?'}: no mapping")

    # -- JSON protocols --------------------------------------------------------------------------

    def _dynamodb(self, operation: str, body: Mapping[str, Any], region: str) -> list[Check]:
        table = str(body.get("TableName", ""))
        table_arn = (
            table
            if table.startswith("arn:")
            else _arn("dynamodb", region, self.lookups.account, f"table/{table}")
        )
        if operation in _DYNAMODB_ITEM_OPERATIONS:
            item = body.get(_DYNAMODB_ITEM_OPERATIONS[operation]) or {}
            hash_key = self.lookups.partition_key(region, table.rsplit("/", 1)[-1])
            if hash_key is None or hash_key not in item:
                raise Unmapped(f"DynamoDB {operation} on {table}: its partition key is not known")
            value = next(iter(item[hash_key].values()))
            return [Check(f"dynamodb:{operation}", table_arn, {"dynamodb:LeadingKeys": [str(value)]})]
        if operation in ("DescribeTable", "Scan"):
            return [Check(f"dynamodb:{operation}", table_arn)]
        raise Unmapped(f"DynamoDB {operation}: no mapping (its leading keys are not read here)")

    def _queue_arn(self, queue: str, region: str) -> str:
        if queue.startswith("arn:"):
            return queue
        parts = urlparse(queue).path.strip("/").split("/")
        if len(parts) != 2:
            raise Unmapped(f"SQS queue URL {queue!r}")
        return _arn("sqs", region, parts[0], parts[1])

    def _sqs(self, operation: str, body: Mapping[str, Any], region: str) -> list[Check]:
        if operation == "GetQueueUrl":
            account = str(body.get("QueueOwnerAWSAccountId") or self.lookups.account)
            return [Check("sqs:GetQueueUrl", _arn("sqs", region, account, str(body.get("QueueName"))))]
        if operation in ("StartMessageMoveTask", "ListMessageMoveTasks"):
            source = self._queue_arn(str(body.get("SourceArn", "")), region)
            checks = [Check(f"sqs:{operation}", source)]
            if operation == "StartMessageMoveTask":
                # the move task receives, deletes from the source and sends on as its caller
                checks += [
                    Check(f"sqs:{a}", source)
                    for a in ("ReceiveMessage", "DeleteMessage", "GetQueueAttributes")
                ]
                if body.get("DestinationArn"):
                    checks.append(
                        Check("sqs:SendMessage", self._queue_arn(str(body["DestinationArn"]), region))
                    )
            return checks
        if "QueueUrl" not in body:
            raise Unmapped(f"SQS {operation}: no QueueUrl")
        action = _SQS_ACTIONS.get(operation, operation)
        return [Check(f"sqs:{action}", self._queue_arn(str(body["QueueUrl"]), region))]

    def _ssm(self, operation: str, body: Mapping[str, Any], region: str) -> list[Check]:
        names = [body["Name"]] if "Name" in body else list(body.get("Names") or [])
        if operation not in ("GetParameter", "GetParameters", "PutParameter") or not names:
            raise Unmapped(f"SSM {operation}: no mapping")

        def arn(name: str) -> str:
            if name.startswith("arn:"):
                return name
            return _arn(
                "ssm",
                region,
                self.lookups.account,
                f"parameter{name if name.startswith('/') else '/' + name}",
            )

        return [Check(f"ssm:{operation}", arn(str(name))) for name in names]

    def _secretsmanager(self, operation: str, body: Mapping[str, Any], region: str) -> list[Check]:
        if operation not in ("GetSecretValue", "DescribeSecret") or "SecretId" not in body:
            raise Unmapped(f"Secrets Manager {operation}: no mapping")
        secret = str(body["SecretId"])
        arn = self.lookups.secret_arn(region, secret) or (
            secret
            if secret.startswith("arn:")
            else _arn("secretsmanager", region, self.lookups.account, f"secret:{secret}")
        )
        return [Check(f"secretsmanager:{operation}", arn)]

    def _states(self, operation: str, body: Mapping[str, Any], region: str) -> list[Check]:
        for key in ("executionArn", "stateMachineArn", "mapRunArn"):
            if body.get(key):
                return [Check(f"states:{operation}", str(body[key]))]
        raise Unmapped(f"Step Functions {operation}: no ARN in the request")

    def _kms(self, operation: str, body: Mapping[str, Any], region: str) -> list[Check]:
        key = str(body.get("KeyId", ""))
        if not key.startswith("arn:") or ":alias/" in key:
            raise Unmapped(f"KMS {operation}: KeyId {key!r} is not a key ARN")
        return [Check(f"kms:{operation}", key)]

    # -- SNS (query) ---------------------------------------------------------------------------------

    def _sns(self, form: Mapping[str, str]) -> list[Check]:
        action = form.get("Action", "")
        topic = form.get("TopicArn") or form.get("TargetArn")
        if action != "Publish" or not topic:
            raise Unmapped(f"SNS {action or '?'}: no mapping")
        return [Check("sns:Publish", topic)]


# -- AccessDenied, as each protocol answers it -----------------------------------------------------


def access_denied(service: str, message: str) -> Response:
    """The service's AccessDenied, with a request id (moto's Task error handling reads it)."""
    request_id = str(uuid.uuid4())
    if service == "s3":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
            f"<Message>{_xml(message)}</Message><RequestId>{request_id}</RequestId></Error>"
        )
        return Response(
            body, status=403, headers={"x-amz-request-id": request_id}, content_type="application/xml"
        )
    if service == "sns":
        body = (
            '<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><Error><Type>Sender</Type>'
            f"<Code>AuthorizationError</Code><Message>{_xml(message)}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        )
        return Response(body, status=403, headers={"x-amzn-RequestId": request_id}, content_type="text/xml")
    # SQS and CloudWatch keep their query protocol's code (awsQueryCompatible)
    query_compatible = service in ("sqs", "monitoring")
    code = "AccessDenied" if query_compatible else "AccessDeniedException"
    headers = {"x-amzn-ErrorType": code, "x-amzn-RequestId": request_id}
    if query_compatible:
        headers["x-amzn-query-error"] = "AccessDenied;Sender"
    body = json.dumps({"__type": code, "message": message, "Message": message})
    return Response(
        body,
        status=403 if service in ("lambda", "sqs") else 400,
        headers=headers,
        content_type="application/x-amz-json-1.0",
    )


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- the gate --------------------------------------------------------------------------------------


@dataclass
class RoleRecord:
    logical_id: str
    arn: str
    statements: list[dict[str, Any]]
    unmodelled_managed: list[str]
    callers: set[str] = field(default_factory=set)  # function names, "state machine <name>"
    allowed: Counter[str] = field(default_factory=Counter)  # action → calls
    denied: Counter[str] = field(default_factory=Counter)
    denials: list[dict[str, str]] = field(default_factory=list)


def access_key_for(role_arn: str) -> str:
    """A stable STS-like key id per role (ASIA…: temporary credentials, as Lambda's are)."""
    digest = hashlib.sha256(role_arn.encode()).hexdigest().upper()
    return f"ASIA{digest[:16]}"


class IamGate:
    """The roles of the stack, the keys that stand for them, and the check of each request."""

    def __init__(self, mapper: RequestMapper) -> None:
        self.mapper = mapper
        self._roles: dict[str, RoleRecord] = {}  # by role ARN
        self._keys: dict[str, str] = {}  # access key → role ARN
        self._state_machine_roles: set[str] = set()
        self._unknown_role_arns: set[str] = set()
        self._lock = threading.Lock()

    def register_role(self, logical_id: str, arn: str, properties: Mapping[str, Any]) -> None:
        statements, unknown = role_statements(properties)
        with self._lock:
            self._roles[arn] = RoleRecord(logical_id, arn, statements, unknown)
            self._keys[access_key_for(arn)] = arn

    def credentials_for(self, role_arn: str, caller: str) -> str:
        """The access key a function's workers use; a role not in the template grants nothing."""
        with self._lock:
            self._keys[access_key_for(role_arn)] = role_arn
            record = self._roles.get(role_arn)
            if record is None:
                self._unknown_role_arns.add(role_arn)
            else:
                record.callers.add(caller)
        return access_key_for(role_arn)

    def bind_state_machine(self, role_arn: str, name: str) -> None:
        """moto's interpreter signs every Task call with one key: it stands for the state machine's
        role. With two state machines of different roles a call's role cannot be told: both are
        refused (fail closed)."""
        with self._lock:
            self._state_machine_roles.add(role_arn)
            if (record := self._roles.get(role_arn)) is not None:
                record.callers.add(f"state machine {name}")

    def authorize(self, role_arn: str, checks: Sequence[Check], operation: str) -> tuple[Decision, Check]:
        """Every check of the request must be allowed: the first denial (and its check) answers."""
        with self._lock:
            record = self._roles.get(role_arn)
        if record is None:
            decision = Decision(False, f"role {role_arn} is not in the template")
            self._record(None, role_arn, operation, checks[0], decision)
            return decision, checks[0]
        for check in checks:
            decision = evaluate(record.statements, check)
            self._record(record, role_arn, operation, check, decision)
            if not decision.allowed:
                return decision, check
        return Decision(True, "allowed"), checks[-1]

    def allows(self, access_key: str, check: Check, operation: str) -> bool:
        """A call the service makes as the caller's role (Lambda sending to a destination)."""
        role_arn = self._role_of(access_key)
        return role_arn is None or self.authorize(role_arn, [check], operation)[0].allowed

    def refuse(self, environ: dict[str, Any]) -> Response | None:
        credential = _CREDENTIAL.search(str(environ.get("HTTP_AUTHORIZATION", "")))
        if credential is None:
            return None
        key, service, region = credential.group("key", "service", "region")
        role_arn = self._role_of(key)
        if role_arn is None:
            return None  # not a function or state machine: the stack itself, a test, a person
        principal = _assumed_role(role_arn)
        try:
            operation, checks = self.mapper.checks(environ, service, region)
        except Unmapped as error:
            decision = Decision(False, f"the offline IAM check does not know this call ({error})")
            self._record(
                self._roles.get(role_arn), role_arn, "unmapped", Check(f"{service}:?", str(error)), decision
            )
            return access_denied(service, f"User: {principal} is not authorized: {decision.reason}")
        decision, denied = self.authorize(role_arn, checks, operation)
        if decision.allowed:
            return None
        message = (
            f"User: {principal} is not authorized to perform: {denied.action} on resource: "
            f"{denied.resource} because {decision.reason}"
        )
        return access_denied(service, message)

    def _role_of(self, key: str) -> str | None:
        with self._lock:
            if key == STATE_MACHINE_ACCESS_KEY and self._state_machine_roles:
                roles = sorted(self._state_machine_roles)
                return (
                    roles[0]
                    if len(roles) == 1
                    else "arn:aws:iam::000000000000:role/ambiguous-state-machine-role"
                )
            return self._keys.get(key)

    def _record(
        self, record: RoleRecord | None, role_arn: str, operation: str, check: Check, decision: Decision
    ) -> None:
        with self._lock:
            if record is None:
                record = self._roles.setdefault(
                    role_arn, RoleRecord(role_arn.rsplit("/", 1)[-1], role_arn, [], [])
                )
            if decision.allowed:
                record.allowed[check.action] += 1
                return
            record.denied[check.action] += 1
            if len(record.denials) < _MAX_DENIALS_KEPT:
                record.denials.append(
                    {
                        "operation": operation,
                        "action": check.action,
                        "resource": check.resource,
                        "reason": decision.reason,
                    }
                )

    # -- the report ----------------------------------------------------------------------------------

    def totals(self) -> tuple[int, int]:
        """(calls checked, calls denied): a call with several checks counts once per check."""
        with self._lock:
            checked = sum(sum(r.allowed.values()) + sum(r.denied.values()) for r in self._roles.values())
            denied = sum(sum(r.denied.values()) for r in self._roles.values())
        return checked, denied

    def report(self) -> dict[str, Any]:
        checked, denied = self.totals()
        with self._lock:
            roles = {
                record.logical_id: {
                    "arn": record.arn,
                    "used_by": sorted(record.callers),
                    "allowed": dict(sorted(record.allowed.items())),
                    "denied": dict(sorted(record.denied.items())),
                    "denials": list(record.denials),
                    "managed_policies_not_modelled": record.unmodelled_managed,
                }
                for record in sorted(self._roles.values(), key=lambda r: r.logical_id)
            }
            outside = sorted(self._unknown_role_arns)
        return {
            "enforced": True,
            "checked": checked,
            "denied": denied,
            "roles": roles,
            "roles_not_in_template": outside,  # functions given these may call nothing
        }

    def write_report(self, directory: Path) -> Path:
        path = directory / IAM_REPORT_FILE
        path.write_text(json.dumps(self.report(), indent=2) + "\n", encoding="utf-8")
        return path


def _assumed_role(role_arn: str) -> str:
    account = role_arn.split(":")[4] if role_arn.count(":") >= 5 else "000000000000"
    return f"arn:aws:sts::{account}:assumed-role/{role_arn.rsplit('/', 1)[-1]}/offline"


def summary_line(report: Mapping[str, Any]) -> str:
    """`IAM: N calls checked, M denied` (+ which, briefly), for `sluice run` and `local up`."""
    line = f"IAM: {report['checked']} calls checked, {report['denied']} denied"
    denied = [
        f"{role} {action}"
        for role, data in report.get("roles", {}).items()
        for action in data.get("denied", {})
    ]
    return f"{line} ({', '.join(denied)})" if denied else line


def moto_lookups(account: str) -> Lookups:
    """Lookups answered from moto's in-process backends (the server runs in this process)."""
    from moto.dynamodb.models import dynamodb_backends  # noqa: PLC0415 - moto loads lazily
    from moto.secretsmanager.models import secretsmanager_backends  # noqa: PLC0415

    def partition_key(region: str, table: str) -> str | None:
        try:
            return str(dynamodb_backends[account][region].get_table(table).hash_key_attr)
        except Exception:  # an unknown table: moto answers the request with its own error
            return None

    def secret_arn(region: str, secret_id: str) -> str | None:
        try:
            return str(secretsmanager_backends[account][region].secrets[secret_id].arn)
        except Exception:
            return None

    return Lookups(account=account, partition_key=partition_key, secret_arn=secret_arn)
