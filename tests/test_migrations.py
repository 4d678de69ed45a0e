"""Migrations: upgrade/downgrade round-trip, no drift between models and migrations, roles."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Engine, make_url
from sqlmodel import SQLModel

import stave.models  # noqa: F401
from stave.infra import migrate, roles
from stave.infra.db import ensure_database, make_engine, psycopg_dsn
from stave.infra.embedded_pg import RunningServer
from stave.infra.errors import ConfigError
from stave.infra.roles import APP, REPORTING
from stave.models.assets import VECTOR_INDEX_PREFIX
from stave.sql.autogen import include_object
from stave.tasks import vector_index

pytestmark = pytest.mark.integration


def test_upgrade_downgrade_upgrade_round_trip(pg_server: RunningServer, database_url: str) -> None:
    # A database of its own: the session database stays at head for the other tests.
    ensure_database(pg_server.url("postgres"), "roundtrip")
    url = pg_server.url("roundtrip")
    engine = make_engine(url, pool_size=1, max_overflow=0)
    try:
        migrate.upgrade(url)
        assert migrate.current_revision_at(url) == migrate.head_revision()
        assert set(SQLModel.metadata.tables) <= set(inspect(engine).get_table_names())
        migrate.downgrade(url, "base")
        engine.dispose()
        assert migrate.current_revision_at(url) is None
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        migrate.upgrade(url)
        engine.dispose()
        assert migrate.current_revision_at(url) == migrate.head_revision()
        assert set(SQLModel.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_two_workers_starting_together_create_and_migrate_once(pg_server: RunningServer) -> None:
    # `stave worker --gpu 0` and `--pool cpu` started at once on a fresh embedded home both
    # create the database and migrate it: neither may fail on the other's work.
    name = f"race_{uuid.uuid4().hex[:8]}"
    url = pg_server.url(name)
    start = threading.Barrier(2)

    def worker() -> str | None:
        start.wait()
        ensure_database(pg_server.url("postgres"), name)
        return migrate.ensure_at_head(url, embedded=True)

    with ThreadPoolExecutor(2) as pool:
        revisions = [f.result() for f in [pool.submit(worker), pool.submit(worker)]]
    assert revisions == [migrate.head_revision()] * 2
    assert migrate.current_revision_at(url) == migrate.head_revision()


def test_an_external_database_behind_head_is_refused_in_one_line(
    pg_server: RunningServer,
) -> None:
    name = f"behind_{uuid.uuid4().hex[:8]}"
    ensure_database(pg_server.url("postgres"), name)
    with pytest.raises(ConfigError, match=r"at revision none, not head .*stave db upgrade"):
        migrate.ensure_at_head(pg_server.url(name), embedded=False)
    assert migrate.current_revision_at(pg_server.url(name)) is None  # nothing was applied


def test_autogenerate_finds_no_drift(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": include_object}
        )
        diffs = compare_metadata(context, SQLModel.metadata)
    assert diffs == []


def test_objects_are_owned_by_the_migrator(engine: Engine) -> None:
    with engine.connect() as conn:
        owners = {
            row[0]
            for row in conn.exec_driver_sql(
                "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'"
            )
        }
    assert owners == {"stave_migrator"}


@pytest.fixture(scope="module")
def login_as(pg_server: RunningServer, database_url: str) -> Iterator[object]:
    """Connect as a fresh LOGIN user that is a member of one of Stave's group roles."""
    admin = psycopg.connect(psycopg_dsn(database_url), autocommit=True)
    made: list[str] = []

    def connect(group: str) -> psycopg.Connection[tuple[object, ...]]:
        user = f"{group}_login"
        if user not in made:
            admin.execute(f"DROP ROLE IF EXISTS {user}")
            admin.execute(f"CREATE ROLE {user} LOGIN IN ROLE {group}")
            made.append(user)
        dsn = psycopg_dsn(make_url(database_url).set(username=user).render_as_string())
        conn = psycopg.connect(dsn, autocommit=True)
        assert conn.execute("SELECT current_user").fetchone() == (user,)
        return conn

    yield connect
    for user in made:
        admin.execute(f"DROP OWNED BY {user}")
        admin.execute(f"DROP ROLE {user}")
    admin.close()


DDL = [
    "CREATE TABLE app_made (id int)",
    "ALTER TABLE generation_job ADD COLUMN sneaky int",
    "DROP TABLE style_template",
    "CREATE INDEX ix_sneaky ON generation_job (finished_at)",
    "TRUNCATE task_event",
]


@pytest.mark.parametrize("statement", DDL)
def test_app_role_cannot_run_ddl(login_as, statement: str) -> None:  # type: ignore[no-untyped-def]
    with login_as(APP) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


def test_app_role_reads_and_writes_rows(login_as) -> None:  # type: ignore[no-untyped-def]
    with login_as(APP) as conn:
        conn.execute(
            "INSERT INTO style_template (id, name, description)"
            " VALUES (gen_random_uuid(), 'app-ok', '')"
        )
        conn.execute("UPDATE style_template SET description = 'x' WHERE name = 'app-ok'")
        assert conn.execute(
            "SELECT count(*) FROM style_template WHERE name = 'app-ok'"
        ).fetchone() == (1,)
        conn.execute("DELETE FROM style_template WHERE name = 'app-ok'")
        # task_event's id comes from a sequence: the app needs USAGE on it.
        conn.execute("SELECT nextval(pg_get_serial_sequence('task_event', 'id'))")


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO style_template (id, name, description) VALUES (gen_random_uuid(), 'no', '')",
        "UPDATE generation_task SET status = 'failed'",
        "DELETE FROM audio_asset",
        "CREATE TABLE reporting_made (id int)",
    ],
)
def test_reporting_role_cannot_write(login_as, statement: str) -> None:  # type: ignore[no-untyped-def]
    with login_as(REPORTING) as conn:
        assert conn.execute("SELECT count(*) FROM generation_task").fetchone() is not None
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)


def test_migrations_keep_frozen_copies_that_match_the_live_names() -> None:
    """Migrations import no application code (import-linter enforces it); the copies they
    keep of index names and roles must still name what the application names."""
    versions = Path(migrate.SCRIPT_LOCATION) / "versions"

    def load(name: str) -> Any:
        (path,) = versions.glob(f"{name}_*.py")
        spec = spec_from_file_location(f"frozen_{name}", path)
        assert spec is not None and spec.loader is not None
        module = module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    m0003 = load("0003")
    for version in ("stave-ae-0123456789ab", "Some.Other:Encoder-v2", "x" * 64):
        assert m0003.index_name(version) == vector_index.index_name(version)
    assert m0003.VECTOR_INDEX_PREFIX == VECTOR_INDEX_PREFIX
    m0001, m0005 = load("0001"), load("0005")
    assert (m0001.MIGRATOR, m0001.APP, m0001.REPORTING) == (
        roles.MIGRATOR,
        roles.APP,
        roles.REPORTING,
    )
    assert m0001.APP_TABLE_PRIVILEGES == roles.APP_TABLE_PRIVILEGES
    assert (m0005.APP, m0005.REPORTING) == (roles.APP, roles.REPORTING)
    assert load("0007").ARCHIVER == roles.ARCHIVER


def test_the_fair_queue_migration_queues_existing_work_without_rewriting_tasks(
    pg_server: RunningServer,
) -> None:
    """Migration 0013 makes every existing job `standard` and puts its pending and running
    work in streams, and leaves the tasks' rows where they were (no table rewrite)."""
    from sqlalchemy import text

    name = f"fairq_mig_{uuid.uuid4().hex[:8]}"
    ensure_database(pg_server.url("postgres"), name)
    url = pg_server.url(name)
    migrate.upgrade(url, "0012")
    engine = make_engine(url, pool_size=1, max_overflow=0)
    try:
        job = uuid.uuid4()
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO generation_job (id, submitted_by, parameters, rejections, "
                    "total_rows, accepted_rows, rejected_rows) "
                    "VALUES (:j, 'u', '{}', '[]', 3, 3, 0)"
                ),
                {"j": job},
            )
            for i, status in enumerate(("pending", "pending", "published")):
                conn.execute(
                    text(
                        "INSERT INTO generation_task (id, job_id, user_id, prompt, parameters, "
                        "idempotency_key, status, attempts, max_attempts, timings, provenance) "
                        "VALUES (:id, :j, 'u', 'p', '{}', :k, :s, 0, 3, '{}', '{}')"
                    ),
                    {"id": uuid.uuid4(), "j": job, "k": f"{job}-{i}", "s": status},
                )
            before = conn.execute(text("SELECT id, ctid::text FROM generation_task")).all()
        engine.dispose()
        migrate.upgrade(url)
        with engine.connect() as conn:
            after = conn.execute(text("SELECT id, ctid::text FROM generation_task")).all()
            priority = conn.execute(
                text("SELECT priority FROM generation_job WHERE id = :j"), {"j": job}
            ).scalar_one()
            stream = conn.execute(
                text("SELECT priority, pending FROM queue_stream WHERE job_id = :j"), {"j": job}
            ).one()
        assert sorted(after) == sorted(before)  # every task row where it was: not rewritten
        assert priority == "standard" and tuple(stream) == ("standard", 2)
    finally:
        engine.dispose()


def test_a_createrole_owner_is_told_the_grants_a_dba_runs_then_migrates(
    pg_server: RunningServer, database_url: str
) -> None:
    # The roles exist already (the session database made them, as a second environment on
    # one server finds them); the owner login may create roles but is not a superuser, so
    # PostgreSQL 16 lets it grant only the roles it made. It once failed deep in the first
    # migration: "permission denied to grant role", exit 4.
    suffix = uuid.uuid4().hex[:8]
    owner, name = f"owner_{suffix}", f"fresh_{suffix}"
    admin_url = pg_server.url("postgres")
    with psycopg.connect(psycopg_dsn(admin_url), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {owner} LOGIN CREATEROLE")
        conn.execute(f"CREATE DATABASE {name} OWNER {owner}")
    url = make_url(pg_server.url(name)).set(username=owner).render_as_string(hide_password=False)

    with pytest.raises(ConfigError) as refused:
        migrate.upgrade(url)
    message = str(refused.value)
    assert "\n" not in message
    assert f"the login {owner} may not migrate this fresh database" in message
    assert f"CREATE EXTENSION vector; (in database {name}" in message
    assert f"GRANT stave_migrator TO {owner};" in message
    assert migrate.current_revision_at(url) is None  # nothing half-done

    with psycopg.connect(psycopg_dsn(pg_server.url(name)), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
        conn.execute(f"GRANT stave_migrator TO {owner}")
    migrate.upgrade(url)
    assert migrate.current_revision_at(url) == migrate.head_revision()
    with psycopg.connect(psycopg_dsn(pg_server.url(name))) as conn:
        tables_owner = conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    assert tables_owner == [("stave_migrator",)]
