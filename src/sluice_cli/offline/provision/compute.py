"""Lambda, Step Functions, IAM roles, CloudWatch Logs and alarms."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

from sluice_cli.offline.lambda_runtime import AsyncConfig, FunctionSpec
from sluice_cli.offline.provision import (
    ProvisionContext,
    ProvisionError,
    Resource,
    provisioner,
    tags_list,
    text,
)

# -- IAM ----------------------------------------------------------------------------------------------


@provisioner("AWS::IAM::Role")
def iam_role(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    """Created in moto so that ARNs are real; with IAM enforced, its policies are what its callers
    may do (offline/iam.py)."""
    name = ctx.name_of(logical_id, "AWS::IAM::Role", props)
    trust = props.get("AssumeRolePolicyDocument", {})
    iam = ctx.client("iam")
    request: dict[str, Any] = {
        "RoleName": name,
        "AssumeRolePolicyDocument": trust if isinstance(trust, str) else json.dumps(trust),
        "Path": props.get("Path", "/"),
    }
    if props.get("Tags"):
        request["Tags"] = tags_list(props["Tags"])
    role = iam.create_role(**request)["Role"]
    for policy in props.get("Policies", []):
        document = policy["PolicyDocument"]
        if isinstance(document, dict):
            # IAM reads a document without Version as 2008-10-17; moto refuses it outright.
            document = json.dumps({"Version": "2012-10-17", **document})
        iam.put_role_policy(RoleName=name, PolicyName=policy["PolicyName"], PolicyDocument=document)
    attributes = {"Arn": role["Arn"], "RoleId": role["RoleId"]}
    if ctx.iam is None:
        return Resource(
            logical_id, "AWS::IAM::Role", name, attributes, note="recorded, permissions not enforced"
        )
    ctx.iam.register_role(logical_id, role["Arn"], props)
    return Resource(logical_id, "AWS::IAM::Role", name, attributes, note="enforced")


# -- Lambda -------------------------------------------------------------------------------------------


def _layer_path(directory: Path) -> Path:
    """What a layer puts on sys.path: its `python/` folder when it has one (prebuilt), else itself.

    A `BuildMethod: python3.13` layer's ContentUri is built into /opt/python, which is the
    directory itself here.
    """
    return directory / "python" if (directory / "python").is_dir() else directory


@provisioner("AWS::Lambda::LayerVersion")
def lambda_layer(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    name = ctx.name_of(logical_id, "AWS::Lambda::LayerVersion", props)
    content = props.get("Content", {})
    directory = ctx.artifacts.directory(content.get("S3Bucket", ""), content.get("S3Key", ""))
    if directory is None:
        raise ProvisionError(f"{logical_id}: layer content {content} is not a local directory")
    arn = ctx.arn("lambda", f"layer:{name}:1")
    attributes = {"LayerVersionArn": arn, "Directory": str(_layer_path(directory))}
    return Resource(logical_id, "AWS::Lambda::LayerVersion", arn, attributes)


def _code_directory(ctx: ProvisionContext, logical_id: str, code: dict[str, Any], runtime: str) -> Path:
    if "ZipFile" in code:
        # InlineCode: written out as the file Lambda would create (index.py for Python).
        inline = ctx.state_dir / "inline" / logical_id
        inline.mkdir(parents=True, exist_ok=True)
        (inline / "index.py").write_text(code["ZipFile"], encoding="utf-8")
        return inline
    directory = ctx.artifacts.directory(code.get("S3Bucket", ""), code.get("S3Key", ""))
    if directory is None:
        raise ProvisionError(f"{logical_id}: code {code} is not a local directory ({runtime})")
    return directory


def environment_variables(props: dict[str, Any]) -> dict[str, str]:
    variables = props.get("Environment", {}).get("Variables", {})
    return {str(key): text(value) for key, value in variables.items()}


def function_spec(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> FunctionSpec | str:
    """What the local runtime needs to run the function, or why it cannot run it."""
    name = ctx.name_of(logical_id, "AWS::Lambda::Function", props)
    runtime = str(props.get("Runtime", ""))
    if props.get("PackageType") == "Image" or not runtime.startswith("python"):
        return f"runtime {runtime or 'image'} cannot run locally (Python functions only)"
    layer_dirs = []
    for layer_arn in props.get("Layers", []):
        layer = ctx.by_ref(layer_arn)
        if layer is None or "Directory" not in layer.attributes:
            raise ProvisionError(f"{logical_id}: layer {layer_arn} is not a layer of this template")
        layer_dirs.append(Path(layer.attributes["Directory"]))
    reserved = props.get("ReservedConcurrentExecutions")
    credentials = {}
    if ctx.iam is not None:
        credentials["access_key_id"] = ctx.iam.credentials_for(str(props.get("Role", "")), name)
    return FunctionSpec(
        logical_id=logical_id,
        name=name,
        arn=ctx.arn("lambda", f"function:{name}"),
        handler=props["Handler"],
        code_dir=_code_directory(ctx, logical_id, props.get("Code", {}), runtime),
        runtime=runtime,
        layer_dirs=tuple(layer_dirs),
        timeout_seconds=float(props.get("Timeout", 3)),
        memory_mb=int(props.get("MemorySize", 128)),
        environment=environment_variables(props),
        reserved_concurrency=int(reserved) if reserved is not None else None,
        log_format=props.get("LoggingConfig", {}).get("LogFormat", "JSON"),
        **credentials,
    )


@provisioner("AWS::Lambda::Function")
def lambda_function(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    name = ctx.name_of(logical_id, "AWS::Lambda::Function", props)
    attributes = {"Arn": ctx.arn("lambda", f"function:{name}")}
    spec = function_spec(ctx, logical_id, props)
    if isinstance(spec, str):
        return Resource(logical_id, "AWS::Lambda::Function", name, attributes, emulated=False, note=spec)
    ctx.runtime.register(spec)
    dead_letter = props.get("DeadLetterConfig", {}).get("TargetArn")
    if dead_letter:
        ctx.runtime.configure_async(name, AsyncConfig(dead_letter=dead_letter))
    _record_in_moto(ctx, name, props)
    return Resource(logical_id, "AWS::Lambda::Function", name, attributes)


def _record_in_moto(ctx: ProvisionContext, name: str, props: dict[str, Any]) -> None:
    """Register the function with moto too, so `aws lambda get-function` shows its configuration.

    Its code never runs there (the gateway answers every invocation); moto only wants a zip.
    """
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("README.txt", "runs from the working tree; see docs/offline.md")
    request: dict[str, Any] = {
        "FunctionName": name,
        "Runtime": props["Runtime"],
        "Role": props.get("Role", ctx.arn("iam", "role/lambda-offline", region=False)),
        "Handler": props["Handler"],
        "Code": {"ZipFile": archive.getvalue()},
        "Timeout": int(props.get("Timeout", 3)),
        "MemorySize": int(props.get("MemorySize", 128)),
        "Environment": {"Variables": environment_variables(props)},
    }
    ctx.client("lambda").create_function(**request)


@provisioner("AWS::Lambda::EventInvokeConfig")
def lambda_event_invoke_config(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    destinations = props.get("DestinationConfig", {})
    config = AsyncConfig(
        maximum_retry_attempts=int(props.get("MaximumRetryAttempts", 2)),
        on_failure=destinations.get("OnFailure", {}).get("Destination"),
        on_success=destinations.get("OnSuccess", {}).get("Destination"),
    )
    ctx.runtime.configure_async(props["FunctionName"], config)
    return Resource(logical_id, "AWS::Lambda::EventInvokeConfig", f"{props['FunctionName']}:{logical_id}", {})


# -- Step Functions -------------------------------------------------------------------------------------


def state_machine_definition(props: dict[str, Any]) -> str:
    """The definition string CloudFormation would send: DefinitionSubstitutions applied as text."""
    if "Definition" in props:
        definition = json.dumps(props["Definition"])
    elif "DefinitionString" in props:
        definition = str(props["DefinitionString"])
    else:
        raise ProvisionError(
            "the state machine has no Definition or DefinitionString (DefinitionS3Location?)"
        )
    for key, value in (props.get("DefinitionSubstitutions") or {}).items():
        definition = definition.replace("${" + key + "}", text(value))
    try:
        json.loads(definition)
    except json.JSONDecodeError as error:
        raise ProvisionError(f"the definition is not JSON after substitutions: {error}") from error
    return definition


def _camel(value: Any) -> Any:
    """Step Functions' API spells LoggingConfiguration's keys in camelCase; CloudFormation does not."""
    if isinstance(value, dict):
        return {key[:1].lower() + key[1:]: _camel(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_camel(item) for item in value]
    return value


@provisioner("AWS::StepFunctions::StateMachine")
def state_machine(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    name = ctx.name_of(logical_id, "AWS::StepFunctions::StateMachine", props)
    request: dict[str, Any] = {
        "name": name,
        "definition": state_machine_definition(props),
        "roleArn": props.get("RoleArn") or ctx.arn("iam", "role/states-offline", region=False),
        "type": props.get("StateMachineType", "STANDARD"),
    }
    if "LoggingConfiguration" in props:
        request["loggingConfiguration"] = _camel(props["LoggingConfiguration"])
    if "TracingConfiguration" in props:
        request["tracingConfiguration"] = {
            "enabled": props["TracingConfiguration"].get("Enabled") in (True, "true")
        }
    if props.get("Tags"):
        request["tags"] = [{"key": tag["Key"], "value": tag["Value"]} for tag in tags_list(props["Tags"])]
    arn = ctx.client("stepfunctions").create_state_machine(**request)["stateMachineArn"]
    if ctx.iam is not None:
        ctx.iam.bind_state_machine(request["roleArn"], name)
    attributes = {"Arn": arn, "Name": name, "StateMachineRevisionId": "INITIAL"}
    return Resource(logical_id, "AWS::StepFunctions::StateMachine", arn, attributes)


# -- CloudWatch -----------------------------------------------------------------------------------------


@provisioner("AWS::Logs::LogGroup")
def log_group(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    name = ctx.name_of(logical_id, "AWS::Logs::LogGroup", props)
    logs = ctx.client("logs")
    request: dict[str, Any] = {"logGroupName": name}
    if "KmsKeyId" in props:
        request["kmsKeyId"] = props["KmsKeyId"]
    if props.get("Tags"):
        request["tags"] = {tag["Key"]: tag["Value"] for tag in tags_list(props["Tags"])}
    logs.create_log_group(**request)
    if "RetentionInDays" in props:
        logs.put_retention_policy(logGroupName=name, retentionInDays=int(props["RetentionInDays"]))
    return Resource(logical_id, "AWS::Logs::LogGroup", name, {"Arn": ctx.arn("logs", f"log-group:{name}:*")})


_ALARM_KEYS = (
    "AlarmDescription",
    "ActionsEnabled",
    "AlarmActions",
    "OKActions",
    "InsufficientDataActions",
    "MetricName",
    "Namespace",
    "Statistic",
    "ExtendedStatistic",
    "Dimensions",
    "Unit",
    "ComparisonOperator",
    "TreatMissingData",
    "EvaluateLowSampleCountPercentile",
    "Metrics",
    "ThresholdMetricId",
)


def alarm_request(name: str, props: dict[str, Any]) -> dict[str, Any]:
    """CloudFormation AWS::CloudWatch::Alarm → PutMetricAlarm's arguments (numbers typed)."""
    request: dict[str, Any] = {"AlarmName": name, **{key: props[key] for key in _ALARM_KEYS if key in props}}
    for key in ("Period", "EvaluationPeriods", "DatapointsToAlarm"):
        if key in props:
            request[key] = int(props[key])
    if "Threshold" in props:
        request["Threshold"] = float(props["Threshold"])
    if "ActionsEnabled" in request:
        request["ActionsEnabled"] = request["ActionsEnabled"] in (True, "true")
    for query in request.get("Metrics", []):
        for key in ("Period",):
            if key in query:
                query[key] = int(query[key])
        if "MetricStat" in query and "Period" in query["MetricStat"]:
            query["MetricStat"]["Period"] = int(query["MetricStat"]["Period"])
    if props.get("Tags"):
        request["Tags"] = tags_list(props["Tags"])
    return request


@provisioner("AWS::CloudWatch::Alarm")
def alarm(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    name = ctx.name_of(logical_id, "AWS::CloudWatch::Alarm", props)
    ctx.client("cloudwatch").put_metric_alarm(**alarm_request(name, props))
    attributes = {"Arn": ctx.arn("cloudwatch", f"alarm:{name}")}
    return Resource(
        logical_id, "AWS::CloudWatch::Alarm", name, attributes, note="recorded; metrics are not evaluated"
    )


@provisioner("AWS::CloudWatch::Dashboard")
def dashboard(ctx: ProvisionContext, logical_id: str, props: dict[str, Any]) -> Resource:
    name = ctx.name_of(logical_id, "AWS::CloudWatch::Dashboard", props)
    body = props["DashboardBody"]
    ctx.client("cloudwatch").put_dashboard(
        DashboardName=name, DashboardBody=body if isinstance(body, str) else json.dumps(body)
    )
    return Resource(logical_id, "AWS::CloudWatch::Dashboard", name, {}, note="recorded")
