"""Sleep as long as asked: the runtime must kill it at its Timeout."""

import os
import time


def lambda_handler(event, context):
    time.sleep(float(event.get("sleep", 0)))
    if event.get("fail"):
        raise RuntimeError(event["fail"])
    return {"slept": event.get("sleep", 0), "pid": os.getpid()}
