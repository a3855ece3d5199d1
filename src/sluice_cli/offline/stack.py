"""OfflineStack: template.yaml deployed onto an in-process emulator, with real handlers.

    with OfflineStack(root, env="local", overrides={"MaxReceiveCount": "2"}) as stack:
        s3 = stack.client("s3")
        s3.put_object(Bucket=stack.outputs["RawBucketName"], Key="a.csv", Body=b"...")

Start-up order matters: the downstream simulator and the SMTP sink first (their addresses are
parameters), then the emulator's socket (its URL goes into every function's environment and
moto's Step Functions interpreter), the Lambda runtime and the SNS and EventBridge → Lambda bridges, the
resources in dependency order, the outputs file, and last the scheduler that starts dispatcher
executions.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, Self

from sluice_cli.apisim import ApiSimulator, ApiSimulatorConfig
from sluice_cli.offline.clients import emulator_client
from sluice_cli.offline.events_bridge import EventsLambdaBridge
from sluice_cli.offline.iam import Check, IamGate, RequestMapper, moto_lookups
from sluice_cli.offline.intrinsics import (
    ACCOUNT_ID,
    IntrinsicError,
    Resolver,
    creation_order,
    pseudo_parameters,
)
from sluice_cli.offline.lambda_runtime import DEFAULT_MAX_WORKERS, LambdaRuntime, spec_to_json
from sluice_cli.offline.polling import wait_for
from sluice_cli.offline.provision import ProvisionContext, ProvisionError, Resource, provision
from sluice_cli.offline.quotas import HISTORY_MAX_EVENTS, QuotaGate, StepFunctionsQuotas, moto_queue_size
from sluice_cli.offline.scheduler import DEFAULT_PERIOD_SECONDS, LocalScheduler
from sluice_cli.offline.server import EmulatorServer, enable_state_machine_execution
from sluice_cli.offline.sns_bridge import SnsLambdaBridge
from sluice_cli.offline.template import (
    SamConfigEnvironment,
    inline_local_artifacts,
    load_template,
    read_samconfig,
    resolve_parameters,
    transform,
)
from sluice_cli.smtp_sink import SmtpSink

logger = logging.getLogger(__name__)

API_URL_PARAMETER = "ApiUrl"  # pointed at the downstream simulator
API_RATE_PARAMETER = "ApiRateLimit"  # the simulator's limit, unless given
FUNCTIONS_FILE = "functions.json"  # beside the outputs file
EMULATOR_LOG = "emulator.log"  # in the state directory, beside logs/
MAIL_DIR = "mail"  # in the state directory: what the SMTP sink received, one .eml per message
_EMULATOR_LOGGERS = ("moto", "werkzeug", "flask_cors")
# What Lambda needs of the function's role to send an invocation record to each destination type.
_DESTINATION_ACTIONS = {"sqs": "sqs:SendMessage", "sns": "sns:Publish", "lambda": "lambda:InvokeFunction"}
_TERMINAL_EXECUTION = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}


class StackError(RuntimeError):
    """The stack could not start; the message says which resource or setting and why."""


class LocalService(Protocol):
    """Something the stack starts beside the emulator (an SMTP sink, ...).

    After start(), `parameter_overrides()` (optional) gives template parameters pointing at it;
    the ones the template declares are used.
    """

    def start(self) -> Any: ...

    def stop(self) -> None: ...


class OfflineStack:
    """The whole application on 127.0.0.1: one AWS endpoint, real handlers, a downstream API."""

    def __init__(
        self,
        root: Path | str = ".",
        *,
        env: str | None = "local",
        template: str = "template.yaml",
        overrides: Mapping[str, str] | None = None,
        port: int = 0,
        api_config: ApiSimulatorConfig | None = None,
        api_settings: Mapping[str, float] | None = None,
        start_api: bool = True,
        start_smtp: bool = True,
        schedule_period: float = DEFAULT_PERIOD_SECONDS,
        state_dir: Path | str | None = None,
        outputs_path: Path | str | None = None,
        prewarm: bool = True,
        services: Sequence[LocalService] = (),
        region: str = "us-east-1",
        max_workers_per_function: int = DEFAULT_MAX_WORKERS,
        function_overrides: Mapping[str, Mapping[str, Any]] | None = None,
        history_event_limit: int = HISTORY_MAX_EVENTS,
        secrets: Mapping[str, str] | None = None,
        enforce_iam: bool = True,
        template_patch: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.env = env
        self.template_path = self.root / template
        self.explicit_overrides = dict(overrides or {})
        self.region = region
        self.schedule_period = schedule_period
        self.state_dir = Path(state_dir) if state_dir else self.root / ".sluice"
        self.outputs_path = Path(outputs_path) if outputs_path else self.state_dir / "outputs.json"
        self.log_dir = self.state_dir / "logs"
        self.mail_dir = self.state_dir / MAIL_DIR
        self.prewarm = prewarm
        self.services = list(services)
        # issue 12: Secrets Manager secrets (name -> SecretString) created before any resource; a
        # parameter whose value is one of these names gets the secret's ARN, as deployed.
        self.secrets = dict(secrets or {})
        self._api_config = api_config
        self._api_settings = dict(api_settings or {})
        self._start_api = start_api
        self._start_smtp = start_smtp
        self._port = port
        self._max_workers = max_workers_per_function
        # Local-only changes to a function's properties (e.g. a short Timeout for a test that must
        # see the runtime kill a segment): the template's value is replaced, visibly, by logical id.
        self.function_overrides = {key: dict(value) for key, value in (function_overrides or {}).items()}
        # IAM enforced (offline/iam.py): each function and the state machine call as their role.
        self.iam: IamGate | None = IamGate(RequestMapper(moto_lookups(ACCOUNT_ID))) if enforce_iam else None
        # A change to the transformed template before provisioning (a test removing a permission).
        self.template_patch = template_patch

        self.api: ApiSimulator | None = None
        # The SMTP sink alert emails go to; its messages stay readable after stop().
        self.smtp: SmtpSink | None = None
        self.sns_bridge: SnsLambdaBridge | None = None
        # EventBridge rules' Lambda targets (the IngestRule's WakeDispatcher), which moto cannot invoke.
        self.events_bridge: EventsLambdaBridge | None = None
        # AWS's Step Functions quotas on moto's interpreter (offline/quotas.py); a test may lower the
        # history limit, which takes tens of seconds to reach at AWS's 25,000.
        self.quotas = StepFunctionsQuotas(history_event_limit)
        self.runtime: LambdaRuntime | None = None
        self.server: EmulatorServer | None = None
        self.scheduler: LocalScheduler | None = None
        self.stack_name = ""
        self.parameters: dict[str, Any] = {}
        self.cfn_template: dict[str, Any] = {}
        self.resources: dict[str, Resource] = {}
        self.skipped_by_condition: list[str] = []
        self.outputs: dict[str, Any] = {}
        self._previous_moto_port: str | None = None
        self._previous_execution_setting = False
        self._clients: dict[str, Any] = {}
        self._started = False
        self._stop_lock = threading.Lock()
        self._log_handler: logging.Handler | None = None
        self._logger_state: dict[str, tuple[bool, int]] = {}

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        global _running  # noqa: PLW0603 - the process-wide guard below
        with _running_lock:
            if _running is not None:
                raise StackError(
                    "another OfflineStack is running in this process; moto's backends are process-wide, "
                    "so stop it first"
                )
            _running = self
        samconfig = read_samconfig(self.root / "samconfig.toml", self.env) if self.env else None
        self.stack_name = samconfig.stack_name if samconfig else "sluice-local"
        source = load_template(self.template_path)

        provided = self._start_services(source, samconfig)
        overrides = {
            **(samconfig.parameter_overrides if samconfig else {}),
            **provided,
            **self.explicit_overrides,
        }
        secret_parameters = {name: value for name, value in overrides.items() if value in self.secrets}
        self.parameters = resolve_parameters(source, _without(overrides, secret_parameters))

        self.state_dir.mkdir(parents=True, exist_ok=True)
        _clear_files(self.log_dir, "*.log")
        self._capture_emulator_logs()
        self.runtime = LambdaRuntime(
            endpoint_url="",  # known once the emulator's socket is bound, before any worker starts
            log_dir=self.log_dir,
            region=self.region,
            max_workers=self._max_workers,
            destination_sender=self._send_to_destination,
            # No CloudFormation stack to name offline: the commands an alert email suggests are then
            # the offline ones (`sluice status`, `sluice logs -f …`), not `--stack-name sluice-local`.
            extra_environment={"STACK_NAME": ""},
        )
        self.server = EmulatorServer(
            self.runtime, port=self._port, quota_gate=QuotaGate(moto_queue_size), iam_gate=self.iam
        )
        port = self.server.bind()
        endpoint = self.runtime.endpoint_url = self.server.url
        # moto's Step Functions interpreter calls http://localhost:{MOTO_PORT} for every task.
        self._previous_moto_port = os.environ.get("MOTO_PORT")
        self._started = True  # from here on, stop() restores moto's process-wide settings
        os.environ["MOTO_PORT"] = str(port)
        self._previous_execution_setting = enable_state_machine_execution()
        self.runtime.start()
        # Before any resource exists: SNS messages to lambda subscriptions go to the local runtime.
        self.sns_bridge = SnsLambdaBridge(self.runtime.invoke_async).install()
        events_bridge = self.events_bridge = EventsLambdaBridge(self.runtime.invoke_async).install()
        self.quotas.install()
        self.server.start()
        self._create_secrets(source, overrides, secret_parameters)

        packaged, artifacts = inline_local_artifacts(source, self.root)
        self.cfn_template = apply_function_overrides(
            transform(packaged, self.parameters, self.region), self.function_overrides
        )
        if self.template_patch is not None:
            self.template_patch(self.cfn_template)
        context = ProvisionContext(
            endpoint_url=endpoint,
            region=self.region,
            stack_name=self.stack_name,
            artifacts=artifacts,
            runtime=self.runtime,
            state_dir=self.state_dir,
            iam=self.iam,
        )
        self._provision(context)
        for rule_arn, targets in context.lambda_rule_targets.items():
            events_bridge.route(rule_arn, targets)
        self.outputs = self._outputs()
        self.outputs_path.parent.mkdir(parents=True, exist_ok=True)
        self.outputs_path.write_text(json.dumps(self.outputs, indent=2) + "\n", encoding="utf-8")
        # What `sluice invoke` needs to run a function exactly as this stack does.
        functions = {spec.logical_id: spec_to_json(spec) for spec in self.runtime.functions()}
        (self.outputs_path.parent / FUNCTIONS_FILE).write_text(
            json.dumps(functions, indent=2) + "\n", encoding="utf-8"
        )

        if self.prewarm:
            for spec in self.runtime.functions():
                self.runtime.prewarm(spec.name)
        runtime = self.runtime
        self.scheduler = LocalScheduler(
            context.schedules,
            period_seconds=self.schedule_period,
            stepfunctions=self.client("stepfunctions"),
            invoke_async=lambda arn, payload: runtime.submit_async(arn, payload)[1],
            source_arn=lambda logical_id: str(self.resources[logical_id].attributes.get("Arn", logical_id)),
            region=self.region,
            account=ACCOUNT_ID,
        )
        self.scheduler.start()

    def _start_services(
        self, source: dict[str, Any], samconfig: SamConfigEnvironment | None
    ) -> dict[str, str]:
        """The simulator, the SMTP sink and other services; the parameters pointing at them."""
        provided: dict[str, str] = {}
        declared = source.get("Parameters") or {}
        if self._start_api:
            self.api = ApiSimulator(self._simulator_config(source, samconfig)).start()
            if API_URL_PARAMETER in declared:
                provided[API_URL_PARAMETER] = self.api.url
        if self._start_smtp:
            _clear_files(self.mail_dir, "*.eml")  # this run's alerts only
            self.smtp = SmtpSink(port=0, mail_dir=self.mail_dir)
            self.services.insert(0, self.smtp)  # started first, stopped last
        for service in self.services:
            service.start()
            overrides_of = getattr(service, "parameter_overrides", None)
            if callable(overrides_of):
                provided.update({key: value for key, value in overrides_of().items() if key in declared})
        return provided

    def _create_secrets(
        self, source: dict[str, Any], overrides: Mapping[str, str], secret_parameters: Mapping[str, str]
    ) -> None:
        """Each --secret in the emulator's Secrets Manager; the parameters naming one get its ARN
        (checked against the parameter's AllowedPattern like any value)."""
        if not self.secrets:
            return
        client = self.client("secretsmanager")
        arns = {
            name: client.create_secret(Name=name, SecretString=value)["ARN"]
            for name, value in self.secrets.items()
        }
        named = {parameter: arns[name] for parameter, name in secret_parameters.items()}
        self.parameters = resolve_parameters(source, {**overrides, **named})

    def _simulator_config(
        self, source: dict[str, Any], samconfig: SamConfigEnvironment | None
    ) -> ApiSimulatorConfig:
        """The given config, else defaults whose limit is the stack's own ApiRateLimit."""
        if self._api_config is not None:
            return self._api_config
        settings: dict[str, Any] = dict(self._api_settings)
        if "rate_limit" not in settings and API_RATE_PARAMETER in (source.get("Parameters") or {}):
            overrides = {**(samconfig.parameter_overrides if samconfig else {}), **self.explicit_overrides}
            overrides = _without(overrides, {k: v for k, v in overrides.items() if v in self.secrets})
            settings["rate_limit"] = float(resolve_parameters(source, overrides)[API_RATE_PARAMETER])
        return ApiSimulatorConfig(**settings)

    def stop(self) -> None:
        """Scheduler, running executions, workers, server, simulator: each stopped, nothing left behind."""
        with self._stop_lock:
            if self.scheduler is not None:
                self.scheduler.stop()
                self.scheduler = None
            if self._started:
                self._stop_executions()
            if self.runtime is not None:
                self.runtime.stop()
                self.runtime = None
            if self.server is not None:
                self.server.stop()
                self.server = None
            if self.iam is not None and self._started:
                self.iam.write_report(self.state_dir)
            if self.sns_bridge is not None:  # once nothing can publish through the server
                self.sns_bridge.uninstall()
                self.sns_bridge = None
            if self.events_bridge is not None:
                self.events_bridge.uninstall()
                self.events_bridge = None
            if self.api is not None:
                self.api.stop()
                self.api = None
            for service in reversed(self.services):
                service.stop()
            self.services = []
            if self._started:
                # moto's settings are process-wide: leave them as they were (in-process mock_aws users).
                if self._previous_moto_port is None:
                    os.environ.pop("MOTO_PORT", None)
                else:
                    os.environ["MOTO_PORT"] = self._previous_moto_port
                enable_state_machine_execution(self._previous_execution_setting)
                self.quotas.uninstall()
            self._started = False
            self._release_emulator_logs()
            _release(self)

    def _capture_emulator_logs(self) -> None:
        """moto and werkzeug log to the console (moto's ASL interpreter logs every IsPresent miss at
        ERROR); keep their records in `<state dir>/emulator.log` instead."""
        handler = logging.FileHandler(self.state_dir / EMULATOR_LOG, mode="w", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        self._log_handler = handler
        for name in _EMULATOR_LOGGERS:
            emulator_logger = logging.getLogger(name)
            self._logger_state[name] = (emulator_logger.propagate, emulator_logger.level)
            emulator_logger.addHandler(handler)
            emulator_logger.propagate = False
            emulator_logger.setLevel(logging.WARNING)

    def _release_emulator_logs(self) -> None:
        if self._log_handler is None:
            return
        for name, (propagate, level) in self._logger_state.items():
            emulator_logger = logging.getLogger(name)
            emulator_logger.removeHandler(self._log_handler)
            emulator_logger.propagate, emulator_logger.level = propagate, level
        self._log_handler.close()
        self._log_handler = None
        self._logger_state.clear()

    def _stop_executions(self, grace_seconds: float = 2.0) -> None:
        """Give running dispatcher executions a moment, then stop them (the lease expires by itself)."""
        machines = [r.ref for r in self.resources.values() if r.type == "AWS::StepFunctions::StateMachine"]
        if not machines:
            return
        sfn = self.client("stepfunctions")
        deadline = time.monotonic() + grace_seconds
        try:
            while True:
                running = [
                    execution["executionArn"]
                    for arn in machines
                    for execution in sfn.list_executions(stateMachineArn=arn, statusFilter="RUNNING")[
                        "executions"
                    ]
                ]
                if not running or time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
            for arn in running:
                sfn.stop_execution(executionArn=arn, error="Sluice.Shutdown", cause="offline stack stopped")
        except Exception as error:  # the server may already be unusable; stopping goes on
            logger.warning("could not stop running executions: %s", error)

    # -- provisioning ------------------------------------------------------------------------------

    def _resolver(self) -> Resolver:
        return Resolver(
            parameters=self.parameters,
            pseudo=pseudo_parameters(self.region, self.stack_name),
            ref=self._ref,
            get_att=self._get_att,
            conditions=self.cfn_template.get("Conditions") or {},
            mappings=self.cfn_template.get("Mappings") or {},
        )

    def _ref(self, logical_id: str) -> Any:
        if logical_id not in self.resources:
            raise IntrinsicError(f"Ref {logical_id}: no such resource (or skipped by its condition)")
        return self.resources[logical_id].ref

    def _get_att(self, logical_id: str, attribute: str) -> Any:
        resource = self.resources.get(logical_id)
        if resource is None:
            raise IntrinsicError(f"Fn::GetAtt {logical_id}.{attribute}: no such resource")
        if attribute in resource.attributes:
            return resource.attributes[attribute]
        if not resource.emulated:
            return f"{resource.ref}.{attribute}"  # placeholder of a placeholder: never dereferenced locally
        known = ", ".join(sorted(resource.attributes)) or "none"
        raise IntrinsicError(f"Fn::GetAtt {logical_id}.{attribute}: unknown attribute (known: {known})")

    def _provision(self, context: ProvisionContext) -> None:
        resources = self.cfn_template.get("Resources") or {}
        resolver = self._resolver()
        context.resources = self.resources
        for logical_id in creation_order(resources):
            definition = resources[logical_id]
            condition = definition.get("Condition")
            if condition and not resolver.condition(condition):
                self.skipped_by_condition.append(logical_id)
                continue
            try:
                properties = resolver.resolve(definition.get("Properties") or {})
            except IntrinsicError as error:
                raise StackError(f"{logical_id}: {error}") from error
            try:
                self.resources[logical_id] = provision(context, logical_id, definition["Type"], properties)
            except ProvisionError as error:
                raise StackError(str(error)) from error

    def _outputs(self) -> dict[str, Any]:
        resolver = self._resolver()
        outputs: dict[str, Any] = {}
        for name, output in (self.cfn_template.get("Outputs") or {}).items():
            condition = output.get("Condition")
            if condition and not resolver.condition(condition):
                continue
            outputs[name] = resolver.resolve(output["Value"])
        outputs["EndpointUrl"] = self.endpoint_url
        outputs["ApiUrl"] = (
            self.api.url if self.api is not None else self.parameters.get(API_URL_PARAMETER, "")
        )
        if self.smtp is not None:
            outputs["SmtpUrl"] = self.smtp.url
        outputs["Region"] = self.region
        outputs["StackName"] = self.stack_name
        return outputs

    def _send_to_destination(self, arn: str, record: dict[str, Any]) -> None:
        """An asynchronous invocation's record → its SQS/SNS destination (Lambda's destinations).

        Lambda sends it as the function's role: a role that may not is refused, and the record lost.
        """
        service = arn.split(":")[2]
        body = json.dumps(record)
        function = self.runtime.find(record["requestContext"]["functionArn"]) if self.runtime else None
        action = _DESTINATION_ACTIONS.get(service, f"{service}:?")
        if (
            self.iam is not None
            and function is not None
            and not self.iam.allows(function.access_key_id, Check(action, arn), "destination")
        ):
            logger.warning(
                "%s may not %s on %s: destination record dropped", function.logical_id, action, arn
            )
            return
        if service == "sqs":
            name = arn.rsplit(":", 1)[-1]
            sqs = self.client("sqs")
            sqs.send_message(QueueUrl=sqs.get_queue_url(QueueName=name)["QueueUrl"], MessageBody=body)
        elif service == "sns":
            self.client("sns").publish(TopicArn=arn, Message=body)
        elif service == "lambda" and self.runtime is not None:
            self.runtime.invoke_async(arn, body.encode())
        else:
            logger.warning("destination %s is not emulated; record dropped", arn)

    # -- using the stack -----------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        if self.server is None:
            raise RuntimeError("the stack is not running")
        return self.server.url

    def client(self, service: str, *, max_attempts: int = 3) -> Any:
        """A boto3 client for the emulator (fake credentials; no call can reach AWS)."""
        key = f"{service}/{max_attempts}"
        if key not in self._clients:
            self._clients[key] = emulator_client(
                service, self.endpoint_url, self.region, max_attempts=max_attempts
            )
        return self._clients[key]

    def resource(self, logical_id: str) -> Resource:
        return self.resources[logical_id]

    def not_emulated(self) -> list[Resource]:
        return [resource for resource in self.resources.values() if not resource.emulated]

    def state_machine_arn(self, logical_id: str | None = None) -> str:
        machines = {k: r for k, r in self.resources.items() if r.type == "AWS::StepFunctions::StateMachine"}
        if logical_id is not None:
            return str(machines[logical_id].ref)
        if len(machines) != 1:
            raise ValueError(f"name the state machine: {', '.join(machines) or 'none in the template'}")
        return str(next(iter(machines.values())).ref)

    def start_execution(
        self,
        input: Mapping[str, Any] | None = None,
        *,
        state_machine: str | None = None,
        name: str | None = None,
        wait: bool = True,
        timeout: float = 120.0,
    ) -> dict[str, Any]:
        """Start an execution now (what the scheduler does) and, by default, wait for its end."""
        sfn = self.client("stepfunctions")
        arn = sfn.start_execution(
            stateMachineArn=self.state_machine_arn(state_machine),
            name=name or f"manual-{time.time_ns()}",
            input=json.dumps(dict(input or {})),
        )["executionArn"]
        if not wait:
            return {"executionArn": arn, "status": "RUNNING"}

        def finished() -> dict[str, Any] | None:
            described = sfn.describe_execution(executionArn=arn)
            return described if described["status"] in _TERMINAL_EXECUTION else None

        return wait_for(finished, timeout=timeout, what=f"execution {arn} to end")


_running: OfflineStack | None = None
_running_lock = threading.Lock()


def _without(overrides: Mapping[str, str], names: Mapping[str, str]) -> dict[str, str]:
    """`overrides` but the parameters in `names` (secret names, resolved to ARNs once created)."""
    return {key: value for key, value in overrides.items() if key not in names}


def _release(stack: OfflineStack) -> None:
    global _running  # noqa: PLW0603
    with _running_lock:
        if _running is stack:
            _running = None


def apply_function_overrides(
    template: dict[str, Any], overrides: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Replace properties of AWS::Lambda::Function resources; Environment variables are merged."""
    resources = template.get("Resources") or {}
    for logical_id, changes in overrides.items():
        resource = resources.get(logical_id)
        if resource is None or resource.get("Type") != "AWS::Lambda::Function":
            raise StackError(f"function override for {logical_id}: no such function in the template")
        properties = resource.setdefault("Properties", {})
        for key, value in changes.items():
            if key == "Environment":
                variables = properties.setdefault("Environment", {}).setdefault("Variables", {})
                variables.update(value.get("Variables", {}))
            else:
                properties[key] = value
    return template


def _clear_files(directory: Path, pattern: str) -> None:
    """Each `local up` starts with no function logs and no mail, so both show this run only."""
    if directory.is_dir():
        for path in directory.glob(pattern):
            path.unlink()
