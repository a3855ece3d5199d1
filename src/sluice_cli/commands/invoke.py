"""`sluice invoke`: what `sam local invoke` does, without Docker.

The function runs through awslambdaric, Lambda's own runtime interface client, in a process of
its own, with the template's Handler, Timeout, MemorySize and resolved Environment, the layer on
its path, and a Lambda context. Its result (or Lambda's error document) goes to stdout, its logs
to stderr.

Where its AWS calls go: to the running offline stack when `.sluice/outputs.json` names one that
answers (the function then runs with exactly the configuration the stack gave it), to
`--endpoint-url` when given, else nowhere (a closed local port): never to AWS.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from sluice_cli.commands.target import DEFAULT_OUTPUTS, endpoint_alive
from sluice_cli.offline.dryrun import NOWHERE, resolve_functions
from sluice_cli.offline.lambda_runtime import FunctionSpec, LambdaRuntime, Throttled, spec_from_json
from sluice_cli.offline.logsink import ConsoleSink
from sluice_cli.offline.stack import FUNCTIONS_FILE
from sluice_cli.offline.template import TemplateError, parse_parameter_overrides


def find_function(functions: dict[str, FunctionSpec], wanted: str) -> FunctionSpec:
    """By logical id, physical name, or CodeUri directory (`ProcessObjectFunction`, `process_object`)."""
    lowered = wanted.lower()
    for logical_id, spec in functions.items():
        if lowered in {logical_id.lower(), spec.name.lower(), spec.code_dir.name.lower()}:
            return spec
    known = ", ".join(sorted(functions)) or "none"
    raise typer.BadParameter(f"no function {wanted!r} in the template (functions: {known})")


def _running_stack_functions(outputs: Path) -> tuple[dict[str, FunctionSpec], str] | None:
    """The running stack's own function configurations and endpoint, if one is up."""
    specs_file = outputs.parent / FUNCTIONS_FILE
    if not outputs.is_file() or not specs_file.is_file():
        return None
    endpoint = json.loads(outputs.read_text(encoding="utf-8")).get("EndpointUrl")
    if not endpoint or not endpoint_alive(endpoint):
        return None
    data = json.loads(specs_file.read_text(encoding="utf-8"))
    return {logical_id: spec_from_json(item) for logical_id, item in data.items()}, endpoint


def event_buckets(value: Any) -> set[str]:
    """Every S3 bucket an event names: `"bucket": "name"`, S3/EventBridge's `"bucket": {"name": …}`,
    also inside an SQS message's JSON `body`."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "bucket" and isinstance(item, str):
                found.add(item)
            elif key == "bucket" and isinstance(item, dict) and isinstance(item.get("name"), str):
                found.add(item["name"])
            elif key == "body" and isinstance(item, str):
                with contextlib.suppress(ValueError):
                    found |= event_buckets(json.loads(item))
            else:
                found |= event_buckets(item)
    elif isinstance(value, list):
        for item in value:
            found |= event_buckets(item)
    return found


def _check_event_fits_stack(payload: bytes, outputs: Path) -> None:
    """A sample event names a bucket of its own: run against a stack without it, ValidateObject would
    record the file INVALID ("not found") in the stack's table for a file nobody uploaded there."""
    stack = json.loads(outputs.read_text(encoding="utf-8"))
    buckets = {value for name, value in stack.items() if name.endswith("BucketName")}
    unknown = sorted(event_buckets(json.loads(payload)) - buckets)
    if unknown:
        raw = stack.get("RawBucketName", "?")
        raise typer.BadParameter(
            f"the event names bucket(s) {', '.join(unknown)}, which the running stack does not have: "
            f"upload the file to it (aws s3 cp FILE s3://{raw}/incoming/ --endpoint-url "
            f"{stack.get('EndpointUrl')}) and put that bucket, key and version in the event"
        )


def _read_event(event: str | None) -> bytes:
    if event is None:
        return b"{}"
    text = sys.stdin.read() if event == "-" else Path(event).read_text(encoding="utf-8")
    json.loads(text)  # fail here, with the file's name, rather than inside the handler
    return text.encode()


def invoke(
    function: Annotated[str, typer.Argument(help="Logical id, function name, or code directory name.")],
    *,
    event: Annotated[str | None, typer.Option("--event", "-e", help="Event JSON file ('-' = stdin).")] = None,
    env: Annotated[str, typer.Option(help="samconfig.toml environment for parameter values.")] = "local",
    parameter_overrides: Annotated[
        list[str] | None, typer.Option("--parameter", "-p", help="Key=Value template parameter (repeatable).")
    ] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="Send the function's AWS calls here.")] = None,
    outputs: Annotated[Path, typer.Option(help="A running offline stack's outputs file.")] = DEFAULT_OUTPUTS,
    template: Annotated[Path, typer.Option(help="The SAM template.")] = Path("template.yaml"),
) -> None:
    """Run one function's handler once, as Lambda would, and print its answer."""
    try:
        payload = _read_event(event)
    except (OSError, ValueError) as error:
        raise typer.BadParameter(f"event {event}: {error}") from error
    running = None if endpoint_url or parameter_overrides else _running_stack_functions(outputs)
    if running is not None:
        functions, endpoint = running
        _check_event_fits_stack(payload, outputs)
        typer.echo(f"Using the running offline stack at {endpoint}", err=True)
    else:
        endpoint = endpoint_url or NOWHERE
        try:
            resolved = resolve_functions(
                template.parent.resolve(),
                env=env,
                overrides=parse_parameter_overrides(parameter_overrides or []),
                template=template.name,
                endpoint_url=endpoint,
            )
        except TemplateError as error:
            raise typer.BadParameter(str(error)) from error
        functions = resolved.functions
        if endpoint == NOWHERE:
            typer.echo(
                "No running offline stack: the function's AWS calls go nowhere (--endpoint-url to send them)",
                err=True,
            )
    spec = find_function(functions, function)
    runtime = LambdaRuntime(endpoint_url=endpoint, sink=ConsoleSink(sys.stderr))
    runtime.start()
    try:
        runtime.register(spec)
        try:
            result = runtime.invoke(spec.name, payload)
        except Throttled as error:
            raise typer.Exit(code=1) from error
    finally:
        runtime.stop()
    body = result.payload.decode("utf-8", errors="replace")
    with contextlib.suppress(ValueError):  # a handler may answer something that is not JSON
        answer = json.loads(body)
        if endpoint == NOWHERE and _called_aws(answer):
            # Not the handler's fault: say what to do instead of printing botocore's stack.
            answer.pop("stackTrace", None)
            typer.echo(
                f"{spec.logical_id} called AWS, and no offline stack is running: start one with "
                "`sluice local up` (then invoke again), or send its calls elsewhere with --endpoint-url.",
                err=True,
            )
        body = json.dumps(answer, indent=2)
    typer.echo(body)
    if result.function_error:
        raise typer.Exit(code=1)


def _called_aws(answer: Any) -> bool:
    return isinstance(answer, dict) and answer.get("errorType") == "EndpointConnectionError"
