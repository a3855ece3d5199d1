"""Which stack a command talks to: the offline one (outputs.json) or a deployed one (CloudFormation)."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3

from sluice_cli.offline.clients import emulator_client

DEFAULT_STATE_DIR = Path(".sluice")
DEFAULT_OUTPUTS = DEFAULT_STATE_DIR / "outputs.json"


class TargetError(Exception):
    pass


@dataclass(frozen=True)
class StackTarget:
    outputs: dict[str, Any]
    endpoint_url: str | None  # None: a deployed stack, reached with the caller's AWS credentials
    region: str | None

    def client(self, service: str) -> Any:
        if self.endpoint_url is None:
            return boto3.client(service, region_name=self.region)  # type: ignore[call-overload]
        return emulator_client(service, self.endpoint_url, self.region or "us-east-1")

    def output(self, name: str) -> str:
        if name not in self.outputs:
            known = ", ".join(sorted(self.outputs)) or "none"
            raise TargetError(f"the stack has no output {name} (outputs: {known})")
        return str(self.outputs[name])


def offline_target(outputs_path: Path) -> StackTarget:
    if not outputs_path.is_file():
        raise TargetError(
            f"{outputs_path} not found: start the offline stack (`sluice local up`) or name a deployed "
            "stack with --stack-name"
        )
    outputs = json.loads(outputs_path.read_text(encoding="utf-8"))
    endpoint = outputs.get("EndpointUrl")
    if not endpoint:
        raise TargetError(f"{outputs_path} has no EndpointUrl: it was not written by the offline stack")
    if not endpoint_alive(endpoint):
        raise TargetError(f"nothing answers at {endpoint}: is `sluice local up` still running?")
    return StackTarget(outputs, endpoint, outputs.get("Region"))


def deployed_target(stack_name: str, region: str | None = None) -> StackTarget:
    cloudformation = boto3.client("cloudformation", region_name=region)
    stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    outputs = {item["OutputKey"]: item["OutputValue"] for item in stacks[0].get("Outputs", [])}
    return StackTarget(outputs, None, region or cloudformation.meta.region_name)


def resolve_target(
    outputs_path: Path | None, stack_name: str | None, region: str | None = None
) -> StackTarget:
    if stack_name:
        return deployed_target(stack_name, region)
    return offline_target(outputs_path or DEFAULT_OUTPUTS)


def endpoint_alive(url: str, timeout: float = 1.0) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 80), timeout=timeout):
            return True
    except OSError:
        return False
