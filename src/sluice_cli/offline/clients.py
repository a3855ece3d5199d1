"""boto3 clients for the local emulator: fake credentials, so a real profile is never sent anywhere."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

# The emulator accepts any credentials; these make sure none of the caller's are used.
FAKE_CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "aws_session_token": "testing",
}


def emulator_client(service: str, endpoint_url: str, region: str, *, max_attempts: int = 3) -> Any:
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(retries={"max_attempts": max_attempts, "mode": "standard"}, max_pool_connections=32),
        **FAKE_CREDENTIALS,
    )
