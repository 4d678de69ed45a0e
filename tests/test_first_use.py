"""First use is safe when concurrent: commands started at the same moment in a fresh home (the
embedded server, its database, Prefect's temporary database made once), and fresh databases of
one new server migrated at once (the server's roles made once), all succeed with no traceback."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from stave.infra.db import ensure_database, psycopg_dsn
from stave.infra.embedded_pg import EmbeddedPostgres
from stave.infra.migrate import head_revision
from tests.test_cli import STAVE

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run_together(commands: list[list[str]], env: dict[str, str], cwd: Path) -> list[tuple]:
    """Start every command at once; (argv, exit code, stdout + stderr) of each."""
    processes = [
        subprocess.Popen(
            [STAVE, *argv],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for argv in commands
    ]
    done = []
    for argv, process in zip(commands, processes, strict=True):
        output, _ = process.communicate(timeout=400)
        done.append((argv, process.returncode, output))
    return done


@pytest.mark.timeout(480)
def test_four_commands_started_at_once_in_a_fresh_home(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("STAVE_", "PREFECT_"))},
        "STAVE_HOME": str(tmp_path / "home"),  # nothing there yet
        "STAVE_DEFAULT_DURATION_S": "1",
        "STAVE_DEFAULT_STEPS": "2",
        "STAVE_FINISHERS": "1",
    }
    rows = tmp_path / "prompts.jsonl"
    rows.write_text(json.dumps({"prompt": "soft piano in C major", "seed": 1}) + "\n")
    commands = [
        ["generate", str(rows)],
        ["generate", str(rows)],
        ["report", "models"],
        ["db", "upgrade"],
    ]
    try:
        for argv, code, output in _run_together(commands, env, tmp_path):
            assert code == 0, (argv, output[-3000:])
            assert "Traceback" not in output and "database is locked" not in output, (argv, output)
        prefect_home = tmp_path / "home" / "dev" / "data" / "prefect"
        assert (prefect_home / "prefect.db.ready").is_file()
    finally:  # the embedded server the commands started outlives them
        subprocess.run([STAVE, "db", "stop"], env=env, cwd=tmp_path, capture_output=True)


@pytest.mark.timeout(300)
def test_fresh_databases_of_a_new_server_migrated_at_once(tmp_path: Path) -> None:
    cluster = EmbeddedPostgres(tmp_path / "pg", log_file=tmp_path / "postgres.log")
    server = cluster.ensure_running()  # a new server: none of Stave's roles exist on it
    try:
        names = [f"stave_first_{i}" for i in range(4)]
        for name in names:
            ensure_database(server.url("postgres"), name)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STAVE_", "PREFECT_"))}

        def upgrade(name: str) -> tuple[str, int, str]:
            done = subprocess.run(
                [STAVE, "db", "upgrade"],
                env={
                    **env,
                    "STAVE_HOME": str(tmp_path / "home"),
                    "STAVE_DATABASE_URL": server.url(name),
                },
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=240,
            )
            return name, done.returncode, done.stdout + done.stderr

        with ThreadPoolExecutor(len(names)) as pool:
            outcomes = list(pool.map(upgrade, names))
        for name, code, output in outcomes:
            assert code == 0 and "Traceback" not in output, (name, output)
        head = head_revision()
        for name in names:
            with psycopg.connect(psycopg_dsn(server.url(name))) as conn:
                row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
                assert row == (head,), name
        with psycopg.connect(psycopg_dsn(server.url("postgres"))) as conn:
            roles = conn.execute(
                "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'stave\\_%'"
            ).fetchone()
        assert roles == (4,)  # migrator, app, reporting, archiver: once each
    finally:
        cluster.stop()
