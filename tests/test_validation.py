"""The publishing checks (Great Expectations, for real) and their Data Docs."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stave.infra.settings import Settings
from stave.tasks import validation
from stave.tasks.storage import StoredClip


def _clip(**overrides: object) -> StoredClip:
    embedding = np.zeros(512, dtype=np.float32)
    embedding[0] = 1.0
    facts: dict[str, object] = {
        "task_id": uuid.uuid4(),
        "asset_id": uuid.uuid4(),
        "object_key": "audio/x.flac",
        "sha256": hashlib.sha256(b"x").hexdigest(),
        "bytes": 100,
        "format": "flac",
        "sample_rate": 16_000,
        "channels": 1,
        "duration_s": 2.0,
        "requested_duration_s": 2.0,
        "loudness_lufs": -20.0,
        "loudness_method": "bs1770-4",
        "peak_dbfs": -3.0,
        "nonfinite_samples": 0,
        "embedding": embedding,
        "provenance": {"model_version": "m:1", "checkpoint_sha256": "0" * 64},
        "timings": {},
        "device": "cpu",
    }
    facts.update(overrides)
    return StoredClip(**facts)  # type: ignore[arg-type]


def test_verdict_names_the_failing_clip_and_docs_are_built_incrementally(
    stave_env: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = stave_env(home=tmp_path / "home")
    good = [_clip(), _clip()]
    first = validation.validate(good, settings, batch_id="batch-one", sample_rate=16_000)
    assert first.success and not first.failures

    validation.build_data_docs(settings)
    docs = settings.data_docs_dir
    pages = {p: p.stat().st_mtime_ns for p in (docs / "validations").rglob("*.html")}
    assert len(pages) == 1 and "batch-one" in (docs / "index.html").read_text()

    loud = _clip(peak_dbfs=2.5)
    second = validation.validate(
        [_clip(), loud], settings, batch_id="batch-two", sample_rate=16_000
    )
    assert not second.success
    assert list(second.failures) == [loud.task_id]
    assert second.failures[loud.task_id] == [
        {
            "expectation": "expect_column_values_to_be_between",
            "column": "peak_dbfs",
            "observed": 2.5,
        }
    ]

    validation.build_data_docs(settings)
    now = {p: p.stat().st_mtime_ns for p in (docs / "validations").rglob("*.html")}
    assert len(now) == 2
    # The first batch's page is not rendered again; the index lists both batches.
    assert {p: now[p] for p in pages} == pages
    index = (docs / "index.html").read_text()
    assert "batch-one" in index and "batch-two" in index


def test_results_past_their_days_leave_the_home_and_the_store_with_their_pages(
    stave_env: Callable[..., Settings], tmp_path: Path
) -> None:
    from stave.infra.objectstore import make_object_store
    from stave.infra.objectstore.keys import data_docs_prefix, site_key
    from stave.tasks import sites

    settings = stave_env(home=tmp_path / "home", data_docs_keep_days=30)
    store = make_object_store(settings)
    validation.validate([_clip()], settings, batch_id="batch-old", sample_rate=16_000)
    sites.publish_data_docs(store, settings)
    docs = settings.data_docs_dir
    (old_page,) = (docs / "validations").rglob("*.html")
    old_key = site_key(data_docs_prefix(settings.env), old_page.relative_to(docs).as_posix())
    assert store.exists(old_key)
    # Forty days pass for that batch's result.
    (old_result,) = settings.validation_results_dir.rglob("*.json")
    long_ago = old_result.stat().st_mtime - 40 * 86400
    os.utime(old_result, (long_ago, long_ago))

    validation.validate([_clip()], settings, batch_id="batch-new", sample_rate=16_000)
    built = validation.build_data_docs(settings)
    assert built.rendered == 1 and built.removed == [old_page.relative_to(docs).as_posix()]
    assert not old_result.exists() and not old_page.exists()
    assert [p.name for p in settings.validation_results_dir.rglob("*.json")] != []
    index = (docs / "index.html").read_text()
    assert "batch-new" in index and "batch-old" not in index
    # The next put of the Data Docs deletes the pruned page's copy in the store.
    sites.publish_data_docs(store, settings)
    assert not store.exists(old_key)
    assert not validation.removed_pages_file(docs).exists()
