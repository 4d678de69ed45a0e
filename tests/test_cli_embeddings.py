"""`stave backfill | embeddings status | similar | index | gallery` as operators run them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from stave.infra.objectstore import make_object_store
from stave.infra.settings import Settings
from tests.test_cli import assert_one_line_error, stave
from tests.utils.assets import make_assets, window, write_tiny_checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture
def env(database_url: str, prefect_api: str, settings: Settings) -> dict[str, str]:
    # The session's home, so the commands read the objects the test wrote.
    return {
        "STAVE_HOME": str(settings.home),
        "STAVE_DATABASE_URL": database_url,
        "PREFECT_API_URL": prefect_api,
    }


def test_backfill_status_similar_index_and_gallery_from_the_command_line(
    env: dict[str, str], engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    tiny = write_tiny_checkpoint(tmp_path / "tiny.pt", seed=21)
    start, end = window()
    assets = make_assets(engine, make_object_store(settings), 5, start)
    scope = [
        "--checkpoint",
        str(tiny),
        "--created-after",
        start.strftime("%Y-%m-%d"),
        "--created-before",
        end.strftime("%Y-%m-%d"),
    ]

    planned = stave("backfill", *scope, "--dry-run", "--json", cwd=tmp_path, env=env)
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["assets"] == 5 and plan["dry_run"]

    ran = stave("backfill", *scope, "--batch-size", "2", "--json", cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout)
    assert (summary["status"], summary["written"], summary["batches"]) == ("completed", 5, 3)
    version = summary["encoder_version"]

    status = json.loads(stave("embeddings", "status", "--json", cwd=tmp_path, env=env).stdout)
    mine = next(v for v in status["versions"] if v["encoder_version"] == version)
    assert mine["embeddings"] == 5 and mine["index"]["valid"]
    assert any(v["current"] for v in status["versions"])

    found = stave(
        "similar",
        str(assets[0].id),
        "-k",
        "3",
        "--encoder",
        version,
        "--json",
        cwd=tmp_path,
        env=env,
    )
    assert found.returncode == 0, found.stderr
    neighbours = json.loads(found.stdout)["neighbours"]
    assert len(neighbours) == 3 and str(assets[0].id) not in {n["asset_id"] for n in neighbours}

    listed = json.loads(stave("index", "list", "--json", cwd=tmp_path, env=env).stdout)
    assert any(i["encoder_version"] == version for i in listed)
    rebuilt = stave("index", "rebuild", "--encoder", version, cwd=tmp_path, env=env)
    assert rebuilt.returncode == 0 and "m=16" in rebuilt.stdout

    out = tmp_path / "gallery"
    made = stave(
        "gallery",
        "--similar",
        str(assets[0].id),
        "-k",
        "2",
        "--encoder",
        version,
        "-o",
        str(out),
        "--json",
        cwd=tmp_path,
        env=env,
    )
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["clips"] == 3 and (out / "index.html").is_file()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("similar", "not-a-uuid"), "is not an id"),
        (("similar", "01a20b84-0000-7000-8000-000000000000"), "no such asset"),
        (("similar",), "give an asset id or --file"),
        (("backfill", "--model-version", "ghost", "--dry-run"), "no such model version"),
        (("backfill", "--encoder-version", "stave-ae-000000000000"), "no checkpoint for it"),
        (("gallery", "01a20b84-0000-7000-8000-000000000000", "-o", "g"), "no such job"),
    ],
)
def test_bad_requests_are_one_line(
    env: dict[str, str], tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    result = stave(*args, cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert expected in assert_one_line_error(result)
