"""Issue 9: a stack cannot silently use the simulated API, nor reach its API in plain http.

One rule, two places: `sluice.settings.api_choice_problem` (ProcessObject's cold start) and
template.yaml's `Rules` with ApiUrl's AllowedPattern (deploy time). One table of cases runs against
both: the settings model, and the transformed template's parameters and Rules evaluated here as
CloudFormation evaluates them before it creates anything.
"""

import tomllib
from typing import Any

import pytest
from datapath_support import create_tables
from moto import mock_aws
from sam_transform import REPO, load_sam_template, transform_template

from sluice import settings
from sluice.alerting import SIMULATED_API_LINE, Notification, render_alert
from sluice.metadata import MetadataStore
from sluice.models import ObjectRef
from sluice.settings import ProcessSettings
from sluice_cli.commands.status import file_record
from sluice_cli.offline.template import TemplateError, resolve_parameters

HTTPS = "https://api.example.com/rows"
LOOPBACK = "http://127.0.0.1:8080/rows"  # the offline stack's simulator
# (Stage, ApiMode, ApiUrl) -> accepted?
CASES: list[tuple[str, str, str, bool]] = [
    ("dev", "http", "", False),  # issue 9: the default used to simulate
    ("prod", "http", "", False),
    ("local", "http", "", False),
    ("staging", "http", "http://api.example.com/rows", False),  # issue 13: plain text on the network
    ("prod", "http", "http://api.example.com/rows", False),
    ("local", "http", "http://api.example.com/rows", False),
    ("dev", "http", "ftp://api.example.com/rows", False),
    ("dev", "http", HTTPS, True),
    ("staging", "http", HTTPS, True),
    ("prod", "http", HTTPS, True),
    ("local", "http", HTTPS, True),
    ("local", "http", LOOPBACK, True),
    ("local", "http", "http://localhost:9000", True),
    ("prod", "simulated", "", False),  # prod's rows must reach the real API
    ("prod", "simulated", HTTPS, False),
    ("dev", "simulated", "", True),  # a performance run on AWS, flagged everywhere
    ("staging", "simulated", HTTPS, True),
    ("local", "simulated", "", True),
]
# A CloudFormation Rule cannot read a URL's scheme: ApiUrl's AllowedPattern admits plain http only to
# a loopback address (which reaches nothing from a Lambda on AWS), and only the cold start refuses
# it on a stage other than local. Loudly, not silently: ProcessObject does not start.
COLD_START_ONLY = [("dev", "http", LOOPBACK), ("prod", "http", "http://localhost:9000")]

REQUIRED = {
    "METADATA_TABLE": "MetadataTable",
    "CONTROL_TABLE": "ControlTable",
    "IDEMPOTENCY_TABLE": "IdempotencyTable",
    "PROCESSED_BUCKET": "processed",
}


@pytest.fixture(scope="module")
def sam() -> dict[str, Any]:
    return load_sam_template()


@pytest.fixture(scope="module")
def cfn() -> Any:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # the translator asks boto3 for a partition
        yield transform_template()


def rule_value(node: Any, parameters: dict[str, Any]) -> Any:
    """A Rules intrinsic with these parameter values. The functions the Rules use today; any other
    fails here, so a new Rule is evaluated or this test is extended, never silently skipped."""
    if not isinstance(node, dict):
        return node
    ((function, argument),) = node.items()
    if function == "Ref":
        return parameters[argument]
    operands = [rule_value(item, parameters) for item in argument]
    functions = {
        "Fn::Equals": lambda: str(operands[0]) == str(operands[1]),
        "Fn::Not": lambda: not operands[0],
        "Fn::And": lambda: all(operands),
        "Fn::Or": lambda: any(operands),
        "Fn::Contains": lambda: str(operands[1]) in [str(item) for item in operands[0]],
    }
    assert function in functions, f"the evaluator does not know {function}"
    return functions[function]()


def deploy_refusals(template: dict[str, Any], overrides: dict[str, str]) -> list[str]:
    """What CloudFormation answers a deploy with: a parameter constraint, else every failed Rule
    assertion's AssertDescription; [] when the stack would be created."""
    try:
        values = resolve_parameters(template, overrides)  # AllowedValues/Pattern, Min/Max, as CFN does
    except TemplateError as error:
        return [str(error)]
    refusals = []
    for rule in template.get("Rules", {}).values():
        if rule_value(rule.get("RuleCondition", True), values):
            refusals += [
                " ".join(assertion["AssertDescription"].split())
                for assertion in rule["Assertions"]
                if not rule_value(assertion["Assert"], values)
            ]
    return refusals


def cold_start_refusal(stage: str, mode: str, url: str) -> str | None:
    try:
        ProcessSettings.from_env({**REQUIRED, "STAGE": stage, "API_MODE": mode, "API_URL": url})
    except RuntimeError as error:
        return str(error)
    return None


@pytest.mark.parametrize(("stage", "mode", "url", "accepted"), CASES)
def test_the_cold_start_and_the_template_rules_agree(
    cfn: dict[str, Any], stage: str, mode: str, url: str, accepted: bool
) -> None:
    refusal = cold_start_refusal(stage, mode, url)
    refusals = deploy_refusals(cfn, {"Stage": stage, "ApiMode": mode, "ApiUrl": url})

    assert (refusal is None) is accepted, refusal
    assert (refusals == []) is accepted, refusals
    if not accepted:  # each names what to set
        assert refusal is not None
        assert ("API_MODE" if mode == "simulated" else "API_URL") in refusal
        assert all("ApiUrl" in text for text in refusals)


@pytest.mark.parametrize(("stage", "mode", "url"), COLD_START_ONLY)
def test_a_loopback_http_api_on_a_deployed_stage_is_refused_at_the_cold_start(
    cfn: dict[str, Any], stage: str, mode: str, url: str
) -> None:
    assert deploy_refusals(cfn, {"Stage": stage, "ApiMode": mode, "ApiUrl": url}) == []  # see COLD_START_ONLY
    refusal = cold_start_refusal(stage, mode, url)
    assert refusal is not None
    assert "must start with https://" in refusal


def test_without_a_mode_and_a_url_the_cold_start_fails_naming_the_variable() -> None:
    # GIVEN the environment a stack deployed as the README said had before issue 9
    with pytest.raises(RuntimeError, match=r"API_URL is empty with API_MODE=http: set ApiUrl=https://"):
        ProcessSettings.from_env({**REQUIRED, "STAGE": "prod", "API_URL": ""})


def test_without_a_stage_the_cold_start_fails_naming_it() -> None:
    with pytest.raises(RuntimeError, match="STAGE: Field required"):
        ProcessSettings.from_env({**REQUIRED, "API_URL": HTTPS})


def overrides_of(env: str) -> dict[str, str]:
    config = tomllib.loads((REPO / "samconfig.toml").read_text())
    items = config[env]["deploy"]["parameters"]["parameter_overrides"]
    return {key: value.strip('"') for key, value in (item.split("=", 1) for item in items)}


@pytest.mark.parametrize("env", ["default", "dev", "staging", "prod", "local"])
def test_a_samconfig_environment_deploys_only_once_its_api_url_is_given(
    cfn: dict[str, Any], env: str
) -> None:
    overrides = overrides_of(env)
    assert overrides["ApiMode"] == "http"  # said, not left to a default

    refusals = deploy_refusals(cfn, overrides)

    assert refusals == [
        'ApiMode=http needs ApiUrl: add "ApiUrl=https://<your API>" to this environment\'s '
        "parameter_overrides in samconfig.toml (or ApiMode=simulated for a performance run outside prod)."
    ]
    assert deploy_refusals(cfn, {**overrides, "ApiUrl": HTTPS}) == []


def test_prod_refuses_the_simulated_api_at_deploy(cfn: dict[str, Any]) -> None:
    refusals = deploy_refusals(cfn, {**overrides_of("prod"), "ApiMode": "simulated"})

    assert len(refusals) == 1
    assert refusals[0].startswith("Stage=prod refuses ApiMode=simulated")


@pytest.mark.parametrize(
    ("stage", "refused"), [("local", False), ("dev", True), ("staging", True), ("prod", True)]
)
def test_plain_text_smtp_is_refused_outside_the_local_stage(
    cfn: dict[str, Any], stage: str, refused: bool
) -> None:
    refusals = deploy_refusals(cfn, {"Stage": stage, "ApiUrl": HTTPS, "SmtpSecurity": "none"})

    assert bool(refusals) is refused
    assert all(text.startswith("SmtpSecurity=none sends alert email in plain text") for text in refusals)
    assert deploy_refusals(cfn, {"Stage": stage, "ApiUrl": HTTPS, "SmtpSecurity": "starttls"}) == []


def test_the_rules_are_the_sam_templates_own_and_near_its_parameters(sam: dict[str, Any], cfn: dict) -> None:
    assert cfn["Rules"] == sam["Rules"]  # the SAM transform passes them through unchanged
    assert set(sam["Rules"]) == {
        "ApiUrlRequiredForHttp",
        "ApiModeSimulatedRefusedInProd",
        "SmtpSecurityNoneOnlyLocal",
        "ApiAuthSecretRequired",
        "ApiAuthSecretNeedsType",
    }
    sections = list(sam)
    assert sections.index("Rules") == sections.index("Parameters") + 1


def test_the_settings_and_the_template_declare_the_same_values(sam: dict[str, Any]) -> None:
    parameters = sam["Parameters"]
    assert parameters["ApiUrl"]["AllowedPattern"] == settings.API_URL_PATTERN
    assert parameters["ApiMode"]["AllowedValues"] == list(settings.ApiMode.__args__)
    assert parameters["ApiMode"]["Default"] == ProcessSettings.model_fields["api_mode"].default == "http"
    assert parameters["Stage"]["AllowedValues"] == list(settings.Stage.__args__)
    assert settings.LOCAL_STAGE in parameters["Stage"]["AllowedValues"]
    assert set(parameters["Stage"]["AllowedValues"]) >= settings.NO_SIMULATION_STAGES


# ------------------------------------------------------------------------- visible everywhere


def test_the_metadata_record_carries_the_api_mode() -> None:
    with mock_aws():
        table = create_tables()["MetadataTable"]
        obj = ObjectRef(bucket="raw", key="in/a.csv", version_id="v1", size=10)
        plain = ObjectRef(bucket="raw", key="in/b.csv", version_id="v1", size=10)
        simulating = MetadataStore(table, api_mode="simulated")
        attempt = simulating.register(obj).attempt
        simulating.start_processing(obj, ["id"], attempt=attempt)
        unsaid = MetadataStore(table)  # the functions that do not deliver leave it alone
        attempt = unsaid.register(plain).attempt
        unsaid.start_processing(plain, ["id"], attempt=attempt)

        item = simulating.get(obj.id)
        other = unsaid.get(plain.id)

    assert item is not None
    assert other is not None
    assert item["api_mode"] == "simulated"
    assert "api_mode" not in other
    assert file_record(item)["api_mode"] == "simulated"  # sluice status shows it


def test_an_alert_of_a_simulating_stack_says_so_first() -> None:
    message = Notification(message_id="m-1", message="something happened", subject="", topic_arn="arn")

    simulated = render_alert(message, api_mode="simulated")
    real = render_alert(message, api_mode="http")

    assert simulated.body.splitlines()[0] == SIMULATED_API_LINE == "API: simulated (no row left the stack)"
    assert simulated.body.endswith(real.body)
    assert "simulated" not in real.body


SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:api-AbCdEf"


@pytest.mark.parametrize(
    ("auth_type", "secret", "accepted"),
    [
        ("none", "", True),
        ("bearer", SECRET, True),
        ("oauth2-client-credentials", SECRET, True),
        ("bearer", "", False),  # issue 12: a kind needs its secret
        ("api-key", "", False),
        ("none", SECRET, False),  # and a secret its kind
    ],
)
def test_the_cold_start_and_the_rules_agree_on_the_api_credential(
    cfn: dict[str, Any], auth_type: str, secret: str, accepted: bool
) -> None:
    environment = {**REQUIRED, "STAGE": "dev", "API_URL": HTTPS, "API_AUTH_TYPE": auth_type}
    try:
        ProcessSettings.from_env({**environment, "API_AUTH_SECRET_ARN": secret})
        refusal = None
    except RuntimeError as error:
        refusal = str(error)
    refusals = deploy_refusals(
        cfn, {"Stage": "dev", "ApiUrl": HTTPS, "ApiAuthType": auth_type, "ApiAuthSecretArn": secret}
    )

    assert (refusal is None) is accepted, refusal
    assert (refusals == []) is accepted, refusals
    assert all("ApiAuth" in text for text in refusals)


def test_a_url_placeholder_passes_the_same_rules_as_its_url(cfn: dict[str, Any]) -> None:
    for stage, url in (
        ("dev", "https://api.example.com/items/{id}"),
        ("local", "http://127.0.0.1:9/items/{id}"),
    ):
        assert deploy_refusals(cfn, {"Stage": stage, "ApiUrl": url}) == []
        assert cold_start_refusal(stage, "http", url) is None
    assert deploy_refusals(cfn, {"Stage": "local", "ApiUrl": "http://{host}/items"}) != []
