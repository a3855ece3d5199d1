"""template.yaml → CloudFormation, offline, the way `sam package` + the SAM transform would do it.

Tests read the transformed template rather than the SAM one: it is what CloudFormation deploys
(the roles SAM generates from policy templates, the Lambda EventInvokeConfigs, the schedule rule).
Reusable outside tests: `transform_template()` needs only the file and `AWS_DEFAULT_REGION`.
"""

import copy
import json
from pathlib import Path
from typing import Any

from samtranslator.translator.managed_policy_translator import ManagedPolicyLoader
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
ARTIFACTS = "s3://sluice-artifacts-offline"  # stands in for the bucket `sam package` uploads to


class _NoManagedPolicies(ManagedPolicyLoader):
    """The template names managed policies by ARN only; nothing to look up in IAM (no credentials)."""

    def __init__(self) -> None:
        super().__init__(iam_client=None)  # type: ignore[arg-type]

    def load(self) -> dict[str, str]:
        return {}


def load_sam_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The SAM template as a dict, CloudFormation short forms (!Ref, !Sub…) expanded."""
    return yaml_parse(path.read_text())


def packaged(template: dict[str, Any], root: Path = REPO) -> dict[str, Any]:
    """What `sam package` hands to CloudFormation: code as S3 URIs, the ASL file inlined."""
    result = copy.deepcopy(template)
    for logical_id, resource in result.get("Resources", {}).items():
        props = resource.get("Properties", {})
        match resource["Type"]:
            case "AWS::Serverless::Function" if isinstance(props.get("CodeUri"), str):
                props["CodeUri"] = f"{ARTIFACTS}/{logical_id}.zip"
            case "AWS::Serverless::LayerVersion" if isinstance(props.get("ContentUri"), str):
                props["ContentUri"] = f"{ARTIFACTS}/{logical_id}.zip"
            case "AWS::Serverless::StateMachine" if isinstance(props.get("DefinitionUri"), str):
                props["Definition"] = json.loads((root / props.pop("DefinitionUri")).read_text())
    return result


def transform_template(
    path: Path = TEMPLATE, parameter_values: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The CloudFormation template the SAM transform produces from `path` (no AWS call)."""
    return transform(
        packaged(load_sam_template(path), path.parent), parameter_values or {}, _NoManagedPolicies()
    )


def definition_of(cfn: dict[str, Any], logical_id: str = "DispatcherStateMachine") -> str:
    """A transformed state machine's definition text, `${…}` placeholders still in it."""
    definition = cfn["Resources"][logical_id]["Properties"]["DefinitionString"]
    # The transform writes an inline Definition as {"Fn::Join": ["\n", [line, ...]]}.
    separator, lines = definition["Fn::Join"]
    return separator.join(lines)
