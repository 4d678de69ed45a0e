"""Commands loaded when used: `stave --help` and `stave --version` import no command module
(and so no SQLAlchemy, Prefect or torch), and `stave db status` imports only `stave.cli.db`.

The root group lists each command from `COMMANDS` (its name, where it lives and the first
paragraph of its help); the command itself is imported when Click resolves it to run it or
show its own help. tests/test_cli_lazy.py fails when a listed help drifts from the command's.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup


@dataclass(frozen=True)
class Entry:
    """A command of the root group: `where` is "module:attribute", a function (a command) or a
    Typer app (a group of commands)."""

    name: str
    where: str
    help: str


def _entries(*rows: tuple[str, str, str]) -> tuple[Entry, ...]:
    return tuple(Entry(*row) for row in rows)


COMMANDS = _entries(
    (
        "doctor",
        "stave.cli.doctor:doctor",
        "Check settings, directories, database, pgvector, schema, object store and Prefect API.",
    ),
    (
        "env",
        "stave.cli.env:env",
        "Show the effective settings (environment, .env and profile), with secrets masked.",
    ),
    (
        "train",
        "stave.cli.generator:train",
        "Train the built-in generator (autoencoder, then denoiser); resumes an interrupted run.",
    ),
    (
        "eval",
        "stave.cli.generator:evaluate",
        "Generate for held-out prompts and report key, tempo, sounds-alike precision and RTF.",
    ),
    (
        "generate",
        "stave.cli.jobs:generate",
        "Check, submit and generate a prompt file in this process; print a summary.",
    ),
    (
        "submit",
        "stave.cli.jobs:submit",
        "Check and queue a prompt file without generating; print the job id.",
    ),
    (
        "run-pending",
        "stave.cli.drain:run_pending",
        "Generate whatever is queued (by `stave submit`, or left by a worker that died).",
    ),
    (
        "jobs",
        "stave.cli.queue:jobs",
        "The latest jobs: class, task counts, and for queued ones the tasks ahead and an ETA.",
    ),
    (
        "job",
        "stave.cli.queue:job",
        "One job: class, counts per status, place in the queue and ETA, rejected rows, and its "
        "first tasks with their clips; or change its class, pause, resume or cancel it.",
    ),
    (
        "task",
        "stave.cli.jobs:task",
        "One task: parameters, provenance, its clip, its events and its prompt's history.",
    ),
    (
        "retry",
        "stave.cli.jobs:retry",
        "Queue a job's failed tasks again, with fresh attempts (then `stave run-pending`).",
    ),
    (
        "regenerate",
        "stave.cli.jobs:regenerate",
        "Make a clip again from its record; with --verify, check it is byte-identical.",
    ),
    (
        "gc",
        "stave.cli.jobs:gc",
        "Find (and with --delete remove) audio objects that no record points to.",
    ),
    (
        "backfill",
        "stave.cli.embeddings:backfill",
        "Compute embeddings for clips that lack them for an encoder version (resumable).",
    ),
    (
        "similar",
        "stave.cli.embeddings:similar",
        "Clips that sound like an asset (or an audio file), by cosine distance.",
    ),
    (
        "gallery",
        "stave.cli.embeddings:gallery",
        "Write a static HTML listening page (players, spectrograms, neighbours); no server.",
    ),
    (
        "report",
        "stave.cli.report:report",
        "Operator reports: clips per model version, failures per day and class, a user's prompts.",
    ),
    (
        "server",
        "stave.cli.orchestration:server",
        "Start the Prefect server (API and UI) for this environment.",
    ),
    (
        "worker",
        "stave.cli.orchestration:worker",
        "Start a Prefect process worker; with --gpu N it serves the gpu pool on that GPU only.",
    ),
    (
        "deploy",
        "stave.cli.orchestration:deploy",
        "Apply prefect.yaml: create or update every deployment and its schedule.",
    ),
    (
        "run",
        "stave.cli.orchestration:run",
        "Trigger a deployment on the Prefect server (STAVE_PREFECT_API_URL and its auth), its "
        "parameters checked against the deployment's schema first; --watch follows the run's "
        "state and progress and exits 1 unless it completes.",
    ),
    ("db", "stave.cli.db:app", "Database: migrations, status, the embedded server."),
    (
        "backup",
        "stave.cli.backup:app",
        "Backups: dumps and base backups in the object store, continuous WAL archiving, restore "
        "and point-in-time recovery (these work with the database gone).",
    ),
    ("store", "stave.cli.store:app", "The object store's bucket: lifecycle rules and protection."),
    (
        "models",
        "stave.cli.generator:models_app",
        "Trained checkpoints in the object store: list them, fetch one.",
    ),
    (
        "archive",
        "stave.cli.archive:app",
        "Archival: old rows to Parquet in the object store; list, restore, query in place.",
    ),
    ("share", "stave.cli.queue:share_app", "Users' weights in the fair share of the queue."),
    (
        "embeddings",
        "stave.cli.embeddings:embeddings_app",
        "Latent embeddings: coverage per encoder version.",
    ),
    ("index", "stave.cli.embeddings:index_app", "HNSW indexes for sounds-alike search."),
    (
        "pools",
        "stave.cli.orchestration:pools_app",
        "Prefect work pools and the gpu concurrency limit.",
    ),
    (
        "prompts",
        "stave.cli.orchestration:prompts_app",
        "Prompt files in the object store, for the UI's bulk generation.",
    ),
    (
        "templates",
        "stave.cli.catalog:templates_app",
        "Style templates: named parameter presets for prompt rows.",
    ),
    ("prefs", "stave.cli.catalog:prefs_app", "Users' default generation parameters."),
    (
        "metrics",
        "stave.cli.metrics:app",
        "Prometheus metrics: queue, clips, coverage, backups, archive lag.",
    ),
)


class _Listed(TyperCommand):
    """A command as `--help` lists it, before it is imported."""


# Typer vendors its own Click, whose classes the annotations below would have to name: `Any`.
def load(entry: Entry) -> Any:
    """The Click command of an entry: its module imported, a Typer app or function built."""
    module, attribute = entry.where.split(":")
    target: Any = getattr(importlib.import_module(module), attribute)
    command: Any
    if isinstance(target, typer.Typer):
        # A group even with one command (`stave embeddings status`), as under the root.
        command = typer.main.get_group(target)
    else:
        single = typer.Typer()
        single.command(entry.name)(target)
        # Built alone, a Typer app offers completion options of its own: the root has none.
        single._add_completion = False
        command = typer.main.get_command(single)
    command.name = entry.name
    return command


class LazyGroup(TyperGroup):
    """The root group: lists every entry, imports a command only to run it or show its help."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self._entries = {entry.name: entry for entry in COMMANDS}
        for entry in COMMANDS:
            self.commands[entry.name] = _Listed(entry.name, help=entry.help)

    def list_commands(self, ctx: Any) -> list[str]:  # noqa: ARG002 (Click's signature)
        return [entry.name for entry in COMMANDS]

    def load(self, name: str) -> Any:
        """The real command (imported once), in place of its listing."""
        command = self.commands[name]
        if isinstance(command, _Listed):
            command = self.commands[name] = load(self._entries[name])
        return command

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if name is not None and isinstance(command, _Listed):
            command = self.load(name)
        return name, command, rest
