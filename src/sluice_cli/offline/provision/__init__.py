"""Provisioners: one per CloudFormation type, each creating its resource in the emulator.

A provisioner gets the resource's *resolved* properties (no intrinsics left) and answers the
values CloudFormation would give the resource: its Ref and its GetAtt attributes. Types with no
local meaning get a placeholder with plausible Ref/ARN values and are reported, never skipped
silently. The registry is filled by the service modules imported at the bottom.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sluice_cli.offline.clients import emulator_client
from sluice_cli.offline.intrinsics import ACCOUNT_ID

if TYPE_CHECKING:
    from sluice_cli.offline.iam import IamGate
    from sluice_cli.offline.lambda_runtime import LambdaRuntime
    from sluice_cli.offline.template import LocalArtifacts


class ProvisionError(Exception):
    """A resource could not be created; the message names it and the cause."""


@dataclass
class Resource:
    """A created (or placeholder) resource: what Ref and Fn::GetAtt answer for it."""

    logical_id: str
    type: str
    ref: Any
    attributes: dict[str, Any] = field(default_factory=dict)
    emulated: bool = True
    note: str = ""


@dataclass(frozen=True)
class ScheduleTarget:
    """A schedule the local scheduler runs instead of EventBridge (which never fires in moto)."""

    source: str  # logical id of the rule or schedule
    expression: str
    target_arn: str
    input: str | None = None


@dataclass
class ProvisionContext:
    endpoint_url: str
    region: str
    stack_name: str
    artifacts: LocalArtifacts
    runtime: LambdaRuntime
    state_dir: Path
    resources: dict[str, Resource] = field(default_factory=dict)
    schedules: list[ScheduleTarget] = field(default_factory=list)
    iam: IamGate | None = None  # IAM enforced: roles registered, callers given their role's key
    # rule ARN → its Lambda targets, which moto cannot invoke (offline/events_bridge.py does)
    lambda_rule_targets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _clients: dict[str, Any] = field(default_factory=dict)

    @property
    def account(self) -> str:
        return ACCOUNT_ID

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = emulator_client(service, self.endpoint_url, self.region)
        return self._clients[service]

    def physical_name(self, logical_id: str, max_length: int = 64, lowercase: bool = False) -> str:
        return physical_name(self.stack_name, logical_id, max_length=max_length, lowercase=lowercase)

    def name_of(self, logical_id: str, kind: str, props: dict[str, Any]) -> str:
        return resource_name(self.stack_name, logical_id, kind, props)

    def arn(self, service: str, resource: str, region: bool = True) -> str:
        return f"arn:aws:{service}:{self.region if region else ''}:{self.account}:{resource}"

    def by_ref(self, value: Any) -> Resource | None:
        """The stack resource whose Ref or Arn is this value (destinations, layers, targets)."""
        for resource in self.resources.values():
            if value in (resource.ref, resource.attributes.get("Arn")):
                return resource
        return None


def physical_name(stack_name: str, logical_id: str, *, max_length: int = 64, lowercase: bool = False) -> str:
    """CloudFormation's generated names: `{stack}-{LogicalId}-{SUFFIX}`, truncated to fit.

    The suffix is derived from the stack and logical id, so names stay the same from one local
    run to the next (CloudFormation's is random, which only matters once per deployment).
    """
    digest = hashlib.sha256(f"{stack_name}/{logical_id}".encode()).digest()
    alphabet = string.ascii_uppercase + string.digits
    suffix = "".join(alphabet[byte % len(alphabet)] for byte in digest[:12])
    room = max_length - len(suffix) - 2
    stack_part = stack_name[: max(room // 2, 1)]
    logical_part = logical_id[: max(room - len(stack_part), 1)]
    name = f"{stack_part}-{logical_part}-{suffix}"
    if lowercase:
        name = re.sub(r"[^a-z0-9.-]", "-", name.lower())
    return name[:max_length]


# Per type: the property that names the resource, the longest generated name, lowercase or not.
NAME_RULES: dict[str, tuple[str, int, bool]] = {
    "AWS::S3::Bucket": ("BucketName", 63, True),
    "AWS::SQS::Queue": ("QueueName", 80, False),
    "AWS::SNS::Topic": ("TopicName", 256, False),
    "AWS::DynamoDB::Table": ("TableName", 255, False),
    "AWS::Lambda::Function": ("FunctionName", 64, False),
    "AWS::Lambda::LayerVersion": ("LayerName", 64, False),
    "AWS::StepFunctions::StateMachine": ("StateMachineName", 80, False),
    "AWS::Events::Rule": ("Name", 64, False),
    "AWS::Scheduler::Schedule": ("Name", 64, False),
    "AWS::IAM::Role": ("RoleName", 64, False),
    "AWS::Logs::LogGroup": ("LogGroupName", 512, False),
    "AWS::CloudWatch::Alarm": ("AlarmName", 255, False),
    "AWS::CloudWatch::Dashboard": ("DashboardName", 255, False),
    "AWS::SecretsManager::Secret": ("Name", 256, False),
}


def resource_name(stack_name: str, logical_id: str, kind: str, props: dict[str, Any]) -> str:
    """The resource's name: the template's, else the one CloudFormation (here: deterministically) makes."""
    if kind == "AWS::SSM::Parameter":
        # CloudFormation names an unnamed parameter "CFN-<LogicalId>-<suffix>".
        return str(
            props.get("Name")
            or "CFN-" + physical_name(stack_name, logical_id, max_length=60).split("-", 1)[1]
        )
    prop, max_length, lowercase = NAME_RULES.get(kind, ("Name", 64, False))
    fifo = props.get("FifoQueue") in (True, "true") or props.get("FifoTopic") in (True, "true")
    name = props.get(prop) or physical_name(
        stack_name, logical_id, max_length=max_length - (5 if fifo else 0), lowercase=lowercase
    )
    return f"{name}.fifo" if fifo and not str(name).endswith(".fifo") else str(name)


def tags_dict(tags: Any) -> dict[str, str]:
    """CloudFormation tags come as [{Key, Value}] or (SAM, SSM) as a mapping."""
    if isinstance(tags, dict):
        return {str(key): str(value) for key, value in tags.items()}
    return {str(tag["Key"]): str(tag["Value"]) for tag in tags or []}


def tags_list(tags: Any) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags_dict(tags).items()]


def text(value: Any) -> str:
    """A property value as the string an API attribute wants (CloudFormation's Number → "30")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


Provisioner = Callable[[ProvisionContext, str, dict[str, Any]], Resource]
PROVISIONERS: dict[str, Provisioner] = {}


def provisioner(*types: str) -> Callable[[Provisioner], Provisioner]:
    def register(function: Provisioner) -> Provisioner:
        for kind in types:
            PROVISIONERS[kind] = function
        return function

    return register


# Why each unemulated type has no local meaning: shown by `sluice local up`.
NOT_EMULATED: dict[str, str] = {
    "AWS::IAM::Policy": "not enforced locally (only a role's own Policies and ManagedPolicyArns are)",
    "AWS::IAM::ManagedPolicy": "not enforced locally (only a role's own Policies and ManagedPolicyArns are)",
    "AWS::IAM::InstanceProfile": "no EC2 locally",
    "AWS::Lambda::Permission": "resource policies are not enforced locally",
    "AWS::Lambda::Version": "invocations always run the working tree ($LATEST)",
    "AWS::Lambda::Alias": "invocations always run the working tree ($LATEST)",
    "AWS::Lambda::EventSourceMapping": "no event source mappings locally",
    "AWS::KinesisFirehose::DeliveryStream": "no log/metric shipping locally",
    "AWS::Kinesis::Stream": "no log/metric shipping locally",
    "AWS::CloudWatch::MetricStream": "no metric shipping locally",
    "AWS::Logs::SubscriptionFilter": "no log shipping locally",
    "AWS::Logs::MetricFilter": "function logs go to .sluice/logs, not CloudWatch",
    "AWS::SQS::QueueInlinePolicy": "resource policies are not enforced locally",
    "AWS::Serverless::Application": "nested applications are not deployed locally",
    "AWS::CloudFormation::Stack": "nested stacks are not deployed locally",
    "AWS::CloudFormation::CustomResource": "custom resources are not run locally",
}


def placeholder(ctx: ProvisionContext, logical_id: str, kind: str, properties: dict[str, Any]) -> Resource:
    """A resource that is not created: Ref and Arn values that look like the real ones."""
    parts = kind.split("::")
    service = parts[1].lower() if len(parts) > 2 else "unknown"
    name = str(properties.get(f"{parts[-1]}Name") or ctx.name_of(logical_id, kind, properties))
    arn = ctx.arn(service, f"{parts[-1].lower()}/{name}", region=service != "iam")
    reason = NOT_EMULATED.get(kind, "this type has no local emulation")
    return Resource(logical_id, kind, name, {"Arn": arn}, emulated=False, note=reason)


def provision(ctx: ProvisionContext, logical_id: str, kind: str, properties: dict[str, Any]) -> Resource:
    function = PROVISIONERS.get(kind)
    if function is None:
        return placeholder(ctx, logical_id, kind, properties)
    try:
        return function(ctx, logical_id, properties)
    except ProvisionError:
        raise
    except Exception as error:
        raise ProvisionError(f"{logical_id} ({kind}): {error}") from error


# The service modules register their provisioners on import.
from sluice_cli.offline.provision import compute, messaging, storage  # noqa: E402

__all__ = [
    "NOT_EMULATED",
    "PROVISIONERS",
    "ProvisionContext",
    "ProvisionError",
    "Resource",
    "ScheduleTarget",
    "compute",
    "messaging",
    "physical_name",
    "provision",
    "storage",
]
