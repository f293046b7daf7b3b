"""What every shaperctl command shares: error mapping, output, progress."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path
from typing import Any, Callable

import click

from shaper_deploy.errors import ShaperError

NOTHING_KEPT = "nothing half-written was kept"
# True when this process is the shaperctl command's own (cli.main.console), not a library
# user's or a test's: only then may a command change what the whole process does
# (``profile`` runs every session on one thread pool: runtime.share_one_pool).
OWN_PROCESS = False


class ShaperGroup(click.Group):
    """A click group that turns library errors, and the operating system's (disk full, a name
    too long, a busy or read-only path), into one clear line and exit status 1; a usage error
    (an option's value out of range, a missing or unknown option) into one line and exit 2."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:  # the group's own options and arguments
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _usage_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with _terminated_as_exception():
                return super().invoke(ctx)
        except click.UsageError as exc:  # a subcommand's options and arguments
            raise _usage_line(exc) from None
        except Terminated as exc:
            click.echo(f"Error: terminated (SIGTERM); {exc.kept}", err=True)
            ctx.exit(143)
        except ShaperError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(os_error_line(exc)) from None
        except Exception as exc:
            if type(exc).__name__ == "SafetensorError":  # safetensors' own I/O error type
                raise click.ClickException(f"cannot write or read weights: {exc}") from None
            raise


class UsageLine(click.UsageError):
    """A usage error shown as one line, where click shows the usage, a hint and the error on
    three: ``Error: Invalid value for '--seq-len': 0 is not in the range x>=1. See 'shaperctl
    predict --help'.``"""

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", file=file, err=file is None)


def _usage_line(exc: click.UsageError) -> click.UsageError:
    if isinstance(exc, (UsageLine, click.exceptions.NoArgsIsHelpError)):
        return exc  # already one line, or the help a bare group prints
    message = exc.format_message().rstrip()
    if exc.ctx is not None:
        stop = "" if message.endswith((".", "?")) else "."
        message += f"{stop} See '{exc.ctx.command_path} --help'."
    return UsageLine(message, exc.ctx)


class Terminated(BaseException):
    """SIGTERM, raised where the process is, so every ``finally`` and context manager runs:
    temporary folders and half-written outputs are removed as on any other failure. ``kept``
    says what is left (``resumable`` sets it for a command whose work resumes)."""

    kept = NOTHING_KEPT


@contextlib.contextmanager
def _terminated_as_exception():
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only (CliRunner in a worker thread)
        return

    def handle(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def os_error_line(exc: OSError, kept: str | None = None) -> str:
    """'cannot use runs/x: File name too long (errno 36)'; without a file name,
    'the operating system refused: No space left on device (errno 28); nothing half-written
    was kept'; ``kept`` (``resumable``) says what a resumable command keeps instead."""
    reason = (exc.strerror or str(exc)) + (f" (errno {exc.errno})" if exc.errno else "")
    if exc.filename is None:
        return f"the operating system refused: {reason}; {kept or NOTHING_KEPT}"
    where = str(exc.filename)
    if len(where) > 120:
        where = f"{where[:60]}...{where[-40:]}"
    return f"cannot use {where}: {reason}" + (f"; {kept}" if kept else "")


@contextlib.contextmanager
def resumable(kept: str):
    """For a command whose work resumes (profile, train): Ctrl-C, SIGTERM (exit 143) and an
    operating-system error (a full disk) end in one line that says what is kept and how to
    resume (``kept``), where another command says nothing half-written was kept."""
    try:
        yield
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted; {kept}") from None
    except Terminated as exc:
        exc.kept = kept
        raise
    except OSError as exc:
        raise click.ClickException(os_error_line(exc, kept)) from None


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print exactly one JSON document on stdout.")


def int_list(text: str, param_hint: str) -> tuple[int, ...]:
    """'1,4,16' -> (1, 4, 16), or one usage error naming the option."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers",
                                 param_hint=param_hint) from None


def _widths(ctx: click.Context, param: click.Parameter, text: str | None):
    return None if text is None else int_list(text, "--widths")


widths_option = click.option(
    "--widths", "supershaper_widths", default=None, callback=_widths, metavar="W1,W2,...",
    help="SuperShaper repository checkpoints only: their allowed widths, which their config "
         "does not record (default at D = 768: the paper's 120..768; required otherwise).")


def percentile_option(help_text: str):
    """``--percentile``, with the range and default the library promises."""
    from shaper_deploy.promise import DEFAULT_PERCENTILE, TAIL_LEVELS

    return click.option("--percentile", default=DEFAULT_PERCENTILE, show_default=True,
                        type=click.FloatRange(TAIL_LEVELS[0], TAIL_LEVELS[-1]), help=help_text)


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


def predicted_by(profile, path: Path, differences: list[str]) -> str:
    """Whose predictions a table shows: ``P``, ``P (UNRELIABLE)``, ``P, FOR ANOTHER MACHINE
    (fields)``: what a flag let through said where the numbers are (shapes, search)."""
    return (f"{path}" + ("" if profile.trust["reliable"] else " (UNRELIABLE)")
            + (f", FOR ANOTHER MACHINE ({'; '.join(differences)})" if differences else ""))


def said_chosen(doing: str, path: Path, which: str) -> None:
    """On stderr, the profile a command chose where none was given (``chosen_here``):
    ``<doing> with <path>, the profile of this machine <which> in profiles/ (...)``."""
    from shaper_deploy.profiling.catalog import PROFILES_ROOT

    progress(f"{doing} with {path}, the profile of this machine {which} in {PROFILES_ROOT}/ "
             "(profiles list marks it; --profile chooses another)")


def exports_drop(supernet: Path, widths, profile, profile_path: Path, hint: str = ""
                 ) -> Callable:
    """``shape -> the projections export drops`` for the super network at ``supernet`` (exact
    identities: an identity network's), so that a command pricing its shapes with ``profile``
    prices the graphs export writes, as the planner does. The super network is first checked
    to have the profile's design space (one line naming both, then ``hint``), then loaded."""
    from shaper_deploy.errors import ProfileError
    from shaper_deploy.planner import export_dropped
    from shaper_deploy.supernet import load_supernet, read_checkpoint_header

    space = read_checkpoint_header(supernet, widths)["config"].space
    if space != profile.space:
        raise ProfileError(f"--profile {profile_path} covers another design space "
                           f"({profile.space.describe()}) than --supernet {supernet} "
                           f"({space.describe()}); give a profile of the super network's "
                           "space" + hint)
    progress(f"loading {supernet} (which projections its exports drop)")
    return export_dropped(load_supernet(supernet, widths))


def profile_here(space, device: str, supernet: Path) -> Path:
    """A latency budget given without --profile: the profile ``profiles list`` marks for this
    machine and ``space`` in ./profiles, said on stderr; none is a one-line error saying how
    to make one."""
    from shaper_deploy.errors import PlannerError
    from shaper_deploy.profiling.catalog import PROFILES_ROOT, profile_for_here

    found = profile_for_here(space, device)
    if found is None:
        raise PlannerError(
            f"--latency needs a profile of this machine, and {PROFILES_ROOT}/ holds no reliable "
            f"{device} profile of it for {supernet}'s design space (shaperctl profiles list "
            f"says why): make one, shaperctl profile --device {device} --supernet {supernet} "
            f"--out P (add --from {PROFILES_ROOT} for a transfer in a few minutes), then pass "
            "--profile P")
    said_chosen("no --profile given: planning", found.path, "for this design space")
    return found.path


def profile_holding(shape_text: str, device: str) -> Path:
    """A shape to predict given without --profile: of the profiles ``profiles list`` marks for
    this machine in ./profiles (one per design space), the one whose design space holds the
    shape, said on stderr; none, or several, is a one-line error."""
    from shaper_deploy.errors import ProfileError, ShaperError
    from shaper_deploy.profiling.catalog import PROFILES_ROOT, profiles_for_here
    from shaper_deploy.shape import parse_shape

    here = list(profiles_for_here(device).values())
    holding = []
    for p in here:
        try:
            parse_shape(shape_text, p.space)
        except ShaperError:
            continue
        holding.append(p)
    if len(holding) != 1:
        spaces = "; ".join(f"{p.path}: {p.space.describe()}" for p in here) or "none"
        raise ProfileError(
            f"--profile not given, and {PROFILES_ROOT}/ holds "
            + (f"{len(holding)} profiles of this machine whose design space holds shape "
               f"{shape_text!r:.60}" if holding else
               f"no reliable {device} profile of this machine whose design space holds shape "
               f"{shape_text!r:.60}") + f" (this machine's there: {spaces}); pass --profile P, "
            f"or make one: shaperctl profile --device {device} --supernet S --out P")
    said_chosen("no --profile given: predicting", holding[0].path,
                "whose design space holds the shape")
    return holding[0].path
