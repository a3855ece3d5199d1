"""Echo the event and what the runtime gave the handler; with `store`, record the S3 key."""

import json
import os
import time

import boto3
from common import greet

TABLE = boto3.resource("dynamodb").Table(os.environ["RESULTS_TABLE"])


def lambda_handler(event, context):
    print(json.dumps({"level": "INFO", "message": "echo", "event": event}))
    time.sleep(float(event.get("sleep", 0)))
    if event.get("fail"):
        raise ValueError(event["fail"])
    if event.get("store"):
        detail = json.loads(event["body"])["detail"]
        TABLE.put_item(
            Item={"pk": detail["object"]["key"], "version": detail["object"].get("version-id", "")}
        )
    return {
        "event": event,
        "greet": greet("layer"),
        "function_name": context.function_name,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "invoked_function_arn": context.invoked_function_arn,
        "aws_request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "pid": os.getpid(),
        "env": {
            key: os.environ.get(key)
            for key in (
                "GREETING",
                "SETTING_NAME",
                "MODE",
                "API",
                "AWS_REGION",
                "AWS_LAMBDA_FUNCTION_NAME",
                "POWERTOOLS_TRACE_DISABLED",
            )
        },
        "cwd": os.getcwd(),
    }
