"""The emulator endpoint itself: behaviours of real AWS that moto alone does not give."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from integration.stacks import stop_all
from sluice_cli.offline.lambda_runtime import LambdaRuntime
from sluice_cli.offline.server import EmulatorServer

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmulatorServer]:
    stop_all()  # moto's backends are process-wide: a shared stack would not survive this server's stop
    subject = EmulatorServer(LambdaRuntime(endpoint_url="http://127.0.0.1:1", log_dir=tmp_path))
    subject.start()
    yield subject
    subject.stop()


def test_conditional_writes_from_many_threads_never_both_win(server: EmulatorServer) -> None:
    """GIVEN 8 threads that, round after round, all try the same conditional update at once,
    THEN exactly one of them wins each round, as on DynamoDB."""
    config = Config(retries={"max_attempts": 1}, max_pool_connections=16)
    dynamodb = boto3.client("dynamodb", endpoint_url=server.url, config=config)
    dynamodb.create_table(
        TableName="counters",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.put_item(TableName="counters", Item={"pk": {"S": "c"}, "n": {"N": "0"}})
    rounds, threads_count = 100, 8
    barrier = threading.Barrier(threads_count, timeout=30)
    wins = [0] * rounds

    def contend() -> None:
        for n in range(rounds):
            barrier.wait()
            try:
                dynamodb.update_item(
                    TableName="counters",
                    Key={"pk": {"S": "c"}},
                    UpdateExpression="SET n = :next",
                    ConditionExpression="n = :seen",
                    ExpressionAttributeValues={":seen": {"N": str(n)}, ":next": {"N": str(n + 1)}},
                )
                wins[n] += 1
            except ClientError as error:
                if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise

    threads = [threading.Thread(target=contend) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    contested = [n for n, count in enumerate(wins) if count != 1]
    assert not contested, f"rounds not won by exactly one writer: {contested}"
