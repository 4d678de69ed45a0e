"""The `stave` command as users run it: a subprocess, real servers, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The `stave` installed beside this interpreter, not whatever else is on PATH.
_SIBLING = Path(sys.executable).parent / "stave"
STAVE = str(_SIBLING) if _SIBLING.exists() else (shutil.which("stave") or "stave")


def stave(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STAVE_")}
    return subprocess.run(
        [STAVE, *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.integration
@pytest.mark.slow
def test_upgrade_and_status_with_no_configuration_at_all(tmp_path: Path) -> None:
    try:
        up = stave("db", "upgrade", cwd=tmp_path)
        assert up.returncode == 0, up.stderr
        assert "migrated from empty to" in up.stdout
        again = stave("db", "upgrade", cwd=tmp_path)
        assert "already at revision" in again.stdout
        status = stave("db", "status", "--json", cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["up_to_date"] and report["embedded"]
        assert report["server_version"].startswith("16.")
        assert report["pgvector_version"]
        assert report["tables"]["generation_task"] == 0
        assert (tmp_path / ".stave" / "dev" / "data" / "pg" / "PG_VERSION").exists()
        assert (tmp_path / ".stave" / "dev" / "log" / "postgres.log").exists()
        doctor = stave("doctor", cwd=tmp_path)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert [line.split()[0] for line in doctor.stdout.splitlines()] == ["ok"] * 6
    finally:
        stopped = stave("db", "stop", cwd=tmp_path)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout


def test_doctor_names_an_unreachable_database_in_one_line(tmp_path: Path) -> None:
    result = stave(
        "doctor",
        cwd=tmp_path,
        env={
            "STAVE_DATABASE_URL": "postgresql://stave:s3cret-pw@127.0.0.1:1/stave",
            "STAVE_DB_CONNECT_TIMEOUT_S": "2",
        },
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    failing = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failing) == 1
    assert "database" in failing[0] and "127.0.0.1:1" in failing[0]
    assert "Connection refused" in failing[0] and "fix:" in failing[0]
    assert "s3cret-pw" not in result.stdout + result.stderr


def test_doctor_json_lists_each_check(tmp_path: Path) -> None:
    result = stave(
        "doctor",
        "--json",
        cwd=tmp_path,
        env={
            "STAVE_DATABASE_URL": "postgresql://u@127.0.0.1:1/x",
            "STAVE_DB_CONNECT_TIMEOUT_S": "1",
            "STAVE_PREFECT_API_URL": "http://127.0.0.1:1/api",
        },
    )
    assert result.returncode == 1
    checks = {c["name"]: c["outcome"] for c in json.loads(result.stdout)}
    assert checks == {
        "settings": "ok",
        "directories": "ok",
        "database": "fail",
        "pgvector": "skip",
        "schema": "skip",
        "object store": "ok",
        "prefect": "fail",
    }


def test_db_status_on_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    result = stave(
        "db",
        "status",
        cwd=tmp_path,
        env={"STAVE_DATABASE_URL": "postgresql://u:pw-xyz@127.0.0.1:1/x"},
    )
    assert result.returncode == 1
    line = assert_one_line_error(result)
    assert line.startswith("stave: error: database unavailable") and "pw-xyz" not in line


def test_prod_with_placeholder_secrets_refuses_in_one_line(tmp_path: Path) -> None:
    result = stave(
        "env",
        cwd=tmp_path,
        env={"STAVE_ENV": "prod", "STAVE_DATABASE_URL": "postgresql://u:changeme@db/x"},
    )
    assert result.returncode == 1
    line = assert_one_line_error(result)
    assert "STAVE_ENV=prod refuses to start" in line and "placeholder password" in line


def test_env_masks_secrets(tmp_path: Path) -> None:
    result = stave(
        "env",
        "--json",
        cwd=tmp_path,
        env={
            "STAVE_DATABASE_URL": "postgresql://u:Sup3r-Secret@db:5432/x",
            "STAVE_S3_SECRET_KEY": "Another-Secret-1",
            "STAVE_S3_ACCESS_KEY": "Access-Key-2",
            "STAVE_REPLICA_URL": "postgresql://r:Replica-Pw-3@replica:5432/x",
            "STAVE_PREFECT_DATABASE_URL": "postgresql://p:Prefect-Db-Pw-4@pdb:5432/prefect",
            "STAVE_PREFECT_API_AUTH_STRING": "admin:Auth-String-5",
        },
    )
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert view["database_url"] == "postgresql+psycopg://u:***@db:5432/x"
    assert view["replica_url"] == "postgresql+psycopg://r:***@replica:5432/x"
    assert view["prefect_database_url"] == "postgresql://p:***@pdb:5432/prefect"
    assert view["s3_secret_key"] == "***" and view["s3_access_key"] == "***"
    assert view["prefect_api_auth_string"] == "***"
    secrets = ("Sup3r-Secret", "Another-Secret-1", "Access-Key-2", "Replica-Pw-3")
    for secret in (*secrets, "Prefect-Db-Pw-4", "Auth-String-5"):
        assert secret not in result.stdout + result.stderr


def test_db_stop_refuses_an_external_database(tmp_path: Path) -> None:
    result = stave("db", "stop", cwd=tmp_path, env={"STAVE_DATABASE_URL": "postgresql://u@h/x"})
    assert result.returncode == 1
    assert "only stops its embedded server" in assert_one_line_error(result)


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = stave("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("db", "doctor", "env"):
        assert command in result.stdout


def test_eval_with_a_missing_or_corrupted_checkpoint_is_one_line(tmp_path: Path) -> None:
    missing = stave(
        "eval", "--quick", cwd=tmp_path, env={"STAVE_CHECKPOINT": str(tmp_path / "x.pt")}
    )
    assert missing.returncode == 1
    assert "checkpoint not found" in assert_one_line_error(missing)
    from stave.generator.checkpoint import PACKAGED, model_card_path

    bad = tmp_path / "bad.pt"
    data = bytearray(PACKAGED.read_bytes())
    data[5000] ^= 0xFF
    bad.write_bytes(bytes(data))
    model_card_path(bad).write_text(model_card_path(PACKAGED).read_text())
    corrupted = stave("eval", "--quick", "--checkpoint", str(bad), cwd=tmp_path)
    assert corrupted.returncode == 1
    assert "is corrupted: sha256" in assert_one_line_error(corrupted)
