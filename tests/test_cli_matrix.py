"""Every command of `stave --help`, discovered from the Typer app, under the conditions a new
user and an operator meet: a fresh home, the database unreachable, the object store
unreachable, the Prefect API unreachable, and a bad argument.

For each run: no traceback on stdout or stderr; on failure exactly one `stave: error:` line;
the exit code the README documents for that condition; nothing written where the command
failed. A new command needs sample arguments here (or a stated reason to skip a condition),
so it cannot join the app untested.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.cli import app, main
from stave.cli.lazy import LazyGroup
from tests.test_cli import STAVE
from tests.utils.net import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Commands that cannot run to completion in a matrix, and where they are tested instead. They
# still face the bad-argument condition.
RUNS_LONG = {
    "server": "runs until stopped: tests/test_deployments.py starts and stops it",
    "metrics serve": "serves until stopped: tests/test_metrics.py scrapes it",
    "train": "minutes of CPU: tests/test_generator_training.py trains a tiny model",
    "eval": "minutes of CPU: tests/test_shipped_model.py measures the shipped checkpoint",
}
USAGE, ERROR = 2, 1
CWD = Path("/")  # no project folder: commands must not depend on where they are run
TABLES = ("generation_job", "generation_task", "backup_record", "archive_batch", "audio_asset")


def commands() -> list[tuple[tuple[str, ...], Any]]:
    """(path, click command) for every leaf command of the app."""
    found: list[tuple[tuple[str, ...], Any]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, (*path, name))
        else:
            found.append((path, command))

    root = typer.main.get_command(app)
    assert isinstance(root, LazyGroup)
    for name in root.list_commands(typer.Context(root)):
        root.load(name)  # listed lazily: the real commands, to walk their parameters
    walk(root, ())
    return found


@dataclass
class Samples:
    """Values for required parameters, by name, and extras a command needs to do something."""

    root: Path

    def args(self, path: tuple[str, ...], command: Any) -> list[str]:
        args: list[str] = []
        for param in command.params:
            if not param.required:
                continue
            value = self.value(path, param.name)
            if param.param_type_name == "argument":
                args.append(value)
            else:
                args += [param.opts[-1], value]
        return args + EXTRAS.get(path, [])

    def value(self, path: tuple[str, ...], name: str) -> str:
        if name == "file":
            return str(self.root / "prompts.csv")
        if name in ("job_id", "task_id", "backup_id"):
            return str(uuid.uuid4())
        if name == "into":
            return str(self.root / f"pitr-{uuid.uuid4().hex[:6]}") if "pitr" in path else "x_db"
        fixed = {
            "which": "models",
            "out": str(self.root / "gallery"),
            "to": "2026-01-01T00:00:00+00:00",
            "table": "generation_task",
            "month": "2026-01",
            "name": "matrix-template",
            "user": "matrix-user",
            "target_file": str(self.root / "wal-target.json"),
            "deployment": "backup/nightly-backup",
            "weight": "2",
            "from_home": str(self.root / "pilot-home"),
            "sha256": "5f339b33",
        }
        if name not in fixed:
            pytest.fail(f"stave {' '.join(path)}: no sample value for {name!r}; add one")
        return fixed[name]


EXTRAS: dict[tuple[str, ...], list[str]] = {
    ("similar",): [str(uuid.uuid4())],
    ("gallery",): [str(uuid.uuid4())],
    ("templates", "set"): ["-p", "steps=12"],
    ("prefs", "set"): ["-p", "duration_s=5"],
    ("backup", "pitr"): ["--latest"],
}


@dataclass
class Outcome:
    path: tuple[str, ...]
    code: int
    stdout: str
    stderr: str
    home: Path

    @property
    def name(self) -> str:
        return "stave " + " ".join(self.path)

    def check(self, allowed: set[int]) -> str | None:
        """The error line (None on success), after the invariants every run must keep."""
        for stream in (self.stdout, self.stderr):
            assert "Traceback" not in stream, f"{self.name}: traceback\n{stream[-2000:]}"
        assert self.code in allowed, f"{self.name}: exit {self.code}\n{self.stderr[-2000:]}"
        if self.code == 0:
            return None
        errors = [ln for ln in self.stderr.splitlines() if ln.startswith("stave: error:")]
        assert len(errors) == 1, f"{self.name}: {self.stderr[-2000:]}"
        line = errors[0]
        assert len(line) < 600 and line.count("stave: error:") == 1, line
        return line

    def wrote_objects(self) -> list[Path]:
        """Objects this run's home holds besides the store's health probe."""
        objects = self.home.glob("*/data/objects/**/*")
        return [p for p in objects if p.is_file() and "doctor/probe" not in p.as_posix()]


def run_all(
    runs: list[tuple[tuple[str, ...], list[str], dict[str, str], Path]], workers: int
) -> list[Outcome]:
    def one(run: tuple[tuple[str, ...], list[str], dict[str, str], Path]) -> Outcome:
        path, args, env, home = run
        done = subprocess.run(
            [STAVE, *path, *args],
            cwd=CWD,
            env={**env, "STAVE_HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=240,
        )
        return Outcome(path, done.returncode, done.stdout, done.stderr, home)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, runs))


@pytest.fixture(scope="module")
def matrix_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("matrix")
    (root / "prompts.csv").write_text("prompt,seed\nwarm organ chords in A minor 90 bpm,1\n")
    return root


@pytest.fixture
def base_env() -> Iterator[dict[str, str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STAVE_", "PREFECT_"))}
    yield {
        **clean,
        "STAVE_DEFAULT_DURATION_S": "1",
        "STAVE_DEFAULT_STEPS": "2",
        "STAVE_DB_CONNECT_TIMEOUT_S": "2",
        "STAVE_S3_MAX_RETRIES": "0",
        # No Prefect server where a worker or `deploy` would look for one.
        "STAVE_PREFECT_SERVER_PORT": str(free_port()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in TABLES
        }


def test_every_command_has_samples_and_the_matrix_covers_the_app(matrix_root: Path) -> None:
    found = commands()
    assert len(found) >= 40, [p for p, _ in found]
    samples = Samples(matrix_root)
    for path, command in found:
        samples.args(path, command)  # fails for a required parameter with no sample value
    assert set(RUNS_LONG) <= {" ".join(p) for p, _ in found}


# The commands a new user's first try used to crash in (before first-use migration).
FIRST_CONTACT = (
    ("jobs",),
    ("report",),
    ("embeddings", "status"),
    ("index", "list"),
    ("backup", "list"),
    ("archive", "list"),
    ("archive", "run"),
    ("templates", "list"),
    ("prefs", "show"),
    ("db", "status"),
)


def test_a_fresh_home(matrix_root: Path, base_env: dict[str, str]) -> None:
    """Every command on a home nothing else has run in: the embedded database is started and
    created on first use. The commands new users tried first each meet a database of their
    own that no command has seen (so each must migrate it itself); the others share one,
    which the first of them migrates (a migration is a second or two of CPU apiece)."""
    samples = Samples(matrix_root)
    home = matrix_root / "fresh-home"
    runnable = [(p, c) for p, c in commands() if " ".join(p) not in RUNS_LONG]
    stopping = [(p, c) for p, c in runnable if p == ("db", "stop")]
    runs = [
        (
            path,
            samples.args(path, cmd),
            {
                **base_env,
                "STAVE_DATABASE_NAME": f"fresh_{i}" if path in FIRST_CONTACT else "shared",
            },
            home,
        )
        for i, (path, cmd) in enumerate(runnable)
        if (path, cmd) not in stopping
    ]
    # `db upgrade` first and alone: it starts the embedded server, creates the cluster's roles
    # (which migrations of several databases at once would race to create) and migrates the
    # shared database. Then `generate` alone: the first flow run in a home creates Prefect's
    # own SQLite database, which temporary servers started at once race to migrate (a known
    # race, in the note: the loser prints uvicorn's traceback though its command
    # succeeds).
    runs.sort(key=lambda run: (run[0] != ("db", "upgrade"), run[0] != ("generate",)))
    try:
        outcomes = run_all(runs[:2], workers=1) + run_all(runs[2:], workers=3)
    finally:
        outcomes_stop = run_all([(p, [], base_env, home) for p, _ in stopping], workers=1)
    for outcome in outcomes + outcomes_stop:
        outcome.check({0, ERROR})
    failed = {o.path: o.stderr for o in outcomes if o.code}
    for first in FIRST_CONTACT:
        assert first not in failed, (first, failed.get(first))


def test_the_database_unreachable(matrix_root: Path, base_env: dict[str, str]) -> None:
    samples = Samples(matrix_root)
    env = {**base_env, "STAVE_DATABASE_URL": f"postgresql://stave@127.0.0.1:{free_port()}/stave"}
    runs = [
        (p, samples.args(p, c), env, matrix_root / "db-down" / f"h{i}")
        for i, (p, c) in enumerate(commands())
        if " ".join(p) not in RUNS_LONG
    ]
    said_db = 0
    for outcome in run_all(runs, workers=4):
        line = outcome.check({0, ERROR})
        if line and "database unavailable" in line:
            said_db += 1
            assert "STAVE_DATABASE_URL" in line, line  # the fix, not only the cause
            assert not outcome.wrote_objects(), (outcome.name, outcome.wrote_objects())
    assert said_db >= 25


def test_the_object_store_unreachable(
    matrix_root: Path, base_env: dict[str, str], database_url: str, engine: Engine
) -> None:
    samples = Samples(matrix_root)
    env = {
        **base_env,
        "STAVE_DATABASE_URL": database_url,
        "STAVE_S3_ENDPOINT": f"127.0.0.1:{free_port()}",
    }
    before = counts(engine)
    runs = [
        (p, samples.args(p, c), env, matrix_root / "store-down" / f"h{i}")
        for i, (p, c) in enumerate(commands())
        if " ".join(p) not in RUNS_LONG and p != ("db", "stop")
    ]
    said_store = [
        o.name
        for o in run_all(runs, workers=4)
        if "STAVE_S3_ENDPOINT" in (o.check({0, ERROR}) or "")
    ]
    # Generating, submitting, backing up and uploading need the store: refused before anything
    # was submitted or written.
    for needs in ("generate", "submit", "run-pending", "backup run", "backup base", "gc"):
        assert f"stave {needs}" in said_store, (needs, said_store)
    assert "stave prompts upload" in said_store
    assert counts(engine) == before


def test_the_prefect_api_unreachable(
    matrix_root: Path, base_env: dict[str, str], database_url: str, engine: Engine
) -> None:
    samples = Samples(matrix_root)
    port = free_port()
    env = {
        **base_env,
        "STAVE_DATABASE_URL": database_url,
        "STAVE_PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "STAVE_PREFECT_SERVER_PORT": str(port),
    }
    uses_api = {("generate",), ("backfill",), ("worker",), ("deploy",), ("pools", "setup")}
    found = dict(commands())
    before = counts(engine)
    runs = [
        (p, samples.args(p, found[p]), env, matrix_root / "api-down" / f"h{i}")
        for i, p in enumerate(sorted(uses_api))
    ]
    for outcome in run_all(runs, workers=3):
        line = outcome.check({ERROR})
        assert line is not None and "is not answering" in line and "stave server" in line, line
        assert not outcome.wrote_objects(), outcome.name
    assert counts(engine) == before  # nothing submitted for a run that could not start


def test_a_bad_argument(
    matrix_root: Path, base_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """In this process (a usage error is decided before a command runs, so nothing of the
    session can leak into it): exit 2, one line naming the option and the help to read, and
    nothing written, not even the home."""
    home = matrix_root / "bad-arg-home"
    monkeypatch.setenv("STAVE_HOME", str(home))
    for path, _ in commands():
        monkeypatch.setattr(sys, "argv", ["stave", *path, "--no-such-option"])
        with pytest.raises(SystemExit) as exited:
            main()
        captured = capsys.readouterr()
        outcome = Outcome(path, int(exited.value.code or 0), captured.out, captured.err, home)
        line = outcome.check({USAGE})
        assert line is not None and "--no-such-option" in line and "--help" in line, line
        assert not home.exists(), f"{outcome.name} wrote {home}"
