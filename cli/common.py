"""What every shaperctl command shares: error mapping, output, progress."""

from __future__ import annotations

import json
from typing import Any, Callable

import click

from shaper_deploy.errors import ShaperError


class ShaperGroup(click.Group):
    """A click group that turns library errors into one clear line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ShaperError as exc:
            raise click.ClickException(str(exc)) from None


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print exactly one JSON document on stdout.")


def emit(data: dict[str, Any], as_json: bool, human: Callable[[dict[str, Any]], str]) -> None:
    """Print ``data`` as JSON or through ``human``; nothing else goes to stdout."""
    click.echo(json.dumps(data, indent=2) if as_json else human(data))


def progress(message: str) -> None:
    """A progress line for people, on stderr so stdout stays one document."""
    click.echo(message, err=True)


def millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
