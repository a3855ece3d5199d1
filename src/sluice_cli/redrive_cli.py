"""`sluice redrive`: dead letters back into the pipeline, offline or against a deployed stack.

Where things are comes from `.sluice/outputs.json` (the offline stack's outputs, with its
`EndpointUrl`) or, with `--stack-name`, from the deployed stack's CloudFormation outputs
(`sluice_cli.commands.target`). The work is `sluice.redrive`, the same code the Redrive function runs.
"""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sluice.redrive import Redriver, RedriveReport, RedriveRequest, RedriveSource, RedriveTargets
from sluice_cli.commands.target import StackTarget, TargetError, resolve_target

OUTPUT_KEYS = {  # stack output → RedriveTargets field
    "IngestQueueUrl": "ingest_queue_url",
    "IngestDLQUrl": "ingest_dlq_url",
    "IngestRuleDLQUrl": "ingest_rule_dlq_url",
    "FailureDestinationQueueUrl": "failure_destination_queue_url",
    "DispatcherStateMachineArn": "dispatcher_state_machine_arn",
}


def targets_of(outputs: dict[str, str]) -> RedriveTargets:
    missing = [key for key in ("IngestQueueUrl", "IngestDLQUrl") if not outputs.get(key)]
    if missing:
        raise TargetError(f"the stack outputs lack {', '.join(missing)}")
    return RedriveTargets(
        **{field: str(outputs[key]) for key, field in OUTPUT_KEYS.items() if outputs.get(key)}
    )


def redriver_for(target: StackTarget, rate: int) -> Redriver:
    return Redriver(
        sqs=target.client("sqs"),
        lambda_client=target.client("lambda"),
        sfn=target.client("stepfunctions"),
        targets=targets_of(target.outputs),
        rate_per_second=rate,
    )


def render(report: RedriveReport, console: Console) -> None:
    title = "Redrive (dry run: nothing moved)" if report.dry_run else "Redrive"
    table = Table(title=title)
    for column in ("source", "method", "status", "before", "after", "moved", "IngestQueue before → after"):
        table.add_column(column, justify="right" if column in ("before", "after", "moved") else "left")
    for s in report.sources:
        destination = (
            "" if s.destination_before is None else f"{s.destination_before} → {s.destination_after}"
        )
        table.add_row(
            s.source.value, s.method, s.status, str(s.before), str(s.after), str(s.moved), destination
        )
    console.print(table)
    for s in report.sources:
        for error in s.errors:
            console.print(f"[red]{s.source.value}[/red]: {error}")
        if s.skipped:
            console.print(
                f"{s.source.value}: {s.skipped} record(s) left in place (not Lambda failure records)"
            )


def redrive(
    *,
    source: Annotated[RedriveSource, typer.Option(help="What to redrive.")] = RedriveSource.ALL,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count; move nothing.")] = False,
    max_messages: Annotated[int, typer.Option(min=1, help="At most this many per source.")] = 1000,
    rate: Annotated[int, typer.Option(min=1, max=500, help="Messages per second moved.")] = 50,
    outputs: Annotated[Path | None, typer.Option(help="The offline stack's outputs file.")] = None,
    stack_name: Annotated[str | None, typer.Option(help="A deployed stack: read its outputs.")] = None,
    region: Annotated[str | None, typer.Option(help="AWS region of the stack.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Move dead letters back: IngestDLQ and IngestRuleDLQ → IngestQueue, re-invoke the Lambda
    failure destination's records; failed dispatcher executions only with --source executions
    (their Map items carry stale attempts and receipt handles). Never deletes a message before
    its copy was accepted."""
    if outputs and stack_name:
        raise typer.BadParameter("give --outputs or --stack-name, not both")
    try:
        redriver = redriver_for(resolve_target(outputs, stack_name, region), rate)
    except TargetError as error:
        typer.echo(f"sluice redrive: {error}", err=True)
        raise typer.Exit(code=2) from error
    report = redriver.run(RedriveRequest(source=source, dry_run=dry_run, max_messages=max_messages))
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        render(report, Console())
    if not report.ok:
        raise typer.Exit(code=1)
