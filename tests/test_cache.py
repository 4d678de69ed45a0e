"""Hot configuration through the cache: a real redis-server (Debian's, started here) and the
in-process LRU. An update is never followed by a stale read; Redis down means database reads."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.cache import ConfigCache, LocalCache, RedisCache, cache_key, get_cache
from stave.infra.errors import InvalidInput
from stave.infra.settings import Settings
from stave.tasks import catalog
from stave.tasks.intake import rows_from_parameter
from stave.tasks.submission import submit
from tests.test_cli import assert_one_line_error, stave
from tests.utils.net import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(params=["redis", "local"])
def cache(request: pytest.FixtureRequest, settings: Settings) -> ConfigCache:
    if request.param == "redis":
        return RedisCache(request.getfixturevalue("redis_url"), ttl_s=60)
    return LocalCache(ttl_s=60)


def read_steps(engine: Engine, cache: ConfigCache, settings: Settings, name: str) -> int:
    with engine.connect() as conn:
        return int(catalog.templates(conn, cache, settings, [name])[name]["steps"])


def test_an_updated_template_is_never_served_stale(
    engine: Engine, cache: ConfigCache, settings: Settings
) -> None:
    name = f"tpl-{uuid.uuid4().hex[:8]}"
    catalog.put_template(engine, cache, settings, name, {"steps": 1})
    assert read_steps(engine, cache, settings, name) == 1  # now cached
    committed = 1
    stop = threading.Event()
    stale: list[tuple[int, int]] = []

    def reader() -> None:
        while not stop.is_set():
            floor = committed  # every update that returned before this read began
            seen = read_steps(engine, cache, settings, name)
            if seen < floor:
                stale.append((floor, seen))

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for steps in range(2, 40):
            catalog.put_template(engine, cache, settings, name, {"steps": steps})
            committed = steps
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert stale == []
    assert read_steps(engine, cache, settings, name) == 39


def test_a_reader_holding_the_old_value_cannot_put_it_back(
    engine: Engine, cache: ConfigCache, settings: Settings
) -> None:
    # The race that "delete after commit" loses: a reader loads the old row, the writer
    # commits and updates the cache, then the reader stores what it loaded.
    name = f"tpl-{uuid.uuid4().hex[:8]}"
    old = catalog.put_template(engine, cache, settings, name, {"steps": 3})
    catalog.put_template(engine, cache, settings, name, {"steps": 4})
    old_version = time_of(old)
    assert not cache.store_if_newer(cache_key(settings, "template", name), old, old_version)
    assert read_steps(engine, cache, settings, name) == 4


def time_of(row: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(row["updated_at"]).timestamp()


def test_a_missing_template_becomes_visible_when_created(
    engine: Engine, cache: ConfigCache, settings: Settings
) -> None:
    name = f"tpl-{uuid.uuid4().hex[:8]}"
    with engine.connect() as conn:
        assert catalog.templates(conn, cache, settings, [name]) == {}  # cached as missing
    catalog.put_template(engine, cache, settings, name, {"guidance": 2.5})
    with engine.connect() as conn:
        assert catalog.templates(conn, cache, settings, [name]) == {name: {"guidance": 2.5}}


def test_redis_down_degrades_to_database_reads(
    engine: Engine, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    down = RedisCache(f"redis://127.0.0.1:{free_port()}/0", ttl_s=60)
    name, user = f"tpl-{uuid.uuid4().hex[:8]}", f"u-{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.WARNING, logger="stave.infra.cache"):
        catalog.put_template(engine, down, settings, name, {"steps": 7})
        catalog.put_preferences(engine, down, settings, user, {"duration_s": 4})
        assert read_steps(engine, down, settings, name) == 7
        catalog.put_template(engine, down, settings, name, {"steps": 8})
        assert read_steps(engine, down, settings, name) == 8
        with engine.connect() as conn:
            assert catalog.preferences(conn, down, settings, [user]) == {user: {"duration_s": 4}}
    warnings = [r.message for r in caplog.records if "unavailable" in r.message]
    assert len(warnings) == 1  # one warning, not one per read


def test_submissions_read_templates_and_preferences_through_redis(
    engine: Engine,
    redis_url: str,
    stave_env: Callable[..., Settings],
) -> None:
    settings = stave_env(redis_url=redis_url)
    cache = get_cache(settings)
    assert isinstance(cache, RedisCache)
    name, user = f"tpl-{uuid.uuid4().hex[:8]}", f"u-{uuid.uuid4().hex[:8]}"
    catalog.put_preferences(engine, cache, settings, user, {"duration_s": 4})
    catalog.put_template(engine, cache, settings, name, {"steps": 5})

    def submitted_parameters() -> dict[str, Any]:
        rows = [{"prompt": f"p {uuid.uuid4().hex}", "user_id": user, "style_template": name}]
        job = submit(engine, rows_from_parameter(rows), settings).job_id
        with engine.connect() as conn:
            return dict(
                conn.execute(
                    text("SELECT parameters FROM generation_task WHERE job_id = :j"), {"j": job}
                ).scalar_one()
            )

    first = submitted_parameters()
    assert (first["steps"], first["duration_s"]) == (5, 4.0)
    catalog.put_template(engine, cache, settings, name, {"steps": 6})
    assert submitted_parameters()["steps"] == 6  # the update, not the cached 5


def test_bad_template_parameters_are_refused_in_one_line(
    engine: Engine, settings: Settings
) -> None:
    cache = LocalCache(ttl_s=60)
    with pytest.raises(InvalidInput, match=r"template 'x': steps: .*"):
        catalog.put_template(engine, cache, settings, "x", {"steps": 0})
    with pytest.raises(InvalidInput, match="unknown parameter 'stepz'"):
        catalog.put_template(engine, cache, settings, "x", {"stepz": 4})


def test_templates_and_prefs_commands(database_url: str, redis_url: str, tmp_path: Path) -> None:
    env = {"STAVE_DATABASE_URL": database_url, "STAVE_REDIS_URL": redis_url}
    name, user = f"lofi-{uuid.uuid4().hex[:6]}", f"u-{uuid.uuid4().hex[:6]}"
    made = stave(
        "templates",
        "set",
        name,
        "-p",
        "steps=12",
        "-p",
        "scheduler=heun",
        "--json",
        cwd=tmp_path,
        env=env,
    )
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["parameters"] == {"steps": 12, "scheduler": "heun"}
    listed = json.loads(stave("templates", "list", "--json", cwd=tmp_path, env=env).stdout)
    assert any(t["name"] == name and t["parameters"]["steps"] == 12 for t in listed)
    assert stave("prefs", "set", user, "-p", "duration_s=5", cwd=tmp_path, env=env).returncode == 0
    shown = json.loads(stave("prefs", "show", user, "--json", cwd=tmp_path, env=env).stdout)
    assert shown == {"user_id": user, "parameters": {"duration_s": 5}}
    bad = stave("templates", "set", name, "-p", "guidance=99", cwd=tmp_path, env=env)
    assert bad.returncode == 1 and "guidance" in assert_one_line_error(bad)
    unchanged = json.loads(stave("templates", "list", "--json", cwd=tmp_path, env=env).stdout)
    assert [t["parameters"] for t in unchanged if t["name"] == name] == [
        {"steps": 12, "scheduler": "heun"}
    ]
