"""A real streaming replica of the session's embedded PostgreSQL, on loopback."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

from stave.infra.embedded_pg import SUPERUSER, EmbeddedPostgres, RunningServer, bin_dir


def start_replica(primary: RunningServer, pgdata: Path) -> EmbeddedPostgres:
    """`pg_basebackup -R` from the primary into `pgdata` (standby.signal and primary_conninfo
    written by -R), then start it as a hot standby on a free port."""
    replica = EmbeddedPostgres(pgdata, log_file=pgdata.parent / "replica.log")
    run_as = replica._run_as
    pgdata.mkdir(mode=0o700, parents=True)
    if run_as is not None:
        replica._prepare_permissions()
        entry = pwd.getpwnam(run_as)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    subprocess.run(
        [
            str(bin_dir() / "pg_basebackup"),
            "-h",
            primary.host,
            "-p",
            str(primary.port),
            "-U",
            SUPERUSER,
            "-D",
            str(pgdata),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ],
        check=True,
        capture_output=True,
        timeout=120,
        user=run_as,
        cwd="/",
    )
    for stale in ("postmaster.pid", "postmaster.opts"):
        (pgdata / stale).unlink(missing_ok=True)
    replica.ensure_running()
    return replica
