"""`stave generate` and its companions as users run them: subprocesses on the test database."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.test_cli import assert_one_line_error, stave

pytestmark = pytest.mark.integration


@pytest.fixture
def env(database_url: str, prefect_api: str, tmp_path: Path) -> dict[str, str]:
    return {
        "STAVE_HOME": str(tmp_path / "home"),
        "STAVE_DATABASE_URL": database_url,
        "STAVE_DEFAULT_DURATION_S": "1",
        "STAVE_DEFAULT_STEPS": "2",
        "PREFECT_API_URL": prefect_api,
    }


def count_jobs(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM generation_job")).scalar_one())


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("latin1.csv", "prompt\ncaf\xe9 bells\n".encode("latin-1"), "is not valid UTF-8"),
        ("noprompt.csv", b"text,seed\nbells,1\n", "no 'prompt' column"),
        ("empty.jsonl", b"", "is empty"),
        ("table.jsonl", b"prompt,seed\nbells,1\n", "expected JSON Lines"),
    ],
)
def test_unreadable_files_are_one_line_and_write_nothing(
    env: dict[str, str], engine: Engine, tmp_path: Path, name: str, data: bytes, expected: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    before = count_jobs(engine)
    for command in ("generate", "submit"):
        result = stave(command, str(path), cwd=tmp_path, env=env)
        assert result.returncode == 1
        line = assert_one_line_error(result)
        assert expected in line and name in line
    assert count_jobs(engine) == before


def test_generate_then_inspect_regenerate_retry_and_gc(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    path = tmp_path / "prompts.csv"
    path.write_text(
        "prompt,seed,guidance\n"
        f"warm organ chords in F major {tag},1,\n"
        f"bright bell melody in A minor {tag},2,\n"
        f"too much guidance {tag},3,31\n"
    )
    first = stave("generate", str(path), "--json", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert {k: summary[k] for k in ("published", "quarantined", "failed", "rejected")} == {
        "published": 2,
        "quarantined": 0,
        "failed": 0,
        "rejected": 1,
    }
    assert summary["rejections"] == [
        {"row": 3, "line": 4, "field": "guidance", "reason": "is 31; must be 0-30"}
    ]
    job = summary["job_id"]

    again = stave("generate", str(path), cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert f"job {job} (already submitted; nothing new)" in again.stdout
    assert "row 3 (line 4), guidance: is 31; must be 0-30" in again.stderr

    detail = json.loads(stave("job", job, "--json", cwd=tmp_path, env=env).stdout)
    assert detail["counts"] == {"published": 2}
    task_id = detail["tasks"][0]["id"]
    shown = stave("task", task_id, cwd=tmp_path, env=env)
    assert shown.returncode == 0 and "published" in shown.stdout and "revision 0" in shown.stdout
    listed = stave("jobs", cwd=tmp_path, env=env)
    assert job in listed.stdout

    remade = stave("regenerate", task_id, "--verify", cwd=tmp_path, env=env)
    assert remade.returncode == 0, remade.stderr
    assert "identical to the published clip" in remade.stdout

    retried = stave("retry", job, cwd=tmp_path, env=env)
    assert "re-queued 0 failed task(s)" in retried.stdout
    swept = json.loads(stave("gc", "--json", cwd=tmp_path, env=env).stdout)
    assert swept["orphans"] == [] and swept["scanned"] >= 2
    assert swept["expired_pages"] == []
    # The job's listening page, forty days on: past STAVE_GALLERY_KEEP_DAYS (30), gc removes
    # it (a filesystem store has no lifecycle rules).
    page = Path(summary["pages"]["gallery"].removeprefix("file://"))
    files = [f for f in page.parent.rglob("*") if f.is_file()]
    assert page in files
    for f in files:
        long_ago = f.stat().st_mtime - 40 * 86400
        os.utime(f, (long_ago, long_ago))
    swept = json.loads(stave("gc", "--delete", "--json", cwd=tmp_path, env=env).stdout)
    assert swept["orphans"] == [] and len(swept["expired_pages"]) >= len(files) // 2
    assert all(key.startswith(f"dev/gallery/{job}/") for key in swept["expired_pages"])
    assert not page.exists()

    missing = stave("task", str(uuid.uuid4()), cwd=tmp_path, env=env)
    assert missing.returncode == 1 and "no task" in assert_one_line_error(missing)


def test_submit_queues_and_run_pending_drains(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "queue.jsonl"
    path.write_text(f'{{"prompt": "soft bass arpeggio {uuid.uuid4()}"}}\n')
    queued = stave("submit", str(path), "--json", cwd=tmp_path, env=env)
    assert queued.returncode == 0, queued.stderr
    job = json.loads(queued.stdout)["job_id"]
    with engine.connect() as conn:
        status = conn.execute(
            text("SELECT status FROM generation_task WHERE job_id = :j"), {"j": job}
        ).scalar_one()
    assert status == "pending"
    ran = stave("run-pending", "--job", job, "--json", cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["published"] == 1
    idle = stave("run-pending", "--job", job, cwd=tmp_path, env=env)
    assert "nothing pending" in idle.stdout


def test_a_nul_in_one_row_rejects_that_row_and_the_rest_go_ahead(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    path = tmp_path / "nul.csv"
    rows = [f"warm organ {tag},1", f"broken \x00 prompt {tag},2", f"bright bells {tag},3"]
    path.write_bytes(("prompt,seed\n" + "\n".join(rows) + "\n").encode())
    done = stave("submit", str(path), "--json", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    queued = json.loads(done.stdout)
    assert queued["accepted"] == 2 and queued["rejected"] == 1
    (rejection,) = queued["rejections"]
    assert rejection["row"] == 2 and rejection["field"] == "prompt"
    assert "control character U+0000" in rejection["reason"]


def test_a_file_with_no_accepted_row_exits_1_after_its_rejections(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "all-bad.csv"
    path.write_text("prompt,guidance\nfirst,99\nsecond,-1\n")
    before = count_jobs(engine)
    for command in ("generate", "submit"):
        shown = stave(command, str(path), cwd=tmp_path, env=env)
        assert shown.returncode == 1 and "Traceback" not in shown.stderr
        assert "rejected 2 row(s):" in shown.stderr and "row 1 (line 2), guidance:" in shown.stderr
        assert shown.stderr.strip().splitlines()[-1].startswith("stave: error: ")
        assert "no row was accepted" in shown.stderr
        as_json = stave(command, str(path), "--json", cwd=tmp_path, env=env)
        assert as_json.returncode == 1
        summary = json.loads(as_json.stdout)
        assert summary["job_id"] is None and summary["rejected"] == 2
        assert assert_one_line_error(as_json).startswith("stave: error: ")
    assert count_jobs(engine) == before


def test_job_shows_a_summary_and_the_first_tasks(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    path = tmp_path / "five.csv"
    path.write_text("prompt,seed\n" + "".join(f"bell {i} {tag},{i}\n" for i in range(5)))
    job = json.loads(stave("submit", str(path), "--json", cwd=tmp_path, env=env).stdout)["job_id"]
    detail = json.loads(stave("job", job, "--limit", "2", "--json", cwd=tmp_path, env=env).stdout)
    assert len(detail["tasks"]) == 2 and detail["counts"] == {"pending": 5}
    assert detail["tasks_shown"] == {"shown": 2, "of": 5, "status": None}
    text_ = stave("job", job, "--limit", "2", cwd=tmp_path, env=env).stdout
    assert "2 of 5 task(s) shown" in text_
    failed = stave("job", job, "--status", "failed", "--json", cwd=tmp_path, env=env)
    assert json.loads(failed.stdout)["tasks"] == []
    bad = stave("job", job, "--status", "nope", cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "--status" in assert_one_line_error(bad)


def test_generate_exits_3_when_clips_failed_after_printing_what_was_done(
    env: dict[str, str], engine: Engine, tmp_path: Path, s3_endpoint: str, bucket_name: str
) -> None:
    from tests.utils.flaky_proxy import FlakyProxy

    tag = uuid.uuid4().hex[:8]
    path = tmp_path / "two.csv"
    path.write_text(f"prompt,seed\nwarm organ {tag},1\nbright bells {tag},2\n")
    with FlakyProxy(s3_endpoint, failures=0, failing_paths=("/audio/",)) as proxy:
        failing = {
            **env,
            "STAVE_S3_ENDPOINT": proxy.endpoint,
            "STAVE_S3_ACCESS_KEY": "test-access",
            "STAVE_S3_SECRET_KEY": "test-secret",
            "STAVE_S3_MAX_RETRIES": "0",
            "STAVE_BUCKET": bucket_name,
            "STAVE_MAX_ATTEMPTS": "1",
        }
        done = stave("generate", str(path), "--json", cwd=tmp_path, env=failing)
    assert done.returncode == 3, done.stderr
    summary = json.loads(done.stdout)
    assert summary["failed"] == 2 and summary["published"] == 0
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("stave: error: 2 clips failed (storage_unavailable 2) of 2 clips")
    assert f"stave job {summary['job_id']} --status failed" in line
    assert "Traceback" not in done.stdout + done.stderr
