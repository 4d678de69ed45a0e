"""Secrets hygiene: distinctive secrets in every secret setting, a job that fails in several
ways, then a search of everything that was captured: the commands' output, the log files,
Prefect's database (its logs, artifacts and run states), Data Docs, and the rows the job left."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from tests.test_cli import stave
from tests.utils.flaky_proxy import FlakyProxy
from tests.utils.net import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def store_failing_clips(s3_endpoint: str) -> Iterator[str]:
    """An S3 endpoint that answers the store's health probe but fails every clip it is given:
    a batch fails to store (storage_unavailable) after the command's own checks passed."""
    with FlakyProxy(s3_endpoint, failures=0, failing_paths=("/audio/",)) as proxy:
        yield proxy.endpoint


def test_no_secret_is_written_anywhere(
    database_url: str, engine: Engine, store_failing_clips: str, bucket_name: str, tmp_path: Path
) -> None:
    mark = uuid.uuid4().hex[:10]
    secrets = {
        "db": f"DbPw{mark}",
        "access": f"AccessKey{mark}",
        "secret": f"SecretKey{mark}",
        "auth": f"AuthString{mark}",
        "redis": f"RedisPw{mark}",
        "replica": f"ReplicaPw{mark}",
    }
    # The session database accepts any password on loopback (trust): the job really runs.
    with_password = make_url(database_url).set(password=secrets["db"])
    home = tmp_path / "home"
    env = {
        "STAVE_HOME": str(home),
        "STAVE_DATABASE_URL": with_password.render_as_string(hide_password=False),
        "STAVE_S3_ENDPOINT": store_failing_clips,
        "STAVE_BUCKET": bucket_name,
        "STAVE_S3_ACCESS_KEY": secrets["access"],
        "STAVE_S3_SECRET_KEY": secrets["secret"],
        "STAVE_S3_MAX_RETRIES": "0",
        "STAVE_PREFECT_API_AUTH_STRING": f"ops:{secrets['auth']}",
        # A cache that is down: reads degrade to the database, with a warning naming it.
        "STAVE_REDIS_URL": f"redis://:{secrets['redis']}@127.0.0.1:{free_port()}/0",
        "STAVE_REPLICA_URL": f"postgresql://r:{secrets['replica']}@127.0.0.1:{free_port()}/x",
        "STAVE_MAX_ATTEMPTS": "1",
        "STAVE_DEFAULT_DURATION_S": "1",
        "STAVE_DEFAULT_STEPS": "2",
        "STAVE_LOG_LEVEL": "DEBUG",
    }
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(
        "prompt,guidance,seed\n"
        f"warm organ chords {mark},2,1\n"
        f"square lead {mark},99,2\n"  # rejected: guidance out of range
    )
    outputs = [
        stave("generate", str(prompts), "--json", cwd=tmp_path, env=env),  # store fails
        stave("env", "--json", cwd=tmp_path, env=env),
        stave("doctor", "--json", cwd=tmp_path, env=env),  # store, replica, ... fail
        stave("similar", str(uuid.uuid4()), "--user", "x", cwd=tmp_path, env=env),
        stave(  # a database that refuses: the URL (and its password) in an error
            "db",
            "status",
            cwd=tmp_path,
            env={**env, "STAVE_DATABASE_URL": f"postgresql://u:{secrets['db']}@127.0.0.1:1/x"},
        ),
    ]
    generated = outputs[0]
    assert generated.returncode != 0 or '"failed": 1' in generated.stdout, generated.stderr
    assert any(o.returncode != 0 for o in outputs[2:])  # the failures really happened

    captured = [o.stdout + o.stderr for o in outputs]
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name == "stave.log" for p in files)
    assert any(p.suffix == ".db" for p in files)  # Prefect's database: logs, artifacts, states
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT coalesce(t.error_message, '') || ' ' || coalesce(e.detail::text, '') "
                "|| ' ' || coalesce(j.rejections::text, '') || ' ' || coalesce(j.source_uri, '') "
                "FROM generation_task t JOIN generation_job j ON j.id = t.job_id "
                "LEFT JOIN task_event e ON e.task_id = t.id WHERE t.prompt LIKE :m"
            ),
            {"m": f"%{mark}%"},
        ).scalars()
        captured.extend(rows)
    assert any("storage_unavailable" in c for c in captured)  # the failure is recorded …
    for name, secret in secrets.items():
        for text_ in captured:
            assert secret not in text_, f"{name} secret in command output or records"
        for path in files:
            assert secret.encode() not in path.read_bytes(), f"{name} secret in {path}"
