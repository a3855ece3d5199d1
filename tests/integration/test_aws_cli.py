"""The real AWS CLI against the offline stack: a user's own tool, not our boto3 calls.

`aws s3 cp` above its multipart threshold uploads with CreateMultipartUpload / UploadPart /
CompleteMultipartUpload, the way most large files reach S3; the emulator emits two Object Created
events for it (docs/offline.md), so the file must still be processed exactly once. The same CLI
then reads what Sluice left: the metadata item, the results, the drained queue.

The AWS CLI v1 from PyPI (what `make setup-judges` installs) ignores AWS_ENDPOINT_URL for some
services (SQS among them), so every call names `--endpoint-url`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from integration.pipeline import delivery_counts, queue_drained, unique_key, wait_for_state
from sluice.models import ObjectRef
from sluice_cli.offline import OfflineStack
from sluice_cli.offline.polling import wait_for
from sluice_cli.workload import orders_csv_bytes

REPO = Path(__file__).resolve().parents[2]
AWS = REPO / ".tools" / "awscli" / "bin" / "aws"
CLI_TIMEOUT_SECONDS = 60


@pytest.fixture
def aws(pipeline_stack: OfflineStack, tmp_path: Path) -> Any:
    if not AWS.exists():
        pytest.fail(f"the AWS CLI is not installed at {AWS}: run `make setup-judges`")
    # The CLI's own config: a multipart threshold below the file's size, so `cp` uploads in parts.
    config = tmp_path / "aws-config"
    config.write_text("[default]\ns3 =\n    multipart_threshold = 1KB\n    multipart_chunksize = 5MB\n")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": pipeline_stack.region,
    }

    def run(*args: str) -> str:
        completed = subprocess.run(
            [str(AWS), *args, "--endpoint-url", pipeline_stack.endpoint_url],
            env=env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_SECONDS,
            check=False,
        )
        assert completed.returncode == 0, f"aws {' '.join(args)}: {completed.stderr}"
        return completed.stdout

    return run


def test_a_multipart_upload_by_the_aws_cli_is_processed_once_and_readable_with_it(
    pipeline_stack: OfflineStack, aws: Any, tmp_path: Path
) -> None:
    # GIVEN a 40-row file, uploaded by `aws s3 cp` as a multipart upload (two events offline)
    data, _ = orders_csv_bytes(40, seed=41)
    assert len(data) > 1024, "the file must be above the CLI's multipart threshold"
    local = tmp_path / "orders.csv"
    local.write_bytes(data)
    bucket = pipeline_stack.outputs["RawBucketName"]
    key = unique_key("aws-cli")
    aws("s3", "cp", str(local), f"s3://{bucket}/{key}")
    head = json.loads(aws("s3api", "head-object", "--bucket", bucket, "--key", key))
    assert "-" in head["ETag"], "not a multipart upload: the CLI's threshold was not applied"
    obj = ObjectRef(
        bucket=bucket, key=key, version_id=head.get("VersionId"), size=len(data), etag=head["ETag"].strip('"')
    )

    # WHEN Sluice has processed it
    wait_for_state(pipeline_stack, obj, {"SUCCEEDED"}, timeout=120)

    # THEN every row reached the API once, and the CLI reads the same record and the results
    assert set(delivery_counts(pipeline_stack, obj, range(1, 41)).values()) == {1}
    table = pipeline_stack.outputs["MetadataTableName"]
    items = json.loads(
        aws(
            "dynamodb", "scan", "--table-name", table,
            "--filter-expression", "#k = :k",
            "--expression-attribute-names", json.dumps({"#k": "key"}),
            "--expression-attribute-values", json.dumps({":k": {"S": key}}),
        )
    )["Items"]  # fmt: skip
    assert [(item["state"]["S"], item["rows_delivered"]["N"]) for item in items] == [("SUCCEEDED", "40")]
    # ... and the second event of the multipart upload ends deleted, not processed again nor dead-lettered
    wait_for(lambda: queue_drained(pipeline_stack) or None, timeout=90, what="IngestQueue to drain")
    depth = json.loads(
        aws(
            "sqs", "get-queue-attributes", "--queue-url", pipeline_stack.outputs["IngestQueueUrl"],
            "--attribute-names", "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
        )
    )["Attributes"]  # fmt: skip
    assert depth == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}
    assert set(delivery_counts(pipeline_stack, obj, range(1, 41)).values()) == {1}
