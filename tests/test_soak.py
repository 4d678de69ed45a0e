"""The soak in small (bench/soak.py at its default is the 1,000-job run): the same processes,
calendar and checks over seven simulated days, with the rules' days scaled down so each is in
force for half of them. Fails as the bench fails: a long-lived process that grows, or a
bounded folder or prefix of the home or the store that outgrows its rule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(660)
def test_seven_simulated_days_keep_every_resource_bounded(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "bench" / "soak.py"), "--home", str(tmp_path / "home"),
            "--jobs", "42", "--days", "7", "--keep-days", "2", "--hot-days", "2", "--week", "2",
            "--deployment-every", "6", "--report-only", "server: prefect server",
        ],
        capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if not k.startswith(("STAVE_", "PREFECT_"))},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("PASS")
    # Every bounded folder and prefix was judged, not only reported.
    for name in ("store gallery/", "store data-docs/", "home log: data_docs"):
        line = next(row for row in done.stdout.splitlines() if row.startswith(name))
        assert line.rstrip().endswith(": ok"), line
    assert "WAL rule (store backups/wal/): ok" in done.stdout
    # Prefect's own server fills its caches over its first week: a 7-day run reports it (the
    # 30-day run judges it); every Stave process is judged.
    server = next(row for row in done.stdout.splitlines() if row.startswith("server: prefect"))
    assert "reported (--report-only)" in server
