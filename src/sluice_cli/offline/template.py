"""Read template.yaml as `sam deploy` would, without AWS: parameters, local artifacts, SAM transform.

`sam package` uploads every local CodeUri/ContentUri and inlines nothing; here the local
directories are swapped for placeholder `s3://` URIs (remembered, so the Lambda runtime can run
the code from its source directory) and each state machine's DefinitionUri for its Definition
read from the file. samtranslator then expands the SAM resources into plain CloudFormation.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from samtranslator.translator.transform import transform as sam_transform
from samtranslator.yaml_helper import yaml_parse

ARTIFACT_BUCKET = "sluice-offline-artifacts"
DEFAULT_LOCAL_STACK_NAME = "sluice-local"

# samtranslator counts its own usage metrics for a publisher the CLI never gives it, and warns
# "There are unpublished metrics" when they are garbage-collected: noise in every stack start.
logging.getLogger("samtranslator.metrics.metrics").setLevel(logging.ERROR)


class TemplateError(Exception):
    """The template, its parameters or samconfig.toml cannot be used as given."""


@dataclass
class LocalArtifacts:
    """What the placeholder `s3://` URIs stand for: local directories of code and layers."""

    directories: dict[str, Path] = field(default_factory=dict)  # "bucket/key" -> directory

    def add(self, logical_id: str, directory: Path) -> str:
        key = f"{logical_id}/{len(self.directories)}"
        self.directories[f"{ARTIFACT_BUCKET}/{key}"] = directory
        return f"s3://{ARTIFACT_BUCKET}/{key}"

    def directory(self, bucket: str, key: str) -> Path | None:
        return self.directories.get(f"{bucket}/{key}")


class _NoManagedPolicies:
    """samtranslator asks IAM for AWS managed policy ARNs; offline there are none to ask."""

    def load(self) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class SamConfigEnvironment:
    stack_name: str
    parameter_overrides: dict[str, str]


def load_template(path: Path) -> dict[str, Any]:
    """Parse a SAM/CloudFormation YAML or JSON template (short-form intrinsics included)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise TemplateError(f"cannot read template {path}: {error}") from error
    try:
        parsed = yaml_parse(text)
    except yaml.YAMLError as error:
        raise TemplateError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(parsed, dict) or "Resources" not in parsed:
        raise TemplateError(f"{path} is not a CloudFormation template (no Resources)")
    return parsed


def parse_parameter_overrides(value: str | list[str] | None) -> dict[str, str]:
    """samconfig's `parameter_overrides`: `"A=1 B='x y'"` or `["A=1", "B=x y"]`."""
    if not value:
        return {}
    # SAM CLI joins a list with spaces and parses the result as the string form: quotes go.
    items = shlex.split(value if isinstance(value, str) else " ".join(str(item) for item in value))
    overrides: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise TemplateError(f"parameter override {item!r} is not Key=Value")
        name, _, raw = item.partition("=")
        # SAM CLI also accepts ParameterKey=A,ParameterValue=1 (the CloudFormation CLI form).
        if name == "ParameterKey" and ",ParameterValue=" in raw:
            name, _, raw = raw.partition(",ParameterValue=")
        overrides[name] = raw
    return overrides


def read_samconfig(path: Path, env: str) -> SamConfigEnvironment:
    """Stack name and parameter overrides of one samconfig.toml environment (global, then deploy)."""
    if not path.exists():
        return SamConfigEnvironment(DEFAULT_LOCAL_STACK_NAME, {})
    config = tomllib.loads(path.read_text(encoding="utf-8"))
    if env not in config:
        known = ", ".join(name for name, value in config.items() if isinstance(value, dict)) or "none"
        raise TemplateError(f"samconfig.toml has no [{env}] environment (environments: {known})")
    section = config[env]
    merged: dict[str, Any] = {}
    # Later sections win, as SAM CLI layers `global` under the command's own section.
    for command in ("global", "validate", "build", "deploy"):
        merged.update(section.get(command, {}).get("parameters", {}))
    stack_name = str(merged.get("stack_name") or DEFAULT_LOCAL_STACK_NAME)
    return SamConfigEnvironment(stack_name, parse_parameter_overrides(merged.get("parameter_overrides")))


def resolve_parameters(template: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    """Every template parameter's value: override, else default; checked like CloudFormation does."""
    declared: dict[str, Any] = template.get("Parameters") or {}
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise TemplateError(f"overrides for parameters the template does not declare: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in overrides:
            raw: Any = overrides[name]
        elif "Default" in spec:
            raw = spec["Default"]
        else:
            raise TemplateError(f"parameter {name} has no default and no override")
        values[name] = _checked_parameter(name, spec, raw)
    return values


def _checked_parameter(name: str, spec: dict[str, Any], raw: Any) -> Any:
    kind = spec.get("Type", "String")
    if kind == "CommaDelimitedList" or kind.startswith("List<"):
        items = raw if isinstance(raw, list) else [part.strip() for part in str(raw).split(",") if part != ""]
        return [str(item) for item in items]
    value = str(raw).lower() if isinstance(raw, bool) else str(raw)
    pattern = spec.get("AllowedPattern")
    if pattern is not None and kind == "String" and re.fullmatch(pattern, value) is None:
        raise TemplateError(f"parameter {name}={value!r} does not match AllowedPattern {pattern}")
    allowed = spec.get("AllowedValues")
    if allowed is not None and value not in [str(item) for item in allowed]:
        raise TemplateError(f"parameter {name}={value!r} is not one of {allowed}")
    if kind == "Number":
        try:
            number = float(value)
        except ValueError:
            raise TemplateError(f"parameter {name}={value!r} is not a number") from None
        if "MinValue" in spec and number < float(spec["MinValue"]):
            raise TemplateError(f"parameter {name}={value} is below MinValue {spec['MinValue']}")
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            raise TemplateError(f"parameter {name}={value} is above MaxValue {spec['MaxValue']}")
    return value


def _local_directory(root: Path, uri: Any, owner: str, prop: str) -> Path | None:
    """A CodeUri/ContentUri naming a local directory, else None (already an S3 location)."""
    if not isinstance(uri, str) or uri.startswith("s3://"):
        return None
    directory = (root / uri).resolve()
    if not directory.is_dir():
        raise TemplateError(f"{owner}.{prop} {uri!r}: no directory {directory}")
    return directory


def inline_local_artifacts(template: dict[str, Any], root: Path) -> tuple[dict[str, Any], LocalArtifacts]:
    """What `sam package` does, minus the upload: local paths become `s3://` placeholders.

    DefinitionUri becomes the inline Definition (JSON or YAML file), so the state machine that
    runs is the file in the repository.
    """
    result = copy.deepcopy(template)
    artifacts = LocalArtifacts()
    globals_function = result.get("Globals", {}).get("Function", {})
    if (
        directory := _local_directory(root, globals_function.get("CodeUri"), "Globals", "CodeUri")
    ) is not None:
        globals_function["CodeUri"] = artifacts.add("Globals", directory)
    for logical_id, resource in result.get("Resources", {}).items():
        properties = resource.get("Properties") or {}
        kind = resource.get("Type")
        if kind == "AWS::Serverless::Function":
            directory = _local_directory(root, properties.get("CodeUri"), logical_id, "CodeUri")
            if directory is not None:
                properties["CodeUri"] = artifacts.add(logical_id, directory)
        elif kind == "AWS::Serverless::LayerVersion":
            directory = _local_directory(root, properties.get("ContentUri"), logical_id, "ContentUri")
            if directory is not None:
                properties["ContentUri"] = artifacts.add(logical_id, directory)
        elif kind == "AWS::Serverless::StateMachine" and isinstance(properties.get("DefinitionUri"), str):
            uri = properties["DefinitionUri"]
            if not uri.startswith("s3://"):
                properties["Definition"] = _read_definition(root / uri, logical_id)
                del properties["DefinitionUri"]
    return result, artifacts


def _read_definition(path: Path, logical_id: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise TemplateError(f"{logical_id}.DefinitionUri: {error}") from error
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return yaml_parse(text)


def transform(template: dict[str, Any], parameter_values: dict[str, Any], region: str) -> dict[str, Any]:
    """samtranslator's transform, offline. A plain CloudFormation template is returned unchanged."""
    if "AWS::Serverless-2016-10-31" not in _transforms(template):
        return copy.deepcopy(template)
    # samtranslator reads the region from the environment (boto3's default session).
    previous = os.environ.get("AWS_DEFAULT_REGION")
    os.environ["AWS_DEFAULT_REGION"] = region
    try:
        return sam_transform(copy.deepcopy(template), parameter_values, _NoManagedPolicies())  # type: ignore[arg-type]
    except Exception as error:
        raise TemplateError(f"SAM transform failed: {error}") from error
    finally:
        if previous is None:
            os.environ.pop("AWS_DEFAULT_REGION", None)
        else:
            os.environ["AWS_DEFAULT_REGION"] = previous


def _transforms(template: dict[str, Any]) -> list[str]:
    value = template.get("Transform") or []
    return [value] if isinstance(value, str) else list(value)
