"""Write docs/cli.md from click's own help text, so the reference cannot drift from the code.

    .venv/bin/python scripts/gen_cli_docs.py            # rewrite docs/cli.md
    .venv/bin/python scripts/gen_cli_docs.py --check    # exit 1 if docs/cli.md is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from shaper_deploy.cli.main import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _walk(command: click.Command, ctx: click.Context):
    yield ctx, command
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            yield from _walk(sub, click.Context(sub, info_name=name, parent=ctx))


def render() -> str:
    parts = ["# Command-line reference", "",
             "Generated from `shaperctl --help` by `scripts/gen_cli_docs.py`; a test fails when "
             "it is stale.", ""]
    root = click.Context(main, info_name="shaperctl", terminal_width=100,
                         **main.context_settings)
    for ctx, command in _walk(main, root):
        parts += [f"## {ctx.command_path}", "", "```text", command.get_help(ctx).rstrip(),
                  "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if DOC.read_text() == text else 1)
    DOC.write_text(text)
