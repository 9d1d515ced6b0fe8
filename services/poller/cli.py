"""`cloudbill poll ...`: one poll now (filled in by the Poller issue)."""

import typer

app = typer.Typer(help="Run one poll now and exit.", no_args_is_help=True)
