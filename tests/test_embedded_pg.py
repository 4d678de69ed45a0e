"""The embedded PostgreSQL: TCP on loopback, reused between processes, stopped on demand."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from stave.infra.db import psycopg_dsn
from stave.infra.embedded_pg import EmbeddedPostgres

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent


def test_start_reuse_stop_restart_on_the_same_port(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg", log_file=tmp_path / "log" / "postgres.log")
    first = server.ensure_running()
    try:
        with psycopg.connect(psycopg_dsn(first.url("postgres"))) as conn:
            assert conn.execute("SHOW server_version").fetchone()[0].startswith("16.")  # type: ignore[index]
            assert conn.execute("SELECT inet_server_addr()::text").fetchone() == ("127.0.0.1/32",)
        # Another process finds the running server instead of starting a second one.
        script = (
            "from pathlib import Path; from stave.infra.embedded_pg import EmbeddedPostgres;"
            f"s = EmbeddedPostgres(Path({str(tmp_path / 'pg')!r}), log_file=Path('/dev/null'));"
            "print(s.ensure_running().pid)"
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True
        )
        assert int(out.stdout.strip()) == first.pid
        # The server outlived that process.
        assert server.status() == first
        assert server.stop() is True
        assert server.status() is None
        assert server.stop() is False
        again = server.ensure_running()
        assert again.port == first.port and again.pid != first.pid
    finally:
        server.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_runs_as_a_normal_user(tmp_path: Path) -> None:
    """As a normal user, postgres runs as that user (as root it runs as `pgserver`)."""
    user = "stavetest"
    if subprocess.run(["id", user], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--no-create-home", "-s", "/bin/sh", user], check=True)
    home = tmp_path / "home"
    home.mkdir()
    entry = pwd.getpwnam(user)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    for parent in [tmp_path, *tmp_path.parents]:
        parent.chmod(parent.stat().st_mode | 0o055)
    script = (
        "import os; from pathlib import Path; from stave.infra.embedded_pg import EmbeddedPostgres;"
        f"s = EmbeddedPostgres(Path({str(home / 'pg')!r}),"
        f" log_file=Path({str(home / 'pg.log')!r}));"
        "r = s.ensure_running(); import psycopg;"
        "c = psycopg.connect(f'host=127.0.0.1 port={r.port} user=postgres dbname=postgres');"
        "print(os.geteuid(), c.execute('SELECT 1').fetchone()[0]); c.close(); s.stop()"
    )
    runuser = shutil.which("runuser")
    assert runuser is not None
    probe = subprocess.run(
        [runuser, "-u", user, "--", sys.executable, "-c", "pass"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        # e.g. a pyenv interpreter under /root (mode 0700): not this test's to change.
        pytest.skip(f"{sys.executable} is not executable by {user}: {probe.stderr.strip()}")
    out = subprocess.run(
        [runuser, "-u", user, "--", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(entry.pw_uid), "1"]
    assert (home / "pg").stat().st_uid == entry.pw_uid
