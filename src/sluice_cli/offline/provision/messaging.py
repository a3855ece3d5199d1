"""SQS, SNS, EventBridge rules and EventBridge Scheduler schedules."""

from __future__ import annotations

import json
from typing import Any

from sluice_cli.offline.provision import (
    ProvisionContext,
    Resource,
    ScheduleTarget,
    provisioner,
    tags_dict,
    text,
)

# -- SQS --------------------------------------------------------------------------------------------

_QUEUE_ATTRIBUTES = (
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
    "SqsManagedSseEnabled",
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
)


def queue_attributes(props: dict[str, Any]) -> dict[str, str]:
    """CloudFormation AWS::SQS::Queue properties → CreateQueue's string attributes."""
    attributes = {key: text(props[key]) for key in _QUEUE_ATTRIBUTES if key in props}
    for key in ("RedrivePolicy", "RedriveAllowPolicy"):
        if key in props:
            value = props[key]
            if isinstance(value, dict) and "maxReceiveCount" in value:
                value = {**value, "maxReceiveCount": int(value["maxReceiveCount"])}
            attributes[key] = value if isinstance(value, str) else json.dumps(value)
    return attributes


@provisioner("AWS::SQS::Queue")
def sqs_queue(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    name = ctx.name_of(logical_id, "AWS::SQS::Queue", props)
    request: dict[str, Any] = {"QueueName": name, "Attributes": queue_attributes(props)}
    if props.get("Tags"):
        request["tags"] = tags_dict(props["Tags"])
    sqs = ctx.client("sqs")
    url = sqs.create_queue(**request)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return Resource(logical_id, "AWS::SQS::Queue", url, {"Arn": arn, "QueueName": name, "QueueUrl": url})


@provisioner("AWS::SQS::QueuePolicy")
def sqs_queue_policy(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    policy = props["PolicyDocument"]
    document = policy if isinstance(policy, str) else json.dumps(policy)
    for url in props["Queues"]:
        ctx.client("sqs").set_queue_attributes(QueueUrl=url, Attributes={"Policy": document})
    return Resource(
        logical_id, "AWS::SQS::QueuePolicy", ctx.physical_name(logical_id), {}, note="recorded, not enforced"
    )


# -- SNS --------------------------------------------------------------------------------------------


def subscription_attributes(props: dict[str, Any]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for key in ("RawMessageDelivery", "FilterPolicyScope", "SubscriptionRoleArn"):
        if key in props:
            attributes[key] = text(props[key])
    for key in ("FilterPolicy", "RedrivePolicy", "DeliveryPolicy"):
        if key in props:
            value = props[key]
            attributes[key] = value if isinstance(value, str) else json.dumps(value)
    return attributes


def _subscribe(
    ctx: ProvisionContext, topic_arn: str, protocol: str, endpoint: str, attributes: dict[str, str]
) -> tuple[str, str]:
    """Subscribe in moto; answer the subscription ARN and a note on how it is delivered locally.

    moto keeps lambda subscriptions too (filter policy and all); the offline stack's SNS → Lambda
    bridge (`offline/sns_bridge.py`) delivers to them through the local runtime.
    """
    response = ctx.client("sns").subscribe(
        TopicArn=topic_arn,
        Protocol=protocol,
        Endpoint=endpoint,
        Attributes=attributes,
        ReturnSubscriptionArn=True,
    )
    note = ""
    if protocol == "lambda":
        note = "lambda: invoked asynchronously by the local runtime"
        if ctx.runtime.find(endpoint) is None:
            note = f"lambda {endpoint} is not a function of this stack: deliveries to it fail"
    return str(response["SubscriptionArn"]), note


@provisioner("AWS::SNS::Topic")
def sns_topic(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    name = ctx.name_of(logical_id, "AWS::SNS::Topic", props)
    attributes = {
        key: text(props[key])
        for key in (
            "DisplayName",
            "KmsMasterKeyId",
            "FifoTopic",
            "ContentBasedDeduplication",
            "SignatureVersion",
        )
        if key in props
    }
    request: dict[str, Any] = {"Name": name, "Attributes": attributes}
    if props.get("Tags"):
        request["Tags"] = [{"Key": k, "Value": v} for k, v in tags_dict(props["Tags"]).items()]
    arn = ctx.client("sns").create_topic(**request)["TopicArn"]
    notes = []
    for subscription in props.get("Subscription", []):
        _, note = _subscribe(ctx, arn, subscription["Protocol"], subscription["Endpoint"], {})
        if note:
            notes.append(note)
    return Resource(
        logical_id, "AWS::SNS::Topic", arn, {"TopicArn": arn, "TopicName": name}, note="; ".join(notes)
    )


@provisioner("AWS::SNS::Subscription")
def sns_subscription(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    arn, note = _subscribe(
        ctx, props["TopicArn"], props["Protocol"], props["Endpoint"], subscription_attributes(props)
    )
    return Resource(logical_id, "AWS::SNS::Subscription", arn, {"Arn": arn}, note=note)


@provisioner("AWS::SNS::TopicPolicy")
def sns_topic_policy(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    policy = props["PolicyDocument"]
    document = policy if isinstance(policy, str) else json.dumps(policy)
    for arn in props["Topics"]:
        ctx.client("sns").set_topic_attributes(TopicArn=arn, AttributeName="Policy", AttributeValue=document)
    return Resource(
        logical_id, "AWS::SNS::TopicPolicy", ctx.physical_name(logical_id), {}, note="recorded, not enforced"
    )


# -- EventBridge --------------------------------------------------------------------------------------

# Targets moto delivers to by itself; Lambda targets would need its Docker Lambda (the stack's
# EventsLambdaBridge delivers them), and a state machine target makes PutEvents fail.
_MOTO_TARGET_SERVICES = {"sqs", "sns", "logs", "events"}
_BRIDGED_TARGET_SERVICES = {"lambda"}


def _arn_service(arn: str) -> str:
    parts = arn.split(":")
    return parts[2] if len(parts) > 2 else ""


def rule_targets(targets: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The targets moto can deliver to, and a note for each it cannot."""
    kept, skipped = [], []
    for target in targets:
        if _arn_service(target["Arn"]) in _MOTO_TARGET_SERVICES:
            kept.append(target)
        else:
            skipped.append(f"target {target.get('Id')} ({_arn_service(target['Arn'])}) not emulated")
    return kept, skipped


@provisioner("AWS::Events::Rule")
def events_rule(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    name = ctx.name_of(logical_id, "AWS::Events::Rule", props)
    bus = props.get("EventBusName", "default")
    bus_name = bus.rsplit("/", 1)[-1] if bus.startswith("arn:") else bus
    arn_path = f"rule/{name}" if bus_name == "default" else f"rule/{bus_name}/{name}"
    ref = name if bus_name == "default" else f"{bus_name}|{name}"
    attributes = {"Arn": ctx.arn("events", arn_path)}
    enabled = props.get("State", "ENABLED") == "ENABLED"
    if "ScheduleExpression" in props:
        # moto never fires schedules: the local scheduler does, on its own period.
        if enabled:
            for target in props.get("Targets", []):
                ctx.schedules.append(
                    ScheduleTarget(
                        logical_id, props["ScheduleExpression"], target["Arn"], target.get("Input")
                    )
                )
        note = "schedule run by the local scheduler" if enabled else "schedule disabled"
        return Resource(logical_id, "AWS::Events::Rule", ref, attributes, note=note)
    events = ctx.client("events")
    pattern = props["EventPattern"]
    request: dict[str, Any] = {
        "Name": name,
        "EventPattern": pattern if isinstance(pattern, str) else json.dumps(pattern),
        "State": props.get("State", "ENABLED"),
        "EventBusName": bus_name,
    }
    if "Description" in props:
        request["Description"] = props["Description"]
    events.put_rule(**request)
    targets, skipped = rule_targets(props.get("Targets", []))
    if targets:
        events.put_targets(Rule=name, EventBusName=bus_name, Targets=targets)
    bridged = [t for t in props.get("Targets", []) if _arn_service(t["Arn"]) in _BRIDGED_TARGET_SERVICES]
    if bridged:
        ctx.lambda_rule_targets[attributes["Arn"]] = bridged
    notes = [note for note in skipped if not note.endswith("(lambda) not emulated")]
    notes += [f"target {t.get('Id')} (lambda) invoked by the local bridge" for t in bridged]
    return Resource(logical_id, "AWS::Events::Rule", ref, attributes, note="; ".join(notes))


@provisioner("AWS::Scheduler::Schedule")
def scheduler_schedule(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    name = ctx.name_of(logical_id, "AWS::Scheduler::Schedule", props)
    target = props["Target"]
    if props.get("State", "ENABLED") == "ENABLED":
        ctx.schedules.append(
            ScheduleTarget(logical_id, props["ScheduleExpression"], target["Arn"], target.get("Input"))
        )
    group = props.get("GroupName", "default")
    attributes = {"Arn": ctx.arn("scheduler", f"schedule/{group}/{name}")}
    return Resource(
        logical_id, "AWS::Scheduler::Schedule", name, attributes, note="run by the local scheduler"
    )
