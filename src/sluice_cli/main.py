"""The `sluice` command: the offline stack and the tools around it (console script `sluice`)."""

import typer

from sluice_cli.commands.invoke import invoke
from sluice_cli.commands.local import local_app
from sluice_cli.commands.logs import logs
from sluice_cli.commands.run import run
from sluice_cli.commands.status import status
from sluice_cli.monitor import monitor
from sluice_cli.redrive_cli import redrive
from sluice_cli.report import report
from sluice_cli.simulate import simulate

app = typer.Typer(
    name="sluice",
    help="Sluice: CSV files from S3 to a downstream API that must never be overwhelmed. Offline or on AWS.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(local_app, name="local")
app.command()(run)
app.command()(status)
app.command()(invoke)
app.command()(logs)
app.command()(redrive)
app.command()(simulate)
app.command()(monitor)
app.command()(report)

if __name__ == "__main__":
    app()
