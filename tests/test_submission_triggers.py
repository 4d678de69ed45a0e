"""A submission writes with the foreign-key triggers off where its role may (migration 0011),
keeping every reference itself: the rows show it (a foreign-key check leaves a row lock on the
row it checked; none is left on this transaction's own rows, and the existing revisions it
reuses are locked as the check would lock them); a role without the grant submits the same
rows with the triggers on; a reused revision gone before the chunk is sent is refused by
PostgreSQL as before. An app login (subject to row-level security, under which PostgreSQL
refuses COPY) submits through temporary tables."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

import stave.tasks.submission as submission
import stave.tasks.submission.write as write
from stave.infra.db import make_engine, psycopg_dsn
from stave.infra.roles import APP
from stave.infra.settings import Settings
from stave.models.generation import PromptRevision
from stave.tasks.intake import rows_from_parameter

pytestmark = pytest.mark.integration


def locked(engine: Engine, table: str, ids: list[uuid.UUID]) -> list[bool]:
    """Whether each row carries a row lock (xmax set: nothing here updates or deletes them)."""
    with engine.connect() as conn:
        found = dict(
            conn.execute(
                text(f"SELECT id, xmax::text <> '0' FROM {table} WHERE id = ANY(:i)"), {"i": ids}
            ).all()
        )
    return [bool(found[i]) for i in ids]


def submitted(engine: Engine, settings: Settings, rows: list[dict[str, object]]) -> uuid.UUID:
    made = submission.submit(engine, rows_from_parameter(rows), settings, user_id="ana")
    assert made.created and made.accepted == len(rows), made
    assert made.job_id is not None
    return made.job_id


def written(engine: Engine, job_id: uuid.UUID) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """(task ids, their revision ids) of a job, in row order."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, prompt_revision_id FROM generation_task WHERE job_id = :j ORDER BY id"
            ),
            {"j": job_id},
        ).all()
    return [r[0] for r in rows], [r[1] for r in rows]


def test_rows_reference_what_exists_without_a_trigger_per_row(
    engine: Engine, settings: Settings
) -> None:
    tag = uuid.uuid4().hex[:8]
    root_job = submitted(engine, settings, [{"prompt": f"root {tag}"}])
    root = written(engine, root_job)[1][0]

    job = submitted(
        engine,
        settings,
        [
            {"prompt": f"new {tag}"},
            {"prompt": f"root {tag}", "parent_revision": str(root)},  # reuses the root
            {"prompt": f"edited {tag}", "parent_revision": str(root)},  # a new revision of it
        ],
    )

    tasks, revisions = written(engine, job)
    assert revisions[1] == root and len({*revisions}) == 3
    # Its own rows were checked by no trigger; the root, from outside, was locked.
    assert locked(engine, "generation_task", tasks) == [False] * 3
    new = [r for r in revisions if r != root]
    assert locked(engine, "prompt_revision", [*new, root]) == [False, False, True]
    with engine.connect() as conn:
        parent = conn.execute(
            text("SELECT parent_id FROM prompt_revision WHERE id = :r"), {"r": new[1]}
        ).scalar()
        events = conn.execute(
            text("SELECT count(*) FROM task_event WHERE task_id = ANY(:t)"), {"t": tasks}
        ).scalar()
    assert parent == root and events == 3


def login_engine(database_url: str, settings: Settings, *grants: str) -> Iterator[Engine]:
    """An engine for a fresh LOGIN user given `grants` (run by the superuser)."""
    user = f"login_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(psycopg_dsn(database_url), autocommit=True)
    admin.execute(f"CREATE ROLE {user} LOGIN")
    for grant in grants:
        admin.execute(grant.format(user=user))
    eng = make_engine(make_url(database_url).set(username=user).render_as_string(False), settings)
    try:
        yield eng
    finally:
        eng.dispose()
        admin.execute(f"DROP OWNED BY {user}")
        admin.execute(f"DROP ROLE {user}")
        admin.close()


@pytest.fixture
def app_engine(database_url: str, settings: Settings) -> Iterator[Engine]:
    """A login in stave_app, as the README tells operators to make one."""
    yield from login_engine(database_url, settings, f"GRANT {APP} TO {{user}}")


@pytest.fixture
def ungranted_engine(database_url: str, settings: Settings) -> Iterator[Engine]:
    """A login that may write Stave's rows but may not set session_replication_role (its
    privileges granted directly, not through stave_app)."""
    yield from login_engine(
        database_url,
        settings,
        "GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {user}",
        "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {user}",
    )


def test_an_app_login_submits_through_temporary_tables_with_the_triggers_off(
    app_engine: Engine, settings: Settings
) -> None:
    tag = uuid.uuid4().hex[:8]
    with app_engine.connect() as conn:
        subject = conn.execute(text("SELECT row_security_active('generation_task')")).scalar()
    assert subject  # the case PostgreSQL refuses COPY in

    def rows(n: int) -> list[dict[str, object]]:
        return [{"prompt": f"app {tag} {i}", "idempotency_key": f"app-{tag}-{i}"} for i in range(n)]

    job = submitted(app_engine, settings, rows(3))
    again = submission.submit(app_engine, rows_from_parameter(rows(4)), settings, user_id="ana")

    tasks, revisions = written(app_engine, job)
    assert locked(app_engine, "generation_task", tasks) == [False] * 3
    assert locked(app_engine, "prompt_revision", revisions) == [False] * 3
    # A resubmission through the temporary tables: the three found, the new one written.
    assert (again.accepted, again.already_submitted) == (1, 3)


def test_a_role_without_the_grant_submits_with_the_triggers_on(
    ungranted_engine: Engine, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    write._told_triggers_on.clear()
    tag = uuid.uuid4().hex[:8]
    with caplog.at_level(logging.INFO, logger=write.__name__):
        job = submitted(
            ungranted_engine, settings, [{"prompt": f"plain {tag} {i}"} for i in range(3)]
        )
        submitted(ungranted_engine, settings, [{"prompt": f"plain again {tag}"}])

    tasks, revisions = written(ungranted_engine, job)
    assert locked(ungranted_engine, "generation_task", tasks) == [True] * 3  # the events' checks
    assert locked(ungranted_engine, "prompt_revision", revisions) == [True] * 3
    hints = [r.message for r in caplog.records if "session_replication_role" in r.message]
    assert len(hints) == 1 and "GRANT SET ON PARAMETER" in hints[0]  # said once


def test_a_reused_revision_gone_before_its_chunk_is_refused_by_the_database(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = uuid.uuid4().hex[:8]
    gone = uuid.uuid4()  # looked up (here: made up), then deleted before the chunk is sent
    revision = PromptRevision(id=gone, user_id="ana", prompt=f"gone {tag}", lyrics=None)
    monkeypatch.setattr(submission, "_parents", lambda _conn, ids: {gone: revision})
    rows = [{"prompt": f"fine {tag}"}, {"prompt": f"gone {tag}", "parent_revision": str(gone)}]

    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="prompt_revision"):
        submission.submit(engine, rows_from_parameter(rows), settings, user_id="ana")

    with engine.connect() as conn:
        left = conn.execute(
            text("SELECT count(*) FROM generation_task WHERE prompt LIKE :p"), {"p": f"% {tag}"}
        ).scalar()
    assert left == 0
