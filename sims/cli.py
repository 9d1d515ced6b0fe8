"""`cloudbill sim ...`: the simulators (filled in by the Simulators issue)."""

import typer

app = typer.Typer(help="Simulators of DigitalOcean and of the finance service.", no_args_is_help=True)
