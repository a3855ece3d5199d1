"""The template resolved without an emulator: every function's configuration, for `sluice invoke`.

Nothing is created. Each resource gets the name the offline stack would give it (names are
deterministic, see `physical_name`) and an ARN or URL built from it, so a function invoked
without a running stack sees the same table and bucket names a later `sluice local up` creates.
Values that only exist once created (a KMS key id) are placeholders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice_cli.offline.intrinsics import (
    ACCOUNT_ID,
    IntrinsicError,
    Resolver,
    creation_order,
    pseudo_parameters,
)
from sluice_cli.offline.lambda_runtime import FunctionSpec
from sluice_cli.offline.provision import ProvisionContext, Resource
from sluice_cli.offline.provision.compute import function_spec, lambda_layer
from sluice_cli.offline.template import (
    inline_local_artifacts,
    load_template,
    read_samconfig,
    resolve_parameters,
    transform,
)

NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens, so no AWS call goes anywhere


@dataclass
class ResolvedFunctions:
    stack_name: str
    parameters: dict[str, Any]
    functions: dict[str, FunctionSpec]  # by logical id
    unrunnable: dict[str, str]  # logical id -> why it cannot run locally


def _dry_resource(ctx: ProvisionContext, logical_id: str, kind: str, props: dict[str, Any]) -> Resource:
    """Ref and attributes as the provisioner would answer them, from the name alone."""
    name = ctx.name_of(logical_id, kind, props)
    service, _, short = kind.removeprefix("AWS::").partition("::")
    arn = ctx.arn(service.lower(), f"{short.lower()}/{name}")
    ref: Any = name
    attributes: dict[str, Any] = {"Arn": arn}
    if kind == "AWS::SQS::Queue":
        ref = f"{ctx.endpoint_url}/{ACCOUNT_ID}/{name}"
        attributes = {"Arn": ctx.arn("sqs", name), "QueueName": name, "QueueUrl": ref}
    elif kind == "AWS::SNS::Topic":
        ref = ctx.arn("sns", name)
        attributes = {"TopicArn": ref, "TopicName": name}
    elif kind == "AWS::StepFunctions::StateMachine":
        ref = ctx.arn("states", f"stateMachine:{name}")
        attributes = {"Arn": ref, "Name": name}
    elif kind == "AWS::S3::Bucket":
        attributes = {"Arn": f"arn:aws:s3:::{name}", "DomainName": f"{name}.s3.amazonaws.com"}
    elif kind == "AWS::DynamoDB::Table":
        attributes = {"Arn": ctx.arn("dynamodb", f"table/{name}")}
    elif kind == "AWS::KMS::Key":
        ref = f"offline-{logical_id.lower()}"  # a created key gets a random id; this one is only a label
        attributes = {"Arn": ctx.arn("kms", f"key/{ref}"), "KeyId": ref}
    elif kind == "AWS::IAM::Role":
        attributes = {"Arn": ctx.arn("iam", f"role/{name}", region=False)}
    elif kind == "AWS::Logs::LogGroup":
        attributes = {"Arn": ctx.arn("logs", f"log-group:{name}:*")}
    elif kind == "AWS::SSM::Parameter":
        attributes = {"Type": props.get("Type", "String"), "Value": props.get("Value")}
    return Resource(logical_id, kind, ref, attributes)


def resolve_functions(
    root: Path,
    *,
    env: str | None,
    overrides: dict[str, str] | None = None,
    template: str = "template.yaml",
    region: str = "us-east-1",
    endpoint_url: str = NOWHERE,
    state_dir: Path | None = None,
) -> ResolvedFunctions:
    root = root.resolve()
    samconfig = read_samconfig(root / "samconfig.toml", env) if env else None
    stack_name = samconfig.stack_name if samconfig else "sluice-local"
    source = load_template(root / template)
    parameters = resolve_parameters(
        source, {**(samconfig.parameter_overrides if samconfig else {}), **(overrides or {})}
    )
    packaged, artifacts = inline_local_artifacts(source, root)
    cfn = transform(packaged, parameters, region)
    ctx = ProvisionContext(
        endpoint_url=endpoint_url,
        region=region,
        stack_name=stack_name,
        artifacts=artifacts,
        runtime=None,  # type: ignore[arg-type]
        state_dir=state_dir or root / ".sluice",
    )

    def get_att(logical_id: str, attribute: str) -> Any:
        resource = ctx.resources.get(logical_id)
        if resource is None:
            raise IntrinsicError(f"Fn::GetAtt {logical_id}.{attribute}: no such resource")
        return resource.attributes.get(attribute, f"{resource.ref}.{attribute}")

    def ref(logical_id: str) -> Any:
        if logical_id not in ctx.resources:
            raise IntrinsicError(f"Ref {logical_id}: no such resource")
        return ctx.resources[logical_id].ref

    resolver = Resolver(
        parameters=parameters,
        pseudo=pseudo_parameters(region, stack_name),
        ref=ref,
        get_att=get_att,
        conditions=cfn.get("Conditions") or {},
        mappings=cfn.get("Mappings") or {},
    )
    functions: dict[str, FunctionSpec] = {}
    unrunnable: dict[str, str] = {}
    resources = cfn.get("Resources") or {}
    for logical_id in creation_order(resources):
        definition = resources[logical_id]
        if definition.get("Condition") and not resolver.condition(definition["Condition"]):
            continue
        kind = definition["Type"]
        props = resolver.resolve(definition.get("Properties") or {})
        if kind == "AWS::Lambda::LayerVersion":
            ctx.resources[logical_id] = lambda_layer(ctx, logical_id, props)
        elif kind == "AWS::Lambda::Function":
            spec = function_spec(ctx, logical_id, props)
            name = ctx.name_of(logical_id, kind, props)
            ctx.resources[logical_id] = Resource(
                logical_id, kind, name, {"Arn": ctx.arn("lambda", f"function:{name}")}
            )
            if isinstance(spec, str):
                unrunnable[logical_id] = spec
            else:
                functions[logical_id] = spec
        else:
            ctx.resources[logical_id] = _dry_resource(ctx, logical_id, kind, props)
    return ResolvedFunctions(stack_name, parameters, functions, unrunnable)
