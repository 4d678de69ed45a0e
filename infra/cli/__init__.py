"""The `stave` command line. Every failure ends in one line on stderr, never a traceback."""

from __future__ import annotations

import logging
import sys

import typer

from infra.cli import (
    archive,
    backup,
    catalog,
    db,
    doctor,
    embeddings,
    env,
    generator,
    jobs,
    orchestration,
    report,
)
from infra.errors import StaveError

app = typer.Typer(
    name="stave",
    help="Stave: the data platform behind a text-to-music diffusion model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(db.app, name="db")
app.add_typer(backup.app, name="backup")
app.add_typer(archive.app, name="archive")
app.command("doctor")(doctor.doctor)
app.command("env")(env.env)
app.command("train")(generator.train)
app.command("eval")(generator.evaluate)
app.command("generate")(jobs.generate)
app.command("submit")(jobs.submit)
app.command("run-pending")(jobs.run_pending)
app.command("jobs")(jobs.jobs)
app.command("job")(jobs.job)
app.command("task")(jobs.task)
app.command("retry")(jobs.retry)
app.command("regenerate")(jobs.regenerate)
app.command("gc")(jobs.gc)
app.command("backfill")(embeddings.backfill)
app.add_typer(embeddings.embeddings_app, name="embeddings")
app.command("similar")(embeddings.similar)
app.add_typer(embeddings.index_app, name="index")
app.command("gallery")(embeddings.gallery)
app.command("report")(report.report)
app.command("server")(orchestration.server)
app.add_typer(orchestration.pools_app, name="pools")
app.command("worker")(orchestration.worker)
app.command("deploy")(orchestration.deploy)
app.add_typer(orchestration.prompts_app, name="prompts")
app.add_typer(catalog.templates_app, name="templates")
app.add_typer(catalog.prefs_app, name="prefs")

log = logging.getLogger("stave.cli")


def main() -> None:
    """Console entry point: run the app and turn any failure into one line and an exit code."""
    try:
        app()
    except StaveError as err:
        typer.echo(f"stave: error: {err}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("stave: interrupted", err=True)
        sys.exit(130)
    except Exception as err:  # the last line of defence: log the traceback, print one line
        translated = _known_failure(err)
        if translated is None and type(err).__module__.startswith("generator"):
            translated = err  # generator errors are one-line by construction
        if translated is not None:
            log.info("command failed", exc_info=err)
            typer.echo(f"stave: error: {translated}", err=True)
            sys.exit(1)
        log.exception("unexpected error")
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        typer.echo(
            f"stave: internal error: {type(err).__name__}: {first} (traceback in the log file)",
            err=True,
        )
        sys.exit(2)


def _known_failure(err: Exception) -> Exception | None:
    # Only consult the database layer if it was loaded: a command that never touched the
    # database cannot have failed in it, and importing it costs start-up time.
    if "infra.db" in sys.modules:
        from infra.db import translate_db_error

        return translate_db_error(err)
    return None
