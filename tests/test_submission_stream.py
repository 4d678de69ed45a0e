"""A submission streamed in chunks (tiny chunks here, so a 30-row file is many of them): keys
repeated chunks apart, rejections counted beyond those kept, a resubmission that writes
nothing, a failure half way that leaves nothing, and two submissions of one file at once."""

from __future__ import annotations

import gc
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

import stave.tasks.intake.rows as intake_rows
import stave.tasks.submission as submission
from stave.infra.errors import InvalidInput
from stave.infra.settings import Settings
from stave.tasks.intake import RawRow, Rejection, SourceRows, read_file, rows_from_parameter

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(submission, "CHUNK_ROWS", 4)
    monkeypatch.setattr(submission, "KEPT_REJECTIONS", 3)
    monkeypatch.setattr(intake_rows, "KEPT_REJECTIONS", 3)


def counts(engine: Engine, job_id: uuid.UUID | None) -> tuple[int, int, int]:
    """(tasks, creation events, revisions) of a job."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT count(*), count(e.id), count(DISTINCT t.prompt_revision_id) "
                "FROM generation_task t LEFT JOIN task_event e "
                "ON e.task_id = t.id AND e.from_status IS NULL WHERE t.job_id = :j"
            ),
            {"j": job_id},
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


def test_a_file_in_many_chunks(tmp_path: Path, engine: Engine, settings: Settings) -> None:
    tag = uuid.uuid4().hex[:8]
    lines = ["prompt,idempotency_key,seed"]
    for i in range(1, 31):
        if i in (3, 9, 14, 22, 27):
            lines.append(f",,{i}")  # an empty prompt: rejected
        elif i == 2:
            lines.append(f"first of a key,k-{tag},")
        elif i == 20:
            lines.append(f"the same key again,k-{tag},")  # chunks after row 2
        else:
            lines.append(f"bell melody {tag} {i},,{i}")
    path = tmp_path / "many.csv"
    path.write_text("\n".join(lines) + "\n")
    seen: list[int] = []

    made = submission.submit(engine, read_file(path), settings, progress=seen.append)

    assert sum(seen) == 30 and max(seen) <= 4
    assert made.created and made.total == 30 and made.accepted == 24
    assert made.rejected_count == 6
    assert [r.row for r in made.rejected] == [3, 9, 14]  # the first three, kept
    assert counts(engine, made.job_id) == (24, 24, 24)
    with engine.connect() as conn:
        job = conn.execute(
            text(
                "SELECT total_rows, accepted_rows, rejected_rows, rejections "
                "FROM generation_job WHERE id = :j"
            ),
            {"j": made.job_id},
        ).one()
        repeat = conn.execute(
            text("SELECT job_id FROM generation_task WHERE idempotency_key = :k"),
            {"k": f"k-{tag}"},
        ).scalar_one()
    assert tuple(job[:3]) == (30, 24, 6) and len(job[3]) == 3
    assert repeat == made.job_id

    # Again: nothing new. The key repeated chunks apart is found in the database, like the
    # rest, so on a resubmission its second row counts as already submitted (25).
    first = submission.submit(engine, read_file(path), settings)
    assert not first.created and first.job_id == made.job_id
    assert first.already_submitted == 25 and first.accepted == 0
    assert first.rejected_count == 5
    assert counts(engine, made.job_id) == (24, 24, 24)
    with engine.connect() as conn:
        jobs = conn.execute(
            text("SELECT count(*) FROM generation_job WHERE source_sha256 = :s"),
            {"s": read_file(path).sha256},
        ).scalar_one()
    assert jobs == 1  # the resubmission's own job row was rolled back


def test_a_key_repeated_chunks_apart_names_its_first_row(
    engine: Engine, settings: Settings
) -> None:
    key = f"far-{uuid.uuid4().hex[:8]}"
    rows: list[dict[str, Any]] = [{"prompt": f"organ {i}"} for i in range(10)]
    rows[1]["idempotency_key"] = key
    rows[8]["idempotency_key"] = key
    made = submission.submit(engine, rows_from_parameter(rows), settings)
    assert made.accepted == 9
    assert [str(r) for r in made.rejected] == ["row 9, idempotency_key: repeats row 2's key"]


def test_a_failure_half_way_leaves_nothing(engine: Engine, settings: Settings) -> None:
    sha = uuid.uuid4().hex

    def rows() -> Iterator[RawRow | Rejection]:
        for i in range(1, 11):
            yield i, i + 1, {"prompt": f"half way {sha} {i}"}
        raise InvalidInput("half.csv: is not valid CSV (line 12: unexpected end of data)")

    source = SourceRows(sha, "half.csv", "csv", 20, rows)
    with pytest.raises(InvalidInput, match="line 12"):
        submission.submit(engine, source, settings)
    with engine.connect() as conn:
        jobs = conn.execute(
            text("SELECT count(*) FROM generation_job WHERE source_sha256 = :s"), {"s": sha}
        ).scalar_one()
        tasks = conn.execute(
            text("SELECT count(*) FROM generation_task WHERE prompt LIKE :p"),
            {"p": f"half way {sha}%"},
        ).scalar_one()
    assert (jobs, tasks) == (0, 0)  # two chunks had been sent: rolled back with the rest


def test_two_submissions_of_one_file_at_once_make_one_job(
    engine: Engine, settings: Settings
) -> None:
    tag = uuid.uuid4().hex[:8]
    source = rows_from_parameter([{"prompt": f"at once {tag} {i}"} for i in range(40)])
    results: list[submission.Submission] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        results.append(submission.submit(engine, source, settings))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 2
    made = [r for r in results if r.created]
    assert len(made) == 1 and made[0].accepted == 40
    other = next(r for r in results if not r.created)
    assert other.job_id == made[0].job_id and other.already_submitted == 40
    assert counts(engine, made[0].job_id) == (40, 40, 40)


def test_overlapping_submissions_keep_the_bulk_mode_until_the_last_ends() -> None:
    before = sys.getswitchinterval()
    bulk = submission._BulkMode()
    first, second = bulk(), bulk()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert sys.getswitchinterval() == pytest.approx(submission.SWITCH_INTERVAL_S)
    assert gc.get_freeze_count() > 0  # the heap stays out of collections
    second.__exit__(None, None, None)
    assert sys.getswitchinterval() == before
    assert gc.get_freeze_count() == 0
