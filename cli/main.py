"""The ``shaperctl`` entry point: assembles the command groups."""

from __future__ import annotations

import importlib

import click

from shaper_deploy import __version__

from .common import ShaperGroup
from .export import export, shapes
from .profile import predict, profile, profiles
from .serve import bench, run, serve, triton, verify
from .supernet import params, supernet

# Loaded when called (or listed by --help): the deploy path never imports training code.
_TRAINING = {"train": "train", "search": "search"}  # command -> attribute of .train


class _Main(ShaperGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_TRAINING])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in _TRAINING:
            return getattr(importlib.import_module(".train", __package__), _TRAINING[name])
        return super().get_command(ctx, name)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shaperctl")
def main() -> None:
    """Compile SuperShaper sub-networks into fast, validated ONNX models per device.

    Every command prints human-readable text, or one JSON document with --json; progress
    goes to stderr. A failure is one line on stderr (nothing on stdout) and exit status 1 (143
    on SIGTERM); a usage error (an option's value, a missing or unknown option) exits 2.
    """


main.add_command(supernet)
main.add_command(params)
main.add_command(export)
main.add_command(shapes)
main.add_command(profile)
main.add_command(predict)
main.add_command(profiles)
main.add_command(run)
main.add_command(bench)
main.add_command(triton)
main.add_command(serve)
main.add_command(verify)


def console() -> None:
    """The ``shaperctl`` program: ``main`` in a process of its own (common.OWN_PROCESS)."""
    from . import common

    common.OWN_PROCESS = True
    main()


if __name__ == "__main__":  # python -m shaper_deploy.cli.main (e.g. under torchrun)
    console()
