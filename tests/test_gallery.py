"""The listening gallery, opened in headless Chromium from the file system: every player and
spectrogram loads; a missing object is shown as a problem on the page, not a broken page."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from stave.infra.errors import InvalidInput, NotFound
from stave.infra.objectstore import make_object_store
from stave.infra.settings import Settings
from stave.tasks import backfill, gallery
from stave.tasks.encoders import load_encoder
from tests.utils.assets import make_assets, window

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def open_in_chromium(page: Path | str) -> str:
    """The page's DOM after its players and images had time to load (virtual time); `page`
    a file or a URL."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=15000",
            "--dump-dom",
            page.resolve().as_uri() if isinstance(page, Path) else page,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def user() -> str:
    # Neighbours are searched among this user's clips: other tests' clips (some kept in other
    # stores) share the database.
    return f"g-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def clips(engine: Engine, settings: Settings, user: str) -> list[Any]:
    """Six assets of one user with embeddings for the current encoder (through a backfill)."""
    start, end = window()
    assets = make_assets(engine, make_object_store(settings), 6, start, user_id=user)
    encoder = load_encoder(engine, settings, None, None)
    scope = backfill.resolve_scope(engine, encoder.version, start, end)
    store = make_object_store(settings)

    def process(run: Any, refs: Any, cursor: Any) -> Any:
        return backfill.process_batch(engine, store, encoder, run, refs, cursor, 4)

    backfill.run_backfill(engine, scope, process, batch_size=8)
    return assets


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")
def test_the_gallery_opens_from_disk_with_every_player_and_image_loaded(
    engine: Engine, settings: Settings, clips: list[Any], user: str, tmp_path: Path
) -> None:
    chosen = gallery.select_similar(engine, settings, clips[0].id, k=3, encoder=None, user_id=user)
    assert chosen[0].asset_id == clips[0].id and len(chosen) == 4
    made = gallery.build(
        engine,
        make_object_store(settings),
        settings,
        tmp_path / "g",
        chosen,
        "Sounds like",
        neighbours=3,
        user_id=user,
    )
    assert made.problems == [] and made.clips == 4
    html = made.path.read_text()
    players = re.findall(r"<audio [^>]*src=\"(audio/[^\"]+)\"", html)
    images = re.findall(r"<img [^>]*src=\"(img/[^\"]+)\"", html)
    assert len(images) == 4 and len(players) >= 4 + 4  # each clip, and each neighbour row
    assert all((made.path.parent / p).is_file() for p in [*players, *images])
    assert "http" not in html.replace("https://", "").split("<script>")[0]  # nothing remote

    dom = open_in_chromium(made.path)
    states = re.findall(r"<(audio|img)[^>]*data-state=\"(\w+)\"", dom)
    assert len(states) == len(players) + len(images)
    assert {s for _, s in states} == {"ready"}, states
    assert f"{len(states)} of {len(states)} players and images loaded" in dom


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")
def test_a_missing_object_is_reported_on_the_page_and_the_rest_still_loads(
    engine: Engine, settings: Settings, clips: list[Any], user: str, tmp_path: Path
) -> None:
    store = make_object_store(settings)
    chosen = gallery.select_similar(engine, settings, clips[0].id, k=2, encoder=None, user_id=user)
    store.delete(chosen[1].object_key)
    made = gallery.build(engine, store, settings, tmp_path / "g", chosen, "t", neighbours=0)
    assert len(made.problems) == 1 and str(chosen[1].asset_id) in made.problems[0]
    html = made.path.read_text()
    assert "class=problem" in html
    dom = open_in_chromium(made.path)
    states = re.findall(r"data-state=\"(\w+)\"", dom)
    assert states and set(states) == {"ready"}


def test_bad_requests_are_one_line(
    engine: Engine, settings: Settings, clips: list[Any], tmp_path: Path
) -> None:
    with pytest.raises(NotFound, match="no such job"):
        gallery.select_job(engine, uuid.uuid4(), 10)
    with pytest.raises(NotFound, match="no such asset"):
        gallery.select_similar(engine, settings, uuid.uuid4(), 3, None)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    chosen = gallery.select_similar(engine, settings, clips[0].id, k=1, encoder=None)
    with pytest.raises(InvalidInput, match="not empty and not a gallery"):
        gallery.build(engine, make_object_store(settings), settings, occupied, chosen, "t")


def test_a_spectrogram_is_a_valid_png(tmp_path: Path) -> None:
    import numpy as np

    png = gallery.spectrogram_png(np.sin(np.arange(16000) * 0.1).astype(np.float32), 16000)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and b"IHDR" in png[:20]
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (480, 160)
