"""The offline stack's engine, on its own small SAM app (tests/integration/engine_app).

What Lambda, EventBridge, the schedule and the template resolution must do locally, checked
through the same AWS APIs a user would call, independent of Sluice's own template.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import psutil
import pytest

from integration.stacks import ENGINE_APP, stop_stack
from sluice_cli.offline import OfflineStack, StackError
from sluice_cli.offline.polling import wait_for


def invoke(
    stack: OfflineStack, name: str, event: dict[str, Any], **kwargs: Any
) -> tuple[dict[str, Any], Any]:
    response = stack.client("lambda").invoke(FunctionName=name, Payload=json.dumps(event).encode(), **kwargs)
    return response, json.loads(response["Payload"].read() or b"null")


def test_outputs_resolve_every_intrinsic_and_skip_false_conditions(engine_stack: OfflineStack) -> None:
    outputs = engine_stack.outputs
    # Ref of a queue is its URL on the local endpoint; of a state machine its ARN.
    assert outputs["QueueUrl"].startswith(
        f"{engine_stack.endpoint_url}/123456789012/sluice-local-InboxQueue-"
    )
    assert outputs["PumpArn"].startswith("arn:aws:states:us-east-1:123456789012:stateMachine:")
    assert outputs["EndpointUrl"] == engine_stack.endpoint_url
    # A false condition removes both the resource and the output that names it.
    assert "FancyQueueUrl" not in outputs
    assert engine_stack.skipped_by_condition == ["FancyOnlyQueue"]
    # Fn::Join / Fn::Select / Fn::Split / Fn::Sub reached the SSM parameter's value and name.
    parameter = engine_stack.client("ssm").get_parameter(Name=outputs["SettingName"])["Parameter"]
    assert (parameter["Name"], parameter["Value"]) == ("/sluice-local/greeting", "hello world")
    # Written to disk for other tools (`sluice status`, awscli).
    assert json.loads(engine_stack.outputs_path.read_text()) == outputs


def test_resources_are_created_from_the_template_and_unemulated_ones_are_reported(
    engine_stack: OfflineStack,
) -> None:
    sqs = engine_stack.client("sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=engine_stack.outputs["QueueUrl"], AttributeNames=["All"])[
        "Attributes"
    ]
    assert attributes["VisibilityTimeout"] == "20"
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["maxReceiveCount"] == 2
    assert redrive["deadLetterTargetArn"].endswith(
        ":sluice-local-InboxDLQ-" + redrive["deadLetterTargetArn"][-12:]
    )
    versioning = engine_stack.client("s3").get_bucket_versioning(Bucket=engine_stack.outputs["BucketName"])
    assert versioning["Status"] == "Enabled"
    missing = {resource.logical_id: resource.note for resource in engine_stack.not_emulated()}
    assert missing == {"Firehose": "no log/metric shipping locally"}
    # The schedule rule is the local scheduler's, not moto's (moto never fires schedules).
    assert engine_stack.resource("PumpStateMachineTick").note == "schedule run by the local scheduler"
    assert [target.source for target in engine_stack.scheduler.targets] == ["PumpStateMachineTick"]


def test_a_function_runs_its_real_handler_with_the_templates_settings(engine_stack: OfflineStack) -> None:
    name = engine_stack.outputs["EchoName"]
    response, answer = invoke(
        engine_stack, f"arn:aws:lambda:us-east-1:123456789012:function:{name}:$LATEST", {"x": 1}
    )
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    assert answer["event"] == {"x": 1}
    assert answer["greet"] == "greetings, layer"  # the layer's ContentUri is on sys.path
    assert answer["function_name"] == name
    assert answer["memory_limit_in_mb"] == "128"  # Fn::FindInMap [Sizes, plain, Memory]
    assert answer["invoked_function_arn"] == f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
    assert 0 < answer["remaining_ms"] <= 10_000  # the Globals Timeout: 10 s
    assert answer["env"] == {
        "GREETING": "hello",
        "SETTING_NAME": "/sluice-local/greeting",
        "MODE": "plain",  # Fn::If on a false condition
        "API": None,  # AWS::NoValue removed the variable
        "AWS_REGION": "us-east-1",
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    assert answer["cwd"] == str(ENGINE_APP / "functions" / "echo")


def test_a_warm_worker_is_reused_and_concurrent_calls_get_their_own(engine_stack: OfflineStack) -> None:
    name = engine_stack.outputs["EchoName"]
    first = invoke(engine_stack, name, {})[1]["pid"]
    assert invoke(engine_stack, name, {})[1]["pid"] == first  # warm: same execution environment

    pids: list[int] = []
    barrier = threading.Barrier(3)

    def call() -> None:
        barrier.wait()
        pids.append(invoke(engine_stack, name, {"sleep": 0.5})[1]["pid"])

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(set(pids)) == 3  # three at once: three execution environments


def test_a_handler_error_is_answered_in_lambdas_format(engine_stack: OfflineStack) -> None:
    response, answer = invoke(engine_stack, engine_stack.outputs["EchoName"], {"fail": "bad input"})
    assert response["FunctionError"] == "Unhandled"
    assert answer["errorType"] == "ValueError"
    assert answer["errorMessage"] == "bad input"
    assert any("app.py" in frame for frame in answer["stackTrace"])


def test_a_function_past_its_timeout_is_killed_and_answers_sandbox_timedout(
    engine_stack: OfflineStack,
) -> None:
    name = engine_stack.outputs["SleepyName"]  # Timeout: !Ref SleepyTimeout (2 s)
    before = invoke(engine_stack, name, {"sleep": 0})[1]["pid"]
    began = time.monotonic()
    response, answer = invoke(engine_stack, name, {"sleep": 30})
    elapsed = time.monotonic() - began
    assert response["FunctionError"] == "Unhandled"
    assert answer["errorType"] == "Sandbox.Timedout"
    assert answer["errorMessage"].endswith("Task timed out after 2.00 seconds")
    assert 2 <= elapsed < 6
    assert not psutil.pid_exists(before) or psutil.Process(before).status() == psutil.STATUS_ZOMBIE
    # Offline only: the killed worker's stacks are in its log, saying where it waited
    log = wait_for(
        lambda: next(
            (
                text
                for path in (engine_stack.state_dir / "logs").glob("Sleepy*.log")
                if "most recent call first" in (text := path.read_text())
            ),
            None,
        ),
        timeout=10,
        what="the timed-out worker's stacks in its log",
    )
    assert "app.py" in log.split("most recent call first", 1)[1]
    # The next invocation gets a fresh execution environment (a cold start).
    assert invoke(engine_stack, name, {"sleep": 0})[1]["pid"] != before


def test_a_process_that_dies_answers_runtime_exit_error(engine_stack: OfflineStack) -> None:
    response, answer = invoke(engine_stack, engine_stack.outputs["CrashName"], {"code": 7})
    assert response["FunctionError"] == "Unhandled"
    assert answer["errorType"] == "Runtime.ExitError"
    assert answer["errorMessage"].endswith("Runtime exited with error: exit status 7")


def test_reserved_concurrency_throttles_like_lambda(engine_stack: OfflineStack) -> None:
    name = engine_stack.outputs["SleepyName"]  # ReservedConcurrentExecutions: 1
    slow = threading.Thread(target=invoke, args=(engine_stack, name, {"sleep": 1.5}))
    slow.start()
    try:
        wait_for(
            lambda: engine_stack.runtime.pool_stats()["SleepyFunction"]["busy"] == 1,
            timeout=10,
            what="the slow invocation to occupy SleepyFunction's only slot",
            interval=0.05,
        )
        client = engine_stack.client("lambda", max_attempts=1)  # no SDK retry to hide the throttle
        with pytest.raises(client.exceptions.TooManyRequestsException):
            client.invoke(FunctionName=name, Payload=b"{}")
    finally:
        slow.join(timeout=10)


def test_an_async_failure_lands_in_the_functions_failure_destination(engine_stack: OfflineStack) -> None:
    sqs = engine_stack.client("sqs")
    queue = engine_stack.outputs["FailureQueueUrl"]
    response, _ = invoke(
        engine_stack, engine_stack.outputs["SleepyName"], {"fail": "async boom"}, InvocationType="Event"
    )
    assert response["StatusCode"] == 202

    def record() -> dict[str, Any] | None:
        messages = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1).get("Messages", [])
        return json.loads(messages[0]["Body"]) if messages else None

    body = wait_for(record, timeout=20, what="the failed async invocation's record in FailureQueue")
    assert body["requestContext"]["condition"] == "RetriesExhausted"
    assert body["requestContext"]["approximateInvokeCount"] == 1  # EventInvokeConfig MaximumRetryAttempts: 0
    assert body["requestPayload"] == {"fail": "async boom"}
    assert body["responsePayload"]["errorMessage"] == "async boom"


def test_s3_to_eventbridge_to_sqs_to_the_scheduled_state_machine(engine_stack: OfflineStack) -> None:
    """An upload reaches the function through the rule, the queue and a scheduled execution."""
    key = f"inbox/{time.time_ns()}.csv"
    put = engine_stack.client("s3").put_object(
        Bucket=engine_stack.outputs["BucketName"], Key=key, Body=b"a,b\n"
    )
    table = engine_stack.outputs["TableName"]
    dynamodb = engine_stack.client("dynamodb")

    def stored() -> dict[str, Any] | None:
        return dynamodb.get_item(TableName=table, Key={"pk": {"S": key}}).get("Item")

    item = wait_for(stored, timeout=30, what=f"EchoFunction to record {key} (rule → queue → schedule → Map)")
    assert item["version"]["S"] == put["VersionId"]
    executions = engine_stack.client("stepfunctions").list_executions(
        stateMachineArn=engine_stack.outputs["PumpArn"]
    )
    assert all(execution["name"].startswith("local-") for execution in executions["executions"])


def test_function_logs_are_json_lines_with_lambdas_platform_lines(engine_stack: OfflineStack) -> None:
    invoke(engine_stack, engine_stack.outputs["EchoName"], {"marker": "log-me"})
    path = engine_stack.log_dir / "EchoFunction.log"

    def lines() -> list[dict[str, Any]] | None:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        return records if any(r.get("event", {}).get("marker") == "log-me" for r in records) else None

    records = wait_for(lines, timeout=10, what="the echo's log line in EchoFunction.log")
    messages = [str(record.get("message")) for record in records]
    assert any(message.startswith("START RequestId:") for message in messages)
    assert any(message.startswith("REPORT RequestId:") and "Init Duration" in message for message in messages)


def test_only_one_stack_runs_per_process(engine_stack: OfflineStack, tmp_path: Any) -> None:
    second = OfflineStack(ENGINE_APP, env=None, start_api=False, state_dir=tmp_path)
    with pytest.raises(StackError, match="another OfflineStack is running"):
        second.start()


def test_stopping_leaves_no_worker_behind(engine_stack: OfflineStack) -> None:
    invoke(engine_stack, engine_stack.outputs["EchoName"], {})
    workers = [
        child
        for child in psutil.Process().children(recursive=True)
        if "awslambdaric" in " ".join(child.cmdline())
    ]
    assert workers, "expected warm workers while the stack runs"
    stop_stack("engine")
    _gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    with pytest.raises(RuntimeError, match="not running"):
        _ = engine_stack.endpoint_url
