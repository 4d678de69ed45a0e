"""Sounds-alike search on the real database: HNSW answers, selective filters still give k rows
(exact fallback), errors name the item, index rebuilds, and real clips find their own kind."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from stave.infra.errors import InvalidInput, NotFound
from stave.infra.objectstore import make_object_store
from stave.infra.settings import Settings
from stave.models.assets import EMBEDDING_DIM
from stave.models.base import new_id
from stave.tasks import search, vector_index
from stave.tasks.encoders import load_encoder
from tests.utils.assets import Asset, make_assets, window

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class Corpus:
    version: str
    assets: list[Asset]
    vectors: np.ndarray
    model_id: uuid.UUID
    rare: list[int]  # positions of the assets made by the rare model version


def clustered(n: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, EMBEDDING_DIM))
    points = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, EMBEDDING_DIM))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def insert_embeddings(
    engine: Engine, assets: list[Asset], vectors: np.ndarray, version: str
) -> None:
    with engine.begin() as conn:
        for asset, vector in zip(assets, vectors, strict=True):
            conn.execute(
                text(
                    "INSERT INTO latent_embedding (id, asset_id, encoder_version, embedding) "
                    "VALUES (:id, :a, :v, :e)"
                ),
                {"id": new_id(), "a": asset.id, "v": version, "e": vector},
            )


@pytest.fixture(scope="module")
def corpus(engine: Engine, settings: Settings) -> Iterator[Corpus]:
    version = f"test-{uuid.uuid4().hex[:8]}"
    start, _ = window()
    store = make_object_store(settings)
    with engine.begin() as conn:
        model_id = new_id()
        conn.execute(
            text(
                "INSERT INTO model_version (id, name, version, checkpoint_uri, checkpoint_sha256, "
                "config, code_version) VALUES (:id, 'rare', :v, 'file:///x', :sha, '{}', 'test')"
            ),
            {"id": model_id, "v": version, "sha": "0" * 64},
        )
    assets = make_assets(engine, store, 300, start)
    rare = list(range(7, 300, 25))  # 12 of 300
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE audio_asset SET model_version_id = :m, user_id = 'rare-user' "
                "WHERE id = ANY(:ids)"
            ),
            {"m": model_id, "ids": [assets[i].id for i in rare]},
        )
    vectors = clustered(300, 6, seed=11)
    insert_embeddings(engine, assets, vectors, version)
    vector_index.rebuild(engine, version, settings)
    yield Corpus(version, assets, vectors, model_id, rare)


def exact_top(
    corpus: Corpus, query: np.ndarray, k: int, among: list[int], skip: int | None
) -> list[uuid.UUID]:
    distances = 1 - corpus.vectors[among] @ query
    order = [among[i] for i in np.argsort(distances, kind="stable") if among[i] != skip]
    return [corpus.assets[i].id for i in order[:k]]


def test_similar_by_asset_uses_the_index_and_excludes_itself(
    engine: Engine, settings: Settings, corpus: Corpus
) -> None:
    result = search.similar(
        engine, settings, asset_id=corpus.assets[0].id, k=10, encoder_version=corpus.version
    )
    assert result.method == "hnsw" and len(result.neighbours) == 10
    ids = [n.asset_id for n in result.neighbours]
    assert corpus.assets[0].id not in ids
    distances = [n.distance for n in result.neighbours]
    assert distances == sorted(distances)
    expected = exact_top(corpus, corpus.vectors[0], 10, list(range(300)), skip=0)
    assert len(set(ids) & set(expected)) >= 9  # recall@10 on clustered data
    position = {a.id: i for i, a in enumerate(corpus.assets)}
    for n in result.neighbours:
        cosine = float(corpus.vectors[0] @ corpus.vectors[position[n.asset_id]])
        assert abs(n.distance - (1 - cosine)) < 1e-4


def test_a_selective_filter_still_returns_k_rows_through_the_exact_fallback(
    engine: Engine, settings: Settings, corpus: Corpus
) -> None:
    query = corpus.vectors[3]
    result = search.similar(
        engine,
        settings,
        vector=query,
        k=10,
        encoder_version=corpus.version,
        model_version=f"rare:{corpus.version}",
    )
    assert len(result.neighbours) == 10
    assert [n.asset_id for n in result.neighbours] == exact_top(
        corpus, query, 10, corpus.rare, None
    )
    assert all(n.user_id == "rare-user" for n in result.neighbours)
    by_user = search.similar(
        engine, settings, vector=query, k=5, encoder_version=corpus.version, user_id="rare-user"
    )
    assert [n.asset_id for n in by_user.neighbours] == exact_top(
        corpus, query, 5, corpus.rare, None
    )


def test_exact_and_hnsw_agree_and_a_version_without_index_is_searched_exactly(
    engine: Engine, settings: Settings, corpus: Corpus
) -> None:
    query = corpus.vectors[42]
    exact = search.similar(
        engine, settings, vector=query, k=5, encoder_version=corpus.version, exact=True
    )
    assert exact.method == "exact"
    assert [n.asset_id for n in exact.neighbours] == exact_top(
        corpus, query, 5, list(range(300)), None
    )
    # Another version over the same assets, not indexed: still answered, exactly.
    other = f"{corpus.version}-b"
    insert_embeddings(engine, corpus.assets[:20], corpus.vectors[:20], other)
    unindexed = search.similar(engine, settings, vector=query, k=3, encoder_version=other)
    assert unindexed.method == "exact" and len(unindexed.neighbours) == 3


def test_bad_queries_are_one_line_errors(
    engine: Engine, settings: Settings, corpus: Corpus
) -> None:
    with pytest.raises(NotFound, match="no such asset"):
        search.similar(engine, settings, asset_id=uuid.uuid4(), encoder_version=corpus.version)
    with pytest.raises(NotFound, match="has no embedding for encoder nope"):
        search.similar(engine, settings, asset_id=corpus.assets[0].id, encoder_version="nope")
    with pytest.raises(InvalidInput, match=r"shape \(3,\)"):
        search.similar(engine, settings, vector=[1.0, 0.0, 0.0], encoder_version=corpus.version)
    with pytest.raises(InvalidInput, match="between 1 and"):
        search.similar(
            engine, settings, vector=corpus.vectors[0], k=0, encoder_version=corpus.version
        )
    with pytest.raises(NotFound, match="no such model version"):
        search.similar(
            engine,
            settings,
            vector=corpus.vectors[0],
            model_version="ghost",
            encoder_version=corpus.version,
        )


def test_rebuild_changes_parameters_concurrently_and_clears_a_failed_build(
    engine: Engine, settings: Settings, corpus: Corpus, stave_env: Any
) -> None:
    name = vector_index.index_name(corpus.version)
    # What an interrupted CONCURRENTLY build leaves behind: an index under the temporary name.
    with engine.begin() as conn:
        conn.execute(text(f"CREATE INDEX {name}_new ON latent_embedding (asset_id)"))
    changed = stave_env(hnsw_m=8, hnsw_ef_construction=32)
    built = vector_index.rebuild(engine, corpus.version, changed)
    assert (built.name, built.m, built.ef_construction, built.valid) == (name, 8, 32, True)
    with engine.connect() as conn:
        names = [i.name for i in vector_index.list_indexes(conn)]
    assert f"{name}_new" not in names and names.count(name) == 1
    result = search.similar(
        engine, changed, vector=corpus.vectors[9], k=5, encoder_version=corpus.version
    )
    assert result.method == "hnsw" and len(result.neighbours) == 5


def test_real_clips_find_their_own_kind_through_a_backfill_of_the_current_encoder(
    engine: Engine, settings: Settings
) -> None:
    """Corpus audio of three timbres, embedded by the shipped encoder through a backfill:
    each clip's nearest neighbours are clips of its timbre."""
    from stave.generator.corpus import render, sample_labels
    from stave.tasks import backfill
    from stave.tasks.inference import current_encoder_version

    timbres = ("bell", "organ", "bass")
    labels = [
        dataclasses.replace(sample_labels(900 + i), timbre=t, drums=False)
        for t in timbres
        for i in range(4)
    ]
    audios = [render(label, 3.0)[0] for label in labels]
    start, end = window()
    user = f"listener-{uuid.uuid4().hex[:6]}"
    assets = make_assets(
        engine, make_object_store(settings), len(audios), start, audios=audios, user_id=user
    )
    encoder = load_encoder(engine, settings, None, None)
    assert encoder.version == current_encoder_version(settings)
    scope = backfill.resolve_scope(engine, encoder.version, start, end)
    store = make_object_store(settings)

    def process(run: Any, refs: Any, cursor: Any) -> Any:
        return backfill.process_batch(engine, store, encoder, run, refs, cursor, 4)

    _, progress, status = backfill.run_backfill(engine, scope, process, batch_size=8)
    assert status == "completed" and progress.written == 12

    same = 0
    timbre_of = {a.id: label.timbre for a, label in zip(assets, labels, strict=True)}
    for asset, label in zip(assets, labels, strict=True):
        result = search.similar(engine, settings, asset_id=asset.id, k=3, user_id=user)
        assert len(result.neighbours) == 3
        same += sum(timbre_of[n.asset_id] == label.timbre for n in result.neighbours)
    assert same / 36 >= 0.8, f"only {same} of 36 nearest neighbours share the timbre"


def test_embedding_a_file_that_is_not_audio_is_one_line(
    engine: Engine, settings: Settings, tmp_path: Any
) -> None:
    path = tmp_path / "clip.wav"
    path.write_bytes(b"RIFF but not really")
    with pytest.raises(InvalidInput, match=r"clip\.wav"):
        search.embed_file(engine, settings, path, None)
    with pytest.raises(InvalidInput, match="no such file"):
        search.embed_file(engine, settings, tmp_path / "missing.wav", None)
