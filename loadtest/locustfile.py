"""Load test: upload CSV files to Sluice's raw bucket and time each one to its terminal state.

Each simulated user uploads a generated orders-v1 file (boto3 PutObject), then polls the metadata
table item of that object version (`pk` = `{bucket}/{key}#{version_id}`) until its `state` is
terminal or the deadline passes. Locust reports two request types:

- `s3` / `put_object`: the upload itself;
- `sluice` / `upload→terminal`: from the start of the upload to the terminal state, a failure when
  the file ends FAILED (or INVALID, or any state other than the one its content calls for) or
  misses the deadline.

Target: the offline stack (`--outputs .sluice/outputs.json`: RawBucketName, MetadataTableName,
EndpointUrl) or a deployed stack (`--stack-name NAME`: its CloudFormation outputs). Every option
also reads an environment variable; see loadtest/README.md for the commands.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import gevent
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from locust import User, events, task
from locust.argument_parser import LocustArgumentParser

from sluice.models import FileState, object_id
from sluice_cli.workload import orders_csv_bytes

TERMINAL = frozenset(
    {FileState.SUCCEEDED, FileState.SUCCEEDED_WITH_REJECTS, FileState.INVALID, FileState.FAILED}
)
logger = logging.getLogger("sluice.loadtest")
RUN_ID = uuid.uuid4().hex[:8]  # keys of one run (one process) never collide with another's
_upload_numbers = itertools.count(1)


@dataclass(frozen=True)
class Options:
    """The load test's own options: `--rows 200` on locust's command line or SLUICE_ROWS=200."""

    outputs: str = ".sluice/outputs.json"
    stack_name: str = ""
    region: str = ""
    rows: int = 50
    rejects: int = 0
    upload_wait: float = 1.0
    deadline: float = 300.0
    poll_interval: float = 0.5
    key_prefix: str = "incoming/loadtest/"

    @classmethod
    def of(cls, parsed: Any) -> Options:
        """From locust's parsed options (None when locust runs as a library: the defaults)."""
        if parsed is None:
            return cls()
        values: dict[str, Any] = {f.name: getattr(parsed, f.name, f.default) for f in dataclasses.fields(cls)}
        return cls(**values)


_HELP = {
    "outputs": "the offline stack's outputs file (ignored with --stack-name)",
    "stack_name": "a deployed stack: read its CloudFormation outputs instead",
    "region": "AWS region (default: the outputs' Region, then AWS_REGION, then us-east-1)",
    "rows": "data rows per file",
    "rejects": "rows per file that fail validation (the file then ends SUCCEEDED_WITH_REJECTS)",
    "upload_wait": "seconds a user waits after one file reached its terminal state",
    "deadline": "seconds from upload to terminal state before the file counts as failed",
    "poll_interval": "seconds between reads of the metadata item",
    "key_prefix": "object key prefix (the ingest rule's filter must match it)",
}


@events.init_command_line_parser.add_listener
def add_options(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("sluice", "where to upload, and what")
    for option in dataclasses.fields(Options):
        group.add_argument(
            f"--{option.name.replace('_', '-')}",
            type=type(option.default),
            default=option.default,
            env_var=f"SLUICE_{option.name.upper()}",
            help=_HELP[option.name],
        )


@dataclass(frozen=True)
class Target:
    bucket: str
    table: str
    region: str
    endpoint_url: str | None  # None: the real AWS endpoints


def resolve_target(options: Options) -> Target:
    """The raw bucket and metadata table of a deployed stack or of the offline stack."""
    if options.stack_name:
        session = boto3.session.Session(region_name=options.region or None)
        stacks = session.client("cloudformation").describe_stacks(StackName=options.stack_name)["Stacks"]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
        region = session.region_name or "us-east-1"
        endpoint = None
    else:
        path = Path(options.outputs)
        if not path.is_file():
            raise SystemExit(
                f"{path} not found: start the offline stack (`sluice local up`) or pass --stack-name"
            )
        outputs = json.loads(path.read_text())
        region = options.region or outputs.get("Region") or "us-east-1"
        endpoint = outputs["EndpointUrl"]
    missing = [name for name in ("RawBucketName", "MetadataTableName") if name not in outputs]
    if missing:
        raise SystemExit(f"stack outputs lack {missing}")
    return Target(outputs["RawBucketName"], outputs["MetadataTableName"], region, endpoint)


@functools.cache
def clients(options: Options) -> tuple[Target, Any, Any]:
    """One target and one pair of clients per process, shared by its users (boto3 clients are)."""
    target = resolve_target(options)
    config = Config(max_pool_connections=200, retries={"mode": "standard", "max_attempts": 5})
    kwargs: dict[str, Any] = {
        "region_name": target.region,
        "endpoint_url": target.endpoint_url,
        "config": config,
    }
    if target.endpoint_url is not None:
        # The offline stack takes any credentials; never send a developer's real ones to it.
        kwargs |= {"aws_access_key_id": "sluice-offline", "aws_secret_access_key": "sluice-offline"}
    return target, boto3.client("s3", **kwargs), boto3.client("dynamodb", **kwargs)


class SluiceUploader(User):
    """Uploads one file, waits for its terminal state, waits `--upload-wait`, again."""

    def on_start(self) -> None:
        self.options = Options.of(self.environment.parsed_options)
        self.target, self.s3, self.dynamodb = clients(self.options)

    def wait_time(self) -> float:
        return self.options.upload_wait

    @task
    def upload_and_wait(self) -> None:
        options, target = self.options, self.target
        number = next(_upload_numbers)
        key = f"{options.key_prefix}{RUN_ID}/{number:06d}.csv"
        data, generated = orders_csv_bytes(options.rows, rejects=options.rejects, seed=number)
        expected = FileState.SUCCEEDED_WITH_REJECTS if generated.rejects else FileState.SUCCEEDED
        began = time.perf_counter()
        try:
            answer = self.s3.put_object(Bucket=target.bucket, Key=key, Body=data, ContentType="text/csv")
        except (BotoCoreError, ClientError) as error:
            self._report("s3", "put_object", began, len(data), error)
            return
        self._report("s3", "put_object", began, len(data), None)

        pk = object_id(target.bucket, key, answer.get("VersionId"))
        state, reason = self._wait_for_terminal_state(pk, began + options.deadline)
        # Messages without the key, so locust's error table groups them; the log names the file.
        failure: Exception | None = None
        if state is None:
            failure = TimeoutError(f"no terminal state within {options.deadline:g}s")
            logger.warning("%s: no terminal state within %gs (%s)", pk, options.deadline, reason)
        elif state != expected:
            failure = RuntimeError(f"ended {state}, expected {expected}")
            logger.warning("%s: ended %s, expected %s: %s", pk, state, expected, reason)
        self._report("sluice", "upload→terminal", began, len(data), failure, key=key, state=state)

    def _wait_for_terminal_state(self, pk: str, deadline: float) -> tuple[str | None, str | None]:
        """(terminal state, its error) or (None, what was last seen) when the deadline passes."""
        last_seen = "no metadata item yet"
        while time.perf_counter() < deadline:
            try:
                item = self.dynamodb.get_item(
                    TableName=self.target.table,
                    Key={"pk": {"S": pk}},
                    ConsistentRead=True,
                    ProjectionExpression="#state, #error",
                    ExpressionAttributeNames={"#state": "state", "#error": "error"},
                ).get("Item")
            except (BotoCoreError, ClientError) as error:
                last_seen = f"get_item failed: {error}"
            else:
                if item is not None:
                    state = item["state"]["S"]
                    error_text = item.get("error", {}).get("S")
                    if state in TERMINAL:
                        return state, error_text
                    last_seen = f"state {state}"
            gevent.sleep(self.options.poll_interval)
        return None, last_seen

    def _report(
        self, kind: str, name: str, began: float, length: int, exception: Exception | None, **context: Any
    ) -> None:
        self.environment.events.request.fire(
            request_type=kind,
            name=name,
            response_time=(time.perf_counter() - began) * 1000,
            response_length=length,
            exception=exception,
            context=context,
        )
