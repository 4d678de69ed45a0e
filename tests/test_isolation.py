"""Per-user isolation by row-level security (migration 0006): with a user context, one user
cannot read another's tasks, clips or prompt history, through SQL, search, reports or the CLI."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from stave.infra.db import apply_user_scope
from stave.infra.embedded_pg import RunningServer
from stave.infra.errors import NotFound
from stave.infra.settings import Settings
from tests.test_cli import assert_one_line_error, stave

pytestmark = pytest.mark.integration

TINY = {"default_duration_s": 1, "default_steps": 2, "batch_size": 4}
USER_TABLES = ("generation_task", "audio_asset", "prompt_revision")


@pytest.fixture(scope="module")
def two_users(prefect_api: str, engine: Engine) -> dict[str, Any]:
    """Clips of two users, made by the real generation flow in one job."""
    from stave.flows.generate import generate
    from stave.infra.settings import get_settings

    tag = uuid.uuid4().hex[:6]
    alice, bob = f"alice-{tag}", f"bob-{tag}"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in TINY.items():
            patch.setenv(f"STAVE_{key.upper()}", str(value))
        get_settings.cache_clear()
        rows = [
            {"prompt": f"bell arpeggio {tag} {i}", "user_id": user, "seed": i}
            for i, user in enumerate([alice, alice, alice, bob, bob])
        ]
        assert generate(rows=rows)["published"] == 5
    get_settings.cache_clear()
    with engine.connect() as conn:
        assets = {
            user: [
                r[0]
                for r in conn.execute(
                    text("SELECT id FROM audio_asset WHERE user_id = :u"), {"u": user}
                )
            ]
            for user in (alice, bob)
        }
    return {"alice": alice, "bob": bob, "assets": assets}


def owners(engine: Engine, table: str, user: str | None) -> set[str]:
    with engine.connect() as conn:
        if user is not None:
            apply_user_scope(conn, user)
        found = {r[0] for r in conn.execute(text(f"SELECT DISTINCT user_id FROM {table}"))}
        conn.rollback()
    return found


def test_a_user_context_sees_only_that_users_rows(
    engine: Engine, two_users: dict[str, Any]
) -> None:
    alice, bob = two_users["alice"], two_users["bob"]
    for table in (*USER_TABLES, "report_prompt_history"):
        assert owners(engine, table, alice) == {alice}, table
        assert owners(engine, table, bob) == {bob}, table
        assert {alice, bob} <= owners(engine, table, None), table  # no context: every row


def test_the_app_role_is_isolated_and_cannot_write_for_another_user(
    pg_server: RunningServer, database_url: str, two_users: dict[str, Any]
) -> None:
    alice, bob = two_users["alice"], two_users["bob"]
    login = f"app_{uuid.uuid4().hex[:8]}"
    dsn = make_url(database_url).set(drivername="postgresql")
    with psycopg.connect(dsn.render_as_string(hide_password=False), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {login} LOGIN IN ROLE stave_app")
    try:
        as_app = dsn.set(username=login).render_as_string(hide_password=False)
        with psycopg.connect(as_app) as conn:
            conn.execute("SELECT set_config('app.user_id', %s, true)", (alice,))
            seen = conn.execute("SELECT DISTINCT user_id FROM generation_task").fetchall()
            assert {r[0] for r in seen} == {alice}
            bobs = conn.execute(
                "SELECT count(*) FROM audio_asset WHERE user_id = %s", (bob,)
            ).fetchone()
            assert bobs == (0,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
                conn.execute(
                    "INSERT INTO prompt_revision (id, user_id, prompt, created_at) "
                    "VALUES (gen_random_uuid(), %s, 'not yours', now())",
                    (bob,),
                )
    finally:
        with psycopg.connect(dsn.render_as_string(hide_password=False), autocommit=True) as admin:
            admin.execute(f"DROP ROLE {login}")


def test_search_and_reports_for_a_user_see_only_theirs(
    engine: Engine, settings: Settings, two_users: dict[str, Any]
) -> None:
    from stave.tasks import reports, search

    alice, bob = two_users["alice"], two_users["bob"]
    mine, theirs = two_users["assets"][alice], two_users["assets"][bob]
    found = search.similar(engine, settings, asset_id=mine[0], k=5, user_id=alice)
    assert found.neighbours and {n.user_id for n in found.neighbours} == {alice}
    # Another user's clip cannot even be the query.
    with pytest.raises(NotFound, match="no such asset"):
        search.similar(engine, settings, asset_id=theirs[0], k=5, user_id=alice)
    assert {r["asset_id"] for r in reports.prompts(engine, alice, None)} == {str(a) for a in mine}


def test_the_cli_with_user_shows_only_that_users_rows(
    database_url: str, two_users: dict[str, Any], tmp_path: Path, stave_env: Callable[..., Any]
) -> None:
    alice, bob = two_users["alice"], two_users["bob"]
    env = {"STAVE_DATABASE_URL": database_url}
    shown = stave("report", "prompts", "--user", alice, "--json", cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert {str(r["asset_id"]) for r in json.loads(shown.stdout)} == {
        str(a) for a in two_users["assets"][alice]
    }
    theirs = str(two_users["assets"][bob][0])
    refused = stave("similar", theirs, "--user", alice, cwd=tmp_path, env=env)
    assert refused.returncode == 1 and "no such asset" in assert_one_line_error(refused)
