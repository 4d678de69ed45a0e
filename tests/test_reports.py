"""Operator reports from the views, on rows made by the real generation flow; the reporting
role reads them and cannot write through them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from stave.infra.errors import InvalidInput
from stave.infra.settings import Settings
from stave.tasks import reports

pytestmark = pytest.mark.integration


def test_models_failures_and_prompt_history(
    prefect_api: str, engine: Engine, stave_env: Callable[..., Settings]
) -> None:
    from stave.flows.generate import generate

    stave_env(default_duration_s=1, default_steps=2, batch_size=4)
    user = f"rep-{uuid.uuid4().hex[:6]}"
    before = {(r["name"], r["version"]): r["clips"] for r in reports.models(engine, None)}
    summary = generate(
        rows=[
            {"prompt": f"bright bell arpeggio {user} {i}", "seed": i, "user_id": user}
            for i in range(3)
        ]
    )
    assert summary["published"] == 3
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE generation_task SET status = 'failed', error_class = 'timeout', "
                "finished_at = now() WHERE id = (SELECT id FROM generation_task "
                "WHERE job_id = :j ORDER BY id LIMIT 1)"
            ),
            {"j": summary["job_id"]},
        )

    after = reports.models(engine, reports.since("1d"))
    grown = [r for r in after if r["clips"] - before.get((r["name"], r["version"]), 0) >= 3]
    assert grown, after
    failures = reports.failures(engine, reports.since("1d"))
    assert any(f["error_class"] == "timeout" and f["tasks"] >= 1 for f in failures)
    history = reports.prompts(engine, user, None)
    assert len(history) == 3 and all(h["asset_id"] for h in history)
    assert reports.prompts(engine, user, datetime.now(UTC) + timedelta(days=1)) == []


def test_since_is_parsed_or_refused() -> None:
    now = datetime(2026, 11, 24, tzinfo=UTC)
    assert reports.since("7d", now) == now - timedelta(days=7)
    assert reports.since("12h", now) == now - timedelta(hours=12)
    assert reports.since("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(InvalidInput, match="give 7d"):
        reports.since("last tuesday")


def test_the_reporting_role_reads_the_views_and_cannot_write(
    engine: Engine, database_url: str
) -> None:
    name = f"rep_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE ROLE {name} LOGIN IN ROLE stave_reporting"))
    reader = create_engine(make_url(database_url).set(username=name))
    try:
        with reader.connect() as conn:
            for view in ("report_model_clips", "report_failures_daily", "report_prompt_history"):
                conn.execute(text(f"SELECT count(*) FROM {view}")).scalar_one()
            for role in (name, "stave_app"):
                for view in ("report_model_clips", "report_prompt_history"):
                    can = conn.execute(
                        text("SELECT has_table_privilege(:r, :v, 'INSERT,UPDATE,DELETE')"),
                        {"r": role, "v": view},
                    ).scalar_one()
                    assert can is False, (role, view)
    finally:
        reader.dispose()
        with engine.begin() as conn:
            conn.execute(text(f"DROP ROLE {name}"))
