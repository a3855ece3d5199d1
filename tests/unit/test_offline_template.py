"""Reading template.yaml and samconfig.toml for the offline stack (no emulator)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sluice_cli.offline.dryrun import resolve_functions
from sluice_cli.offline.provision import physical_name
from sluice_cli.offline.stack import StackError, apply_function_overrides
from sluice_cli.offline.template import (
    ARTIFACT_BUCKET,
    TemplateError,
    inline_local_artifacts,
    load_template,
    parse_parameter_overrides,
    read_samconfig,
    resolve_parameters,
    transform,
)

REPO = Path(__file__).resolve().parents[2]
ENGINE_APP = REPO / "tests" / "integration" / "engine_app"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, {}),
        ("A=1 B=two", {"A": "1", "B": "two"}),
        ("Schedule='rate(1 minute)' Empty=", {"Schedule": "rate(1 minute)", "Empty": ""}),
        (["A=1", 'Schedule="rate(1 minute)"'], {"A": "1", "Schedule": "rate(1 minute)"}),
        ("ParameterKey=A,ParameterValue=x", {"A": "x"}),
    ],
)
def test_parameter_overrides_parse_like_sam_cli(
    value: str | list[str] | None, expected: dict[str, str]
) -> None:
    assert parse_parameter_overrides(value) == expected


def test_a_parameter_override_without_equals_is_refused() -> None:
    with pytest.raises(TemplateError, match="not Key=Value"):
        parse_parameter_overrides("Oops")


def test_samconfig_environment_merges_global_under_deploy(tmp_path: Path) -> None:
    (tmp_path / "samconfig.toml").write_text(
        "version = 0.1\n"
        "[local.global.parameters]\nstack_name = 'from-global'\nparameter_overrides = 'A=1 B=1'\n"
        "[local.deploy.parameters]\nstack_name = 'sluice-local'\nparameter_overrides = ['B=2', 'C=3']\n"
        "[dev.deploy.parameters]\nstack_name = 'sluice-dev'\n"
    )
    config = read_samconfig(tmp_path / "samconfig.toml", "local")
    assert config.stack_name == "sluice-local"
    assert config.parameter_overrides == {"B": "2", "C": "3"}  # deploy's list replaces global's
    with pytest.raises(TemplateError, match=r"no \[staging\] environment \(environments: local, dev\)"):
        read_samconfig(tmp_path / "samconfig.toml", "staging")


def test_without_samconfig_the_local_stack_name_is_used(tmp_path: Path) -> None:
    config = read_samconfig(tmp_path / "samconfig.toml", "local")
    assert (config.stack_name, config.parameter_overrides) == ("sluice-local", {})


def test_the_repositorys_local_environment_is_valid_for_the_template() -> None:
    config = read_samconfig(REPO / "samconfig.toml", "local")
    values = resolve_parameters(load_template(REPO / "template.yaml"), config.parameter_overrides)
    assert values["Stage"] == "local"
    assert values["DispatchSchedule"] == "rate(1 minute)"  # quotes gone, AllowedPattern met


TEMPLATE = {
    "Parameters": {
        "Stage": {"Type": "String", "Default": "dev", "AllowedValues": ["dev", "prod"]},
        "Size": {"Type": "Number", "Default": 5, "MinValue": 1, "MaxValue": 10},
        "Rate": {"Type": "String", "Default": "rate(1 minute)", "AllowedPattern": r"^(rate|cron)\(.+\)$"},
        "Names": {"Type": "CommaDelimitedList", "Default": "a,b"},
        "Flag": {"Type": "String", "Default": True},
        "Required": {"Type": "String"},
    },
    "Resources": {},
}


def test_parameters_take_defaults_then_overrides() -> None:
    values = resolve_parameters(TEMPLATE, {"Required": "x", "Size": "7"})
    assert values == {
        "Stage": "dev",
        "Size": "7",
        "Rate": "rate(1 minute)",
        "Names": ["a", "b"],
        "Flag": "true",
        "Required": "x",
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, "Required has no default"),
        ({"Required": "x", "Stage": "qa"}, "not one of"),
        ({"Required": "x", "Size": "11"}, "above MaxValue"),
        ({"Required": "x", "Size": "0"}, "below MinValue"),
        ({"Required": "x", "Size": "many"}, "not a number"),
        ({"Required": "x", "Rate": "every minute"}, "AllowedPattern"),
        ({"Required": "x", "Unknown": "1"}, "does not declare: Unknown"),
    ],
)
def test_bad_parameters_are_refused_with_the_reason(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        resolve_parameters(TEMPLATE, overrides)


def test_local_code_becomes_placeholder_s3_uris_and_the_definition_is_inlined() -> None:
    source = load_template(ENGINE_APP / "template.yaml")
    packaged, artifacts = inline_local_artifacts(source, ENGINE_APP)

    code_uri = packaged["Resources"]["EchoFunction"]["Properties"]["CodeUri"]
    assert code_uri.startswith(f"s3://{ARTIFACT_BUCKET}/EchoFunction/")
    bucket, key = code_uri.removeprefix("s3://").split("/", 1)
    assert artifacts.directory(bucket, key) == ENGINE_APP / "functions" / "echo"
    layer_uri = packaged["Resources"]["CommonLayer"]["Properties"]["ContentUri"]
    assert artifacts.directory(*layer_uri.removeprefix("s3://").split("/", 1)) == ENGINE_APP / "layer"
    machine = packaged["Resources"]["PumpStateMachine"]["Properties"]
    assert "DefinitionUri" not in machine
    assert machine["Definition"] == json.loads((ENGINE_APP / "statemachine" / "pump.asl.json").read_text())
    assert (
        source["Resources"]["EchoFunction"]["Properties"]["CodeUri"] == "functions/echo/"
    )  # input untouched


def test_a_code_directory_that_does_not_exist_is_named(tmp_path: Path) -> None:
    template = {"Resources": {"F": {"Type": "AWS::Serverless::Function", "Properties": {"CodeUri": "nope/"}}}}
    with pytest.raises(TemplateError, match=r"F.CodeUri 'nope/': no directory"):
        inline_local_artifacts(template, tmp_path)


def test_the_sam_transform_runs_offline_and_plain_cloudformation_passes_through() -> None:
    packaged, _ = inline_local_artifacts(load_template(ENGINE_APP / "template.yaml"), ENGINE_APP)
    cfn = transform(packaged, {"Greeting": "hi"}, "us-east-1")
    types = {logical_id: resource["Type"] for logical_id, resource in cfn["Resources"].items()}
    assert types["EchoFunction"] == "AWS::Lambda::Function"
    assert types["PumpStateMachine"] == "AWS::StepFunctions::StateMachine"
    assert types["PumpStateMachineTick"] == "AWS::Events::Rule"
    assert any(kind == "AWS::Lambda::LayerVersion" for kind in types.values())
    assert types["SleepyFunctionEventInvokeConfig"] == "AWS::Lambda::EventInvokeConfig"
    plain = {"Resources": {"Q": {"Type": "AWS::SQS::Queue"}}}
    assert transform(plain, {}, "us-east-1") == plain


def test_a_file_that_is_no_template_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("just: text\n")
    with pytest.raises(TemplateError, match="not a CloudFormation template"):
        load_template(tmp_path / "t.yaml")
    with pytest.raises(TemplateError, match="cannot read template"):
        load_template(tmp_path / "missing.yaml")


def test_without_a_stack_functions_resolve_to_the_names_a_stack_would_create() -> None:
    resolved = resolve_functions(ENGINE_APP, env=None, overrides={"Flavour": "fancy"})
    echo = resolved.functions["EchoFunction"]
    assert echo.name == physical_name("sluice-local", "EchoFunction")
    assert echo.environment["RESULTS_TABLE"] == physical_name("sluice-local", "ResultsTable", max_length=255)
    assert echo.environment["SETTING_NAME"] == "/sluice-local/greeting"
    assert echo.environment["MODE"] == "fancy"
    assert echo.memory_mb == 512  # FindInMap on the overridden Flavour
    assert echo.layer_dirs == (ENGINE_APP / "layer",)
    assert resolved.functions["SleepyFunction"].timeout_seconds == 2
    assert resolved.unrunnable == {}


def test_a_template_that_is_not_yaml_is_named_with_the_parser_error(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("Resources:\n  A: b: c\n")
    with pytest.raises(TemplateError, match=r"t\.yaml is not valid YAML: mapping values are not allowed"):
        load_template(tmp_path / "t.yaml")


def test_function_overrides_replace_properties_and_merge_the_environment() -> None:
    template = {
        "Resources": {
            "Fn": {
                "Type": "AWS::Lambda::Function",
                "Properties": {"Timeout": 300, "Environment": {"Variables": {"A": "1", "B": "2"}}},
            },
            "Queue": {"Type": "AWS::SQS::Queue"},
        }
    }
    changed = apply_function_overrides(
        template, {"Fn": {"Timeout": 8, "Environment": {"Variables": {"B": "3"}}}}
    )
    assert changed["Resources"]["Fn"]["Properties"] == {
        "Timeout": 8,
        "Environment": {"Variables": {"A": "1", "B": "3"}},
    }
    with pytest.raises(StackError, match="function override for Queue: no such function"):
        apply_function_overrides(template, {"Queue": {"Timeout": 1}})
