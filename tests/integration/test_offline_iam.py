"""IAM enforced offline (issue 13): a permission the code needs, removed from the transformed
template, fails the pipeline with AccessDenied as it would on AWS.

One stack for both cases, its template missing two permissions: ProcessObject's s3:PutObject on
its checkpoint parts, and the state machine's sqs:SendMessage to InvalidQueue. A valid file then
fails in ProcessObject, an invalid one in the state machine's "Route to invalid queue" Task; both
end FAILED with an alert, as they would on AWS. Everything else the pipeline does is allowed.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from integration import pipeline
from integration.pipeline import (
    MAX_RECEIVE_COUNT,
    item_of,
    queue_bodies,
    subscribe_queue,
    unique_key,
    upload,
    wait_for_state,
)
from integration.stacks import REPO, exclusive_stack
from sluice_cli.offline import OfflineStack
from sluice_cli.offline.polling import wait_for
from sluice_cli.workload import InvalidKind, generate_invalid_csv, orders_csv_bytes

# (role, action, the resource's logical id): each removed from that role's statements.
REMOVED = (
    ("ProcessObjectFunctionRole", "s3:PutObject", "ProcessedBucket"),
    ("DispatcherStateMachineRole", "sqs:SendMessage", "InvalidQueue"),
)


def _names(resource: Any, logical_id: str) -> bool:
    return logical_id in json.dumps(resource)


def remove_permission(template: dict[str, Any], role: str, action: str, resource: str) -> None:
    """Take `action` out of every statement of `role` whose Resource names `resource`."""
    removed = 0
    for policy in template["Resources"][role]["Properties"]["Policies"]:
        document = policy.get("Fn::If", [None, policy])[1].get("PolicyDocument", {})
        for statement in document.get("Statement", []):
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if action in actions and _names(statement["Resource"], resource):
                statement["Action"] = [item for item in actions if item != action] or ["none:None"]
                removed += 1
    assert removed, f"{role} has no {action} on {resource} to remove"


def without_permissions(template: dict[str, Any]) -> None:
    for role, action, resource in REMOVED:
        remove_permission(template, role, action, resource)


@pytest.fixture
def stack_missing_permissions(tmp_path_factory: pytest.TempPathFactory) -> OfflineStack:
    def make() -> OfflineStack:
        return OfflineStack(
            REPO,
            env="local",
            overrides=pipeline.OVERRIDES,
            function_overrides=pipeline.FUNCTION_OVERRIDES,
            api_config=pipeline.SIMULATOR,
            schedule_period=1.0,
            state_dir=tmp_path_factory.mktemp("iam-state"),
            template_patch=without_permissions,
        )

    return exclusive_stack("missing-permissions", make)


def alert_about(stack: OfflineStack, queue_url: str, key: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        notes = [json.loads(m["Body"]) for m in queue_bodies(stack, queue_url)]
        return next(
            (n for n in notes if key in n["Message"] and n["Subject"] == "Sluice: file failed for good"), None
        )

    return wait_for(found, timeout=30, what=f"a failed-file alert about {key} on AlertTopic")


def denials(stack: OfflineStack, role: str) -> list[dict[str, str]]:
    assert stack.iam is not None
    return list(stack.iam.report()["roles"][role]["denials"])


def test_a_function_lacking_a_permission_its_code_needs_fails_the_file_with_access_denied(
    stack_missing_permissions: OfflineStack,
) -> None:
    stack = stack_missing_permissions
    alerts = subscribe_queue(stack, stack.outputs["AlertTopicArn"], f"iam-alerts-{time.time_ns()}")
    data, _ = orders_csv_bytes(10, seed=11)
    obj = upload(stack, unique_key("iam-function"), data)

    item = wait_for_state(stack, obj, {"FAILED"}, attempts=MAX_RECEIVE_COUNT, timeout=90)

    assert "AccessDenied" in item["error"]
    assert "s3:PutObject" in item["error"]
    alert_about(stack, alerts, obj.key)
    denied = denials(stack, "ProcessObjectFunctionRole")
    assert {(d["action"], d["resource"].split("/", 1)[1].split("/")[0]) for d in denied} == {
        ("s3:PutObject", "parts")
    }
    # what the role does have was allowed: it read the raw file and checkpointed in the table
    allowed = stack.iam.report()["roles"]["ProcessObjectFunctionRole"]["allowed"]  # type: ignore[union-attr]
    assert allowed.get("s3:GetObjectVersion", 0) > 0
    assert allowed.get("dynamodb:UpdateItem", 0) > 0


def test_a_state_machine_task_its_role_does_not_allow_fails_with_access_denied(
    stack_missing_permissions: OfflineStack,
) -> None:
    stack = stack_missing_permissions
    obj = upload(stack, unique_key("iam-invalid"), generate_invalid_csv(InvalidKind.BAD_HEADER, rows=5))

    # GIVEN no sqs:SendMessage to InvalidQueue, WHEN the file is found invalid, THEN routing it fails
    # and the Task's Catch records the failure instead of INVALID.
    item = wait_for_state(stack, obj, {"FAILED"}, timeout=60)

    # moto names every SQS Task's client error SQS.SdkClientException; the cause is AWS's message
    assert "is not authorized to perform: sqs:SendMessage" in item["error"]
    assert queue_bodies(stack, stack.outputs["InvalidQueueUrl"]) == []
    denied = denials(stack, "DispatcherStateMachineRole")
    assert {d["action"] for d in denied} == {"sqs:SendMessage"}
    assert all(d["resource"].endswith(stack.outputs["InvalidQueueUrl"].rsplit("/", 1)[1]) for d in denied)
    assert item_of(stack, obj)["state"] == "FAILED"  # type: ignore[index]
