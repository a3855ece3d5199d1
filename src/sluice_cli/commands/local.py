"""`sluice local up`: the offline stack, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sluice_cli.offline import OfflineStack, StackError
from sluice_cli.offline.iam import IAM_REPORT_FILE, summary_line
from sluice_cli.offline.provision import Resource
from sluice_cli.offline.scheduler import DEFAULT_PERIOD_SECONDS
from sluice_cli.offline.template import TemplateError, parse_parameter_overrides

local_app = typer.Typer(
    help="The offline stack: template.yaml on an embedded AWS emulator.", no_args_is_help=True
)

DEFAULT_PORT = 4566
API_URL_PARAMETER = "ApiUrl"

# issue 12: your own API offline, and the secrets it needs (shared by `local up` and `run`)
ApiUrlOption = Annotated[
    str | None,
    typer.Option(
        "--api-url",
        help="Your API instead of the simulator (ApiUrl; http:// only to 127.0.0.1; {column} placeholders).",
    ),
]
SecretOption = Annotated[
    list[str] | None,
    typer.Option(
        "--secret",
        help="NAME=VALUE: a Secrets Manager secret created before the stack; -p X=NAME then gets its ARN "
        "(repeatable).",
    ),
]


def parse_secrets(values: list[str] | None) -> dict[str, str]:
    """`NAME=VALUE` options as {name: value}; an error names the option, never the value."""
    secrets: dict[str, str] = {}
    for value in values or []:
        name, separator, text = value.partition("=")
        if not separator or not name.strip():
            raise typer.BadParameter('--secret: expected NAME=VALUE, e.g. tok=\'{"token": "…"}\'')
        secrets[name.strip()] = text
    return secrets


def own_api(api_url: str | None, overrides: dict[str, str]) -> tuple[bool, dict[str, str]]:
    """Whether the simulator starts, and the overrides: --api-url replaces it as ApiUrl."""
    if api_url is None:
        return True, overrides
    return False, {**overrides, API_URL_PARAMETER: api_url}


def parse_latency(value: str | None) -> tuple[float, float] | None:
    """`0.05-0.2` (seconds) → (0.05, 0.2); a single number is a fixed latency."""
    if value is None:
        return None
    low, _, high = value.partition("-")
    try:
        bounds = (float(low), float(high or low))
    except ValueError:
        raise typer.BadParameter(
            f"--api-latency {value!r}: expected MIN-MAX in seconds, e.g. 0.05-0.2"
        ) from None
    if not 0 <= bounds[0] <= bounds[1]:
        raise typer.BadParameter(f"--api-latency {value!r}: need 0 <= MIN <= MAX")
    return bounds


def api_settings(
    api_rate: float | None, api_latency: str | None, api_error_rate: float | None, overrides: dict[str, str]
) -> tuple[dict[str, float], dict[str, str]]:
    """The simulator settings the options change; --api-rate also sets the stack's own limit."""
    changes: dict[str, float] = {}
    if api_rate is not None:
        changes["rate_limit"] = api_rate
        overrides = {"ApiRateLimit": str(api_rate), **overrides}
    if (latency := parse_latency(api_latency)) is not None:
        changes["latency_min"], changes["latency_max"] = latency
    if api_error_rate is not None:
        changes["error_rate"] = api_error_rate
    return changes, overrides


def describe(stack: OfflineStack, console: Console) -> None:
    """What `local up` prints once the stack is up: where things are, and what is not emulated."""
    console.print(
        f"[bold green]Offline stack {stack.stack_name} is up[/] (template {stack.template_path.name})"
    )
    console.print(f"  AWS endpoint   [bold]{stack.endpoint_url}[/]   (AWS_ENDPOINT_URL; any credentials)")
    if stack.api is not None:
        config = stack.api.config
        console.print(
            f"  downstream API [bold]{stack.api.url}[/]   limit {config.rate_limit:g}/s, latency "
            f"{config.latency_min:g}-{config.latency_max:g} s, error rate {config.error_rate:g}"
        )
    else:
        console.print(
            f"  downstream API [bold]{escape(str(stack.parameters.get(API_URL_PARAMETER, '')))}[/]   yours "
            f"(no simulator), {stack.parameters.get('ApiMethod', 'POST')}, auth "
            f"{stack.parameters.get('ApiAuthType', 'none')}"
        )
    if stack.secrets:
        console.print(
            f"  secrets        {', '.join(sorted(stack.secrets))}   (Secrets Manager, in the emulator)"
        )
    if stack.smtp is not None:
        console.print(
            f"  SMTP sink      [bold]{stack.smtp.url}[/]   alert emails, saved in {stack.mail_dir}/*.eml"
        )
    if stack.iam is not None:
        console.print(
            f"  IAM            enforced: functions and the state machine call as their roles "
            f"(report: {stack.state_dir / IAM_REPORT_FILE})"
        )
    console.print(f"  outputs        {stack.outputs_path}")
    console.print(f"  function logs  {stack.log_dir}   (`sluice logs -f`)")
    if stack.scheduler is not None and stack.scheduler.targets:
        names = ", ".join(target.source for target in stack.scheduler.targets)
        console.print(f"  schedules      {names}: every {stack.schedule_period:g} s locally")
    by_type: dict[str, list[Resource]] = {}
    for resource in stack.resources.values():
        by_type.setdefault(resource.type, []).append(resource)
    table = Table(title=f"{len(stack.resources)} resources from {stack.template_path.name}")
    table.add_column("type", no_wrap=True)
    table.add_column("n", justify="right")
    table.add_column("locally", overflow="fold")
    for kind, resources in sorted(by_type.items()):
        notes = sorted(
            {(r.note or "created") if r.emulated else f"[yellow]NOT EMULATED[/]: {r.note}" for r in resources}
        )
        table.add_row(kind.removeprefix("AWS::"), str(len(resources)), "; ".join(notes))
    console.print(table)
    missing = stack.not_emulated()
    if missing:
        listed = ", ".join(f"{r.logical_id} ({r.type})" for r in missing)
        console.print(f"[yellow]Not emulated ({len(missing)}):[/] {listed}")
    if stack.skipped_by_condition:
        console.print("Skipped by their condition: " + ", ".join(stack.skipped_by_condition))


def show_new_alerts(stack: OfflineStack, console: Console, shown: int) -> int:
    """One line per alert email the sink received since the last call; answers how many are shown."""
    received = stack.smtp.received() if stack.smtp is not None else []
    for mail in received[shown:]:
        where = f"   {mail.path}" if mail.path is not None else ""
        console.print(f"✉ alert email: [bold]{escape(mail.subject)}[/] → {escape(mail.to)}{where}")
    return len(received)


@local_app.command("up")
def up(
    *,
    port: Annotated[
        int, typer.Option(help="Port of the AWS endpoint on 127.0.0.1 (0 = any free one).")
    ] = DEFAULT_PORT,
    outputs: Annotated[Path | None, typer.Option(help="Where to write the stack outputs.")] = None,
    env: Annotated[str, typer.Option(help="samconfig.toml environment for parameter values.")] = "local",
    api_rate: Annotated[
        float | None, typer.Option(help="Downstream limit, requests/s (also ApiRateLimit).")
    ] = None,
    api_latency: Annotated[str | None, typer.Option(help="Downstream latency MIN-MAX seconds.")] = None,
    api_error_rate: Annotated[
        float | None, typer.Option(help="Share of downstream calls answered 503.")
    ] = None,
    parameter_overrides: Annotated[
        list[str] | None, typer.Option("--parameter", "-p", help="Key=Value template parameter (repeatable).")
    ] = None,
    api_url: ApiUrlOption = None,
    secret: SecretOption = None,
    schedule_period: Annotated[
        float, typer.Option(help="Seconds between scheduled dispatcher starts (0 = never).")
    ] = DEFAULT_PERIOD_SECONDS,
    template: Annotated[Path, typer.Option(help="The SAM template.")] = Path("template.yaml"),
) -> None:
    """Start the offline stack on 127.0.0.1 and keep it running until Ctrl-C or SIGTERM."""
    console = Console()
    overrides = parse_parameter_overrides(parameter_overrides or [])
    api_changes, overrides = api_settings(api_rate, api_latency, api_error_rate, overrides)
    start_api, overrides = own_api(api_url, overrides)
    secrets = parse_secrets(secret)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    stack = OfflineStack(
        template.parent.resolve(),
        env=env,
        template=template.name,
        overrides=overrides,
        port=port,
        api_settings=api_changes,
        start_api=start_api,
        secrets=secrets,
        schedule_period=schedule_period,
        outputs_path=outputs,
    )
    try:
        with console.status("Starting the offline stack…"):
            stack.start()
        describe(stack, console)
        console.print("[dim]Ctrl-C to stop.[/]")
        shown = 0
        while not stop.wait(0.5):  # a timed wait lets the signal handler run promptly
            shown = show_new_alerts(stack, console, shown)
        console.print("Stopping…")
    except (StackError, TemplateError) as error:
        console.print(f"[red]Could not start the offline stack:[/] {error}")
        raise typer.Exit(code=1) from error
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stack.iam is not None:
        console.print(f"{summary_line(stack.iam.report())}  ({stack.state_dir / IAM_REPORT_FILE})")
    console.print("Stopped; no process left behind.")
