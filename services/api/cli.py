"""API-side commands (`cloudbill token`), filled in by the API issue."""

import typer


def register(app: typer.Typer) -> None:
    return None
