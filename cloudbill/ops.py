"""Operations commands (demo, dev up, replay, status), filled in by the Operate issue."""

import typer


def register(app: typer.Typer) -> None:
    return None
