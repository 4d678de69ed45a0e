"""The `stave` command line. Every failure ends in one line on stderr, never a traceback.

Exit codes (the README's "Exit codes"): 0 done; 1 an error Stave reports (bad input, a service
down, a refused setting); 2 a usage error (an unknown option, a bad value: Click's
convention); 3 a run whose clips failed or were quarantined (`ClipsFailed`); 4 an internal
error (a bug: the traceback is in the log file); 130 and 143 stopped by SIGINT or SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import sys
from importlib.metadata import PackageNotFoundError, version

import typer

from stave.cli.lazy import LazyGroup
from stave.infra import stop

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 4

app = typer.Typer(
    name="stave",
    help="Stave: the data platform behind a text-to-music diffusion model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=LazyGroup,  # commands imported when used: `stave --help` imports none of them
)


def _version(show: bool) -> None:
    if show:
        try:
            typer.echo(f"stave {version('stave')}")
        except PackageNotFoundError:
            typer.echo("stave (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Stave: the data platform behind a text-to-music diffusion model."""


log = logging.getLogger("stave.cli")


def main() -> None:
    """Console entry point: run the app and turn any failure into one line and an exit code."""
    # Ctrl-C and a supervisor's SIGTERM ask long work to stop at its next safe point; a
    # second one stops at once. Installed even where SIGINT was ignored at start.
    stop.install()
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as err:
        # Typer's (vendored Click's) errors: a usage error has Click's exit code 2.
        if err.exit_code == EXIT_USAGE and not err.format_message():
            sys.exit(EXIT_USAGE)  # a group called without a command: its help was the message
        if err.exit_code == EXIT_USAGE:
            ctx = getattr(err, "ctx", None)
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            _fail(f"{_one_line(err.format_message())}{where}", EXIT_USAGE)
        _fail(_one_line(err.format_message()), EXIT_ERROR)
    except stop.StopRequested as err:
        _fail(str(err), _stopped_code(err.signum))
    except (typer.Abort, KeyboardInterrupt):
        signum = stop.signal_number() or signal.SIGINT
        _fail(f"stopped by {signal.Signals(signum).name}", _stopped_code(signum))
    except Exception as err:  # the last line of defence: a traceback goes to the log file only
        from stave.infra.errors import StaveError, first_line  # not imported for `--help`

        if isinstance(err, StaveError):
            _fail(str(err), err.exit_code)
        translated = _known_failure(err)
        if translated is not None:
            _log_file_only("command failed", err)
            _fail(translated, EXIT_ERROR)
        _log_file_only("unexpected error", err)
        _fail(
            f"internal error: {type(err).__name__}: {first_line(err, default='')} "
            "(a bug: the traceback is in the log file, stave.log)",
            EXIT_INTERNAL,
        )
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    typer.echo(f"stave: error: {message}", err=True)
    sys.exit(code)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _stopped_code(signum: int) -> int:
    return 128 + int(signum)


def _known_failure(err: Exception) -> str | None:
    """A failure from a library that has a one-line meaning: the database gone, or a
    generator error (one line by construction)."""
    from stave.infra.db import translate_db_error
    from stave.infra.errors import first_line

    translated = translate_db_error(err)
    if translated is not None:
        return str(translated)
    if type(err).__module__.startswith("stave.generator"):
        return first_line(err)
    if "ephemeral Prefect API server" in str(err):
        return (
            "Prefect's temporary server for this run did not start in time (a busy machine?): "
            "run it again, or point STAVE_PREFECT_API_URL at a running `stave server`"
        )
    return None


def _log_file_only(message: str, err: BaseException) -> None:
    from stave.infra.logs import FILE_ONLY, configure_logging, is_configured
    from stave.infra.settings import get_settings

    if not is_configured():
        try:
            configure_logging(get_settings())
        except Exception:  # settings themselves are broken: nowhere to log to
            return
    log.error(message, exc_info=err, extra=FILE_ONLY)
